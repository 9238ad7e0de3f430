/**
 * One engine per isolate, loaded on first use. The promise is shared, so concurrent first
 * requests cause one load; a failed load is dropped, so the next request tries again.
 */
import { AppError, isAppError } from '../core/errors.ts'
import { QwenEngine, type EngineOptions } from './engine.ts'
import type { LoadedPackage } from './package/model-package.ts'

export type EngineLoader = () => Promise<QwenEngine>

export function createEngineHost(
  load: () => Promise<LoadedPackage>,
  options: EngineOptions = {},
): EngineLoader {
  let pending: Promise<QwenEngine> | undefined
  return () => {
    pending ??= loadEngine(load, options).catch((err: unknown) => {
      pending = undefined
      throw isAppError(err)
        ? err
        : new AppError('model_unavailable', 'The model failed to load; retry later', { cause: err })
    })
    return pending
  }
}

async function loadEngine(load: () => Promise<LoadedPackage>, options: EngineOptions) {
  // `pkg` (graph + weights, hundreds of MB) is only referenced here: once the session owns the
  // weights in WASM memory, this frame ends and the JS copy can be collected.
  const pkg = await load()
  return QwenEngine.create(pkg, options)
}
