/**
 * An A/B of the engine's kernels between two revisions, in one process: the package is loaded
 * into a `KernelModel` by each revision's own code (the other one from a git worktree), and
 * their prompt prefills (or decode steps) run in turns, so a noisy machine slows both alike.
 * Prints each side's times, the ratio of the medians and the ratio of each pair.
 *
 *   npm run bench:ab -- --rev HEAD~1 --tokens 512 --rounds 4
 *
 * The package must load in both revisions (the same package format).
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { isMain, parseCli, runMain, usageError } from '../lib/cli.ts'
import { median } from './stats.ts'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

export const AB_CLI = {
  name: 'bench:ab',
  command: 'npm run bench:ab --',
  usage: ['npm run bench:ab -- [--rev <git rev>] [--package <dir>] [--tokens <n>] [--rounds <n>]'],
  summary: [
    "Times the engine's kernels in this working tree against another revision in one process,",
    'in turns: a prompt prefill of --tokens tokens (or, with --decode, that many decode steps',
    'after a 16-token prompt), --rounds times each.',
  ],
  options: {
    rev: { type: 'string', arg: '<git rev>', default: 'HEAD~1', help: 'the other side (A)' },
    package: {
      type: 'string',
      arg: '<dir>',
      default: '.cache/bench/packages/qwen2.5-0.5b-q8-ext',
      help: 'a prepared package whose decoder map and head cover the model (npm run bench makes it)',
    },
    tokens: { type: 'string', arg: '<n>', default: '512', help: 'prompt tokens or decode steps' },
    rounds: { type: 'string', arg: '<n>', default: '4', help: 'runs of each side' },
    decode: { type: 'boolean', help: 'time decode steps instead of a prefill' },
  },
  examples: [
    'npm run bench:ab -- --rev HEAD~1 --tokens 48 --rounds 8',
    'npm run bench:ab -- --rev main --package .cache/bench/packages/qwen2.5-0.5b-q4-ext --decode --tokens 32',
  ],
} as const

interface Side {
  name: string
  model: {
    emptyCache(): object
    forward(ids: readonly number[], cache: object): Promise<{ cache: object }>
    releaseCache(cache: object): void
  }
  times: number[]
}

/** The package loaded into a KernelModel by the code under `root`. */
async function load(root: string, dir: string): Promise<Side['model']> {
  const url = (p: string) => pathToFileURL(join(root, p)).href
  const { fsSource } = await import(url('src/adapters/node/fs-source.ts'))
  const { loadPackage } = await import(url('src/engine/package/loader.ts'))
  const { KernelModel } = await import(url('src/engine/wasm/kernel-model.ts'))
  return KernelModel.load(await loadPackage(fsSource(dirname(dir)), basename(dir)))
}

/** One timed run: a prefill of `n` ids, or a 16-token prompt and `n` single-token steps. */
async function once(side: Side, n: number, decode: boolean): Promise<void> {
  const m = side.model
  const ids = Array.from({ length: decode ? 16 : n }, (_, i) => 100 + ((i * 37) % 5000))
  const start = { ...m.emptyCache(), reserve: ids.length + n + 1 }
  let t = performance.now()
  let r = await m.forward(ids, start)
  if (decode) {
    t = performance.now()
    // each step extends the sequence in place: only the last cache is released
    for (let i = 0; i < n; i++) r = await m.forward([200 + i], r.cache)
  }
  side.times.push(performance.now() - t)
  m.releaseCache(r.cache)
}

async function main(): Promise<void> {
  const { values } = parseCli(AB_CLI)
  const tokens = Number(values.tokens)
  const rounds = Number(values.rounds)
  if (!(tokens >= 1 && rounds >= 1)) usageError(AB_CLI, '--tokens and --rounds must be positive')
  const dir = resolve(values.package)
  if (!existsSync(join(dir, 'manifest.json')))
    usageError(AB_CLI, `no package at ${dir} (npm run bench prepares it)`)
  const rev = execFileSync('git', ['rev-parse', '--short', values.rev], { cwd: ROOT })
    .toString()
    .trim()
  const tree = mkdtempSync(join(tmpdir(), `qwen-edge-ab-${rev}-`))
  execFileSync('git', ['worktree', 'add', '--detach', tree, rev], { cwd: ROOT, stdio: 'ignore' })
  try {
    symlinkSync(join(ROOT, 'node_modules'), join(tree, 'node_modules'))
    const sides: Side[] = [
      { name: `A ${rev}`, model: await load(tree, dir), times: [] },
      { name: 'B this tree', model: await load(ROOT, dir), times: [] },
    ]
    const what = values.decode ? `${tokens} decode steps` : `a ${tokens}-token prefill`
    console.log(`${what}, ${rounds} rounds, in turns (A B, B A, ...)`)
    for (let r = 0; r < rounds; r++)
      for (const side of r % 2 ? [...sides].reverse() : sides)
        await once(side, tokens, !!values.decode)
    for (const s of sides)
      console.log(`${s.name}: ${s.times.map((t) => Math.round(t)).join(' ')} ms`)
    const [a, b] = sides
    console.log(
      `A / B: ${(median(a.times) / median(b.times)).toFixed(3)} (medians); pairs ` +
        a.times.map((t, i) => (t / b.times[i]).toFixed(3)).join(' '),
    )
  } finally {
    execFileSync('git', ['worktree', 'remove', '--force', tree], { cwd: ROOT, stdio: 'ignore' })
    rmSync(tree, { recursive: true, force: true })
  }
}

if (isMain(import.meta.url)) runMain(main)
