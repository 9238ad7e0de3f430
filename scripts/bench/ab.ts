/**
 * An A/B of the engine's kernels between two revisions: the package is loaded into a
 * `KernelModel` by each revision's own code (the other one from a git worktree), each load in a
 * process of its own, the processes in turns (A B, B A, ...), so a noisy machine slows both
 * alike. Prints each side's times, the ratio of the medians and the ratio of each pair.
 *
 *   npm run bench:ab -- --rev HEAD~1 --tokens 512 --rounds 4
 *
 * Separate processes, not both models in one: on the VMs this was written on, of two models
 * loaded into one process the second one ran its decode steps about 1.1x faster (the same
 * revision loaded twice), which an in-process A/B reads as a speedup of whichever side loads
 * second. The package must load in both revisions (the same package format).
 */
import { execFileSync, fork } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { isMain, parseCli, runMain, usageError } from '../lib/cli.ts'
import { median } from './stats.ts'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const SELF = fileURLToPath(import.meta.url)

export const AB_CLI = {
  name: 'bench:ab',
  command: 'npm run bench:ab --',
  usage: [
    'npm run bench:ab -- [--rev <git rev>] [--package <dir>] [--tokens <n>] [--rounds <n>]',
    'npm run bench:ab -- --decode [--batch <n>] [--rev <git rev>] [--package <dir>] [--tokens <n>]',
  ],
  summary: [
    "Times the engine's kernels in this working tree against another revision, each load in a",
    'process of its own, the processes in turns: a prompt prefill of --tokens tokens (or, with',
    '--decode, that many decode steps after a 16-token prompt), --runs times a process (the',
    'best counts), --rounds processes a side.',
  ],
  options: {
    rev: { type: 'string', arg: '<git rev>', default: 'HEAD~1', help: 'the other side (A)' },
    package: {
      type: 'string',
      arg: '<dir>',
      default: '.cache/bench/packages/qwen2.5-0.5b-q8-ext',
      help: 'a prepared package whose decoder map and head cover the model (npm run bench makes it)',
    },
    'rev-package': {
      type: 'string',
      arg: '<dir>',
      help:
        "the package side A loads, when the layout changed between the sides (that revision's " +
        'model:prepare of the same export); default: --package',
    },
    tokens: { type: 'string', arg: '<n>', default: '512', help: 'prompt tokens or decode steps' },
    rounds: { type: 'string', arg: '<n>', default: '4', help: 'processes of each side' },
    runs: { type: 'string', arg: '<n>', default: '2', help: 'timed runs in each process' },
    decode: { type: 'boolean', help: 'time decode steps instead of a prefill' },
    batch: {
      type: 'string',
      arg: '<n>',
      default: '1',
      help: 'with --decode: sequences decoded together, one batched step for all of them',
    },
    relaxed: {
      type: 'boolean',
      help: "run Node with --experimental-wasm-relaxed-simd (Node 20's relaxed build)",
    },
  },
  examples: [
    'npm run bench:ab -- --rev HEAD~1 --tokens 48 --rounds 8',
    'npm run bench:ab -- --rev main --package .cache/bench/packages/qwen2.5-0.5b-q4-ext --decode --tokens 32',
    'npm run bench:ab -- --rev main --decode --batch 3 --tokens 32',
  ],
} as const

interface Model {
  emptyCache(): object
  forward(ids: readonly number[], cache: object): Promise<{ cache: object }>
  forwardBatch(tokens: readonly number[], caches: readonly object[]): Promise<{ cache: object }[]>
  releaseCache(cache: object): void
}

/** What a child is asked to do (argv[2] of the child, as JSON). */
interface Job {
  root: string
  dir: string
  tokens: number
  runs: number
  decode: boolean
  batch: number
}

/** The package loaded into a KernelModel by the code under `root`. */
async function load(root: string, dir: string): Promise<Model> {
  const url = (p: string) => pathToFileURL(join(root, p)).href
  const { fsSource } = await import(url('src/adapters/node/fs-source.ts'))
  const { loadPackage } = await import(url('src/engine/package/loader.ts'))
  const { KernelModel } = await import(url('src/engine/wasm/kernel-model.ts'))
  return KernelModel.load(await loadPackage(fsSource(dirname(dir)), basename(dir)))
}

/**
 * One timed run (ms): a prefill of `n` ids, or a 16-token prompt and `n` single-token steps
 * (with `batch` > 1, `batch` such prompts and `n` batched steps of one token each).
 */
