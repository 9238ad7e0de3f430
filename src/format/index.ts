/**
 * The model package format: what the model toolchain writes and the engine's package loader
 * reads. The toolchain (scripts/) imports the runtime only through this module.
 * @module
 */
export * from './config.ts'
export * from './decoder-weights.ts'
export * from './manifest.ts'
export * from './names.ts'
export { parseManifest } from './parse.ts'
export * from './pipeline.ts'
export * from './q4-b32.ts'
export * from './q8-rows.ts'
export * from './quant.ts'
