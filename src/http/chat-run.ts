/**
 * Running a generation for one request: an AbortSignal tied to the client's connection, and a
 * loop over the engine's events that always ends by leaving the iterator (which frees the
 * generation's place in the scheduler), whether the reply finished, failed, or the client left.
 */
import { AppError } from '../core/errors.ts'
import type { Context, Env } from 'hono'
import type {
  ChatEvent,
  ChatMessage,
  ChatRun,
  Engine,
  GenerationOptions,
  TokenLogprob,
  Usage,
} from '../engine/types.ts'
import type { RouteDeps } from './route-deps.ts'

export type EndEvent = Extract<ChatEvent, { type: 'end' }>

export interface Cancellation {
  readonly signal: AbortSignal
  abort(reason?: unknown): void
  /** Stops listening to the client's request signal (call when the response is done). */
  dispose(): void
}

/**
 * A fresh AbortController that also aborts when the request's own signal does (Node and Deno
 * abort it when the client disconnects; Workers only with the `enable_request_signal` flag).
 */
export function linkClientSignal(request: Request): Cancellation {
  const controller = new AbortController()
  const client: AbortSignal | undefined = request.signal
  const onAbort = () => controller.abort(client?.reason)
  if (client?.aborted) controller.abort(client.reason)
  else client?.addEventListener('abort', onAbort, { once: true })
  return {
    signal: controller.signal,
    abort: (reason) => controller.abort(reason ?? new Error('client disconnected')),
    dispose: () => client?.removeEventListener('abort', onAbort),
  }
}

/**
 * The start every chat route shares: load the engine (before anything is streamed, so a failed
 * load is a JSON 503), tie a cancellation to the client's connection, and admit the generation
 * (validation, context length, queue: JSON errors too). On failure the link is dropped.
 */
export async function startChatRun<E extends Env>(
  deps: RouteDeps<E>,
  c: Context<E>,
  messages: ChatMessage[],
  options: Omit<GenerationOptions, 'signal'>,
): Promise<{ engine: Engine; run: ChatRun; cancel: Cancellation }> {
  const engine = await deps.engine(c)
  const cancel = linkClientSignal(c.req.raw)
  try {
    const run = await engine.chat(messages, { ...options, signal: cancel.signal })
    return { engine, run, cancel }
  } catch (err) {
    cancel.dispose()
    throw err
  }
}

/**
 * Feeds each text delta to `onText` until the engine's final event, which is returned.
 * `onText` returns false when the consumer is gone: the loop breaks and the iterator is closed.
 * Returns undefined if the reply ended without its final event (client gone, or cancelled).
 */
export async function pumpRun(
  run: ChatRun,
  onText: (text: string, logprobs?: TokenLogprob[]) => Promise<boolean | void> | boolean | void,
): Promise<EndEvent | undefined> {
  for await (const event of run.events) {
    if (event.type === 'end') return event
    if (event.text !== '' && (await onText(event.text, event.logprobs)) === false) return undefined
  }
  return undefined
}

/**
 * The final event of a streamed reply, or undefined when the client left. A reply that ended
 * without its final event while the client is still there is an engine failure.
 */
export function requireEnd(end: EndEvent | undefined, signal: AbortSignal): EndEvent | undefined {
  if (end || signal.aborted) return end
  throw new AppError('internal', 'The generation ended without a result', {
    cause: new Error('engine events ended without an end event'),
  })
}

/** Closes a run that will never be iterated (the client left before its first delta). */
export async function abandonRun(run: ChatRun): Promise<void> {
  try {
    await run.events[Symbol.asyncIterator]().return?.()
  } catch {
    // the run is being dropped; its own error is of no interest to anyone now
  }
}

/** Collects a whole reply (for `stream: false`). */
export async function collectRun(
  run: ChatRun,
  signal: AbortSignal,
): Promise<{ text: string; end: EndEvent; logprobs: TokenLogprob[] }> {
  let text = ''
  const logprobs: TokenLogprob[] = []
  const end = await pumpRun(run, (delta, entries) => {
    text += delta
    if (entries) logprobs.push(...entries)
  })
  if (end?.logprobs) logprobs.push(...end.logprobs)
  return {
    text,
    logprobs,
    end: requireEnd(end, signal) ?? {
      type: 'end',
      finishReason: 'cancelled',
      usage: { promptTokens: run.promptTokens, completionTokens: 0 },
    },
  }
}

/** `usage` as it goes on the wire (OpenAI's field names, also used by /v1/chat). */
export function usageBody(usage: Usage) {
  return {
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
    total_tokens: usage.promptTokens + usage.completionTokens,
    ...(usage.cachedTokens !== undefined && {
      prompt_tokens_details: { cached_tokens: usage.cachedTokens },
    }),
  }
}
