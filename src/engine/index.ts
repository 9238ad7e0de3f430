/**
 * The engine as the runtime adapters see it: build one from a model package, read its settings
 * from the environment, and the model sources it can load from. The HTTP layer depends only on
 * the contract (./types.ts), which this module re-exports.
 * @module
 */
export * from './types.ts'
export * from './limits.ts'
export { QwenEngine, type EngineOptions } from './engine.ts'
export { createEngineHost, type EngineLoader } from './host.ts'
export { engineOptionsFromEnv, kvFormatFromEnv } from './env.ts'
export { installMacrotask } from './serve/macrotask.ts'
export { installSha256, type Sha256Hash } from './package/sha256.ts'
export {
  loadPackage,
  openPackage,
  type LoadPackageOptions,
  type LoadProgress,
  type PackageHandle,
} from './package/loader.ts'
export type { LoadedPackage } from './package/model-package.ts'
export { httpSource, type HttpSourceOptions } from './package/sources/http-source.ts'
export { SourceError, type ModelSource, type SourceObject } from './package/sources/model-source.ts'
export { relaxedSimdSupported, useKernelModules } from './wasm/kernel.ts'
export {
  ModelStage,
  type StageApi,
  type StageGroup,
  type StageOp,
  type StageState,
} from './pipeline/stage.ts'
export { passOver, type PassReply, type PassRequest, type StagePass } from './pipeline/pass.ts'
export { AppError, isAppError, type ErrorCode } from '../core/errors.ts'
export { ort } from './graph/ort.ts'
