/**
 * The Worker's two commands, each putting the model package where the Worker will read it first:
 *
 *   npm run dev:worker [-- <wrangler dev options>]     local R2, then `wrangler dev`
 *   npm run deploy [-- <wrangler deploy options>]      the real R2 bucket, then `wrangler deploy`
 *
 * The package is the one named by `--var MODEL:<id>` among the options, else the MODEL
 * environment variable, else wrangler.toml's [vars] MODEL; it is read from model-shards/<id>/.
 * When the id does not come from wrangler.toml, `--var MODEL:<id>` is passed on, so the Worker
 * reads the package that was just put there. Uploads skip objects already there (see
 * upload-model.ts), so a second `dev:worker` starts at once. `dev` puts into the `--persist-to`
 * folder given to wrangler dev (default .wrangler/state), so both always agree.
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { buildStageWorker } from './build-stage-worker.ts'
import { exitWithHelpIfAsked, isMain, runMain, usageError } from './lib/cli.ts'
import { DEFAULT_PERSIST_DIR, uploadPackage } from './upload-model.ts'

const FALLBACK_MODEL = 'qwen2-tiny-random-q8'

export interface WorkerCommand {
  mode: 'dev' | 'deploy'
  /** Package id to upload. */
  model: string
  /** Local R2 folder (dev only). */
  persistTo: string
  /** Arguments for `wrangler dev|deploy`. */
  wranglerArgs: string[]
}

/** Pure: what to upload and how to call wrangler, from the forwarded options. */
export function planWorkerCommand(
  mode: 'dev' | 'deploy',
  args: string[],
  env: { MODEL?: string },
  tomlModel: string | undefined,
): WorkerCommand {
  let fromVar: string | undefined
  let persistTo = DEFAULT_PERSIST_DIR
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split(/=(.*)/s, 2)
    if (flag === '--persist-to') persistTo = inline ?? args[i + 1] ?? persistTo
    if (flag !== '--var') continue
    // `--var A:1 B:2` (wrangler takes every value up to the next option) or `--var=A:1`
    const values = inline !== undefined ? [inline] : []
    for (let j = i + 1; inline === undefined && j < args.length && !args[j].startsWith('-'); j++)
      values.push(args[j])
    for (const v of values) if (v.startsWith('MODEL:')) fromVar = v.slice('MODEL:'.length)
  }
  const model = fromVar || env.MODEL || tomlModel || FALLBACK_MODEL
  const wranglerArgs = [mode, ...args]
  if (!fromVar && model !== tomlModel) wranglerArgs.push('--var', `MODEL:${model}`)
  return { mode, model, persistTo, wranglerArgs }
}

/** `MODEL = "..."` in wrangler.toml's [vars] table. */
export function readTomlModel(toml: string): string | undefined {
  const vars = /^\[vars\][^\S\n]*\n([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(toml)?.[1] ?? ''
  return /^MODEL\s*=\s*"([^"]*)"/m.exec(vars)?.[1] || undefined
}

/** No options of its own but --help: everything else goes to wrangler, so it is not parsed here. */
export const WORKER_CLI = {
  name: 'worker.ts',
  command: 'npm run dev:worker --',
  usage: [
    'npm run dev:worker [-- <wrangler dev options>]',
    'npm run deploy [-- <wrangler deploy options>]',
    'tsx scripts/worker.ts (dev | deploy) [wrangler options]',
  ],
  summary: [
    'Puts the model package where the Worker reads it, then runs wrangler. dev: into the local R2',
    'of the --persist-to folder given to wrangler dev (default .wrangler/state), then `wrangler',
    'dev`; deploy: into the real R2 bucket, then `wrangler deploy`. Uploads skip objects that are',
    'already there (model:upload), so a second dev:worker starts at once.',
  ],
  options: {},
  notes: [
    'Every argument but -h/--help goes to wrangler dev or wrangler deploy (their options:',
    '`npx wrangler dev --help`). The package is the one named by `--var MODEL:<id>` among them,',
    "else $MODEL, else wrangler.toml's [vars] MODEL, read from model-shards/<id>/; when it does",
    'not come from wrangler.toml, `--var MODEL:<id>` is passed on to wrangler.',
  ],
  examples: [
    'npm run dev:worker',
    'npm run dev:worker -- --port 8788',
    'MODEL=qwen2-tiny-random-q8 npm run deploy',
  ],
} as const

async function main(): Promise<void> {
  exitWithHelpIfAsked(WORKER_CLI, process.argv.slice(2))
  const [mode, ...args] = process.argv.slice(2)
  if (mode !== 'dev' && mode !== 'deploy')
    usageError(
      WORKER_CLI,
      mode ? `unknown command '${mode}': dev or deploy` : 'needs dev or deploy',
    )
  const toml = readFileSync('wrangler.toml', 'utf8')
  const plan = planWorkerCommand(mode, args, process.env, readTomlModel(toml))
  await uploadPackage({
    id: plan.model,
    mode: mode === 'dev' ? 'local' : 'remote',
    persistTo: plan.persistTo,
  })
  await buildStageWorker() // the code of a staged package's stage Workers (stage-host.ts)
  const require = createRequire(import.meta.url)
  const bin = join(dirname(require.resolve('wrangler/package.json')), 'bin', 'wrangler.js')
  const child = spawn(process.execPath, [bin, ...plan.wranglerArgs], { stdio: 'inherit' })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => child.kill(signal))
  }
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)))
}

if (isMain(import.meta.url)) runMain(main)
