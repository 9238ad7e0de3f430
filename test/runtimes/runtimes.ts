/**
 * The three runtimes of the matrix, each started as a user starts it:
 * - node:    `npm start`
 * - deno:    `npm run start:deno` (Deno from its npm package, packages from ./node_modules)
 * - workers: `npm run dev:worker -- --persist-to <dir>` (puts the package into that local R2,
 *            then runs wrangler dev)
 * All with the same settings (SERVER_ENV), passed as environment variables or, on Workers, as
 * `--var`s (what wrangler.toml [vars] and secrets become).
 */
import { createHash } from 'node:crypto'
import { cp, mkdir, mkdtemp, readFile, rename, rm, stat, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, startServer, type ServerProcess } from './servers.ts'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const MODEL_ID = 'qwen2-tiny-random-q8'
export const API_KEY = 'test-key-3f9a1c'
export const CORS_ORIGIN = 'https://app.example'

/**
 * The servers' context and max_tokens ceiling: long, so that a reply can take many seconds even
 * with the tiny model, which decodes near a thousand tokens a second on a fast machine.
 */
export const CONTEXT_LENGTH = 32_768

/** Limits the tests can reach: 2 generations decoding + 2 waiting, then 429. */
export const SERVER_ENV = {
  API_KEY,
  CORS_ORIGINS: CORS_ORIGIN,
  CONTEXT_LENGTH: String(CONTEXT_LENGTH),
  MAX_TOKENS_CEILING: String(CONTEXT_LENGTH),
  MAX_ACTIVE: '2',
  MAX_QUEUED: '2',
} as const

export type RuntimeName = 'node' | 'deno' | 'workers'

export interface Runtime {
  name: RuntimeName
  /** Starts the server with SERVER_ENV, and `env` on top of it. */
  start(env?: Record<string, string>, pkg?: PackageChoice): Promise<ServerProcess>
}

/** Another package than the bundled one: `id` in the packages folder `dir`. */
export interface PackageChoice {
  id: string
  dir: string
}

const quiet = { NO_COLOR: '1', FORCE_COLOR: '0' }

/** A runtime whose server is `npm <command>` (Node, Deno) on a free port, the bundled model. */
function npmRuntime(
  name: RuntimeName,
  command: 'start' | 'run start:deno',
  env: Record<string, string> = {},
): Runtime {
  return {
    name,
    async start(extra = {}) {
      const port = await freePort()
      return startServer({
        name: `${name} (npm ${command})`,
        command: 'npm',
        args: ['run', '--silent', command.replace(/^run /, '')],
        cwd: ROOT,
        env: {
          ...quiet,
          ...SERVER_ENV,
          ...extra,
          PORT: String(port),
          HOST: '127.0.0.1',
          MODEL: MODEL_ID,
          ...env,
        },
        port,
        readyTimeoutMs: 60_000,
      })
    },
  }
}

export const node = npmRuntime('node', 'start')
export const deno = npmRuntime('deno', 'run start:deno', { DENO_NO_UPDATE_CHECK: '1' })

/**
 * `npm run dev:worker` puts the package into the local R2 of its `--persist-to` folder (a temp
 * dir here), then runs `wrangler dev` on it. wrangler dev rebuilds and restarts the Worker
 * whenever a source file changes, which would cut streams in the middle of a test while someone
 * edits the tree (or vitest watches it), so it runs on a snapshot of the sources.
 */
export const workers: Runtime = {
  name: 'workers',
  async start(extra = {}, pkg = { id: MODEL_ID, dir: join(ROOT, 'model-shards') }) {
    const { persistTo, save } = await localR2Folder(pkg)
    const snapshot = await snapshotProject(pkg.dir)
    const [port, inspectorPort] = [await freePort(), await freePort()]
    const cleanup = () => removeDirs(persistTo, snapshot)
    let server: ServerProcess
    try {
      server = await startServer({
        name: 'workers (npm run dev:worker)',
        command: 'npm',
        args: [
          'run',
          '--silent',
          'dev:worker',
          '--',
          ...['--ip', '127.0.0.1', '--port', String(port)],
          ...['--inspector-port', String(inspectorPort)],
          ...['--persist-to', persistTo],
          '--show-interactive-dev-session=false',
          ...Object.entries({ ...SERVER_ENV, ...extra, MODEL: pkg.id }).flatMap(([k, v]) => [
            '--var',
            `${k}:${v}`,
          ]),
        ],
        cwd: snapshot,
        env: { ...quiet, CI: '1', WRANGLER_SEND_METRICS: 'false' },
        port,
        readyTimeoutMs: 240_000, // a first run uploads the package into the local R2 (~45 s)
      })
    } catch (err) {
      await cleanup()
      throw err
    }
    return {
      ...server,
      dir: snapshot,
      stop: async () => {
        await server.stop()
        await save()
        await cleanup()
      },
    }
  },
}

/** All three, or those named in TEST_RUNTIMES (`TEST_RUNTIMES=node,deno npx vitest run ...`). */
export const RUNTIMES: Runtime[] = [node, deno, workers].filter(
  (r) => !process.env.TEST_RUNTIMES || process.env.TEST_RUNTIMES.split(',').includes(r.name),
)

/**
 * A temp folder for wrangler's local state. The upload into it (5 wrangler runs, ~45 s on 2
 * cores) is kept under .cache/ per package version once a server has used it, and copied in
 * the next time, so that dev:worker finds every object already there.
 */
async function localR2Folder(pkg: PackageChoice): Promise<{
  persistTo: string
  save: () => Promise<void>
}> {
  const manifest = await readFile(join(pkg.dir, pkg.id, 'manifest.json'))
  const version = createHash('sha256').update(manifest).digest('hex').slice(0, 16)
  const cached = join(ROOT, '.cache', 'runtime-tests', `local-r2-${pkg.id}-${version}`)
  const persistTo = await mkdtemp(join(tmpdir(), 'qwen-edge-r2-'))
  const hit = await exists(cached)
  if (hit) await cp(cached, persistTo, { recursive: true })
  const save = async () => {
    if (hit || (await exists(cached))) return
    const partial = `${cached}.${process.pid}.tmp` // copied whole, then renamed into place
    await mkdir(dirname(cached), { recursive: true })
    await cp(persistTo, partial, { recursive: true })
    await rename(partial, cached).catch(() => rm(partial, { recursive: true, force: true }))
  }
  return { persistTo, save }
}

/**
 * Copies what `npm run dev:worker` builds from; node_modules is linked, and model-shards is the
 * packages folder `packages`.
 */
async function snapshotProject(packages: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'qwen-edge-worker-'))
  for (const entry of ['src', 'scripts', 'wrangler.toml', 'package.json', 'tsconfig.json']) {
    await cp(join(ROOT, entry), join(dir, entry), { recursive: true })
  }
  await symlink(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir')
  await symlink(packages, join(dir, 'model-shards'), 'dir')
  return dir
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

async function removeDirs(...dirs: string[]): Promise<void> {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true })
}
