/**
 * Validation of chat requests, as pure functions: `/v1/chat` (`parseChatBody`) and the
 * OpenAI-compatible `/v1/chat/completions` (`parseOpenAIChatBody`) share the message and
 * sampling rules. Limits match the engine's, so a request that passes here is rejected later
 * only for what needs the tokenizer (context length) or the scheduler (queue full).
 */
import type { ChatMessage, GenerationOptions, Role } from '../engine/types.ts'
import {
  MAX_MESSAGES,
  MAX_STOP_LENGTH,
  MAX_STOPS,
  MAX_TOP_LOGPROBS,
  ROLES,
  SAMPLING_RULES,
} from '../engine/limits.ts'
import type { AppConfig } from './config.ts'
import {
  badRequest,
  expectObject,
  isAbsent,
  readBoolean,
  readNumber,
  type JsonObject,
} from './parse-fields.ts'

/** Sampling and stopping, without the signal (the route adds it). */
export type SamplingOptions = Omit<GenerationOptions, 'signal'>

export interface ChatRequest {
  messages: ChatMessage[]
  options: SamplingOptions
  stream: boolean
}

export interface OpenAIChatRequest extends ChatRequest {
  /** `stream_options.include_usage`: send a last chunk with the usage. */
  includeUsage: boolean
}

type Limits = Pick<AppConfig, 'maxTokensDefault' | 'maxTokensCeiling'>

/** `POST /v1/chat`: `{messages, max_tokens?, temperature?, ..., stop?, stream? = true}`. */
export function parseChatBody(body: unknown, limits: Limits): ChatRequest {
  const obj = expectObject(body)
  return {
    messages: parseMessages(obj.messages, { openai: false }),
    options: parseSamplingFields(obj, limits, 'max_tokens'),
    stream: readBoolean(obj, 'stream') ?? true,
  }
}

/**
 * `POST /v1/chat/completions`, OpenAI's request shape. Fields this server does not implement
 * but that do not change the answer (`model`, `user`, `presence_penalty`, ...) are ignored;
 * those that would (`n` > 1, `tools`) are refused.
 */
export function parseOpenAIChatBody(body: unknown, limits: Limits): OpenAIChatRequest {
  const obj = expectObject(body)
  if (!isAbsent(obj.n) && obj.n !== 1) {
    throw badRequest('n', 'n must be 1: this server returns one choice per request')
  }
  if (Array.isArray(obj.tools) && obj.tools.length > 0) {
    throw badRequest('tools', 'tools are not supported by this server')
  }
  const maxParam = isAbsent(obj.max_completion_tokens) ? 'max_tokens' : 'max_completion_tokens'
  const streamOptions = obj.stream_options
  if (
    !isAbsent(streamOptions) &&
    (typeof streamOptions !== 'object' || Array.isArray(streamOptions))
  ) {
    throw badRequest('stream_options', 'stream_options must be an object')
  }
  const includeUsage = isAbsent(streamOptions)
    ? undefined
    : readBoolean(streamOptions as JsonObject, 'include_usage')
  const options = parseSamplingFields(obj, limits, maxParam)
  const logprobs = readBoolean(obj, 'logprobs') ?? false
  const top = readNumber(obj, 'top_logprobs', { min: 0, max: MAX_TOP_LOGPROBS, integer: true })
  if (top !== undefined && !logprobs) {
    throw badRequest('top_logprobs', 'top_logprobs needs logprobs: true')
  }
  if (logprobs) options.logprobs = top ?? 0
  return {
    messages: parseMessages(obj.messages, { openai: true }),
    options,
    stream: readBoolean(obj, 'stream') ?? false,
    includeUsage: includeUsage ?? false,
  }
}

/**
 * `messages`: a non-empty array of `{role, content}`. `content` is a string or (OpenAI style)
 * an array of `{type: 'text', text}` parts. On the OpenAI route, `developer` means `system`.
 */
export function parseMessages(value: unknown, o: { openai: boolean }): ChatMessage[] {
  if (!Array.isArray(value)) throw badRequest('messages', 'messages must be an array')
  if (value.length === 0) throw badRequest('messages', 'messages must not be empty')
  if (value.length > MAX_MESSAGES) {
    throw badRequest('messages', `messages may hold at most ${MAX_MESSAGES} entries`)
  }
  const messages = value.map((item, i): ChatMessage => {
    const at = `messages[${i}]`
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw badRequest('messages', `${at} must be an object with role and content`)
    }
    const { role, content } = item as JsonObject
    const known = o.openai && role === 'developer' ? 'system' : role
    if (typeof known !== 'string' || !ROLES.includes(known as Role)) {
      const given = typeof role === 'string' ? `"${role.slice(0, 40)}"` : String(role)
      throw badRequest(
        'messages',
        `${at}.role must be one of ${ROLES.join(', ')}${o.openai ? ', developer' : ''}; got ${given}`,
      )
    }
    return { role: known as Role, content: readContent(content, `${at}.content`) }
  })
  if (!messages.some((m) => m.content.trim() !== '')) {
    throw badRequest('messages', 'messages must contain some text')
  }
  return messages
}

function readContent(value: unknown, at: string): string {
  if (typeof value === 'string') return value
  if (Array.isArray(value)) {
    return value
      .map((part, j) => {
        const p = part as JsonObject | null
        if (
          typeof p !== 'object' ||
          p === null ||
          p.type !== 'text' ||
          typeof p.text !== 'string'
        ) {
          throw badRequest('messages', `${at}[${j}] must be {type: 'text', text: string}`)
        }
        return p.text
      })
      .join('')
  }
  throw badRequest('messages', `${at} must be a string`)
}

/** max_tokens (under the given name), temperature, top_p, top_k, repetition_penalty, seed, stop. */
export function parseSamplingFields(
  obj: JsonObject,
  limits: Limits,
  maxParam: 'max_tokens' | 'max_completion_tokens' = 'max_tokens',
): SamplingOptions {
  const options: SamplingOptions = {}
  const maxNewTokens =
    readNumber(obj, maxParam, { min: 1, max: limits.maxTokensCeiling, integer: true }) ??
    limits.maxTokensDefault
  if (maxNewTokens !== undefined) options.maxNewTokens = maxNewTokens
  const set = <K extends keyof SamplingOptions>(key: K, v: SamplingOptions[K] | undefined) => {
    if (v !== undefined) options[key] = v
  }
  for (const [key, rule] of Object.entries(SAMPLING_RULES)) {
    set(key as keyof typeof SAMPLING_RULES, readNumber(obj, rule.param, rule))
  }
  set(
    'seed',
    readNumber(obj, 'seed', {
      min: Number.MIN_SAFE_INTEGER,
      max: Number.MAX_SAFE_INTEGER,
      integer: true,
    }),
  )
  set('stop', readStop(obj.stop))
  return options
}

/** `stop`: a string or an array of up to MAX_STOPS non-empty strings. */
export function readStop(value: unknown): string[] | undefined {
  if (isAbsent(value)) return undefined
  const list = typeof value === 'string' ? [value] : value
  if (!Array.isArray(list)) throw badRequest('stop', 'stop must be a string or an array of strings')
  if (list.length > MAX_STOPS) {
    throw badRequest('stop', `stop may hold at most ${MAX_STOPS} strings, got ${list.length}`)
  }
  for (const s of list) {
    if (typeof s !== 'string' || s.length === 0 || s.length > MAX_STOP_LENGTH) {
      throw badRequest(
        'stop',
        `each stop string must be a string of 1 to ${MAX_STOP_LENGTH} characters`,
      )
    }
  }
  return list.length === 0 ? undefined : [...new Set(list as string[])]
}
