/**
 * The model's decoder layers in the engine's own kernels, without onnxruntime: decode steps (one
 * new token for each of one or more sequences) and prompt chunks (`prefill`, the rows of one
 * sequence). A decode step is a matrix-vector product per weight matrix, bound by reading the
 * weights, which the kernels (kernel.ts) stream from rows packed once at load.
 *
 * The matrices keep the format the package holds them in: a q8 graph's DynamicQuantizeMatMul
 * operands become 'q8-rows' (int16 activations, one scale per row), a q4 graph's MatMulNBits
 * operands become 'q4-b32' (repacked, every value unchanged; int8 activations with one scale
 * per block of 32, as llama.cpp pairs q4_0 weights with q8_0 activations, so one outlier channel
 * cannot flatten the rest of its row).
 *
 * What it computes is the graph's arithmetic (Qwen2: RMSNorm, q/k/v with bias, rotate-half RoPE,
 * grouped-query causal attention, o, SiLU-gated MLP, residuals, final RMSNorm), with one
 * difference: activations are quantized per row (or per block of a row), where the q8 graph
 * quantizes to uint8 with one scale per run. So a row's result does not depend on the other rows
 * of its batch (a prompt chunk gives exactly the logits of stepping it token by token).
 *
 * The KV cache of a decoding sequence lives in the kernel's memory (a `Sequence`: per layer,
 * key and value, per KV head, `capacity` positions of head_dim floats, or with KV_FORMAT q8 of
 * head_dim int8 and a scale, kv-format.ts) and grows in place: a step appends one position.
 * Caches stay immutable to their users: a `ResidentCache` is the first `length` positions of
 * its sequence, which later steps never overwrite; stepping a cache that is not its sequence's
 * newest forks a copy. A sequence's memory is given back when its stream ends (`release`), or
 * else when it is garbage collected. Reading `tensors` copies the cache out in the graph's
 * layout, for prefill or for keeping (turn-cache.ts).
 *
 * Memory layout (one kernel instance per model):
 *   per layer: qkv, o, gate+up, down as 'q8-rows' matrices (rows of int8, stride a multiple of
 *   32, int8 zero point and f32 scale per row) or 'q4-b32' ones (in the kernels' placement:
 *   panels of 4 rows, q4-b32.ts), then the activations' rows,
 *   then the KV arena (grows; scratch takes blocks of it).
 */
import { AppError } from '../../core/errors.ts'
import {
  nbitsSymmetric,
  packMatMulNBitsInto,
  q4Blocks,
  q4PlacedBytes,
  type DecoderFormat,
  type DecoderLayerData,
  type DecoderMatrixData,
  type DecoderWeights,
  type DqmmMatrixData,
  type KvFormat,
  type NBitsMatrixData,
  type Qwen2Shape,
} from '../../format/index.ts'
import { a16Limit } from './activations.ts'
import type { Q8Head } from './head.ts'
import { instantiateEngine, type KernelBuild, type KernelExports, type RowsArgs } from './kernel.ts'
import { KvArena, type KvSequence } from './kv-arena.ts'
import {
  keyOutlierChannels,
  readKeyRecord,
  readQ8Record,
  writeKeyRecord,
  writeQ8Record,
  writeQueryI16,
} from './kv-format.ts'
import type { KeptKvCache, KvCache } from '../kv/kv-cache.ts'
import { ort, type Tensor } from '../graph/ort.ts'

/** The model's shape as the decoder layers need it (the vocabulary is the head's). */
export type DecoderShape = Omit<Qwen2Shape, 'vocab'>

/** How a decoder is set up beyond its weights. */
export interface DecoderOptions {
  /** How the KV cache stores a position ('f32', the default, or 'q8': kv-format.ts). */
  kvFormat?: KvFormat
  /**
   * 'nbits' layers: every matrix's zero points are 8 (none in the package: format
   * decoder-weights.ts `decoderSymmetric`), so they take q4-b32's symmetric layout (80-byte
   * groups) and the q4s kernels. A matrix written with other zero points is refused.
   */
  q4Symmetric?: boolean
}

/** A q8-rows matrix in kernel memory: `rows` outputs of `cols` inputs. */
interface Q8Matrix {
  kind: 'q8'
  w: number
  stride: number
  zp: number
  scale: number
  rows: number
  cols: number
}

/**
 * A q4-b32 matrix in kernel memory: `rows` outputs of `cols` inputs, `kb` blocks a row; `sym`:
 * in the symmetric layout (every zero point 8, none stored; q4s_gemv, q4s_gemm).
 */
interface Q4Matrix {
  kind: 'q4'
  w: number
  kb: number
  rows: number
  cols: number
  sym: boolean
}

type Matrix = Q8Matrix | Q4Matrix

/** Where a layer's matrices and small vectors (f32: norms' weights, the q, k, v biases) are. */
interface LayerPlan {
  qkv: Matrix
  o: Matrix
  gateUp: Matrix
  down: Matrix
  /** Byte offsets: q, k, v biases back to back (zeros where the graph has none); the norms. */
  qkvBias: number
  inputNorm: number
  postNorm: number
}

interface Layer extends LayerPlan {
  /** q8 KV: per KV head, the key channels its records keep apart (kv-format.ts). */
  keyChannels: number[][]
}

const ROW_ALIGN = 32
const MATRICES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const
/**
 * Activation rows a q4 product quantizes and multiplies at a time: the engine's prompt chunk
 * (128 tokens) in one pass over the weights, where 64 took two. First token of a 512-token
 * prompt on the 0.5B q4 package, processes in turns, medians of 9: Node 24 3,457 → 3,227 ms,
 * Deno 3,555 → 3,490 ms (each pass brings every weight block from memory again; 256 rows
 * measured no better than 128). Its a8-b32 scratch: 40 bytes per 32 inputs a row, 760 KiB at
 * the 0.5B model's widest input (4864).
 */
export const Q4_ROWS = 128
/**
 * Activation rows a q8 product quantizes and multiplies at a time: batches of more than 4 go
 * through q8_gemm, which keeps a block of weight rows in cache for all of them (instead of
 * reading the whole matrix once per 4 rows). Its int16 scratch is 2 · Q8_ROWS · stride bytes.
 */
