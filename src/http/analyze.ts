/**
 * `POST /analyze`: the dual-channel route. `{text}` → `{sentiment: {label, score, scores},
 * reply, finish_reason, usage}`: the text is classified (正面/负面 for Chinese text) and
 * answered as a user message. With `?stream=1`, server-sent events:
 *   event: sentiment  data: {label, score, scores}     first
 *   event: delta      data: {"text": "..."}            the reply
 *   event: done       data: {"finish_reason", "usage"}
 *   event: error      data: {"error": {code, message}} if it fails mid-stream
 * Classification runs before the reply is queued, and both before the stream opens, so their
 * failures are JSON errors.
 */
import { Hono, type Env } from 'hono'
import {
  abandonRun,
  collectRun,
  linkClientSignal,
  pumpRun,
  requireEnd,
  usageBody,
} from './chat-run.ts'
import { errorBody } from './error-response.ts'
import { openEventStream } from './event-stream.ts'
import { badRequest } from './parse-fields.ts'
import { parseAnalyzeBody } from './parse-sentiment-body.ts'
import { readJsonBody } from './read-json-body.ts'
import type { RouteDeps } from './route-deps.ts'
import { classifyText } from './sentiment.ts'

export function analyzeRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().post('/', async (c) => {
    const config = deps.config(c)
    const stream = parseStreamQuery(c.req.query('stream'))
    const input = parseAnalyzeBody(await readJsonBody(c.req.raw, config.maxBodyBytes), config)
    const engine = await deps.engine(c)
    const cancel = linkClientSignal(c.req.raw)
    let sentiment, run
    try {
      sentiment = await classifyText(engine, input.text, {
        labels: input.labels,
        examples: input.examples,
        signal: cancel.signal,
      })
      const messages = [{ role: 'user' as const, content: input.text }]
      run = await engine.chat(messages, { ...input.options, signal: cancel.signal })
    } catch (err) {
      cancel.dispose()
      throw err
    }

    if (!stream) {
      try {
        const { text, end } = await collectRun(run, cancel.signal)
        return c.json({
          sentiment,
          reply: text,
          finish_reason: end.finishReason,
          usage: usageBody(end.usage),
        })
      } finally {
        cancel.dispose()
      }
    }

    const started = run
    const classified = sentiment
    return openEventStream(
      c,
      cancel,
      async (send) => {
        if (!(await send({ event: 'sentiment', data: JSON.stringify(classified) }))) {
          return abandonRun(started)
        }
        const end = requireEnd(
          await pumpRun(started, (text) =>
            send({ event: 'delta', data: JSON.stringify({ text }) }),
          ),
          cancel.signal,
        )
        if (!end) return
        await send({
          event: 'done',
          data: JSON.stringify({ finish_reason: end.finishReason, usage: usageBody(end.usage) }),
        })
      },
      (e) => ({ event: 'error', data: JSON.stringify(errorBody(e)) }),
    )
  })
}

/** `?stream=1|true|0|false`, or a bare `?stream`; absent = not streamed. */
export function parseStreamQuery(value: string | undefined): boolean {
  if (value === undefined || value === '0' || value === 'false') return false
  if (value === '' || value === '1' || value === 'true') return true
  throw badRequest('stream', 'the stream query parameter must be 1, true, 0 or false')
}
