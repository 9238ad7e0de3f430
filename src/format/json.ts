/** Readers for parsed JSON that throw `Invalid` naming the field (parse.ts, config.ts). */
/** A field that is missing or has the wrong type: the message names it. */
export class Invalid extends Error {}

export function object(v: unknown, at: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new Invalid(`${at} must be an object`)
  return v as Record<string, unknown>
}

export function array(v: unknown, at: string): unknown[] {
  if (!Array.isArray(v)) throw new Invalid(`${at} must be an array`)
  return v
}

export function string(v: unknown, at: string): string {
  if (typeof v !== 'string' || v === '') throw new Invalid(`${at} must be a non-empty string`)
  return v
}

export function nonNegativeInt(v: unknown, at: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new Invalid(`${at} must be a non-negative integer`)
  }
  return v
}

export function positiveInt(v: unknown, at: string): number {
  if (nonNegativeInt(v, at) === 0) throw new Invalid(`${at} must be positive`)
  return v as number
}
