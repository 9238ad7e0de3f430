/**
 * `POST /v1/chat/completions`: OpenAI-compatible chat, for the `openai` clients and the many
 * tools built on them. Non-streamed: one `chat.completion`. Streamed (`stream: true`):
 * `data: {chat.completion.chunk}` frames, then `data: [DONE]`; a failure after the stream
 * opened is a `data: {"error": {...}}` frame, which the `openai` client raises as an APIError.
 * Errors before the stream are OpenAI's `{error: {message, type, param, code}}` (see onError).
 */
import { Hono, type Env } from 'hono'
import { abandonRun, collectRun, pumpRun, requireEnd, startChatRun } from './chat-run.ts'
import { openAIErrorBody } from './error-response.ts'
import { openEventStream } from './event-stream.ts'
import { chunkBody, completionBody, newCompletionIds, usageChunkBody } from './openai-shapes.ts'
import { parseOpenAIChatBody } from './parse-chat-body.ts'
import { readJsonBody } from './read-json-body.ts'
import type { RouteDeps } from './route-deps.ts'

export function chatCompletionsRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().post('/', async (c) => {
    const config = deps.config(c)
    const input = parseOpenAIChatBody(await readJsonBody(c.req.raw, config.maxBodyBytes), config)
    const { engine, run, cancel } = await startChatRun(deps, c, input.messages, input.options)
    const ids = newCompletionIds(config.modelId ?? engine.info.id)

    if (!input.stream) {
      try {
        const { text, end, logprobs } = await collectRun(run, cancel.signal)
        const entries = input.options.logprobs === undefined ? undefined : logprobs
        return c.json(completionBody(ids, text, end.finishReason, end.usage, entries))
      } finally {
        cancel.dispose()
      }
    }

    const frame = (body: unknown) => ({ data: JSON.stringify(body) })
    // with logprobs, a content chunk carries a list (maybe empty: its tokens came earlier)
    const none = input.options.logprobs === undefined ? undefined : []
    return openEventStream(
      c,
      cancel,
      async (send) => {
        const usage = input.includeUsage
        if (!(await send(frame(chunkBody(ids, { role: 'assistant', content: '' }, null, usage))))) {
          return abandonRun(run) // the client left before the first token
        }
        const end = requireEnd(
          await pumpRun(run, (text, logprobs) =>
            send(frame(chunkBody(ids, { content: text }, null, usage, logprobs ?? none))),
          ),
          cancel.signal,
        )
        if (!end) return
        await send(frame(chunkBody(ids, {}, end.finishReason, usage, end.logprobs)))
        if (usage) await send(frame(usageChunkBody(ids, end.usage)))
        await send({ data: '[DONE]' })
      },
      (e) => frame(openAIErrorBody(e)),
    )
  })
}
