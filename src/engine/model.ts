/**
 * A Qwen2-architecture decoder on onnxruntime-web: one forward step with a KV cache.
 *
 * Graph signature (Optimum / onnx-community exports and this project's generator):
 *   input_ids                   int64 [batch, seq]
 *   attention_mask              int64 [batch, past + seq]
 *   position_ids                int64 [batch, seq]            (optional in some exports)
 *   past_key_values.{i}.key     f32|f16 [batch, kv_heads, past, head_dim]
 *   past_key_values.{i}.value   f32|f16 [batch, kv_heads, past, head_dim]
 *   num_logits_to_keep          int64 scalar                   (optional)
 * → logits                      f32|f16 [batch, seq or num_logits_to_keep, vocab]
 * → present.{i}.key|value       [batch, kv_heads, past + seq, head_dim]
 * Feeds are built from `session.inputNames`, so either variant works. Batch is always 1.
 */
import { AppError } from '../core/errors.ts'
import type { LoadedPackage, Qwen2Config } from './model-package.ts'
import { ort, type InferenceSession, type Tensor } from './ort.ts'

/** The KV cache of one sequence. Immutable: a step returns a new cache, the old one stays valid. */
export interface KvCache {
  /** Tokens already in the cache. */
  readonly length: number
  /** Keyed by input name: past_key_values.{i}.key|value → [1, kv_heads, length, head_dim]. */
  readonly tensors: Readonly<Record<string, Tensor>>
}

export interface StepResult {
  /** `rows` × vocab logits for the last `rows` positions, most recent last. */
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

export class QwenModel {
  readonly shape: ModelShape
  private readonly hasPositionIds: boolean
  private readonly hasLogitsToKeep: boolean
  /** present.{i}.key → past_key_values.{i}.key */
  private readonly presentToPast: [string, string][]
  private readonly empty: KvCache

  private constructor(
    readonly session: InferenceSession,
    config: Qwen2Config,
  ) {
    const names = new Set(session.inputNames)
    for (const required of ['input_ids', 'attention_mask']) {
      if (!names.has(required)) {
        throw new AppError('model_invalid', `The ONNX graph has no "${required}" input`)
      }
    }
    if (!session.outputNames.includes('logits')) {
      throw new AppError('model_invalid', 'The ONNX graph has no "logits" output')
    }
    this.hasPositionIds = names.has('position_ids')
    this.hasLogitsToKeep = names.has('num_logits_to_keep')
    const pastNames = session.inputNames.filter((n) => n.startsWith('past_key_values.'))
    this.presentToPast = pastNames.map((n) => [n.replace('past_key_values.', 'present.'), n])
    for (const [present] of this.presentToPast) {
      if (!session.outputNames.includes(present)) {
        throw new AppError('model_invalid', `The ONNX graph has no "${present}" output`)
      }
    }
    const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads
    this.shape = {
      vocabSize: config.vocab_size,
      layers: pastNames.length / 2,
      kvHeads: config.num_key_value_heads,
      headDim,
    }
    const tensors: Record<string, Tensor> = {}
    for (const name of pastNames) {
      const meta = session.inputMetadata.find((m) => m.name === name)
      const type = meta?.isTensor ? meta.type : 'float32'
      const dims = [1, this.shape.kvHeads, 0, headDim]
      tensors[name] =
        type === 'float16'
          ? new ort.Tensor('float16', new Uint16Array(0), dims)
          : new ort.Tensor('float32', new Float32Array(0), dims)
    }
    this.empty = { length: 0, tensors }
  }

  /** Creates the ORT session. The caller drops `pkg` afterwards so the JS copy can be freed. */
  static async load(pkg: LoadedPackage, options: SessionOptions = {}): Promise<QwenModel> {
    let session: InferenceSession
    try {
      session = await ort.InferenceSession.create(pkg.graph, {
        executionProviders: ['wasm'],
        graphOptimizationLevel: options.graphOptimizationLevel ?? 'all',
        externalData: pkg.externalData.map((f) => ({ path: f.path, data: f.data })),
        logSeverityLevel: 3,
      })
    } catch (err) {
      throw new AppError('model_invalid', `onnxruntime could not create a session for ${pkg.id}`, {
        cause: err,
      })
    }
    return new QwenModel(session, pkg.config)
  }

  emptyCache(): KvCache {
    return this.empty
  }

  /**
   * Runs `ids` after the cached tokens and returns the logits of the last `keep` positions.
   * The caller serialises calls (one ORT run at a time per session; see scheduler.ts).
   */
  async forward(ids: readonly number[], cache: KvCache, keep = 1): Promise<StepResult> {
    const n = ids.length
    if (n === 0) throw new Error('forward needs at least one token')
    keep = Math.min(keep, n)
    const total = cache.length + n
    const feeds: Record<string, Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      ...cache.tensors,
    }
    if (this.hasPositionIds) {
      const pos = new BigInt64Array(n)
      for (let i = 0; i < n; i++) pos[i] = BigInt(cache.length + i)
      feeds.position_ids = new ort.Tensor('int64', pos, [1, n])
    }
    if (this.hasLogitsToKeep) {
      feeds.num_logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(BigInt(keep)), [])
    }
    const out = await this.session.run(feeds)
    const tensors: Record<string, Tensor> = {}
    for (const [present, past] of this.presentToPast) tensors[past] = out[present]
    const logits = out.logits
    const rowsOut = logits.dims[1]
    const vocab = logits.dims[2]
    let data = toFloat32(logits)
    if (rowsOut > keep) {
      // The export computed every position: keep only what was asked for, and let the
      // [seq, vocab] block go (a copy of `keep` rows is far smaller than holding the block).
      data = data.slice((rowsOut - keep) * vocab, rowsOut * vocab)
    }
    return { logits: data, rows: keep, cache: { length: total, tensors } }
  }

  async release(): Promise<void> {
    await this.session.release()
  }
}

export interface SessionOptions {
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all'
}

/** fp16 outputs arrive as Float16Array (workerd, Deno) or Uint16Array (Node 20). */
function toFloat32(t: Tensor): Float32Array {
  const data = t.data
  if (data instanceof Float32Array) return data
  if (t.type !== 'float16') throw new AppError('model_invalid', `Unsupported logits type ${t.type}`)
  const src = data as unknown as ArrayLike<number>
  const out = new Float32Array(src.length)
  if (src instanceof Uint16Array) for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i])
  else for (let i = 0; i < src.length; i++) out[i] = src[i]
  return out
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >> 10) & 0x1f
  const frac = h & 0x3ff
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024)
  if (exp === 31) return frac ? NaN : sign * Infinity
  return sign * 2 ** (exp - 15) * (1 + frac / 1024)
}