const Q8_ROWS = 32

/** The first `length` positions of a sequence. */
export class ResidentCache implements KvCache {
  private exported?: Record<string, Tensor>

  constructor(
    readonly length: number,
    readonly sequence: KvSequence,
    readonly decoder: Q8Decoder,
  ) {}

  /** The graph's layout, copied out (once per cache). */
  get tensors(): Record<string, Tensor> {
    return (this.exported ??= this.decoder.exportKv(this.sequence, this.length))
  }

  detach(): KvCache {
    return { length: this.length, tensors: this.tensors }
  }

  keep(): KeptCache | undefined {
    return this.decoder.keep(this)
  }
}

/**
 * A finished stream's cache kept in the decoder's memory (KvCache.keep): its sequence, fitted
 * to its length. Steps never extend it in place (they fork), releases of its stream's caches
 * leave it be, and `dispose` gives it back.
 */
export class KeptCache extends ResidentCache implements KeptKvCache {
  fork(length: number, reserve?: number): ResidentCache {
    return this.decoder.copy(this, length, reserve)
  }

  dispose(): void {
    this.sequence.arena.release(this.sequence)
  }

  override keep(): undefined {
    return undefined
  }
}

export class Q8Decoder {
  private readonly layers: Layer[] = []
  /** Where each layer's matrices go. */
  private readonly plan: LayerPlan[]
  private written = 0
  /** Bytes of the packed layers: matrices, norms' weights and biases (and the final norm). */
  readonly weightBytes: number
  private readonly qDim: number
  private readonly kvDim: number
  private readonly xAt: number
  private readonly sumAt: number
  private readonly xScaleAt: number
  /**
   * Q4_ROWS activation rows in a8-b32 for q4 matrices, and before them f32 rows (Q4_ROWS of
   * q4Stride floats) to zero-pad inputs of q4 matrices whose width is not a multiple of 32 into
   * (none: q4Stride 0, quant_b32 reads the others where they are).
   */
  private readonly q4xAt: number
  private readonly q4Stride: number
  private readonly q4aAt: number
  private readonly outStride: number
  /** Batch rows the q8 activation scratch holds; larger batches run in slices. */
  private readonly maxRows = Q8_ROWS
  private readonly invFreq: Float32Array
  /** KV caches and scratch, after the weights. */
  private readonly arena: KvArena
  /** Byte offset of the final norm's weights (the last layer's decoder), and whether written. */
  private readonly finalNormAt: number
  private finalNormWritten = false
  /** Scratch of a step (reserveScratch): byte offsets of its parts, and what it holds. */
  private outAt = 0
  private actAt = 0
  private attnAt = 0
  private normAt = 0
  private hAt = 0
  private attnRowsAt = 0
  private scratchBytes = 0
  private scratchRows = 0
  private scratchPositions = 0
  /** How the KV cache stores a position. */
  readonly kvFormat: KvFormat
  /** A key head after RoPE, before it is quantized into its record (q8 KV), and scratch. */
  private readonly keyRow: Float32Array
  private readonly keyScratch: Float32Array
  /** q8 KV: f32 slots of a key record (the most channels a head keeps apart); fixed at first use. */
  private keySlots = -1

  private constructor(
    private readonly kernel: KernelExports,
    /** Which kernel build runs (reported by /health). */
    readonly kernelBuild: KernelBuild,
    readonly shape: DecoderShape,
    /** The embedding and lm_head (absent in a pipeline stage, which takes and gives hidden rows). */
    private readonly head: Q8Head | undefined,
    /** 'dqmm': q8 layers; 'nbits': q4 layers. */
    readonly format: DecoderFormat,
    /** The layers [start, end) this decoder holds; the last layer's also applies the final norm. */
    readonly range: readonly [number, number],
    options: DecoderOptions = {},
  ) {
    const { hidden: H, intermediate: I, heads, kvHeads, headDim: D } = shape
    this.kvFormat = options.kvFormat ?? 'f32'
    this.keyRow = new Float32Array(D)
    this.keyScratch = new Float32Array(D)
    const layers = range[1] - range[0]
    this.qDim = heads * D
    this.kvDim = kvHeads * D
    const half = D / 2
    this.invFreq = Float32Array.from({ length: half }, (_, i) => 1 / shape.ropeTheta ** (i / half))
    const qkvRows = this.qDim + 2 * this.kvDim
    // weights: each fused matrix (q, k, v; gate, up) in the layers' format
    let at = 0
    let q4Cols = 0
    let q4PadCols = 0
    let q8Stride = 0
    const sym = format === 'nbits' && options.q4Symmetric === true
    const place = (rows: number, cols: number): Matrix => {
      const w = at
      if (format === 'nbits') {
        const kb = q4Blocks(cols)
        at = align(w + q4PlacedBytes(rows, kb, sym), 64)
        q4Cols = Math.max(q4Cols, 32 * kb)
        if (cols % 32) q4PadCols = Math.max(q4PadCols, 32 * kb)
        return { kind: 'q4', w, kb, rows, cols, sym }
      }
      const stride = align(cols, ROW_ALIGN)
      const zp = w + rows * stride
      const scale = align(zp + rows, 16)
      at = align(scale + 4 * rows, 64)
      q8Stride = Math.max(q8Stride, stride)
      return { kind: 'q8', w, stride, zp, scale, rows, cols }
    }
    const floats = (n: number): number => {
      const v = at
      at = align(v + 4 * n, 64)
      return v
    }
    this.plan = Array.from({ length: layers }, () => ({
      qkv: place(qkvRows, H),
      o: place(H, this.qDim),
      gateUp: place(2 * I, H),
      down: place(H, I),
      qkvBias: floats(qkvRows),
      inputNorm: floats(H),
      postNorm: floats(H),
    }))
    this.finalNormAt = floats(H)
    this.weightBytes = at
    this.outStride = Math.max(qkvRows, 2 * I, H)
    // activations: int16 rows for q8 matrices, a8-b32 blocks for q4 ones (and f32 rows to pad
    // inputs of q4 widths that are not a multiple of 32)
    this.xAt = at
    this.sumAt = align(this.xAt + 2 * this.maxRows * q8Stride, 16)
    this.xScaleAt = this.sumAt + 4 * this.maxRows
    this.q4xAt = align(this.xScaleAt + 4 * this.maxRows, 64)
    this.q4Stride = q4PadCols
    this.q4aAt = this.q4xAt + 4 * Q4_ROWS * q4PadCols
    const end = align(this.q4aAt + (Q4_ROWS * 40 * q4Cols) / 32, 64)
    this.arena = new KvArena(kernel.memory, end, { ...shape, layers, kvFormat: this.kvFormat })
  }

