/**
 * The bench's WASM memory counter is the engine's own (src/engine/wasm/memory.ts). Import this
 * module before any WASM module is instantiated (transformers.js, onnxruntime-node's peers).
 */
export { wasmMemoryBytes } from '../../src/engine/wasm/memory.ts'
