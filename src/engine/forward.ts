/**
 * The model as the serving layer drives it: forward runs of prompt chunks and decode steps over
 * KV caches. Two implementations: the ONNX graph on onnxruntime-web (graph/model.ts, with the
 * engine's decoder for decode steps when the package maps it), and the engine's own kernels
 * alone (wasm/kernel-model.ts: prompts and decode steps, no onnxruntime session and so one copy
 * of the weights). load-model.ts picks one.
 */
import { qwen2Shape, type Qwen2Config } from '../format/index.ts'
import type { KvCache } from './kv/kv-cache.ts'
import type { StageReport } from './types.ts'
import type { Q8Decoder } from './wasm/decoder.ts'
import type { Q8Head } from './wasm/head.ts'

export interface StepResult {
  /**
   * `rows` × vocab logits for the last `rows` positions, most recent last; with `columns`, only
   * those vocabulary entries (`rows` × columns.length); empty for `keep` 0.
   */
  logits: Float32Array
  rows: number
  cache: KvCache
}

export interface ModelShape {
  vocabSize: number
  layers: number
  kvHeads: number
  headDim: number
}

/** A model's shape as config.json gives it (a graph may count its layers from its inputs). */
export function modelShape(c: Qwen2Config): ModelShape {
  const s = qwen2Shape(c)
  return { vocabSize: s.vocab, layers: s.layers, kvHeads: s.kvHeads, headDim: s.headDim }
}

/** Where a kind of forward run happens: the engine's kernels, or onnxruntime-web's graph. */
export type RunPath = 'decoder' | 'graph'

export interface ForwardModel {
  readonly shape: ModelShape
  /** Several sequences of different lengths can share a decode run. */
  readonly canBatch: boolean
  /** Each row of a batched decode run is exactly that row's step alone. */
  readonly exactBatches: boolean
  /** Where prompt chunks and decode steps run. */
  readonly paths: { prefill: RunPath; decode: RunPath }
  /** The engine's decoder, when decode steps run in it (its memory and sequences). */
  readonly decoder?: Q8Decoder
  /** The lm_head (and tied embedding) in the engine's kernels, when the package splits it off. */
  readonly head?: Q8Head
  emptyCache(): KvCache
  /**
   * Runs `ids` after the cached tokens; the logits of the last `keep` positions (0: none), of
   * every vocabulary entry or only of `columns`. The caller serialises calls (scheduler.ts).
   */
  forward(
    ids: readonly number[],
    cache: KvCache,
    keep?: number,
    columns?: readonly number[],
  ): Promise<StepResult>
  /** One new token for each of several sequences in one run. */
  forwardBatch(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]>
  /** One decode step for each of one or more sequences, where decode steps run. */
  decode(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]>
  /** A package split into stages: each stage as it last answered (pipeline-model.ts). */
  readonly stageReports?: () => StageReport[]
  /** A package split into stages: the median of `rounds` empty round trips to each stage. */
  readonly probeStages?: (rounds: number) => Promise<number[]>
  /** A package split into stages: resolves when every call made to the stages is answered. */
  settled?(): Promise<void>
  /** A cache nothing will step or read again: memory it holds is given back now. */
  releaseCache(cache: KvCache): void
  /**
   * Logits this model returned (a `StepResult`'s, whole) that nothing will read again: their
   * memory may go back now instead of at the next collection (the array is then empty).
   */
  releaseLogits?(logits: Float32Array): void
  release(): Promise<void>
}