  /**
   * Packs the weights into a new kernel instance (the caller may drop `weights` afterwards).
   * Throws `model_invalid` if they do not have the shape's sizes.
   */
  static async create(
    weights: DecoderWeights,
    shape: DecoderShape,
    head: Q8Head,
    options: DecoderOptions = {},
  ): Promise<Q8Decoder> {
    if (weights.layers.length !== shape.layers)
      throw new AppError('model_invalid', 'The decoder weights do not match config.json')
    const kinds = new Set(weights.layers.flatMap((l) => MATRICES.map((m) => l[m].kind)))
    if (kinds.has('nbits') && kinds.size > 1)
      throw new AppError('model_invalid', 'The decoder layers mix q4 and q8 matrices')
    const format = kinds.has('nbits') ? 'nbits' : 'dqmm'
    // every zero point 8 (or none given): the symmetric layout, unless the caller said otherwise
    const q4Symmetric =
      options.q4Symmetric ??
      weights.layers.every((l) =>
        MATRICES.every((m) => {
          const d = l[m]
          return d.kind === 'nbits' && nbitsSymmetric(d.tensors)
        }),
      )
    const decoder = await Q8Decoder.allocate(shape, head, format, { ...options, q4Symmetric })
    weights.layers.forEach((l, i) => decoder.writeLayer(i, l))
    decoder.writeFinalNorm(weights.finalNorm)
    return decoder
  }

  /**
   * A decoder whose memory is laid out for layers of `format` but holds no weights yet: each
   * layer is written with `writeLayer` (in any order, as its bytes arrive: the package loader
   * streams shards into place), then the final norm. It runs once all are written.
   */
  static async allocate(
    shape: DecoderShape,
    head: Q8Head,
    format: DecoderFormat,
    options: DecoderOptions = {},
  ): Promise<Q8Decoder> {
    if (head.hidden !== shape.hidden || !head.embedding)
      throw new AppError('model_invalid', 'The decoder needs the head file with the embedding')
    return Q8Decoder.allocateLayers(shape, format, [0, shape.layers], head, options)
  }

  /**
   * A decoder of the layers [start, end) alone, for a pipeline stage: `forwardRows` takes rows
   * of the residual stream and gives them back after its layers (normalised by the final norm
   * when it holds the last layer). Written like `allocate`'s.
   */
  static async allocateLayers(
    shape: DecoderShape,
    format: DecoderFormat,
    range: readonly [number, number],
    head?: Q8Head,
    options: DecoderOptions = {},
  ): Promise<Q8Decoder> {
    const unsupported = Q8Decoder.unsupported(shape)
    if (unsupported) throw new AppError('model_invalid', unsupported)
    if (!(range[0] >= 0 && range[0] < range[1] && range[1] <= shape.layers))
      throw new AppError('model_invalid', `No decoder layers [${range}] in ${shape.layers}`)
    const { kernels, build } = await instantiateEngine()
    return new Q8Decoder(kernels, build, shape, head, format, range, options)
  }

  /** Packs layer `l`'s weights into their place. Throws `model_invalid` on a wrong size. */
  writeLayer(l: number, lw: DecoderLayerData): void {
    const { hidden: H, intermediate: I, heads, kvHeads, headDim: D } = this.shape
    const want = this.format === 'nbits' ? 'nbits' : 'dqmm'
    const expect = (m: DecoderMatrixData, k: number, n: number, what: string) => {
      if ((m.kind ?? 'dqmm') !== want)
        throw new AppError('model_invalid', `decoder ${what}: not a ${want} matrix`)
      if (m.kind === 'nbits') {
        if (m.k !== k || m.n !== n || m.tensors.bits !== 4)
          throw new AppError('model_invalid', `decoder ${what}: expected 4-bit ${k}x${n}`)
      } else {
        const perColumn = m.scale.length === n && m.zeroPoint.length === n
        const perTensor = m.scale.length === 1 && m.zeroPoint.length === 1
        if (m.k !== k || m.n !== n || m.weight.length !== k * n || !(perColumn || perTensor))
          throw new AppError('model_invalid', `decoder ${what}: expected ${k}x${n}`)
      }
      if (m.bias && m.bias.length !== n)
        throw new AppError('model_invalid', `decoder ${what}: bias of ${m.bias.length}`)
    }
    const p = this.plan[l - this.range[0]]
    if (!p) throw new AppError('model_invalid', `decoder layer ${l} is not one of this decoder's`)
    expect(lw.q, H, heads * D, `layer ${l} q`)
    expect(lw.k, H, kvHeads * D, `layer ${l} k`)
    expect(lw.v, H, kvHeads * D, `layer ${l} v`)
    expect(lw.o, heads * D, H, `layer ${l} o`)
    expect(lw.gate, H, I, `layer ${l} gate`)
    expect(lw.up, H, I, `layer ${l} up`)
    expect(lw.down, I, H, `layer ${l} down`)
    if (lw.inputNorm.length !== H || lw.postNorm.length !== H)
      throw new AppError('model_invalid', `decoder layer ${l}: norm size`)
    const mem = new Uint8Array(this.kernel.memory.buffer)
    writeMatrix(mem, p.qkv, [lw.q, lw.k, lw.v])
    writeMatrix(mem, p.o, [lw.o])
    writeMatrix(mem, p.gateUp, [lw.gate, lw.up])
    writeMatrix(mem, p.down, [lw.down])
    const f32 = this.arena.f32()
    const qkvBias = f32.subarray(p.qkvBias / 4, p.qkvBias / 4 + this.qDim + 2 * this.kvDim)
    qkvBias.fill(0)
    let row = 0
    for (const m of [lw.q, lw.k, lw.v]) {
      if (m.bias) qkvBias.set(m.bias, row)
      row += m.n
    }
    f32.set(lw.inputNorm, p.inputNorm / 4)
    f32.set(lw.postNorm, p.postNorm / 4)
    if (!this.layers[l - this.range[0]]) this.written++
    const keyBias = qkvBias.subarray(this.qDim, this.qDim + this.kvDim)
    this.layers[l - this.range[0]] = {
      ...p,
      keyChannels:
        this.kvFormat === 'q8'
          ? keyOutlierChannels(keyBias, kvHeads, D)
          : Array.from({ length: kvHeads }, () => []),
    }
  }

