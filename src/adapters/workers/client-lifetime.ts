/**
 * Ties a request's work to its client on Workers. When a client disconnects, workerd cancels
 * what the request still has pending (timers, I/O, and so the promises waiting on them) unless
 * it was handed to `waitUntil`. A generation cut off that way never reaches its cleanup: its
 * scheduler slot stays taken, /health counts it active forever, and after MAX_ACTIVE such
 * disconnects every new reply waits in the queue. So, for every request:
 * - the handler's promise goes to `waitUntil` (a non-streamed reply gets to finish its cleanup);
 * - a streamed body (server-sent events) is forwarded chunk by chunk under `waitUntil`; when the
 *   client is gone (a write fails or stalls, or the request's signal aborts), the app is told
 *   through the signal of the request it was given, and the rest of its body is read and
 *   dropped until the app closes it, which it does within one decode step;
 * - a timer runs until the request's work is done, so that workerd does not cancel a request
 *   that waits only on others (HEARTBEAT_MS);
 * - the request also stays until `settle()` resolves (the engine's step loop is idle): in
 *   workerd, a promise continuation runs in the context of the event that resolved it, so the
 *   engine's loop of forward steps, and the timers it yields on, belong to whichever request's
 *   step resumed it last. If that request ended while other requests' steps were still
 *   queued, its timers would never fire and every generation would hang (seen: a sentiment
 *   request finishing while a chat streamed);
 * - the request body is read before the app runs (up to PREREAD_LIMIT bytes), so that no answer
 *   (a 401 before the body is read, a 413 part way through it) goes out while the client is
 *   still sending: `wrangler dev` forwards requests to the Worker over pooled connections, and
 *   the POST after such an early answer fails with wrangler's 503 "Your worker restarted
 *   mid-request" (cloudflare/workers-sdk#14641, #15203, #15709; newer wrangler retries only GET
 *   and HEAD).
 *
 * Seen with wrangler 4.86 / miniflare 4.20260426 (workerd 1.20260426): without `waitUntil`, a
 * timer set by a disconnected request never fires; `request.signal` (enable_request_signal)
 * aborts for most disconnected streams but never for a response still pending; the response
 * stream's `cancel()` is not called. Remove the forwarding when workerd does these itself.
 */
import type { ExecutionContext } from 'hono'

export type FetchHandler<E> = (
  request: Request,
  env: E,
  ctx: ExecutionContext,
) => Response | Promise<Response>

export function tieToClient<E>(
  handler: FetchHandler<E>,
  settle: () => Promise<void> = () => Promise.resolve(),
): FetchHandler<E> {
  return async (request, env, ctx) => {
    const left = new AbortController()
    const signal = AbortSignal.any([request.signal, left.signal])
    const heartbeat = setInterval(() => {}, HEARTBEAT_MS)
    const settled = () => settle().catch(() => {})
    let handedOver = false
    try {
      const body = await preread(request)
      const pending = Promise.resolve(handler(new Request(request, { body, signal }), env, ctx))
      const done = pending.then(settled, settled) // errors are the handler's to report, not ours
      ctx.waitUntil(done)
      const response = await pending
      if (!response.body || !isEventStream(response)) {
        ctx.waitUntil(done.finally(() => clearInterval(heartbeat)))
        handedOver = true
        return response
      }
      const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>()
      const forwarding = forward(response.body, writable, signal, () => left.abort(clientGone()))
      ctx.waitUntil(forwarding.then(settled).finally(() => clearInterval(heartbeat)))
      handedOver = true
      return new Response(readable, response)
    } finally {
      if (!handedOver) clearInterval(heartbeat)
    }
  }
}

/**
 * A request whose work waits only on other requests (a reply queued behind others, a decode
 * step behind another stream's) has nothing of its own pending, and workerd cancels it as hung
 * ("your Worker's code had hung and would never generate a response"). A timer keeps it alive.
 */
export const HEARTBEAT_MS = 1_000

/**
 * A write of the event stream that waits this long counts as a client gone. A reader that is
 * there takes a chunk of a few dozen bytes at once (socket and edge buffers hold hundreds of KB);
 * under `wrangler dev` a disconnect sometimes reaches the Worker only as writes that never end
 * (its proxy keeps the connection open), and neither the request's signal nor an error follows.
 */
export const WRITE_STALL_MS = 5_000

/** Request bodies up to this size are read whole before the app sees them (see above). */
export const PREREAD_LIMIT = 1024 * 1024

/**
 * The request body, read before the app answers so that no response goes out while the client
 * is still sending. Larger bodies are handed on as a stream (what was read, then the rest).
 */
async function preread(
  request: Request,
): Promise<ReadableStream<Uint8Array> | Uint8Array<ArrayBuffer> | null> {
  if (!request.body) return null
  const reader = request.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return concat(chunks, size)
      chunks.push(value)
      size += value.byteLength
      if (size > PREREAD_LIMIT) break
    }
  } catch (err) {
    return new ReadableStream({ start: (controller) => controller.error(err) }) // as it was
  }
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk)
    },
    async pull(controller) {
      const { done, value } = await reader.read()
      if (done) controller.close()
      else controller.enqueue(value)
    },
    cancel: (reason) => reader.cancel(reason),
  })
}

function concat(chunks: Uint8Array[], size: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size)
  let at = 0
  for (const chunk of chunks) {
    bytes.set(chunk, at)
    at += chunk.byteLength
  }
  return bytes
}

function isEventStream(response: Response): boolean {
  return response.headers.get('content-type')?.startsWith('text/event-stream') ?? false
}

/** Copies `body` to `to` while the client reads; after it left, drains `body` to its end. */
async function forward(
  body: ReadableStream<Uint8Array>,
  to: WritableStream<Uint8Array>,
  signal: AbortSignal,
  onClientGone: () => void,
): Promise<void> {
  const reader = body.getReader()
  const writer = to.getWriter()
  const aborted = new Promise<false>((resolve) => {
    if (signal.aborted) resolve(false)
    else signal.addEventListener('abort', () => resolve(false), { once: true })
  })
  let gone = false
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      if (gone) continue // the app has been told; let it finish and close its stream
      const written = writer.write(value).then(
        () => true,
        () => false, // the client disconnected
      )
      let timer: ReturnType<typeof setTimeout> | undefined
      const stalled = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), WRITE_STALL_MS)
      })
      const ok = await Promise.race([written, aborted, stalled])
      clearTimeout(timer)
      if (!ok || signal.aborted) {
        gone = true
        onClientGone()
        writer.abort(clientGone()).catch(() => {})
      }
    }
    if (!gone) await writer.close()
  } catch (err) {
    await reader.cancel(err).catch(() => {}) // the body itself failed: stop its producer
    await writer.abort(err).catch(() => {})
  }
}

function clientGone(): Error {
  const err = new Error('client disconnected')
  err.name = 'AbortError'
  return err
}
