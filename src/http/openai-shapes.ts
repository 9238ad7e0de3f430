/**
 * OpenAI's chat completion shapes, as pure builders: `chat.completion` (one JSON),
 * `chat.completion.chunk` (streamed frames) and the model list.
 * https://platform.openai.com/docs/api-reference/chat/object
 */
import type { FinishReason, TokenLogprob, Usage } from '../engine/types.ts'
import { usageBody } from './chat-run.ts'

export type OpenAIFinishReason = 'stop' | 'length'

/** OpenAI has no `cancelled`: a cancelled reply stopped (and its client is gone anyway). */
export function openAIFinishReason(reason: FinishReason): OpenAIFinishReason {
  return reason === 'length' ? 'length' : 'stop'
}

export interface CompletionIds {
  id: string
  created: number
  model: string
}

export function newCompletionIds(model: string): CompletionIds {
  return {
    id: `chatcmpl-${crypto.randomUUID().replaceAll('-', '')}`,
    created: Math.floor(Date.now() / 1000),
    model,
  }
}

/**
 * `choices[].logprobs`: null unless asked for. Each entry's `bytes` are exact; `token` shows
 * U+FFFD where a token ends inside a character (OpenAI's reason for sending bytes).
 */
export function logprobsBody(entries: TokenLogprob[] | undefined) {
  if (!entries) return null
  return {
    content: entries.map((e) => ({
      token: e.token,
      logprob: e.logprob,
      bytes: e.bytes,
      top_logprobs: e.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })),
    })),
    refusal: null,
  }
}

export function completionBody(
  ids: CompletionIds,
  content: string,
  finishReason: FinishReason,
  usage: Usage,
  logprobs?: TokenLogprob[],
) {
  return {
    ...ids,
    object: 'chat.completion' as const,
    choices: [
      {
        index: 0,
        message: { role: 'assistant' as const, content, refusal: null },
        logprobs: logprobsBody(logprobs),
        finish_reason: openAIFinishReason(finishReason),
      },
    ],
    usage: usageBody(usage),
  }
}

/**
 * One streamed chunk. `delta` is `{role}` first, then `{content}`, and `{}` with the finish
 * reason last. With include_usage, every chunk carries `usage: null` and a final chunk with no
 * choices carries the usage (OpenAI's behaviour).
 */
export function chunkBody(
  ids: CompletionIds,
  delta: { role?: 'assistant'; content?: string },
  finishReason: FinishReason | null,
  includeUsage: boolean,
  logprobs?: TokenLogprob[],
) {
  return {
    ...ids,
    object: 'chat.completion.chunk' as const,
    choices: [
      {
        index: 0,
        delta,
        logprobs: logprobsBody(logprobs),
        finish_reason: finishReason === null ? null : openAIFinishReason(finishReason),
      },
    ],
    ...(includeUsage && { usage: null }),
  }
}

export function usageChunkBody(ids: CompletionIds, usage: Usage) {
  return { ...ids, object: 'chat.completion.chunk' as const, choices: [], usage: usageBody(usage) }
}

export function modelBody(id: string, created: number) {
  return { id, object: 'model' as const, created, owned_by: 'qwen-edge' }
}