  writeFinalNorm(weight: Float32Array): void {
    if (weight.length !== this.shape.hidden)
      throw new AppError('model_invalid', 'The decoder weights do not match config.json')
    this.arena.f32().set(weight, this.finalNormAt / 4)
    this.finalNormWritten = true
  }

  /** Whether this decoder ends the model: its output is normalised by the final norm. */
  get last(): boolean {
    return this.range[1] === this.shape.layers
  }

  /** Every layer and (when it holds the last) the final norm are written. */
  get complete(): boolean {
    const layers = this.range[1] - this.range[0]
    return this.written === layers && (!this.last || this.finalNormWritten)
  }

  /** Why the decoder cannot run a model of this shape, or undefined if it can. */
  static unsupported(shape: DecoderShape): string | undefined {
    if (shape.headDim % 16 !== 0) return `head_dim ${shape.headDim} is not a multiple of 16`
    if (shape.heads % shape.kvHeads !== 0) return 'attention heads are not a multiple of KV heads'
    if (shape.intermediate % 4 !== 0)
      return `intermediate_size ${shape.intermediate} is not a multiple of 4`
    if (shape.hidden % 4 !== 0) return `hidden_size ${shape.hidden} is not a multiple of 4`
    return undefined
  }

  /**
   * Bytes of the arrays the decoder keeps in JS: the RoPE frequencies and the q8 KV key rows
   * (the norms' weights and the biases are in kernel memory, with the matrices).
   */
  get jsBytes(): number {
    return this.invFreq.byteLength + this.keyRow.byteLength + this.keyScratch.byteLength
  }

  /** Caps the decoder's memory (weights, scratch, KV) at `bytes`: see KvArena.limitBytes. */
  set memoryLimit(bytes: number) {
    this.arena.limitBytes = bytes
  }

  /** Bytes of WASM memory the decoder holds (weights, scratch, KV arena). */
  get memoryBytes(): number {
    return this.kernel.memory.buffer.byteLength
  }

  /**
   * One new token after each cache: the logits of each (`vocab` floats, each array with a
   * buffer of its own, see `KernelModel.releaseLogits`) and the new caches. Caches from any
   * source are accepted; ones this decoder made grow in place.
   */
  step(
    tokens: readonly number[],
    caches: readonly KvCache[],
  ): Array<{ logits: Float32Array; cache: ResidentCache }> {
    const b = tokens.length
    if (b === 0 || b !== caches.length) throw new Error('step needs one cache per token')
    const head = this.withHead()
    const run = this.forwardRows(
      head.embed(tokens),
      caches.map((cache) => ({ cache, count: 1 })),
    )
    const logits = head.logitRows(run.hidden, b)
    return run.caches.map((cache, r) => ({ logits: logits[r], cache }))
  }

  /**
   * Rows of the residual stream (`hidden`, [rows, hidden]) through this decoder's layers: the
   * first `groups[0].count` rows are the next tokens after `groups[0].cache`, and so on. Returns
   * the rows after the last layer (normalised when this decoder ends the model) in a new array,
   * the new cache of each group, and takes the KV of every row. What `step` and `prefill` run
   * between the embedding and the head, and what a pipeline stage runs on the rows it is sent.
   * `outRows` (only for a decoder that ends the model): only the last that many rows are
   * returned, and the last layer runs its attention and MLP for those alone (the other rows
   * only need their keys and values there).
   */
  forwardRows(
    hidden: Float32Array,
    groups: ReadonlyArray<{ cache: KvCache; count: number }>,
    outRows?: number,
  ): { hidden: Float32Array; caches: ResidentCache[] } {
    const rows = groups.reduce((n, g) => n + g.count, 0)
    if (rows === 0 || groups.some((g) => !(g.count >= 1)))
      throw new Error('forwardRows needs at least one row per group')
    if (hidden.length < rows * this.shape.hidden) throw new Error('forwardRows: too few rows')
    if (outRows !== undefined && !this.last)
      throw new Error('forwardRows: outRows needs the decoder that ends the model')
    this.fixKeySlots()
    const claimed: KvSequence[] = []
    try {
      for (const g of groups) {
        const s = this.claim(g.cache)
        s.busy = true
        claimed.push(s)
        if (s.capacity < g.cache.length + g.count) this.arena.grow(s, g.cache.length + g.count)
      }
      const sequences: KvSequence[] = []
      const positions: number[] = []
      groups.forEach((g, i) => {
        for (let j = 0; j < g.count; j++) {
          sequences.push(claimed[i])
          positions.push(g.cache.length + j)
        }
      })
      const out = this.layersForward(hidden, sequences, positions, outRows)
      const caches = groups.map((g, i) => {
        claimed[i].filled = g.cache.length + g.count
        return new ResidentCache(g.cache.length + g.count, claimed[i], this)
      })
      return { hidden: out, caches }
    } finally {
      for (const s of claimed) s.busy = false
    }
  }

  private withHead(): Q8Head {
    if (!this.head) throw new Error('this decoder has no head (a pipeline stage)')
    return this.head
  }

  /**
   * A prompt chunk: `ids` after `cache`, all in one sequence, each token attending to the ones
   * before it. Returns the logits of the last `keep` positions (all vocabulary entries, or only
   * `columns`) and the new cache. What the ONNX graph's prefill computes, in the kernels.
   */
  prefill(
    ids: readonly number[],
    cache: KvCache,
    keep: number,
    columns?: readonly number[],
  ): { logits: Float32Array; rows: number; cache: ResidentCache } {
    const n = ids.length
    if (n === 0) throw new Error('prefill needs at least one token')
    keep = Math.max(0, Math.min(keep, n))
    const head = this.withHead()
    const run = this.forwardRows(head.embed(ids), [{ cache, count: n }], keep)
    const x = run.hidden
    const out = run.caches[0]
    if (keep === 0) return { logits: new Float32Array(0), rows: 0, cache: out }
    const logits =
      columns && keep === 1
        ? head.columns(x, columns)
        : pickColumns(head.logits(x, keep), head.vocab, columns)
    return { logits, rows: keep, cache: out }
  }

