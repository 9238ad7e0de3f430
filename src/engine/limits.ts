/**
 * The rules a generation request must follow, in one place: the HTTP layer applies them while
 * it parses a body (so an error names the field as the client spelled it), and the engine
 * applies the same ones to whatever reaches `chat()` by another way. Pure: part of the engine's
 * contract, like types.ts.
 */
import { AppError } from '../core/errors.ts'
import type { ChatMessage, GenerationOptions, Role } from './types.ts'

export const ROLES: readonly Role[] = ['system', 'user', 'assistant']
export const MAX_MESSAGES = 256
export const MAX_STOPS = 8
export const MAX_STOP_LENGTH = 64
export const MAX_TOP_K = 1_000_000
/** The most alternatives `logprobs` may ask for (OpenAI's bound for `top_logprobs`). */
export const MAX_TOP_LOGPROBS = 20

/** A numeric field's allowed range; `param` is its name on the wire. */
export interface NumberRule {
  param: string
  min: number
  max: number
  minExclusive?: boolean
  integer?: boolean
}

/** The sampling fields of GenerationOptions and their ranges. */
export const SAMPLING_RULES = {
  temperature: { param: 'temperature', min: 0, max: 2 },
  topP: { param: 'top_p', min: 0, max: 1, minExclusive: true },
  topK: { param: 'top_k', min: 0, max: MAX_TOP_K, integer: true },
  repetitionPenalty: { param: 'repetition_penalty', min: 0, max: 10, minExclusive: true },
} as const satisfies Record<string, NumberRule>

/** `undefined` when `v` follows `rule`, else the message saying why not. */
export function checkNumber(v: unknown, rule: NumberRule): string | undefined {
  const range = `${rule.minExclusive ? '(' : '['}${rule.min}, ${rule.max}]`
  const kind = rule.integer ? 'an integer' : 'a number'
  if (typeof v !== 'number' || !Number.isFinite(v) || (rule.integer && !Number.isSafeInteger(v))) {
    return `${rule.param} must be ${kind} in ${range}`
  }
  if (v > rule.max || (rule.minExclusive ? v <= rule.min : v < rule.min)) {
    return `${rule.param} must be ${kind} in ${range}, got ${v}`
  }
  return undefined
}

export function badRequest(param: string, message: string): AppError {
  return new AppError('bad_request', message, { details: { param } })
}

/** Throws for the first sampling field outside its range. */
export function validateSampling(o: Pick<GenerationOptions, keyof typeof SAMPLING_RULES>): void {
  for (const [key, rule] of Object.entries(SAMPLING_RULES)) {
    const v = o[key as keyof typeof SAMPLING_RULES]
    const problem = v === undefined ? undefined : checkNumber(v, rule)
    if (problem) throw badRequest(rule.param, problem)
  }
}

/** Throws unless `messages` is 1 to MAX_MESSAGES {role, content} with some text. */
export function validateMessages(messages: unknown): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw badRequest('messages', 'messages must be a non-empty array')
  }
  if (messages.length > MAX_MESSAGES) {
    throw badRequest('messages', `messages may hold at most ${MAX_MESSAGES} entries`)
  }
  messages.forEach((m, i) => {
    if (typeof m !== 'object' || m === null) {
      throw badRequest('messages', `messages[${i}] must be an object`)
    }
    const { role, content } = m as { role?: unknown; content?: unknown }
    if (typeof role !== 'string' || !ROLES.includes(role as Role)) {
      throw badRequest('messages', `messages[${i}].role must be one of ${ROLES.join(', ')}`)
    }
    if (typeof content !== 'string') {
      throw badRequest('messages', `messages[${i}].content must be a string`)
    }
  })
  if (!messages.some((m) => (m as ChatMessage).content.trim() !== '')) {
    throw badRequest('messages', 'messages must contain some text')
  }
}

/** Throws unless `stop` is absent or up to MAX_STOPS strings of 1 to MAX_STOP_LENGTH characters. */
export function validateStops(stop: unknown): string[] {
  if (stop === undefined) return []
  if (!Array.isArray(stop) || stop.length > MAX_STOPS) {
    throw badRequest('stop', `stop may hold at most ${MAX_STOPS} strings`)
  }
  for (const s of stop) {
    if (typeof s !== 'string' || s.length === 0 || s.length > MAX_STOP_LENGTH) {
      throw badRequest(
        'stop',
        `each stop string must be a string of 1 to ${MAX_STOP_LENGTH} characters`,
      )
    }
  }
  return stop as string[]
}
