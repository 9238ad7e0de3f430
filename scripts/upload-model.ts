/**
 * Puts a model package into R2 through wrangler:
 *
 *   npm run model:upload -- <id> [--bucket qwen-edge-models] (--local | --remote)
 *                               [--dir model-shards] [--persist-to .wrangler/state] [--force]
 *
 * Each file becomes `<bucket>/<id>/<file>` via `wrangler r2 object put`; manifest.json goes last,
 * so a reader never sees a manifest whose shards are not there yet.
 *
 * Skipping: wrangler cannot tell an object's sha256 without downloading it, so the script keeps
 * a small state file of what it put where ({ "<id>/<file>": sha256 }) and skips objects whose
 * hash it already put there. For --local the state lives inside the persist folder (wiping the
 * local R2 wipes it too); for --remote under .wrangler/. `--force` ignores it.
 */
import { spawn } from 'node:child_process'
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import {
  MANIFEST_FILE,
  MAX_OBJECT_BYTES,
  isValidPackageId,
  listFiles,
  packageKey,
  parseManifest,
} from '../src/format/index.ts'
import { formatBytes, progressBar } from './lib/progress.ts'
import { isMain, parseCli, runMain, usageError } from './lib/cli.ts'
import { sha256File } from './prepare-model.ts'

export const DEFAULT_BUCKET = 'qwen-edge-models'
/** Where `wrangler dev` keeps local bindings unless told otherwise. */
export const DEFAULT_PERSIST_DIR = '.wrangler/state'

export interface UploadObject {
  /** Object key inside the bucket: `<id>/<file>`. */
  key: string
  /** Local file to put. */
  file: string
  bytes: number
  sha256: string
}

/** Key → sha256 of what this script last put there. */
export type UploadState = Record<string, string>

export interface UploadPlan {
  upload: UploadObject[]
  skip: UploadObject[]
  /** Objects over wrangler's single-put limit: nothing is uploaded while this is non-empty. */
  tooLarge: UploadObject[]
}

/** Pure: which objects to put, which are already there, which cannot be put at all. */
export function planUpload(
  objects: UploadObject[],
  state: UploadState,
  options: { force?: boolean; maxBytes?: number } = {},
): UploadPlan {
  const maxBytes = options.maxBytes ?? MAX_OBJECT_BYTES
  const plan: UploadPlan = { upload: [], skip: [], tooLarge: [] }
  for (const o of objects) {
    if (o.bytes > maxBytes) plan.tooLarge.push(o)
    else if (!options.force && state[o.key] === o.sha256) plan.skip.push(o)
    else plan.upload.push(o)
  }
  return plan
}

export function tooLargeMessage(tooLarge: UploadObject[], maxBytes = MAX_OBJECT_BYTES): string {
  const list = tooLarge.map((o) => `  ${o.key}: ${formatBytes(o.bytes)}`).join('\n')
  return (
    `Refusing to upload: ${tooLarge.length} object(s) exceed wrangler's single-put limit of ` +
    `${formatBytes(maxBytes)}:\n${list}\nPrepare the package again with a smaller --shard-mb ` +
    `(the default is 16).`
  )
}

export interface UploadOptions {
  id: string
  bucket?: string
  mode: 'local' | 'remote'
  /** Folder holding packages; default model-shards. */
  dir?: string
  /** Local R2 persistence folder (--local only); default .wrangler/state. */
  persistTo?: string
  force?: boolean
  quiet?: boolean
  /** Overrides where the skip state is kept (see the top of this file). */
  stateFile?: string
  /**
   * wrangler processes at once. Default 4 for --remote (each run spends ~2 s starting up);
   * 1 for --local, where every run opens the same local SQLite store.
   */
  concurrency?: number
  /** Runs wrangler; replaced in tests. Default: the project's wrangler via node. */
  runWrangler?: (args: string[]) => Promise<void>
}

export interface UploadResult {
  uploaded: string[]
  skipped: string[]
  stateFile: string
}