  /**
   * Rows r = 0 … b−1 of the residual stream `h` (changed in place): row r at position
   * positions[r] of sequence sequences[r], through this decoder's layers (its key and value
   * written into the sequence before it attends, so rows of one sequence see the rows before
   * them), then the final norm if it holds the last layer: [b, hidden] (h itself otherwise).
   * With `outRows` < b and the last layer here, that layer attends and runs its MLP for the last
   * `outRows` rows only (the others just write their keys and values), and returns those rows.
   */
  private layersForward(
    h: Float32Array,
    sequences: readonly KvSequence[],
    positions: readonly number[],
    outRows?: number,
  ): Float32Array {
    const b = sequences.length
    // the first row whose output is needed after this decoder's last layer
    const first = outRows === undefined ? 0 : b - Math.max(0, Math.min(outRows, b))
    if (!this.complete) throw new AppError('internal', 'The decoder weights are not all loaded')
    const { hidden: H, intermediate: I, kvHeads, heads, headDim: D, eps } = this.shape
    const layers = this.range[1] - this.range[0]
    const half = D / 2
    const cos = new Float32Array(b * half)
    const sin = new Float32Array(b * half)
    for (let r = 0; r < b; r++)
      for (let j = 0; j < half; j++) {
        const angle = Math.fround(positions[r] * this.invFreq[j])
        cos[r * half + j] = Math.cos(angle)
        sin[r * half + j] = Math.sin(angle)
      }
    const qkvRows = this.qDim + 2 * this.kvDim
    this.reserveScratch(b, Math.max(...positions) + 1)
    const k = this.kernel
    // the residual stream, then the inputs of the matrices, in kernel memory
    this.view(this.hAt, b * H).set(h.subarray(0, b * H))
    let hAt = this.hAt
    const x = this.view(this.normAt, b * H)
    const attn = this.view(this.attnRowsAt, b * this.qDim)
    const group = heads / kvHeads
    const scale = 1 / Math.sqrt(D)
    for (let l = 0; l < layers; l++) {
      const L = this.layers[l]
      const r0 = l === layers - 1 ? first : 0 // the rows that attend and run the MLP: [r0, b)
      k.rms_norm(hAt, this.normAt, b, H, L.inputNorm, eps)
      const qkv = this.matmul(L.qkv, x, b)
      k.add_rows(this.outAt, b, qkvRows, L.qkvBias)
      const mem = this.arena.f32()
      const [Rk, Rv] = [this.arena.recordBytes(0), this.arena.recordBytes(1)]
      for (let r = 0; r < b; r++) {
        const o = r * qkvRows
        const s = sequences[r]
        const p = positions[r]
        // k (roped) and v into the cache at position p
        for (let g = 0; g < kvHeads; g++) {
          const kAt = this.arena.kvAt(s, l, 0, g) + p * Rk
          const vAt = this.arena.kvAt(s, l, 1, g) + p * Rv
          const kFrom = o + this.qDim + g * D
          const vFrom = o + this.qDim + this.kvDim + g * D
          if (this.kvFormat === 'q8') {
            const bytes = this.arena.u8()
            rope(qkv, kFrom, this.keyRow, 0, cos, sin, r * half, half, 1)
            this.writeKey(L, g, this.keyRow, 0, bytes, kAt)
            writeQ8Record(qkv, vFrom, D, bytes, vAt)
          } else {
            rope(qkv, kFrom, mem, kAt / 4, cos, sin, r * half, half, 1)
            mem.set(qkv.subarray(vFrom, vFrom + D), vAt / 4)
          }
        }
        if (r < r0) continue
        // the query heads of each KV head together (roped at attnAt, `group` × D), their
        // outputs after them, into the attention row
        for (let g = 0; g < kvHeads; g++) {
          const [kAt, vAt] = [this.arena.kvAt(s, l, 0, g), this.arena.kvAt(s, l, 1, g)]
          const perCall = this.kvFormat === 'q8' ? 1 : group // q8 KV: one query head at a time
          for (let j0 = 0; j0 < group; j0 += perCall) {
            for (let j = 0; j < perCall; j++) {
              const at = this.attnAt / 4 + j * D
              rope(qkv, o + (g * group + j0 + j) * D, mem, at, cos, sin, r * half, half, scale)
            }
            this.attend(kAt, vAt, p + 1, L, g, perCall)
            const at = this.attnAt / 4 + perCall * D
            attn.set(
              mem.subarray(at, at + perCall * D),
              (r - r0) * this.qDim + (g * group + j0) * D,
            )
          }
        }
      }
      hAt += 4 * r0 * H // the rows after this layer: [r0, b) alone
      const n = b - r0
      if (n === 0) break
      this.matmul(L.o, attn, n)
      k.add_rows(hAt, 1, n * H, this.outAt)
      k.rms_norm(hAt, this.normAt, n, H, L.postNorm, eps)
      this.matmul(L.gateUp, x, n)
      for (let r = 0; r < n; r++) {
        const gate = this.outAt + 4 * r * 2 * I
        k.silu_mul(gate, gate + 4 * I, I, this.actAt + 4 * r * I)
      }
      this.matmul(L.down, this.view(this.actAt, n * I), n)
      k.add_rows(hAt, 1, n * H, this.outAt)
    }
    // out of the scratch, which the next step reuses
    if (!this.last) return this.view(this.hAt, b * H).slice()
    const n = b - first
    k.rms_norm(hAt, this.normAt, n, H, this.finalNormAt, eps)
    return x.slice(0, n * H)
  }

