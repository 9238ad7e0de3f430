/**
 * What the stage Worker's bundle (stage-worker.ts) gets in place of onnxruntime-web: a stage runs
 * the engine's own kernels only, and onnxruntime-web (its JavaScript and its 10 MB wasm) would
 * only add to a 128 MB isolate. The engine's one import of it (graph/ort.ts) sets `env` when
 * loaded; nothing in a stage builds a Tensor, and this one says so if anything ever does.
 */
export const env = { wasm: {}, logLevel: 'error' }

export class Tensor {
  constructor() {
    throw new Error('onnxruntime-web is not part of a stage Worker')
  }
}
