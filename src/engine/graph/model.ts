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
 * A package prepared with its head split off (head.ts) instead has
 *   inputs_embeds               f32 [batch, seq, hidden]       (tied weights: embedding in head.ts)
 * → hidden_states               f32 [batch, num_logits_to_keep, hidden]   (lm_head in head.ts)
 * Feeds are built from `session.inputNames`, so either variant works. `forward` runs one
 * sequence (batch 1); `forwardBatch` runs one new token for each of several sequences
 * (continuous batching of concurrent decodes, see batcher.ts). `decode` is the decode step the
 * batcher uses: in the package's own decoder (decoder.ts) when it has one, else in the graph.
 */
import { AppError } from '../../core/errors.ts'
import type { ForwardModel, ModelShape, StepResult } from '../forward.ts'
import type { KvCache } from '../kv/kv-cache.ts'
import { Q8Decoder, type DecoderOptions } from '../wasm/decoder.ts'
import { Q8Head } from '../wasm/head.ts'
import type { LoadedPackage } from '../package/model-package.ts'
import { qwen2Shape, type Qwen2Config } from '../../format/index.ts'
import { ort, type InferenceSession, type Tensor } from './ort.ts'

export class QwenModel implements ForwardModel {
  readonly shape: ModelShape
  private readonly hasPositionIds: boolean
  private readonly hasLogitsToKeep: boolean
  /** The graph takes `inputs_embeds` (looked up by `head`) rather than computing them. */
  private readonly feedsEmbeds: boolean
  private readonly hidden: number
  /** Several sequences of different lengths can share a run (left padding needs position_ids). */
  readonly canBatch: boolean
  /** Decode steps run in the decoder, whose batched rows equal the rows run alone. */
  readonly exactBatches: boolean
  readonly paths: ForwardModel['paths']
  /** present.{i}.key → past_key_values.{i}.key */
  private readonly presentToPast: [string, string][]
  private readonly empty: KvCache

  private constructor(
    readonly session: InferenceSession,
    config: Qwen2Config,
    /** The lm_head outside the graph (a package with a `head`); undefined: the graph's logits. */
    readonly head?: Q8Head,
    /** The decode step outside the graph (a package with a `decoder`, decoder.ts). */
    readonly decoder?: Q8Decoder,
  ) {
    const names = new Set(session.inputNames)
    for (const required of ['input_ids', 'attention_mask']) {
      if (!names.has(required)) {
        throw new AppError('model_invalid', `The ONNX graph has no "${required}" input`)
      }
    }
    const output = head ? 'hidden_states' : 'logits'
    if (!session.outputNames.includes(output)) {
      throw new AppError(
        'model_invalid',
        head
          ? 'The package has a head file but its ONNX graph has no "hidden_states" output'
          : session.outputNames.includes('hidden_states')
            ? 'The ONNX graph ends in "hidden_states" but the package has no head file'
            : 'The ONNX graph has no "logits" output',
      )
    }
    this.hidden = config.hidden_size
    this.feedsEmbeds = names.has('inputs_embeds')
    if (this.feedsEmbeds && !head?.embedding) {
      throw new AppError(
        'model_invalid',
        'The ONNX graph takes "inputs_embeds" but the package has no embedding rows',
      )
    }
    if (head && (head.vocab !== config.vocab_size || head.hidden !== config.hidden_size)) {
      throw new AppError('model_invalid', 'The head file does not match config.json')
    }
    this.hasPositionIds = names.has('position_ids')
    this.hasLogitsToKeep = names.has('num_logits_to_keep')
    this.canBatch = this.hasPositionIds || decoder !== undefined
    this.exactBatches = decoder !== undefined
    this.paths = { prefill: 'graph', decode: decoder ? 'decoder' : 'graph' }
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
    const head = pkg.head ? await Q8Head.create(pkg.head) : undefined
    // the decoder takes each token's embedding from the head file (tied weights); a package it
    // cannot run decodes in the graph (health shows decode.path)
    const shape = qwen2Shape(pkg.config)
    const decoder =
      pkg.decoder && head?.embedding && options.decoder !== false && !Q8Decoder.unsupported(shape)
        ? await Q8Decoder.create(pkg.decoder, shape, head, { kvFormat: options.kvFormat })
        : undefined
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
    try {
      const model = new QwenModel(session, pkg.config, head, decoder)
      if (decoder && model.pastType !== 'float32') {
        throw new AppError('model_invalid', 'The decoder needs a float32 KV cache')
      }
      return model
    } catch (err) {
      await session.release()
      throw err
    }
  }

  /** The element type of the graph's KV inputs. */
  private get pastType(): string {
    const first = Object.values(this.empty.tensors)[0]
    return first?.type ?? 'float32'
  }

  emptyCache(): KvCache {
    return this.empty
  }

