/**
 * Server settings the routes read: auth, CORS, token limits, body size. Each runtime entry
 * builds one from its environment (`readConfigFromEnv`) or hands in a function of the request
 * context when settings arrive per request (Workers bindings).
 */

export interface AppConfig {
  /** When set, every route but `GET /health` and `GET /` needs `Authorization: Bearer <key>`. */
  apiKey?: string
  /** Origins allowed by CORS; `'*'` for any; unset or empty = no CORS headers. */
  corsOrigins?: string[] | '*'
  /**
   * `max_tokens` when the request gives none. Unset = the model's generation_config default,
   * which the engine also shortens to the room left in the context.
   */
  maxTokensDefault?: number
  /** Largest `max_tokens` a request may ask for. */
  maxTokensCeiling: number
  /** Largest request body, in bytes, before decoding. */
  maxBodyBytes: number
  /** Model id for /v1/models, /health and OpenAI responses; default: the engine's `info.id`. */
  modelId?: string
}

export const DEFAULT_CONFIG = {
  maxTokensCeiling: 2048,
  maxBodyBytes: 256 * 1024,
} as const satisfies Partial<AppConfig>

/** Fills defaults and rejects settings that cannot work (a programming or deployment error). */
export function resolveConfig(partial: Partial<AppConfig> = {}): AppConfig {
  const config: AppConfig = { ...DEFAULT_CONFIG, ...dropUndefined(partial) }
  const positive = (name: string, v: number | undefined) => {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 1)) {
      throw new Error(`config.${name} must be a positive integer, got ${v}`)
    }
  }
  positive('maxTokensCeiling', config.maxTokensCeiling)
  positive('maxTokensDefault', config.maxTokensDefault)
  positive('maxBodyBytes', config.maxBodyBytes)
  if (config.maxTokensDefault !== undefined && config.maxTokensDefault > config.maxTokensCeiling) {
    throw new Error(
      `config.maxTokensDefault (${config.maxTokensDefault}) is above config.maxTokensCeiling (${config.maxTokensCeiling})`,
    )
  }
  if (config.apiKey === '') delete config.apiKey
  return config
}

/**
 * Reads the settings from environment variables (process.env, Deno.env.toObject(), Workers
 * `env`): API_KEY, CORS_ORIGINS (`*` or a comma-separated list), MAX_TOKENS_DEFAULT,
 * MAX_TOKENS_CEILING, MAX_BODY_BYTES, MODEL_ID. Unset or empty variables keep the defaults.
 */
export function readConfigFromEnv(vars: Record<string, unknown>): AppConfig {
  const text = (name: string) => {
    const v = vars[name]
    return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined
  }
  const integer = (name: string) => {
    const v = text(name)
    if (v === undefined) return undefined
    if (!/^\d+$/.test(v)) throw new Error(`${name} must be a positive integer, got "${v}"`)
    return Number(v)
  }
  const origins = text('CORS_ORIGINS')
  return resolveConfig({
    apiKey: text('API_KEY'),
    corsOrigins:
      origins === undefined
        ? undefined
        : origins === '*'
          ? '*'
          : origins
              .split(',')
              .map((o) => o.trim())
              .filter(Boolean),
    // MAX_TOKENS_DEFAULT goes to the engine (engineOptionsFromEnv), which shortens it to the
    // room left in the context instead of refusing a long prompt.
    maxTokensCeiling: integer('MAX_TOKENS_CEILING'),
    maxBodyBytes: integer('MAX_BODY_BYTES'),
    modelId: text('MODEL_ID'),
  })
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}
