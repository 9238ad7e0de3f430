/**
 * The one error type the project throws on purpose. `code` is a stable, snake_case string that
 * clients can switch on; `status` is derived from it. Messages go on the wire: never put secrets
 * or stack traces in them (details belong in `cause`, which is logged, not sent).
 */
export type ErrorCode =
  | 'bad_request' // malformed JSON, wrong types, empty text, unknown role, absurd numbers
  | 'invalid_labels' // label set empty, duplicated, or a label that tokenizes to nothing
  | 'context_length_exceeded' // prompt (+ max_tokens) longer than the model's context
  | 'unauthorized' // missing or wrong API key
  | 'not_found'
  | 'payload_too_large'
  | 'queue_full' // too much work queued: retry later
  | 'model_unavailable' // the model failed to load (the next request retries)
  | 'model_loading' // still loading
  | 'model_invalid' // the model package is broken: bad checksum, missing file, unknown version
  | 'stage_unavailable' // a pipeline stage restarted (its KV cache is gone) or cannot run
  | 'internal'

const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  invalid_labels: 400,
  context_length_exceeded: 400,
  unauthorized: 401,
  not_found: 404,
  payload_too_large: 413,
  queue_full: 429,
  model_unavailable: 503,
  model_loading: 503,
  model_invalid: 503,
  stage_unavailable: 503,
  internal: 500,
}

export class AppError extends Error {
  override name = 'AppError' as const
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions & { details?: Record<string, unknown> },
  ) {
    super(message, options)
    this.details = options?.details
  }
  readonly details: Record<string, unknown> | undefined
  get status(): number {
    return STATUS[this.code]
  }
}

/** `instanceof` fails across realms and bundles; the name and code survive both. */
export function isAppError(err: unknown): err is AppError {
  return (
    err instanceof AppError ||
    (typeof err === 'object' &&
      err !== null &&
      (err as { name?: unknown }).name === 'AppError' &&
      typeof (err as { code?: unknown }).code === 'string')
  )
}
