/**
 * Every `tsx scripts/…` command in package.json answers --help (and -h) with its usage, options,
 * defaults and examples on stdout, exit 0, before doing any work; an unknown option fails with
 * exit 2, the option's name and a pointer to --help, no stack trace. The commands run as
 * package.json runs them, from a scratch folder: a script that did work there (read
 * wrangler.toml, write .cache/) would fail or print progress to stderr, and the test with it.
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BENCH_CLI } from '../../scripts/bench.ts'
import { AB_CLI } from '../../scripts/bench/ab.ts'
import { FIDELITY_CLI } from '../../scripts/bench/fidelity.ts'
import { BUILD_KERNELS_CLI } from '../../scripts/build-kernels.ts'
import { BUILD_STAGE_WORKER_CLI } from '../../scripts/build-stage-worker.ts'
import { DEPLOY_DENO_CLI } from '../../scripts/deploy-deno.ts'
import { FETCH_CLI } from '../../scripts/fetch-model.ts'
import { helpText, wantsHelp, type CliSpec } from '../../scripts/lib/cli.ts'
import { MAKE_MODEL_CLI } from '../../scripts/make-model.ts'
import { PREPARE_CLI } from '../../scripts/prepare-model.ts'
import { UPLOAD_CLI } from '../../scripts/upload-model.ts'
import { WORKER_CLI } from '../../scripts/worker.ts'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const TSX = join(ROOT, 'node_modules', '.bin', 'tsx')

const SPECS: Record<string, CliSpec> = {
  'scripts/make-model.ts': MAKE_MODEL_CLI,
  'scripts/prepare-model.ts': PREPARE_CLI,
  'scripts/fetch-model.ts': FETCH_CLI,
  'scripts/upload-model.ts': UPLOAD_CLI,
  'scripts/bench.ts': BENCH_CLI,
  'scripts/bench/fidelity.ts': FIDELITY_CLI,
  'scripts/bench/ab.ts': AB_CLI,
  'scripts/worker.ts': WORKER_CLI,
  'scripts/build-kernels.ts': BUILD_KERNELS_CLI,
  'scripts/build-stage-worker.ts': BUILD_STAGE_WORKER_CLI,
  'scripts/deploy-deno.ts': DEPLOY_DENO_CLI,
}

// the npm scripts the README names, as package.json runs them: ['scripts/x.ts', ...fixed args]
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
const COMMANDS = Object.entries(pkg.scripts as Record<string, string>)
  .filter(([, cmd]) => cmd.startsWith('tsx scripts/'))
  .map(([name, cmd]) => [name, cmd.split(' ').slice(1)] as const)

interface Run {
  code: number
  stdout: string
  stderr: string
}

let cwd: string
const runs = new Map<string, Promise<Run>>()
// a few tsx start-ups at a time: the machine has few cores, shared with other work
let running = 0
const waiting: (() => void)[] = []

async function slot<T>(f: () => Promise<T>): Promise<T> {
  // a finished run hands its slot straight to the next waiting one
  if (running >= 4) await new Promise<void>((r) => waiting.push(r))
  else running++
  try {
    return await f()
  } finally {
    const next = waiting.shift()
    if (next) next()
    else running--
  }
}

function run(args: readonly string[]): Promise<Run> {
  const key = args.join(' ')
  let p = runs.get(key)
  if (!p) {
    p = slot(() => spawnTsx(args))
    runs.set(key, p)
  }
  return p
}

function spawnTsx(args: readonly string[]): Promise<Run> {
  return new Promise((resolve) => {
    const [file, ...rest] = args
    execFile(TSX, [join(ROOT, file), ...rest], { cwd, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

const UNKNOWN = '--no-such-option'
// worker.ts hands every option to wrangler: what it can refuse is the command
const unknownArgs = ([file, ...fixed]: readonly string[]) =>
  file === 'scripts/worker.ts' ? [file, 'no-such-command'] : [file, ...fixed, UNKNOWN]

beforeAll(() => {
  cwd = mkdtempSync(join(tmpdir(), 'qwen-edge-cli-'))
  for (const [, args] of COMMANDS) {
    void run([...args, '--help'])
    void run(unknownArgs(args))
  }
})

afterAll(() => rmSync(cwd, { recursive: true, force: true }))

it('covers every tsx script in package.json, the ones the README names', () => {
  expect(COMMANDS.map(([name]) => name).sort()).toEqual(
    [
      'bench',
      'bench:engine',
      'bench:fidelity',
      'bench:ab',
      'build:kernels',
      'build:stage-worker',
      'deploy',
      'deploy:deno',
      'dev:worker',
      'model:fetch',
      'model:make',
      'model:prepare',
      'model:upload',
    ].sort(),
  )
  for (const [, [file]] of COMMANDS) expect(Object.keys(SPECS)).toContain(file)
})

describe.each(COMMANDS)('npm run %s', (name, args) => {
  const spec = SPECS[args[0]]

  it('answers --help on stdout with exit 0, and does nothing else', async () => {
    const r = await run([...args, '--help'])
    expect(r).toMatchObject({ code: 0, stderr: '' })
    expect(r.stdout).toBe(helpText(spec))
    expect(r.stdout).toMatch(/^Usage: .*\n/)
    expect(r.stdout).toContain(`npm run ${name}`)
    expect(r.stdout).toMatch(/\nExamples:\n {2}\S/)
    expect(r.stdout).toContain('-h, --help')
    for (const [option, o] of Object.entries(spec.options)) {
      const flag = spec.allowNegative && o.type === 'boolean' ? `--[no-]${option}` : `--${option}`
      expect(r.stdout).toMatch(new RegExp(`^ {2}${escape(flag)}\\b`, 'm'))
      const shown = o.defaultHelp ?? (o.default === true ? 'on' : o.default || undefined)
      if (shown !== undefined)
        expect(r.stdout.replace(/\s+/g, ' ')).toContain(`(default: ${shown})`)
    }
  })

  it('fails on an unknown option with its name and a pointer to --help', async () => {
    const argv = unknownArgs(args)
    const r = await run(argv)
    expect(r.code).toBe(2)
    expect(r.stdout).toBe('')
    expect(r.stderr).toContain(`'${argv.at(-1)}'`)
    expect(r.stderr).toContain('--help')
    expect(r.stderr).not.toMatch(/^\s+at /m)
  })
})

describe('cli.ts', () => {
  it('sees -h and --help among other, unknown options and values', () => {
    expect(wantsHelp(['-h'])).toBe(true)
    expect(wantsHelp(['dev', '--port', '8788', '--var', 'MODEL:x', '--help'])).toBe(true)
    expect(wantsHelp([UNKNOWN, '-h'])).toBe(true)
    expect(wantsHelp(['dev', '--port', '8788'])).toBe(false)
    expect(wantsHelp(['--', '--help'])).toBe(false)
  })

  it('answers -h as --help', async () => {
    const r = await run(['scripts/prepare-model.ts', '-h'])
    expect(r).toMatchObject({ code: 0, stderr: '', stdout: helpText(PREPARE_CLI) })
  })
})

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