export async function uploadPackage(options: UploadOptions): Promise<UploadResult> {
  const { id, mode } = options
  if (!isValidPackageId(id)) throw new Error(`Invalid package id ${JSON.stringify(id)}`)
  const bucket = options.bucket ?? DEFAULT_BUCKET
  const root = resolve(options.dir ?? 'model-shards', id)
  const manifestPath = join(root, MANIFEST_FILE)
  const manifestBytes = await readFile(manifestPath).catch((err) => {
    throw new Error(`No package ${id}: cannot read ${manifestPath} (${(err as Error).message})`)
  })
  const manifest = parseManifest(JSON.parse(manifestBytes.toString('utf8')))
  const objects: UploadObject[] = []
  for (const f of listFiles(manifest)) {
    const file = join(root, f.path)
    const st = await stat(file).catch(() => null)
    if (!st || st.size !== f.bytes) {
      throw new Error(`${file} is ${st ? `${st.size} bytes, manifest says ${f.bytes}` : 'missing'}`)
    }
    objects.push({ key: packageKey(id, f.path), file, bytes: f.bytes, sha256: f.sha256 })
  }
  objects.push({
    key: packageKey(id, MANIFEST_FILE),
    file: manifestPath,
    bytes: manifestBytes.byteLength,
    sha256: await sha256File(manifestPath),
  })

  const persistTo = resolve(options.persistTo ?? DEFAULT_PERSIST_DIR)
  const stateFile =
    options.stateFile ??
    (mode === 'local'
      ? join(persistTo, `qwen-edge-uploads-${bucket}.json`)
      : resolve('.wrangler', `qwen-edge-uploads-remote-${bucket}.json`))
  const state: UploadState = await readFile(stateFile, 'utf8')
    .then((s) => JSON.parse(s) as UploadState)
    .catch(() => ({}))

  const plan = planUpload(objects, state, { force: options.force })
  if (plan.tooLarge.length > 0) throw new Error(tooLargeMessage(plan.tooLarge))

  const run = options.runWrangler ?? runWrangler
  const total = plan.upload.reduce((n, o) => n + o.bytes, 0)
  const bar = progressBar(`upload ${id} → ${bucket} (${mode})`, total, { quiet: options.quiet })
  const put = async (o: UploadObject) => {
    const args = ['r2', 'object', 'put', `${bucket}/${o.key}`, '--file', o.file, `--${mode}`]
    args.push(
      '--content-type',
      o.key.endsWith('.json') ? 'application/json' : 'application/octet-stream',
    )
    if (mode === 'local') args.push('--persist-to', persistTo)
    await run(args)
    bar.add(o.bytes)
    state[o.key] = o.sha256
    await writeState(stateFile, state) // after every object, so an interrupted upload resumes
  }
  // The manifest goes up alone, after everything it names is there.
  const manifestKey = packageKey(id, MANIFEST_FILE)
  const rest = plan.upload.filter((o) => o.key !== manifestKey)
  const concurrency = Math.max(1, options.concurrency ?? (mode === 'remote' ? 4 : 1))
  let next = 0
  const worker = async () => {
    while (next < rest.length) await put(rest[next++])
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, rest.length) }, worker))
  const manifestObject = plan.upload.find((o) => o.key === manifestKey)
  if (manifestObject) await put(manifestObject)
  bar.finish(`${plan.upload.length} put, ${plan.skip.length} already there`)
  return {
    uploaded: plan.upload.map((o) => o.key),
    skipped: plan.skip.map((o) => o.key),
    stateFile,
  }
}

let stateWrites: Promise<void> = Promise.resolve()

/** Writes the state file atomically; writes from parallel puts are queued, not interleaved. */
function writeState(file: string, state: UploadState): Promise<void> {
  const write = async () => {
    await mkdir(dirname(file), { recursive: true })
    await writeFile(`${file}.tmp`, JSON.stringify(state, null, 2) + '\n')
    await rename(`${file}.tmp`, file)
  }
  stateWrites = stateWrites.then(write, write)
  return stateWrites
}

/** Runs the project's wrangler (node_modules) with `args`; rejects with its output on failure. */
export function runWrangler(args: string[]): Promise<void> {
  const require = createRequire(import.meta.url)
  const bin = join(dirname(require.resolve('wrangler/package.json')), 'bin', 'wrangler.js')
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: process.env.CI ?? '1' },
    })
    let output = ''
    child.stdout.on('data', (d) => (output += d))
    child.stderr.on('data', (d) => (output += d))
    child.on('error', reject)
    child.on('close', (code) => {
      if (code === 0) resolvePromise()
      else
        reject(
          new Error(
            `wrangler ${args.slice(0, 4).join(' ')} failed (exit ${code}):\n${output.trim()}`,
          ),
        )
    })
  })
}

export const UPLOAD_CLI = {
  name: 'model:upload',
  command: 'npm run model:upload --',
  usage: ['npm run model:upload -- <id> (--local | --remote) [options]'],
  summary: [
    'Puts the model package <dir>/<id>/ into R2 through wrangler, as <bucket>/<id>/<file>,',
    'manifest.json last. Skips objects whose sha256 it already put there (a state file under',
    'the persist folder for --local, under .wrangler/ for --remote).',
  ],
  allowPositionals: true,
  arguments: [['<id>', 'the package id: its folder under --dir']],
  options: {
    bucket: { type: 'string', arg: '<name>', default: DEFAULT_BUCKET, help: 'R2 bucket' },
    local: {
      type: 'boolean',
      default: false,
      help: "wrangler's local R2 (what `wrangler dev` reads)",
    },
    remote: { type: 'boolean', default: false, help: 'the real R2 bucket (needs wrangler login)' },
    dir: { type: 'string', arg: '<dir>', default: 'model-shards', help: 'packages folder' },
    'persist-to': {
      type: 'string',
      arg: '<dir>',
      help: "wrangler dev's --persist-to folder (--local only)",
      defaultHelp: DEFAULT_PERSIST_DIR,
    },
    force: { type: 'boolean', default: false, help: 'upload everything, ignoring the state file' },
    concurrency: {
      type: 'string',
      arg: '<n>',
      help: 'objects put at once',
      defaultHelp: '4 with --remote, 1 with --local',
    },
  },
  examples: [
    'npm run model:upload -- my-tiny --local',
    'npm run model:upload -- my-tiny --remote --bucket qwen-edge-models',
  ],
} as const

async function main(): Promise<void> {
  const { values, positionals } = parseCli(UPLOAD_CLI)
  const [id] = positionals
  if (!id || positionals.length > 1) usageError(UPLOAD_CLI, 'needs one <id>')
  if (values.local === values.remote) usageError(UPLOAD_CLI, 'needs one of --local and --remote')
  const result = await uploadPackage({
    id,
    bucket: values.bucket,
    mode: values.local ? 'local' : 'remote',
    dir: values.dir,
    persistTo: values['persist-to'],
    force: values.force,
    concurrency: values.concurrency === undefined ? undefined : Number(values.concurrency),
  })
  console.error(`state: ${result.stateFile}`)
}

if (isMain(import.meta.url)) runMain(main)
