/**
 * Small readers for JSON request fields. Each one names the field in its error message, treats
 * `null` like an absent field (OpenAI clients send nulls for unset options) and throws
 * AppError('bad_request') with `details.param` set, so the OpenAI route can fill `param`.
 */
import { AppError } from '../core/errors.ts'

export type JsonObject = Record<string, unknown>

export function badRequest(param: string, message: string): AppError {
  return new AppError('bad_request', message, { details: { param } })
}

export function expectObject(value: unknown, what = 'Request body'): JsonObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AppError('bad_request', `${what} must be a JSON object`)
  }
  return value as JsonObject
}

export function isAbsent(value: unknown): value is undefined | null {
  return value === undefined || value === null
}

/** A string with some non-blank text in it. */
export function readText(value: unknown, param: string): string {
  if (typeof value !== 'string') throw badRequest(param, `${param} must be a string`)
  if (value.trim() === '') throw badRequest(param, `${param} must not be empty`)
  return value
}

export function readBoolean(obj: JsonObject, param: string): boolean | undefined {
  const v = obj[param]
  if (isAbsent(v)) return undefined
  if (typeof v !== 'boolean') throw badRequest(param, `${param} must be true or false`)
  return v
}

export interface NumberRule {
  min: number
  max: number
  /** `min` itself is not allowed. */
  minExclusive?: boolean
  integer?: boolean
}

export function readNumber(obj: JsonObject, param: string, rule: NumberRule): number | undefined {
  const v = obj[param]
  if (isAbsent(v)) return undefined
  const range = `${rule.minExclusive ? '(' : '['}${rule.min}, ${rule.max}]`
  const kind = rule.integer ? 'an integer' : 'a number'
  if (typeof v !== 'number' || !Number.isFinite(v) || (rule.integer && !Number.isSafeInteger(v))) {
    throw badRequest(param, `${param} must be ${kind} in ${range}`)
  }
  if (v > rule.max || (rule.minExclusive ? v <= rule.min : v < rule.min)) {
    throw badRequest(param, `${param} must be ${kind} in ${range}, got ${v}`)
  }
  return v
}
