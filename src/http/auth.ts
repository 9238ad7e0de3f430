/**
 * API key check: when a key is configured, every request but the public ones (`GET /health`,
 * `GET /`) needs `Authorization: Bearer <key>`. Keys are compared as SHA-256 digests, byte by
 * byte without an early exit, so the time taken says nothing about how much of a guess was right.
 */
import type { Context, Env, MiddlewareHandler } from 'hono'
import { AppError } from '../core/errors.ts'

const PUBLIC_PATHS = new Set(['/', '/health'])

export function requireApiKey<E extends Env>(
  apiKeyOf: (c: Context<E>) => string | undefined,
): MiddlewareHandler<E> {
  return async (c, next) => {
    const key = apiKeyOf(c)
    const method = c.req.method
    if (!key || ((method === 'GET' || method === 'HEAD') && PUBLIC_PATHS.has(c.req.path))) {
      return next()
    }
    const given = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(c.req.header('authorization') ?? '')?.[1]
    if (given === undefined) {
      throw new AppError('unauthorized', 'Missing API key: send Authorization: Bearer <key>')
    }
    if (!(await secretsEqual(given, key))) throw new AppError('unauthorized', 'Invalid API key')
    await next()
  }
}

/** Compares two secrets in time that does not depend on where they differ. */
export async function secretsEqual(a: string, b: string): Promise<boolean> {
  const encoder = new TextEncoder()
  const [da, db] = await Promise.all([
    crypto.subtle.digest('SHA-256', encoder.encode(a)),
    crypto.subtle.digest('SHA-256', encoder.encode(b)),
  ])
  const x = new Uint8Array(da)
  const y = new Uint8Array(db)
  let diff = 0
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i]
  return diff === 0
}
