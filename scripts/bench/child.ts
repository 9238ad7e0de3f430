/** Runs worker.ts in a child process and returns what it sends back. */
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { WorkerKind } from './worker.ts'

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url))

/** Node flags a worker kind needs: Node 20 runs relaxed SIMD only behind a flag. */
const FLAGS: Partial<Record<WorkerKind, string[]>> = {
  'engine-q4-relaxed': ['--experimental-wasm-relaxed-simd'],
  'long:f32': ['--experimental-wasm-relaxed-simd'],
  'long:q8': ['--experimental-wasm-relaxed-simd'],
}

export async function runWorker<T>(kind: WorkerKind, planPath: string): Promise<T> {
  const child = fork(WORKER, [kind, planPath], {
    execArgv: ['--import', 'tsx', '--max-old-space-size=8192', ...(FLAGS[kind] ?? [])],
    stdio: ['ignore', 2, 2, 'ipc'], // the child's stdout goes to stderr: progress only,
  })
  let message: { ok: boolean; result?: T; error?: string } | undefined
  child.on('message', (m) => (message = m as typeof message))
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  if (message?.ok) return message.result as T
  throw new Error(message?.error ?? `worker ${kind} exited with code ${code} and no result`)
}
