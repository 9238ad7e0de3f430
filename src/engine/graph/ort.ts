/**
 * The one import of onnxruntime-web. The self-contained `/wasm` bundle runs unchanged on Node,
 * Deno and (with the precompiled module handed in by the Workers adapter) on workerd.
 */
import '../wasm/memory.ts' // counts ORT's memory: before ORT instantiates anything
import * as ort from 'onnxruntime-web/wasm'

// WASM CPU, one thread: Workers have no threads, and on a 2-core server one session per
// isolate keeps the other core for the HTTP side and for a second isolate.
ort.env.wasm.numThreads = 1
ort.env.wasm.proxy = false
ort.env.logLevel = 'error'

export { ort }
export type Tensor = ort.Tensor
export type InferenceSession = ort.InferenceSession