async function once(m: Model, n: number, decode: boolean, batch: number): Promise<number> {
  const prompt = (b: number) =>
    Array.from({ length: decode ? 16 : n }, (_, i) => 100 + b + ((i * 37) % 5000))
  const start = () => ({ ...m.emptyCache(), reserve: (decode ? 16 : n) + n + 1 })
  if (decode && batch > 1) {
    const caches: object[] = []
    for (let b = 0; b < batch; b++) caches.push((await m.forward(prompt(b), start())).cache)
    const t = performance.now()
    // each step extends the sequences in place: only the last caches are released
    let rs = caches.map((cache) => ({ cache }))
    for (let i = 0; i < n; i++)
      rs = await m.forwardBatch(
        rs.map((_, b) => 200 + i + b),
        rs.map((r) => r.cache),
      )
    const ms = performance.now() - t
    for (const r of rs) m.releaseCache(r.cache)
    return ms
  }
  let t = performance.now()
  let r = await m.forward(prompt(0), start())
  if (decode) {
    t = performance.now()
    // each step extends the sequence in place: only the last cache is released
    for (let i = 0; i < n; i++) r = await m.forward([200 + i], r.cache)
  }
  const ms = performance.now() - t
  m.releaseCache(r.cache)
  return ms
}

/** The child: loads, runs, sends the times back. */
async function child(job: Job): Promise<void> {
  const m = await load(job.root, job.dir)
  const times: number[] = []
  for (let i = 0; i < job.runs; i++) times.push(await once(m, job.tokens, job.decode, job.batch))
  process.send?.({ times })
}

/** One process of one side: its times. */
async function runSide(job: Job, relaxed: boolean): Promise<number[]> {
  const proc = fork(SELF, ['--child', JSON.stringify(job)], {
    execArgv: ['--import', 'tsx', ...(relaxed ? ['--experimental-wasm-relaxed-simd'] : [])],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  let times: number[] | undefined
  proc.on('message', (m) => (times = (m as { times: number[] }).times))
  const code = await new Promise<number | null>((done) => proc.on('exit', done))
  if (!times) throw new Error(`the run under ${job.root} exited with code ${code} and no times`)
  return times
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(JSON.parse(process.argv[3]) as Job)
  const { values } = parseCli(AB_CLI)
  const tokens = Number(values.tokens)
  const rounds = Number(values.rounds)
  const runs = Number(values.runs)
  const batch = Number(values.batch)
  if (!(tokens >= 1 && rounds >= 1 && runs >= 1 && Number.isInteger(batch) && batch >= 1))
    usageError(AB_CLI, '--tokens, --rounds, --runs and --batch must be positive')
  if (batch > 1 && !values.decode) usageError(AB_CLI, '--batch is for --decode')
  const dir = resolve(values.package)
  const revDir = resolve(values['rev-package'] ?? values.package)
  for (const d of [dir, revDir])
    if (!existsSync(join(d, 'manifest.json')))
      usageError(AB_CLI, `no package at ${d} (npm run bench prepares it)`)
  const rev = execFileSync('git', ['rev-parse', '--short', values.rev], { cwd: ROOT })
    .toString()
    .trim()
  const tree = mkdtempSync(join(tmpdir(), `qwen-edge-ab-${rev}-`))
  execFileSync('git', ['worktree', 'add', '--detach', tree, rev], { cwd: ROOT, stdio: 'ignore' })
  try {
    symlinkSync(join(ROOT, 'node_modules'), join(tree, 'node_modules'))
    const sides = [
      { name: `A ${rev}`, root: tree, dir: revDir, best: [] as number[] },
      { name: 'B this tree', root: ROOT, dir, best: [] as number[] },
    ]
    const what = values.decode
      ? `${tokens} decode steps${batch > 1 ? ` of ${batch} sequences` : ''}`
      : `a ${tokens}-token prefill`
    console.log(
      `${what}, best of ${runs} a process, ${rounds} processes a side, in turns (A B, B A, ...)`,
    )
    for (let r = 0; r < rounds; r++)
      for (const side of r % 2 ? [...sides].reverse() : sides) {
        const job = { root: side.root, dir: side.dir, tokens, runs, decode: !!values.decode, batch }
        side.best.push(Math.min(...(await runSide(job, !!values.relaxed))))
      }
    for (const s of sides)
      console.log(`${s.name}: ${s.best.map((t) => Math.round(t)).join(' ')} ms`)
    const [a, b] = sides
    console.log(
      `A / B: ${(median(a.best) / median(b.best)).toFixed(3)} (medians); pairs ` +
        a.best.map((t, i) => (t / b.best[i]).toFixed(3)).join(' '),
    )
  } finally {
    execFileSync('git', ['worktree', 'remove', '--force', tree], { cwd: ROOT, stdio: 'ignore' })
    rmSync(tree, { recursive: true, force: true })
  }
}

if (isMain(import.meta.url)) runMain(main)
