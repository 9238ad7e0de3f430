/**
 * Watches the caller's `getEngine` so /health can tell idle, loading, ready and failed apart
 * when the runtime entry does not report a load state itself.
 */
import type { Context, Env } from 'hono'
import { AppError, isAppError } from '../core/errors.ts'
import type { Engine } from '../engine/types.ts'
import type { LoadState } from './route-deps.ts'

export interface TrackedEngine<E extends Env> {
  getEngine(c: Context<E>): Promise<Engine>
  loadState(): LoadState
}

export function trackEngineLoad<E extends Env>(
  getEngine: (c: Context<E>) => Promise<Engine>,
): TrackedEngine<E> {
  let state: LoadState = { state: 'idle' }
  let inFlight = 0
  return {
    loadState: () => state,
    getEngine(c) {
      if (state.state !== 'ready') state = { state: 'loading' }
      inFlight++
      let pending: Promise<Engine>
      try {
        pending = Promise.resolve(getEngine(c))
      } catch (err) {
        pending = Promise.reject(err)
      }
      return pending.then(
        (engine) => {
          inFlight--
          state = { state: 'ready', loadMs: engine.info.loadMs }
          return engine
        },
        (err: unknown) => {
          inFlight--
          const e = asLoadError(err)
          // another call may be retrying the load already: it is still loading then;
          // `model_loading` says the same (the caller loads in the background)
          if (state.state !== 'ready' && inFlight === 0) {
            state =
              e.code === 'model_loading'
                ? { state: 'loading' }
                : { state: 'failed', error: e.message }
          }
          throw e
        },
      )
    },
  }
}

/** A load failure the client may see: AppErrors as they are, anything else logged and hidden. */
function asLoadError(err: unknown): AppError {
  if (isAppError(err)) return err
  console.error('model load failed', err)
  return new AppError('model_unavailable', 'The model failed to load; retry later', { cause: err })
}
