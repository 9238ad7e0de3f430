/**
 * Small readers for JSON request fields. Each one names the field in its error message, treats
 * `null` like an absent field (OpenAI clients send nulls for unset options) and throws
 * AppError('bad_request') with `details.param` set, so the OpenAI route can fill `param`.
 */
import { AppError } from '../core/errors.ts'
import { badRequest, checkNumber, type NumberRule } from '../engine/limits.ts'

export { badRequest }
export type JsonObject = Record<string, unknown>

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

/** `obj[param]` checked against `rule` (its range; the field is read under `param`). */
export function readNumber(
  obj: JsonObject,
  param: string,
  rule: Omit<NumberRule, 'param'>,
): number | undefined {
  const v = obj[param]
  if (isAbsent(v)) return undefined
  const problem = checkNumber(v, { ...rule, param })
  if (problem) throw badRequest(param, problem)
  return v as number
}
