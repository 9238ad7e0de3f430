/**
 * `POST /v1/chat`: chat with the model. Streams by default as server-sent events:
 *   event: delta  data: {"text": "..."}                       one per text delta
 *   event: done   data: {"finish_reason": "stop", "usage": {...}}
 *   event: error  data: {"error": {"code": "...", "message": "..."}}   if it fails mid-stream
 * With `stream: false`: `{model, message: {role, content}, finish_reason, usage}`.
 */
import { Hono, type Env } from 'hono'
import { collectRun, pumpRun, requireEnd, startChatRun, usageBody } from './chat-run.ts'
import { errorBody } from './error-response.ts'
import { openEventStream } from './event-stream.ts'
import { parseChatBody } from './parse-chat-body.ts'
import { readJsonBody } from './read-json-body.ts'
import type { RouteDeps } from './route-deps.ts'

export function chatRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().post('/', async (c) => {
    const config = deps.config(c)
    const input = parseChatBody(await readJsonBody(c.req.raw, config.maxBodyBytes), config)
    const { engine, run, cancel } = await startChatRun(deps, c, input.messages, input.options)
    const model = config.modelId ?? engine.info.id

    if (!input.stream) {
      try {
        const { text, end } = await collectRun(run, cancel.signal)
        return c.json({
          model,
          message: { role: 'assistant', content: text },
          finish_reason: end.finishReason,
          usage: usageBody(end.usage),
        })
      } finally {
        cancel.dispose()
      }
    }

    return openEventStream(
      c,
      cancel,
      async (send) => {
        const end = requireEnd(
          await pumpRun(run, (text) => send({ event: 'delta', data: JSON.stringify({ text }) })),
          cancel.signal,
        )
        if (!end) return // the client left; the iterator is closed and the signal aborted
        await send({
          event: 'done',
          data: JSON.stringify({ finish_reason: end.finishReason, usage: usageBody(end.usage) }),
        })
      },
      (e) => ({ event: 'error', data: JSON.stringify(errorBody(e)) }),
    )
  })
}
