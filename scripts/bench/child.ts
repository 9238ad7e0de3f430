/** Runs worker.ts in a child process and returns what it sends back. */
import { fork, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ensureNodeLts, NODE_LTS_VERSION } from './node-lts.ts'
import { progressLog } from './progress-log.ts'
import type { WorkerKind } from './worker.ts'

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url))
const ROOT = fileURLToPath(new URL('../../', import.meta.url))

/** Node flags a worker kind needs: Node 20 runs relaxed SIMD only behind a flag. */
const FLAGS: Partial<Record<WorkerKind, string[]>> = {
  'engine-q4-relaxed': ['--experimental-wasm-relaxed-simd'],
  'long:f32': ['--experimental-wasm-relaxed-simd'],
  'long:q8': ['--experimental-wasm-relaxed-simd'],
}

export async function runWorker<T>(kind: WorkerKind, planPath: string): Promise<T> {
  if (kind.endsWith('-deno')) return runInDeno<T>(kind, planPath)
  // a `*-node24` kind in the current LTS Node (node-lts.ts): relaxed SIMD there by default
  const execPath = kind.endsWith('-node24')
    ? ensureNodeLts(progressLog(`node ${NODE_LTS_VERSION}`))
    : process.execPath
  const child = fork(WORKER, [kind, planPath], {
    execPath,
    execArgv: ['--import', 'tsx', '--max-old-space-size=8192', ...(FLAGS[kind] ?? [])],
    stdio: ['ignore', 2, 2, 'ipc'], // the child's stdout goes to stderr: progress only,
  })
  let message: WorkerMessage<T> | undefined
  child.on('message', (m) => (message = m as typeof message))
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  return resultOf(kind, message, code)
}

/** What worker.ts sends back. */
type WorkerMessage<T> = { ok: boolean; result?: T; error?: string }

/** The worker's result, or an error with its message (or its exit code, if it sent none). */
function resultOf<T>(
  kind: WorkerKind,
  message: WorkerMessage<T> | undefined,
  code: number | null,
): T {
  if (message?.ok) return message.result as T
  throw new Error(message?.error ?? `worker ${kind} exited with code ${code} and no result`)
}

/**
 * A `*-deno` kind in Deno (the npm package's binary), as `npm run start:deno` runs a server:
 * the project's deno.json, its allocator setting, no other flags (relaxed SIMD is Deno's
 * default). Deno has no IPC channel to a Node parent, so the worker writes its message to a file.
 */
async function runInDeno<T>(kind: WorkerKind, planPath: string): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'qwen-edge-bench-'))
  const resultPath = join(dir, 'result.json')
  try {
    const deno = join(ROOT, 'node_modules', '.bin', 'deno')
    const args = [
      'run',
      '--config',
      join(ROOT, 'deno.json'),
      '-A',
      WORKER,
      kind,
      planPath,
      resultPath,
    ]
    const child = spawn(deno, args, {
      cwd: ROOT,
      env: { ...process.env, MALLOC_MMAP_THRESHOLD_: '131072' },
      stdio: ['ignore', 2, 2],
    })
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    let message: WorkerMessage<T> | undefined
    try {
      message = JSON.parse(readFileSync(resultPath, 'utf8'))
    } catch {
      // no result written: the exit code says why
    }
    return resultOf(kind, message, code)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