  /**
   * A sequence of its own holding the first `length` positions of `cache` (one this decoder
   * made): what a pipeline stage keeps when the front forks a sequence.
   */
  copy(cache: KvCache, length: number, reserve = 0): ResidentCache {
    if (!(cache instanceof ResidentCache) || cache.sequence.arena !== this.arena)
      throw new Error('copy: not a cache of this decoder')
    if (!(length >= 0 && length <= cache.length)) throw new Error(`copy: bad length ${length}`)
    if (cache.sequence.freed) throw new AppError('internal', 'A released KV cache was copied')
    const s = this.allocate({ length, reserve })
    this.arena.copyPositions(cache.sequence, s, length)
    s.filled = length
    return new ResidentCache(length, s, this)
  }

  /**
   * Keeps `cache` past its stream's end without copying it out (KvCache.keep): only the newest
   * cache of a sequence nothing else keeps; undefined for any other.
   */
  keep(cache: ResidentCache): KeptCache | undefined {
    const s = cache.sequence
    if (s.arena !== this.arena || s.freed || s.kept || s.busy || s.filled !== cache.length)
      return undefined
    this.arena.keep(s)
    return new KeptCache(cache.length, s, this)
  }

  /**
   * Gives a cache's sequence memory back now (its stream ended); later reads of it throw. A
   * kept sequence stays until its keeper disposes of it.
   */
  release(cache: KvCache): void {
    if (!(cache instanceof ResidentCache) || cache.sequence.arena !== this.arena) return
    if (!cache.sequence.kept) this.arena.release(cache.sequence)
  }

  /**
   * The first `length` positions of `s` in the graph's layout (past_key_values.{l}.key|value),
   * as floats (q8 records as the floats they stand for).
   */
  exportKv(s: KvSequence, length: number): Record<string, Tensor> {
    if (s.freed) throw new AppError('internal', 'A released KV cache was read')
    const { kvHeads, headDim: D } = this.shape
    const tensors: Record<string, Tensor> = {}
    for (let l = 0; l < this.range[1] - this.range[0]; l++)
      for (const [kv, name] of [
        [0, 'key'],
        [1, 'value'],
      ] as const) {
        const out = new Float32Array(kvHeads * length * D)
        for (let g = 0; g < kvHeads; g++) {
          const from = this.arena.kvAt(s, l, kv, g)
          if (this.kvFormat === 'q8') {
            const bytes = this.arena.u8()
            const R = this.arena.recordBytes(kv)
            const channels = this.layers[l].keyChannels[g]
            for (let t = 0; t < length; t++) {
              const to = (g * length + t) * D
              if (kv === 0) readKeyRecord(bytes, from + t * R, D, channels, out, to)
              else readQ8Record(bytes, from + t * R, D, out, to)
            }
          } else {
            const mem = this.arena.f32()
            out.set(mem.subarray(from / 4, from / 4 + length * D), g * length * D)
          }
        }
        tensors[`past_key_values.${this.range[0] + l}.${name}`] = new ort.Tensor('float32', out, [
          1,
          kvHeads,
          length,
          D,
        ])
      }
    return tensors
  }

  /** The sequence `cache` can grow by one position in. */
  private claim(cache: KvCache): KvSequence {
    if (cache instanceof ResidentCache && cache.sequence.arena === this.arena) {
      const s = cache.sequence
      if (s.freed) throw new AppError('internal', 'A released KV cache was stepped')
      if (s.filled === cache.length && !s.busy && !s.kept) {
        if (s.capacity <= cache.length) this.arena.grow(s, cache.length + 1)
        return s
      }
      // an older cache of the sequence (or the same one twice in a batch, or a kept one): fork
      const copy = this.allocate(cache)
      this.arena.copyPositions(s, copy, cache.length)
      copy.filled = cache.length
      return copy
    }
    const s = this.allocate(cache)
    if (cache.length > 0) this.importKv(cache, s)
    s.filled = cache.length
    return s
  }

  /**
   * A new sequence to step on from `cache`: room for one more position and some to grow into,
   * or exactly its reserve (capped) when it has one that is larger.
   */
  private allocate(cache: Pick<KvCache, 'length' | 'reserve'>): KvSequence {
    const reserve = Math.min(cache.reserve ?? 0, 2 ** 20)
    return reserve > cache.length
      ? this.arena.allocate(reserve, true)
      : this.arena.allocate(cache.length + 1)
  }

  private importKv(cache: KvCache, s: KvSequence): void {
    const { kvHeads, headDim: D } = this.shape
    const n = cache.length
    for (let l = 0; l < this.range[1] - this.range[0]; l++)
      for (const [kv, name] of [
        [0, 'key'],
        [1, 'value'],
      ] as const) {
        const t = cache.tensors[`past_key_values.${this.range[0] + l}.${name}`]
        if (!t || !(t.data instanceof Float32Array) || t.data.length !== kvHeads * n * D)
          throw new AppError('internal', `The KV cache has no float32 ${name} of layer ${l}`)
        const R = this.arena.recordBytes(kv)
        for (let g = 0; g < kvHeads; g++) {
          const at = this.arena.kvAt(s, l, kv, g)
          if (this.kvFormat === 'q8') {
            const bytes = this.arena.u8()
            for (let p = 0; p < n; p++) {
              const from = (g * n + p) * D
              if (kv === 0) this.writeKey(this.layers[l], g, t.data, from, bytes, at + p * R)
              else writeQ8Record(t.data, from, D, bytes, at + p * R)
            }
          } else this.arena.f32().set(t.data.subarray(g * n * D, (g + 1) * n * D), at / 4)
        }
      }
  }

  /** Streams' sequences holding arena memory (not yet released or collected; not kept). */
  get sequences(): number {
    return this.arena.sequences - this.arena.keptSequences
  }

  /** Bytes of KV cache the sequences hold, kept ones included (each a block of positions). */
  get kvBytes(): number {
    return this.arena.sequenceBytes
  }

  /** Bytes of one position's KV over this decoder's layers. */
  get kvPositionBytes(): number {
    this.fixKeySlots()
    return this.arena.positionBytes
  }

  /**
   * q8 KV: sizes key records for the most channels any head keeps apart, once every layer is
   * written and before the first sequence (the arena's records keep that size from then on).
   */
  private fixKeySlots(): void {
    if (this.keySlots >= 0 || this.kvFormat !== 'q8' || !this.complete) return
    this.keySlots = Math.max(0, ...this.layers.flatMap((L) => L.keyChannels.map((c) => c.length)))
    this.arena.setKeySlots(this.keySlots)
  }