  /**
   * Runs `ids` after the cached tokens and returns the logits of the last `keep` positions
   * (0: none, for a prefill chunk that is not the last), of every vocabulary entry or only of
   * `columns`. The caller serialises calls (one ORT run at a time per session; scheduler.ts).
   */
  async forward(
    ids: readonly number[],
    cache: KvCache,
    keep = 1,
    columns?: readonly number[],
  ): Promise<StepResult> {
    const n = ids.length
    if (n === 0) throw new Error('forward needs at least one token')
    keep = Math.max(0, Math.min(keep, n))
    const total = cache.length + n
    const feeds: Record<string, Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
      ...cache.tensors,
    }
    if (this.feedsEmbeds) {
      feeds.inputs_embeds = new ort.Tensor('float32', this.head!.embed(ids), [1, n, this.hidden])
    }
    if (this.hasPositionIds) {
      const pos = new BigInt64Array(n)
      for (let i = 0; i < n; i++) pos[i] = BigInt(cache.length + i)
      feeds.position_ids = new ort.Tensor('int64', pos, [1, n])
    }
    if (this.hasLogitsToKeep) {
      // a graph cannot keep 0 rows: the one row it computes is dropped below
      feeds.num_logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(BigInt(keep || 1)), [])
    }
    const out = await this.session.run(feeds)
    const tensors: Record<string, Tensor> = {}
    for (const [present, past] of this.presentToPast) tensors[past] = out[present]
    const cacheOut = { length: total, tensors }
    if (keep === 0) return { logits: new Float32Array(0), rows: 0, cache: cacheOut }
    if (this.head) {
      const hidden = out.hidden_states
      const data = hidden.data as Float32Array
      const from = (hidden.dims[1] - keep) * this.hidden
      const logits =
        columns && keep === 1
          ? this.head.columns(data, columns, from)
          : pickColumns(this.head.logits(data, keep, from), this.shape.vocabSize, columns)
      return { logits, rows: keep, cache: cacheOut }
    }
    const logits = out.logits
    const rowsOut = logits.dims[1]
    const vocab = logits.dims[2]
    let data = toFloat32(logits)
    if (rowsOut > keep) {
      // The export computed every position: keep only what was asked for, and let the
      // [seq, vocab] block go (a copy of `keep` rows is far smaller than holding the block).
      data = data.slice((rowsOut - keep) * vocab, rowsOut * vocab)
    }
    return { logits: pickColumns(data, vocab, columns), rows: keep, cache: cacheOut }
  }

  /**
   * One new token for each of several sequences in ONE run: the weights are read once for the
   * whole batch, which is what a decode step on WASM is bound by. Caches of different lengths are left-padded to the longest (masked out by
   * attention_mask; position_ids keep each row's true positions), and each row's present is cut
   * back to its own length, but only when read: while the batch stays the same (the same
   * sequences, in the same order), each run is fed the last run's present as it is. A batch that
   * changes pays the two copies, about 24 KiB per cached token per sequence at 0.5B shapes.
   *
   * With q8 `DynamicQuantizeMatMul` the activations of the whole batch share one quantization
   * scale, so a row's logits differ slightly from the same step run alone (fp32 agrees to 1e-5).
   */
  async forwardBatch(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]> {
    const b = tokens.length
    if (b !== caches.length || b === 0) throw new Error('forwardBatch needs one cache per token')
    if (b === 1) return [await this.forward(tokens, caches[0], 1)]
    if (!this.canBatch) throw new Error('this graph has no position_ids: it cannot batch')
    let longest = 0
    for (const c of caches) longest = Math.max(longest, c.length)
    const total = longest + 1
    const mask = new BigInt64Array(b * total)
    const pos = new BigInt64Array(b)
    for (let r = 0; r < b; r++) {
      mask.fill(1n, r * total + longest - caches[r].length, (r + 1) * total)
      pos[r] = BigInt(caches[r].length)
    }
    const feeds: Record<string, Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [b, 1]),
      attention_mask: new ort.Tensor('int64', mask, [b, total]),
      position_ids: new ort.Tensor('int64', pos, [b, 1]),
    }
    if (this.feedsEmbeds) {
      feeds.inputs_embeds = new ort.Tensor('float32', this.head!.embed(tokens), [b, 1, this.hidden])
    }
    const { kvHeads, headDim } = this.shape
    // The same batch as the last run, in the same order: its present tensors are already this
    // run's past in the padded layout (every row grew by one, so the widest row fills it).
    const last = caches[0] instanceof BatchRowCache ? caches[0].batch : undefined
    const sameBatch =
      last !== undefined &&
      last.rows.length === b &&
      last.width === longest &&
      caches.every((c, r) => c === last.rows[r])
    for (const [, past] of this.presentToPast) {
      if (sameBatch) {
        feeds[past] = last.present[past]
        continue
      }
      const first = caches[0].tensors[past]
      const out = newLike(first.data as KvData, b * kvHeads * longest * headDim)
      for (let r = 0; r < b; r++) {
        const len = caches[r].length
        const src = caches[r].tensors[past].data as KvData
        for (let h = 0; h < kvHeads; h++) {
          const to = ((r * kvHeads + h) * longest + longest - len) * headDim
          out.set(src.subarray(h * len * headDim, (h + 1) * len * headDim), to)
        }
      }
      feeds[past] = new ort.Tensor(first.type as 'float32', out as Float32Array, [
        b,
        kvHeads,
        longest,
        headDim,
      ])
    }
    if (this.hasLogitsToKeep) {
      feeds.num_logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(1n), [])
    }
    const out = await this.session.run(feeds)
    const vocab = this.shape.vocabSize
    let logits: Float32Array
    let rowsOut: number
    if (this.head) {
      // one row per sequence ([b, 1, hidden]): the head reads its weights once for all of them
      const hidden = out.hidden_states
      rowsOut = 1
      if (hidden.dims[1] !== 1) throw new Error('forwardBatch expects one hidden row per sequence')
      logits = this.head.logits(hidden.data as Float32Array, b)
    } else {
      logits = toFloat32(out.logits)
      rowsOut = out.logits.dims[1]
    }
    const present: Record<string, Tensor> = {}
    for (const [name, past] of this.presentToPast) present[past] = out[name]
    const batch: BatchKv = { present, width: total, rows: [] }
    const results: StepResult[] = []
    for (let r = 0; r < b; r++) {
      const len = caches[r].length + 1
      // a row's own tensors are cut out of the batch only when something reads them (the
      // sequence leaves the batch, or its cache is kept): the next run of the same batch feeds
      // `present` as it is, without copying it apart and back together
      const cut = () => {
        const tensors: Record<string, Tensor> = {}
        for (const [, past] of this.presentToPast) {
          const t = present[past]
          const src = t.data as KvData
          const mine = newLike(src, kvHeads * len * headDim)
          for (let h = 0; h < kvHeads; h++) {
            const from = ((r * kvHeads + h) * total + total - len) * headDim
            mine.set(src.subarray(from, from + len * headDim), h * len * headDim)
          }
          tensors[past] = new ort.Tensor(t.type as 'float32', mine as Float32Array, [
            1,
            kvHeads,
            len,
            headDim,
          ])
        }
        return tensors
      }
      const cache = new BatchRowCache(len, batch, cut)
      batch.rows.push(cache)
      const row = (r * rowsOut + rowsOut - 1) * vocab
      results.push({ logits: logits.subarray(row, row + vocab), rows: 1, cache })
    }
    return results
  }

  /**
   * One decode step (one new token) for each of one or more sequences: in the decoder when the
   * package has one (decoder.ts; the caches it returns live in its memory, give them back with
   * `releaseCache`), else in the graph (`forward`, `forwardBatch`).
   */
  async decode(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]> {
    if (this.decoder) {
      return this.decoder
        .step(tokens, caches)
        .map((r) => ({ logits: r.logits, rows: 1, cache: r.cache }))
    }
    if (tokens.length === 1) return [await this.forward(tokens, caches[0], 1)]
    return this.forwardBatch(tokens, caches)
  }

  /** A cache nothing will step or read again: its memory in the decoder is given back now. */
  releaseCache(cache: KvCache): void {
    this.decoder?.release(cache)
  }

  async release(): Promise<void> {
    await this.session.release()
  }
}

