/**
 * The Hono app factory: routes, auth, CORS and error shapes, with the engine and the settings
 * handed in, so each runtime entry is a few lines and tests can pass a fake engine.
 *
 *   serve({ fetch: createApp({ getEngine: () => loadEngine(source), config }).fetch, port })
 */
import { Hono, type Context, type Env, type MiddlewareHandler } from 'hono'
import { cors } from 'hono/cors'
import type { Engine } from './engine/types.ts'
import { analyzeRoute } from './http/analyze.ts'
import { requireApiKey } from './http/auth.ts'
import { chatCompletionsRoute } from './http/chat-completions.ts'
import { chatRoute } from './http/chat.ts'
import { resolveConfig, type AppConfig } from './http/config.ts'
import { handleError, handleNotFound } from './http/error-response.ts'
import { healthRoute } from './http/health.ts'
import { homeRoute } from './http/home.ts'
import { modelsRoute } from './http/models.ts'
import type { LoadState, RouteDeps, RuntimeMemory } from './http/route-deps.ts'
import { sentimentRoute } from './http/sentiment.ts'
import { trackEngineLoad } from './http/track-engine-load.ts'

export { DEFAULT_CONFIG, readConfigFromEnv, resolveConfig, type AppConfig } from './http/config.ts'
export type { LoadPhase, LoadState, RuntimeMemory } from './http/route-deps.ts'

export interface CreateAppOptions<E extends Env = Env> {
  /**
   * The engine, memoised by the caller (cache the promise, drop it if it rejects). May reject
   * with an AppError (`model_unavailable`, `model_loading`, ...): the request gets that error;
   * any other rejection becomes `model_unavailable`. Gets the request context for bindings.
   */
  getEngine: (c: Context<E>) => Promise<Engine>
  /** The load state for /health; default: tracked from `getEngine` calls. */
  loadState?: (c: Context<E>) => LoadState
  /** Settings, or a function of the request context (e.g. Workers `c.env`); defaults filled in. */
  config?: Partial<AppConfig> | ((c: Context<E>) => Partial<AppConfig>)
  /** The runtime's own memory numbers for /health (process RSS, JS heap), where it has them. */
  memory?: () => RuntimeMemory
  /**
   * Starts the load at once, tracked like a request's (so /health reports it): for entries
   * whose `getEngine` needs no request (Node, Deno). Without it the first request starts it.
   */
  loadAtStart?: boolean
}

export function createApp<E extends Env = Env>(options: CreateAppOptions<E>): Hono<E> {
  const tracked = trackEngineLoad(options.getEngine)
  const deps: RouteDeps<E> = {
    engine: tracked.getEngine,
    loadState: options.loadState ?? (() => tracked.loadState()),
    config: configReader(options.config),
    ...(options.memory && { memory: options.memory }),
  }
  // the outcome shows in /health; a failed load is retried by the next request
  if (options.loadAtStart) tracked.getEngine(undefined as unknown as Context<E>).catch(() => {})

  const app = new Hono<E>()
  app.onError(handleError)
  app.notFound(handleNotFound)
  app.use('*', corsFor(deps)) // before auth: preflights carry no credentials
  app.use(
    '*',
    requireApiKey<E>((c) => deps.config(c).apiKey),
  )
  app.route('/', homeRoute(deps))
  app.route('/health', healthRoute(deps))
  app.route('/v1/models', modelsRoute(deps))
  app.route('/v1/sentiment', sentimentRoute(deps))
  app.route('/v1/chat/completions', chatCompletionsRoute(deps))
  app.route('/v1/chat', chatRoute(deps))
  app.route('/analyze', analyzeRoute(deps))
  return app
}

function configReader<E extends Env>(
  config: CreateAppOptions<E>['config'],
): (c: Context<E>) => AppConfig {
  if (typeof config === 'function') return (c) => resolveConfig(config(c))
  const resolved = resolveConfig(config) // once, and a bad setting fails at startup
  return () => resolved
}

/** CORS as configured: off unless origins are given; Retry-After readable by browser code. */
function corsFor<E extends Env>(deps: RouteDeps<E>): MiddlewareHandler<E> {
  const middlewares = new Map<string, MiddlewareHandler>()
  return async (c, next) => {
    const origins = deps.config(c).corsOrigins
    if (origins === undefined || origins.length === 0) return next()
    const key = origins === '*' ? '*' : origins.join('\n')
    let middleware = middlewares.get(key) // built once per origin list, not per request
    if (!middleware) {
      middleware = cors({
        origin: origins === '*' ? '*' : [...origins],
        allowMethods: ['GET', 'POST', 'OPTIONS'],
        allowHeaders: ['Authorization', 'Content-Type'],
        exposeHeaders: ['Retry-After'],
        maxAge: 600,
      })
      middlewares.set(key, middleware)
    }
    return middleware(c, next)
  }
}