  /** A key head (D floats of `src` from `from`) as a q8 record of layer L's head g. */
  private writeKey(
    L: Layer,
    g: number,
    src: ArrayLike<number>,
    from: number,
    bytes: Uint8Array,
    at: number,
  ): void {
    const D = this.shape.headDim
    writeKeyRecord(src, from, D, L.keyChannels[g], this.keySlots, this.keyScratch, bytes, at)
  }

  /**
   * The q4 matrices, and how many of them take the symmetric layout and kernels (every zero
   * point 8: q4s_gemv, q4s_gemm); undefined for q8 layers.
   */
  get q4Matrices(): { matrices: number; symmetric: number } | undefined {
    const all = this.plan.flatMap((p) => [p.qkv, p.o, p.gateUp, p.down])
    const q4 = all.filter((m): m is Q4Matrix => m.kind === 'q4')
    if (!q4.length) return undefined
    return { matrices: q4.length, symmetric: q4.filter((m) => m.sym).length }
  }

  /** Kept sequences (KvCache.keep: the turn cache's) holding arena memory. */
  get keptSequences(): number {
    return this.arena.keptSequences
  }

  /**
   * `b` rows of `m.cols` floats (back to back in `input`) times the matrix: a view of the
   * kernel's output, `b` rows of `m.rows`, valid until the next call.
   */
  private matmul(m: Matrix, input: Float32Array, b: number): Float32Array {
    if (m.kind === 'q4') return this.matmulQ4(m, input, b)
    const k = this.kernel
    for (let j0 = 0; j0 < b; j0 += this.maxRows) {
      const n = Math.min(this.maxRows, b - j0)
      this.quantize(input, j0, n, m.cols, m.stride)
      const args = [m.w, m.stride, m.zp, m.scale, 0, m.rows, this.xAt, this.sumAt, this.xScaleAt]
      const out = this.outAt + 4 * j0 * m.rows
      if (n === 4) k.rows4(...(args as RowsArgs), out, m.rows)
      else if (n < 4) k.rows(...(args as RowsArgs), n, out, m.rows)
      else k.q8_gemm(...(args as RowsArgs), n, out, m.rows)
    }
    return this.view(this.outAt, b * m.rows)
  }

  /**
   * As `matmul`, for a q4 matrix: up to Q4_ROWS rows at a time are quantized per block of 32
   * (quant_b32, which zero-pads a row to whole groups) and multiplied, one weight pass for all
   * of them (q4_gemv for a decode batch, q4_gemm for prompt chunks). quant_b32 reads the rows
   * where they are; only a width that is not a multiple of 32 is first copied and zero-padded.
   */
  private matmulQ4(m: Q4Matrix, input: Float32Array, b: number): Float32Array {
    const k = this.kernel
    if (input.buffer !== k.memory.buffer)
      throw new AppError('internal', 'q4 matrix input outside kernel memory')
    const cols = 32 * m.kb
    const padded = m.cols % 32 !== 0
    for (let j0 = 0; j0 < b; j0 += Q4_ROWS) {
      const n = Math.min(Q4_ROWS, b - j0)
      if (padded) {
        const f = this.arena.f32()
        const x0 = this.q4xAt / 4
        for (let j = 0; j < n; j++) {
          const from = (j0 + j) * m.cols
          const to = x0 + j * this.q4Stride
          f.set(input.subarray(from, from + m.cols), to)
          f.fill(0, to + m.cols, to + cols)
        }
        k.quant_b32(this.q4xAt, this.q4Stride, cols, n, this.q4aAt)
      } else {
        k.quant_b32(input.byteOffset + 4 * j0 * m.cols, m.cols, m.cols, n, this.q4aAt)
      }
      const out = this.outAt + 4 * j0 * m.rows
      if (n <= 4) (m.sym ? k.q4s_gemv : k.q4_gemv)(m.w, m.kb, 0, m.rows, this.q4aAt, n, out, m.rows)
      else (m.sym ? k.q4s_gemm : k.q4_gemm)(m.w, m.kb, 0, m.rows, this.q4aAt, n, out, m.rows)
    }
    return this.view(this.outAt, b * m.rows)
  }

  /** `n` floats of kernel memory from byte `at`. */
  private view(at: number, n: number): Float32Array {
    return this.arena.f32().subarray(at / 4, at / 4 + n)
  }

  /**
   * Scratch for a step of `b` rows with up to `n` positions, one arena block: the matrices'
   * output (b rows of the widest), the MLP activation (b × intermediate), the normalised rows,
   * the residual stream's rows and the attention rows (the other matrices' inputs), and for
   * attention the query head, the output head and the scores. Taken before the step's views are
   * made.
   */
  private reserveScratch(b: number, n: number): void {
    if (b <= this.scratchRows && n <= this.scratchPositions) return
    const rows = Math.max(b, this.scratchRows, 4)
    const positions = Math.max(align(n, 256), this.scratchPositions)
    const { headDim: D, intermediate: I } = this.shape
    if (this.scratchBytes) this.arena.giveBack(this.outAt, this.scratchBytes)
    const outBytes = 4 * rows * this.outStride
    const actBytes = 4 * rows * I
    const normBytes = 4 * rows * this.shape.hidden
    const hBytes = normBytes
    const attnRowsBytes = 4 * rows * this.qDim
    // attention: the query heads of a KV head, their outputs and scores (a row of positions + 4
    // floats each); for q8 KV (one head) also the kept-apart channels, q and the weights as int16
    const group = this.shape.heads / this.shape.kvHeads
    const attnBytes = 4 * group * (2 * D + positions + 4) + 4 * D + 2 * D + 2 * (positions + 1)
    this.scratchBytes = align(
      outBytes + actBytes + normBytes + hBytes + attnRowsBytes + attnBytes,
      64,
    )
    this.outAt = this.arena.take(this.scratchBytes)
    this.actAt = this.outAt + outBytes
    this.normAt = this.actAt + actBytes
    this.hAt = this.normAt + normBytes
    this.attnRowsAt = this.hAt + hBytes
    this.attnAt = this.attnRowsAt + attnRowsBytes
    this.scratchRows = rows
    this.scratchPositions = positions
  }

