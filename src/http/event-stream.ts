/**
 * Server-sent events for one generation, on Hono's `streamSSE`. Adds what generation needs:
 * the cancellation is aborted when the client disconnects (the stream's abort) or a write finds
 * the client gone; errors after the stream opened go out as an error frame the caller shapes;
 * unknown errors are logged and sent as a generic message.
 */
import type { Context, Env } from 'hono'
import { streamSSE, type SSEMessage } from 'hono/streaming'
import type { AppError } from '../core/errors.ts'
import type { Cancellation } from './chat-run.ts'
import { logIfInternal, toAppError } from './error-response.ts'

/** Writes one frame; resolves false when the client is gone (stop producing then). */
export type SendFrame = (frame: SSEMessage) => Promise<boolean>

export function openEventStream<E extends Env>(
  c: Context<E>,
  cancel: Cancellation,
  produce: (send: SendFrame) => Promise<void>,
  errorFrame: (e: AppError) => SSEMessage,
): Response {
  c.header('X-Accel-Buffering', 'no') // nginx (and proxies that copy it) would buffer the stream
  c.header('Cache-Control', 'no-cache')
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => cancel.abort(new Error('client disconnected')))
    const send: SendFrame = async (frame) => {
      if (stream.aborted || stream.closed) return false
      await stream.writeSSE(frame) // Hono swallows write errors and marks the stream aborted
      if (stream.aborted) {
        cancel.abort(new Error('client disconnected'))
        return false
      }
      return true
    }
    try {
      await produce(send)
    } catch (err) {
      const e = toAppError(err)
      logIfInternal(e, c.req.raw, 'stream failed')
      await send(errorFrame(e)).catch(() => false)
      cancel.abort(e)
    } finally {
      cancel.dispose()
    }
  })
}
