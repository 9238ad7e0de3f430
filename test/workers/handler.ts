/**
 * The Worker's own handler (src/adapters/workers/index.ts) called with a test's bindings and
 * vars, each request in its execution context, as workerd calls it; for tests that need an env
 * of their own (another MODEL, a counting bucket), which `exports.default` cannot take.
 */
import { createExecutionContext, waitOnExecutionContext } from 'cloudflare:test'
import worker, { type Env } from '../../src/adapters/workers/index.ts'

export function workerWith(testEnv: Env) {
  /** The response, and the request's work (waitUntil included) running on. */
  const send = async (path: string, init?: RequestInit) => {
    const ctx = createExecutionContext()
    const res = await worker.fetch(new Request(`http://worker${path}`, init), testEnv, ctx)
    return { res, done: waitOnExecutionContext(ctx) }
  }
  /** The response once the request's work is done. */
  const call = async (path: string, init?: RequestInit): Promise<Response> => {
    const { res, done } = await send(path, init)
    await done
    return res
  }
  const json = (body: unknown): RequestInit => ({
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
  return {
    call,
    post: (path: string, body: unknown) => call(path, json(body)),
    /** A streamed reply: its body is read while the request's work still runs. */
    stream: (path: string, body: unknown) => send(path, json(body)),
  }
}