  /**
   * softmax(q · K) · V of the `heads` query heads at attnAt (heads × headDim f32, sharing one KV
   * head) over `n` positions (the KV head's runs at byte offsets kAt and vAt), into attnAt +
   * heads · headDim. The scores take a row of scratchPositions + 4 floats a head (softmax may
   * write 3 floats past n). q8 KV: one head.
   */
  private attend(kAt: number, vAt: number, n: number, L: Layer, g: number, heads: number): void {
    const D = this.shape.headDim
    const k = this.kernel
    const outAt = this.attnAt + 4 * heads * D
    const scoresAt = outAt + 4 * heads * D
    if (this.kvFormat === 'q8') {
      // after the scores (room for n rounded up to 4): the query's values at the channels its
      // keys keep apart (f32, a slot each), q as int16, then the weights as int16
      const mem = this.arena.f32()
      const qxAt = scoresAt + 4 * this.scratchPositions
      const channels = L.keyChannels[g]
      for (let i = 0; i < this.keySlots; i++)
        mem[qxAt / 4 + i] = i < channels.length ? mem[this.attnAt / 4 + channels[i]] : 0
      const q16At = qxAt + 4 * this.keySlots
      const w16At = q16At + 2 * D
      const qs = writeQueryI16(mem, this.attnAt / 4, D, this.arena.u8(), q16At)
      k.dots_q8(q16At, qs, qxAt, this.keySlots, kAt, n, D, scoresAt)
      k.softmax(scoresAt, n)
      k.mix_q8(scoresAt, vAt, n, D, w16At, outAt)
      return
    }
    const ld = this.scratchPositions + 4
    k.dots(this.attnAt, heads, kAt, n, D, scoresAt, ld)
    k.softmax_rows(scoresAt, ld, heads, n) // in place
    k.mix(scoresAt, ld, heads, vAt, n, D, outAt)
  }

  /**
   * Rows j0 … j0+n of `input` (`cols` floats each, in kernel memory) to int16, one scale per
   * row ('a16-row', quant_a16).
   */
  private quantize(input: Float32Array, j0: number, n: number, cols: number, stride: number): void {
    if (input.buffer !== this.kernel.memory.buffer)
      throw new AppError('internal', 'q8 matrix input outside kernel memory')
    // a16Limit: the largest magnitude for which Σ w·x stays inside int32 (|w| ≤ 128)
    const at = input.byteOffset + 4 * j0 * cols
    const limit = a16Limit(stride)
    const done = this.kernel.quant_a16(
      at,
      cols,
      cols,
      n,
      limit,
      this.xAt,
      stride,
      this.sumAt,
      this.xScaleAt,
    )
    if (done < n) throw new AppError('internal', 'an activation is not finite')
  }
}

/** The parts' weights, one after another, into `m`'s place in kernel memory. */
function writeMatrix(mem: Uint8Array, m: Matrix, parts: DecoderMatrixData[]): void {
  if (m.kind === 'q8') return writeRows(mem, m, parts as DqmmMatrixData[])
  // MatMulNBits rows are already output rows: each part is repacked (no value changes) into
  // its rows' places in the kernels' placement (q4-b32.ts), its rows after the previous part's
  const nbits = parts as NBitsMatrixData[]
  let row0 = 0
  for (const p of nbits) {
    if (q4Blocks(p.tensors.k) !== m.kb)
      throw new AppError('model_invalid', 'q4 parts of different widths')
    if (m.sym && !nbitsSymmetric(p.tensors))
      throw new AppError('model_invalid', 'a q4 matrix with zero points other than 8')
    if (row0 + p.tensors.n > m.rows)
      throw new AppError('model_invalid', 'q4 parts with too many rows')
    packMatMulNBitsInto(p.tensors, mem, m.w, m.sym, { row0 })
    row0 += p.tensors.n
  }
}

/**
 * The matrices' B [k, n] (y = x · B) as rows of the kernel's layout: row `n` = column n of B,
 * int8 (uint8 shifted by 128 with its zero point, which leaves every B − zp unchanged).
 */
function writeRows(mem: Uint8Array, m: Q8Matrix, parts: DqmmMatrixData[]): void {
  const rowsI8 = new Int8Array(mem.buffer, m.w, m.rows * m.stride)
  const zp = new Int8Array(mem.buffer, m.zp, m.rows)
  const scale = new Float32Array(mem.buffer, m.scale, m.rows)
  let row0 = 0
  for (const p of parts) {
    const shift = p.signed ? 0 : 128
    const B = p.signed
      ? new Int8Array(p.weight.buffer, p.weight.byteOffset, p.weight.length)
      : p.weight
    const { k: K, n: N } = p
    // blocked transpose: 64 × 64 tiles keep both sides in cache
    for (let k0 = 0; k0 < K; k0 += 64)
      for (let n0 = 0; n0 < N; n0 += 64) {
        const k1 = Math.min(K, k0 + 64)
        const n1 = Math.min(N, n0 + 64)
        for (let n = n0; n < n1; n++) {
          const to = (row0 + n) * m.stride
          for (let k = k0; k < k1; k++) rowsI8[to + k] = B[k * N + n] - shift
        }
      }
    const zps = p.signed
      ? new Int8Array(p.zeroPoint.buffer, p.zeroPoint.byteOffset, p.zeroPoint.length)
      : p.zeroPoint
    for (let n = 0; n < N; n++) {
      const c = p.scale.length === 1 ? 0 : n
      zp[row0 + n] = zps[c] - shift
      scale[row0 + n] = p.scale[c]
    }
    row0 += N
  }
}

/** Rotate-half RoPE of one head (2 · half values) from src at `from` into dst at `to`, × scale. */
function rope(
  src: Float32Array,
  from: number,
  dst: Float32Array,
  to: number,
  cos: Float32Array,
  sin: Float32Array,
  at: number,
  half: number,
  scale: number,
): void {
  for (let j = 0; j < half; j++) {
    const a = src[from + j]
    const b = src[from + half + j]
    const c = cos[at + j]
    const s = sin[at + j]
    dst[to + j] = (a * c - b * s) * scale
    dst[to + half + j] = (b * c + a * s) * scale
  }
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to
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
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < columns.length; i++)
      out[r * columns.length + i] = logits[r * vocab + columns[i]]
  return out
}
