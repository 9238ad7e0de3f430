/**
 * One engine per isolate, loaded on first use. The promise is shared, so concurrent first
 * requests cause one load; a failed load is dropped, so the next request tries again
 * (core/memoize-load.ts).
 */
import { AppError, isAppError } from '../core/errors.ts'
import { memoizeLoad } from '../core/memoize-load.ts'
import { QwenEngine, type EngineOptions } from './engine.ts'
import type { PackageHandle } from './package/loader.ts'
import type { LoadedPackage } from './package/model-package.ts'

export type EngineLoader = () => Promise<QwenEngine>

export function createEngineHost(
  load: () => Promise<LoadedPackage | PackageHandle>,
  options: EngineOptions = {},
): EngineLoader {
  const engine = memoizeLoad(() =>
    loadEngine(load, options).catch((err: unknown) => {
      throw isAppError(err)
        ? err
        : new AppError('model_unavailable', 'The model failed to load; retry later', { cause: err })
    }),
  )
  return () => engine('model')
}

async function loadEngine(
  load: () => Promise<LoadedPackage | PackageHandle>,
  options: EngineOptions,
) {
  // `pkg` (a handle whose weights stream into the kernels, or graph + weights, hundreds of MB) is
  // only referenced here: once the model owns the weights in WASM memory, this frame ends and
  // any JS copy can be collected.
  const pkg = await load()
  return QwenEngine.create(pkg, options)
}
