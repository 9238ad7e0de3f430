/**
 * The model in the engine's own kernels alone: prompt chunks (`Q8Decoder.prefill`) and decode
 * steps (`step`) in the decoder, the embedding and the lm_head in the head. No onnxruntime
 * session exists, so the layer weights are held once, in the kernels' memory; the package's
 * buffers are free to go once the decoder has packed them. Needs a package whose decoder map
 * and head (with the tied embedding) cover the whole model.
 */
import { freeBuffer } from '../../core/free-buffer.ts'
import { qwen2Shape, type Qwen2Config } from '../../format/index.ts'
import { modelShape, type ForwardModel, type ModelShape, type StepResult } from '../forward.ts'
import type { KvCache } from '../kv/kv-cache.ts'
import type { LoadedPackage } from '../package/model-package.ts'
import { Q8Decoder, type DecoderOptions } from './decoder.ts'
import { Q8Head } from './head.ts'

export class KernelModel implements ForwardModel {
  readonly shape: ModelShape
  readonly canBatch = true
  readonly exactBatches = true
  readonly paths = { prefill: 'decoder', decode: 'decoder' } as const
  private readonly empty: KvCache = { length: 0, tensors: {} }

  private constructor(
    config: Qwen2Config,
    readonly head: Q8Head,
    readonly decoder: Q8Decoder,
  ) {
    this.shape = modelShape(config)
  }

  /**
   * Why a package cannot run in the kernels alone, or undefined if it can: a loaded package, or
   * its manifest before its weights are read (the same fields: head, decoder, config).
   */
  static unsupported(pkg: {
    config: Qwen2Config
    head?: { embedding: boolean }
    decoder?: object
  }): string | undefined {
    if (!pkg.head?.embedding) return 'the package has no head file with the tied embedding'
    if (!pkg.decoder) return 'the package has no decoder map'
    return Q8Decoder.unsupported(qwen2Shape(pkg.config))
  }

  /** A model of a head and a decoder already filled (kernel-loader.ts). */
  static of(config: Qwen2Config, head: Q8Head, decoder: Q8Decoder): KernelModel {
    if (!decoder.complete) throw new Error('KernelModel.of: the decoder is not complete')
    return new KernelModel(config, head, decoder)
  }

  /** Packs the head and the layers into the kernels. The caller drops `pkg` afterwards. */
  static async load(pkg: LoadedPackage, options: DecoderOptions = {}): Promise<KernelModel> {
    const why = KernelModel.unsupported(pkg)
    if (why) throw new Error(`KernelModel: ${why}`)
    const head = await Q8Head.create(pkg.head!)
    const decoder = await Q8Decoder.create(pkg.decoder!, qwen2Shape(pkg.config), head, options)
    return new KernelModel(pkg.config, head, decoder)
  }

  emptyCache(): KvCache {
    return this.empty
  }

  async forward(
    ids: readonly number[],
    cache: KvCache,
    keep = 1,
    columns?: readonly number[],
  ): Promise<StepResult> {
    return this.decoder.prefill(ids, cache, keep, columns)
  }

  forwardBatch(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]> {
    return this.decode(tokens, caches)
  }

  async decode(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]> {
    return this.decoder
      .step(tokens, caches)
      .map((r) => ({ logits: r.logits, rows: 1, cache: r.cache }))
  }

  /**
   * Every logits array this model returns is a new array of its own (the head copies the rows
   * out of its memory), so a caller done with one may free it.
   */
  releaseLogits(logits: Float32Array): void {
    if (logits.byteOffset === 0 && logits.byteLength === logits.buffer.byteLength)
      freeBuffer(logits.buffer)
  }

  releaseCache(cache: KvCache): void {
    this.decoder.release(cache)
  }

  async release(): Promise<void> {}
}