/** `rows` × vocab → `rows` × columns.length (no copy without columns). */
function pickColumns(
  logits: Float32Array,
  vocab: number,
  columns: readonly number[] | undefined,
): Float32Array {
  if (!columns) return logits
  const rows = logits.length / vocab
  const out = new Float32Array(rows * columns.length)
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < columns.length; i++)
      out[r * columns.length + i] = logits[r * vocab + columns[i]]
  }
  return out
}

/** The present tensors of one batched run: [rows, kv_heads, width, head_dim], left-padded. */
interface BatchKv {
  present: Record<string, Tensor>
  width: number
  rows: BatchRowCache[]
}

/** One sequence's cache inside a batched run's present; its own tensors are cut out lazily. */
class BatchRowCache implements KvCache {
  private own?: Record<string, Tensor>

  constructor(
    readonly length: number,
    readonly batch: BatchKv,
    private readonly cut: () => Record<string, Tensor>,
  ) {}

  get tensors(): Record<string, Tensor> {
    return (this.own ??= this.cut())
  }

  detach(): KvCache {
    return { length: this.length, tensors: this.tensors }
  }
}

export interface SessionOptions extends DecoderOptions {
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all'
  /** Decode steps in the package's decoder (decoder.ts) when it has one; default true. */
  decoder?: boolean
}

/** KV data: float32, or float16 as Uint16Array (Node 20) or Float16Array (workerd, Deno). */
type KvData = Float32Array | Uint16Array

function newLike(data: KvData, length: number): KvData {
  return new (data.constructor as new (n: number) => KvData)(length)
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
