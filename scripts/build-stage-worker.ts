/**
 * Bundles the stage Worker (src/adapters/workers/stage-worker.ts and what it imports) into
 * src/adapters/workers/generated/stage-worker.js, the code the stage host hands to Worker Loader
 * so that each stage of a staged package runs in an isolate of its own:
 *
 *   npm run build:stage-worker
 *
 * The file is built, not committed: `npm run dev:worker`, `npm run deploy`, `npm run
 * check:worker` and the tests build it first. The kernels' wasm travels beside the code (base64,
 * turned into module entries by the host), and onnxruntime-web is left out (no-ort.ts).
 */
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { isMain, parseCli, runMain } from './lib/cli.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const WORKERS = join(ROOT, 'src', 'adapters', 'workers')
export const STAGE_WORKER_FILE = join(WORKERS, 'generated', 'stage-worker.js')
const MAIN_MODULE = 'stage.js'

/** wrangler.toml's compatibility_date: the stages run on the date the front runs on. */
function compatibilityDate(): string {
  const toml = readFileSync(join(ROOT, 'wrangler.toml'), 'utf8')
  const date = /^compatibility_date\s*=\s*"([^"]+)"/m.exec(toml)?.[1]
  if (!date) throw new Error('wrangler.toml has no compatibility_date')
  return date
}

/** Builds the stage Worker; returns its hash and bundle size. */
export async function buildStageWorker(): Promise<{
  hash: string
  bytes: number
  /** False when the file already held this build (left untouched). */
  written: boolean
}> {
  const wasm = new Map<string, string>()
  const result = await build({
    entryPoints: [join(WORKERS, 'stage-worker.ts')],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'neutral',
    target: 'es2022',
    mainFields: ['module', 'main'],
    conditions: ['workerd', 'worker', 'browser'],
    external: ['cloudflare:workers'],
    alias: { 'onnxruntime-web/wasm': join(WORKERS, 'no-ort.ts') },
    legalComments: 'none',
    logLevel: 'error',
    plugins: [
      {
        // each kernel import becomes a module of the loaded Worker, next to the main module
        name: 'kernel-modules',
        setup(b) {
          b.onResolve({ filter: /\.wasm$/ }, (args) => {
            const file = join(args.resolveDir, args.path)
            const name = basename(file)
            wasm.set(name, readFileSync(file).toString('base64'))
            return { path: `./${name}`, external: true }
          })
        },
      },
    ],
  })
  const code = result.outputFiles[0].text
  const worker = {
    compatibilityDate: compatibilityDate(),
    mainModule: MAIN_MODULE,
    modules: { [MAIN_MODULE]: code },
    wasm: Object.fromEntries([...wasm].sort(([a], [b]) => a.localeCompare(b))),
  }
  const hash = createHash('sha256').update(JSON.stringify(worker)).digest('hex').slice(0, 16)
  const text =
    '// Built by `npm run build:stage-worker` from src/adapters/workers/stage-worker.ts: do not edit.\n' +
    `export const STAGE_WORKER = ${JSON.stringify({ hash, ...worker })}\n`
  // Written only when it changes: the front Worker imports this file, so a running `wrangler
  // dev` rebuilds and restarts on any write, failing its requests in flight ("Your worker
  // restarted mid-request"), and every `npm run dev:worker` (a test's server among them) builds
  // it first.
  let current: string | undefined
  try {
    current = readFileSync(STAGE_WORKER_FILE, 'utf8')
  } catch {
    current = undefined
  }
  const written = current !== text
  if (written) {
    mkdirSync(join(WORKERS, 'generated'), { recursive: true })
    writeFileSync(STAGE_WORKER_FILE, text)
  }
  return { hash, bytes: code.length, written }
}

export const BUILD_STAGE_WORKER_CLI = {
  name: 'build:stage-worker',
  command: 'npm run build:stage-worker --',
  usage: ['npm run build:stage-worker'],
  summary: [
    'Bundles the stage Worker (src/adapters/workers/stage-worker.ts) into',
    'src/adapters/workers/generated/stage-worker.js, the code each stage of a staged package runs',
    'in an isolate of its own through Worker Loader. dev:worker, deploy, check:worker and the',
    'tests run it first.',
  ],
  options: {},
  examples: ['npm run build:stage-worker'],
} as const

async function main(): Promise<void> {
  parseCli(BUILD_STAGE_WORKER_CLI)
  const { hash, bytes } = await buildStageWorker()
  console.error(`stage worker ${hash}: ${(bytes / 1024).toFixed(0)} KiB of JavaScript`)
}

if (isMain(import.meta.url)) runMain(main)
