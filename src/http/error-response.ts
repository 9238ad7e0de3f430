/**
 * The one place where errors become responses: `{error: {code, message}}` with the status
 * derived from the code, or OpenAI's `{error: {message, type, param, code}}` on the
 * OpenAI-compatible paths. Unknown errors are logged and become a generic 500.
 */
import type { Context, ErrorHandler, NotFoundHandler } from 'hono'
import { HTTPException } from 'hono/http-exception'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import { AppError, isAppError, type ErrorCode } from '../core/errors.ts'

export interface ErrorBody {
  error: { code: string; message: string }
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string }
}

/** Seconds a client should wait before retrying, when the error names none. */
const RETRY_AFTER: Partial<Record<ErrorCode, number>> = {
  queue_full: 2,
  model_loading: 5,
  model_unavailable: 10,
  model_invalid: 60,
}

/** Paths that answer errors in OpenAI's shape (the `openai` client parses them). */
export function isOpenAIPath(path: string): boolean {
  return path === '/v1/chat/completions' || path === '/v1/models' || path.startsWith('/v1/models/')
}

export function toAppError(err: unknown): AppError {
  if (isAppError(err)) return err
  if (err instanceof HTTPException) {
    const code: ErrorCode =
      err.status === 401
        ? 'unauthorized'
        : err.status === 404
          ? 'not_found'
          : err.status === 413
            ? 'payload_too_large'
            : err.status < 500
              ? 'bad_request'
              : 'internal'
    const message = code === 'internal' ? 'Internal server error' : err.message || code
    return new AppError(code, message, { cause: err })
  }
  return new AppError('internal', 'Internal server error', { cause: err })
}

/** The status to send: the error's own, or 500 if a foreign AppError carries a strange one. */
export function statusOf(e: AppError): ContentfulStatusCode {
  const status = e.status
  return (
    Number.isInteger(status) && status >= 400 && status <= 599 ? status : 500
  ) as ContentfulStatusCode
}

export function errorBody(e: AppError): ErrorBody {
  return { error: { code: e.code, message: e.message } }
}

export function openAIErrorBody(e: AppError): OpenAIErrorBody {
  const status = statusOf(e)
  const type =
    status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error'
  const param = e.details?.param
  return {
    error: {
      message: e.message,
      type,
      param: typeof param === 'string' ? param : null,
      code: e.code,
    },
  }
}

export function errorHeaders(e: AppError): Record<string, string> {
  const headers: Record<string, string> = {}
  const status = statusOf(e)
  if (status === 429 || status === 503) {
    const given = e.details?.retryAfterSeconds ?? e.details?.retryAfter
    const seconds =
      typeof given === 'number' && Number.isFinite(given) && given >= 0
        ? Math.ceil(given)
        : (RETRY_AFTER[e.code] ?? 5)
    headers['Retry-After'] = String(seconds)
  }
  if (status === 401) headers['WWW-Authenticate'] = 'Bearer'
  return headers
}

/** Logs what the client must not see: unknown failures, unless the client already left. */
export function logIfInternal(e: AppError, request: Request, where: string): void {
  if (e.code !== 'internal' || request.signal?.aborted) return
  console.error(`${where}: ${request.method} ${new URL(request.url).pathname}`, e.cause ?? e)
}

export function errorResponse(c: Context, err: unknown): Response {
  const e = toAppError(err)
  logIfInternal(e, c.req.raw, 'request failed')
  const body = isOpenAIPath(c.req.path) ? openAIErrorBody(e) : errorBody(e)
  return c.json(body, statusOf(e), errorHeaders(e))
}

export const handleError: ErrorHandler = (err, c) => errorResponse(c, err)

export const handleNotFound: NotFoundHandler = (c) =>
  errorResponse(c, new AppError('not_found', `No route for ${c.req.method} ${c.req.path}`))
