/**
 * The lm_head (and, for tied weights, the embedding) outside onnxruntime: a model package with a
 * `head` (manifest.ts `HeadEntry`, written by `model:prepare`) has a graph that ends in
 * `hidden_states`, and its head rows ('q8-rows', or 'q4-b32' for 4-bit packages) run in this
 * project's WASM SIMD kernels (kernels/engine.wat, through kernel.ts).
 *
 * Why: onnxruntime-web's DynamicQuantizeMatMul repacks its weights on every run, and the 151936
 * x 896 head of Qwen2.5-0.5B is a quarter of a decode step's weights. The kernel reads rows
 * packed once at load (BENCHMARKS.md: several times faster), and a sentiment request scores only
 * the rows of its labels.
 *
 * Numerics: each hidden row is quantized to int16 with its own scale (ORT quantizes activations
 * to uint8, one scale per run), so a row's logits do not depend on the other rows of a batch,
 * and the int32 dot products are exact. The embedding is the graph's own arithmetic:
 * (q − zp) · scale, bit for bit.
 *
 * A 'q4-b32' head quantizes each hidden row per block of 32 to int8 ('a8-b32', activations.ts)
 * and runs q4_gemv; its embedding is (q − zp) · scale of the row's block, as the q4 graph's own
 * Gather of the tied MatMulNBits weights computes it.
 *
 * Memory layout (the kernel's own linear memory, one instance per model):
 *   [0, V·S)              weight rows, int8, S = stride bytes each (zero padded)
 *   [V·S, V·S + V)        zero points, int8
 *   [align4(V·S + V), +4V) scales, f32          ← the head file, copied in once as is
 *   then scratch for `capacity` vectors: x int16 [capacity, S], sum f32 [capacity],
 *   scale f32 [capacity], out f32 [capacity, V]
 * or for 'q4-b32': the rows (S = 21 · blocks; 'q4s-b32', the symmetric layout: 20 · blocks) in
 * the kernels' placement (q4-b32.ts: panels of 4 rows, ⌈V/4⌉·4·S bytes; each piece of the file
 * goes to its places as it is written), then scratch: x f32 [capacity, 32 · blocks], its a8-b32
 * form [capacity, 40 · blocks], out f32 [capacity, V].
 */
import { AppError } from '../../core/errors.ts'
import {
  headLayout,
  headStride,
  isQ4Head,
  q4Blocks,
  placeQ4Bytes,
  q4NibbleAt,
  q4PlacedAt,
  q4PlacedBytes,
  q4ScaleAt,
  q4ZeroAt,
  type HeadFormat,
} from '../../format/index.ts'
import { a16Limit } from './activations.ts'
import { instantiateKernels, type KernelExports, type Q4Product } from './kernel.ts'

export interface HeadWeights {
  format: HeadFormat
  vocab: number
  hidden: number
  /** Bytes per row (manifest.ts `headStride`). */
  stride: number
  /** The graph takes `inputs_embeds`: the embedding is looked up from these rows. */
  embedding: boolean
  /** The head file (layout above). */
  data: Uint8Array
}

const PAGE = 65536

export class Q8Head {
  readonly format: HeadFormat
  readonly vocab: number
  readonly hidden: number
  readonly stride: number
  readonly embedding: boolean
  /** Largest activation magnitude: keeps Σ w·x inside int32 (|w| ≤ 128). */
  private readonly xLimit: number
  private readonly zpAt: number
  private readonly scaleAt: number
  private readonly scratchAt: number
  private capacity = 0
  private xAt = 0
  private sumAt = 0
  private xScaleAt = 0
  private outAt = 0

  /** A 4-bit head ('q4-b32' or 'q4s-b32'). */
  private readonly q4: boolean
  /** 'q4s-b32': the symmetric layout (every zero point 8, none stored; q4s_gemv). */
  private readonly sym: boolean
  /** A 4-bit head: blocks per row. */
  private readonly kb: number

  private constructor(
    private readonly kernel: KernelExports,
    w: Omit<HeadWeights, 'data'>,
  ) {
    this.format = w.format
    this.q4 = isQ4Head(w.format)
    this.sym = w.format === 'q4s-b32'
    this.kb = q4Blocks(w.hidden)
    this.vocab = w.vocab
    this.hidden = w.hidden
    this.stride = w.stride
    this.embedding = w.embedding
    this.xLimit = a16Limit(w.stride)
    const layout = headLayout(w.vocab, w.stride, w.format)
    this.zpAt = layout.zeroPoints
    this.scaleAt = layout.scales
    this.scratchAt = this.q4
      ? align(q4PlacedBytes(w.vocab, this.kb, this.sym), 16)
      : align(this.scaleAt + 4 * w.vocab, 16)
  }

  /** Copies the head file into a new kernel instance. The caller may drop `w.data` afterwards. */
  static async create(w: HeadWeights): Promise<Q8Head> {
    const head = await Q8Head.allocate(w)
    if (w.data.byteLength !== head.fileBytes) {
      throw new AppError(
        'model_invalid',
        `The head file has ${w.data.byteLength} bytes, its shape needs ${head.fileBytes}`,
      )
    }
    head.write(0, w.data)
    return head
  }

  /**
   * A head laid out for `w`'s shape, its file not yet written: `write` puts each piece (a shard,
   * as the package loader reads it) at its offset; the file is copied in as is.
   */
  static async allocate(w: Omit<HeadWeights, 'data'>): Promise<Q8Head> {
    const { vocab, hidden, stride } = w
    if (w.format !== 'q8-rows' && !isQ4Head(w.format)) {
      throw new AppError('model_invalid', `Unknown head format ${JSON.stringify(w.format)}`)
    }
    if (!(stride === headStride(hidden, w.format) && hidden > 0 && vocab > 0)) {
      throw new AppError('model_invalid', `Bad head shape: vocab ${vocab}, hidden ${hidden}`)
    }
    const head = new Q8Head(await instantiateKernels(), w)
    head.reserve(1)
    return head
  }

  /** Bytes of the head file. */
  get fileBytes(): number {
    return headLayout(this.vocab, this.stride, this.format).bytes
  }

  /** `bytes` of the head file at `offset` (a 4-bit head's rows to their places in its panels). */
  write(offset: number, bytes: Uint8Array): void {
    if (offset + bytes.byteLength > this.fileBytes)
      throw new AppError('model_invalid', 'The head file is longer than its shape')
    const mem = new Uint8Array(this.kernel.memory.buffer)
    if (this.q4) placeQ4Bytes(bytes, offset, this.kb, this.sym, mem, 0)
    else mem.set(bytes, offset)
  }

  /** A 4-bit head's kernel: q4s_gemv for the symmetric layout. */
  private get q4Gemv(): Q4Product {
    return this.sym ? this.kernel.q4s_gemv : this.kernel.q4_gemv
  }

  /** Bytes of WASM memory the head holds (weights + scratch). */
  get memoryBytes(): number {
    return this.kernel.memory.buffer.byteLength
  }

  /** Embeddings of `ids`: [ids.length, hidden], as the graph's own Gather + dequantize. */
  embed(ids: readonly number[]): Float32Array {
    if (this.q4) return this.embedQ4(ids)
    const { hidden, stride, vocab } = this
    const buf = this.kernel.memory.buffer
    const rows = new Int8Array(buf, 0, this.zpAt)
    const zp = new Int8Array(buf, this.zpAt, vocab)
    const scale = new Float32Array(buf, this.scaleAt, vocab)
    const out = new Float32Array(ids.length * hidden)
    for (let i = 0; i < ids.length; i++) {
      const t = ids[i]
      if (!(Number.isInteger(t) && t >= 0 && t < vocab))
        throw new AppError('bad_request', `token id ${t} is out of range`)
      const z = zp[t]
      const s = scale[t]
      const from = t * stride
      const to = i * hidden
      for (let k = 0; k < hidden; k++) out[to + k] = (rows[from + k] - z) * s
    }
    return out
  }

  /** `embed` of a 4-bit head: each row's 4-bit values, (q − zp) · scale per block. */
  private embedQ4(ids: readonly number[]): Float32Array {
    const { hidden, vocab, sym } = this
    const mem = new Uint8Array(this.kernel.memory.buffer)
    const view = new DataView(this.kernel.memory.buffer)
    const out = new Float32Array(ids.length * hidden)
    for (let i = 0; i < ids.length; i++) {
      const t = ids[i]
      if (!(Number.isInteger(t) && t >= 0 && t < vocab))
        throw new AppError('bad_request', `token id ${t} is out of range`)
      // the format's own offsets (q4-b32.ts): scale and zero point per block, a nibble per
      // input, at their places in the kernels' placement
      const at = (b: number) => q4PlacedAt(t, b, this.kb, sym)
      for (let c = 0; 32 * c < hidden; c++) {
        const s = view.getFloat32(at(q4ScaleAt(c, sym)), true)
        const z = sym ? 8 : mem[at(q4ZeroAt(c))]
        for (let k = 32 * c; k < Math.min(hidden, 32 * c + 32); k++) {
          const { byte, high } = q4NibbleAt(k, sym)
          const b = mem[at(byte)]
          out[i * hidden + k] = ((high ? b >> 4 : b & 15) - z) * s
        }
      }
    }
    return out
  }

  /**
   * Logits of `n` hidden rows (`hidden` holds them back to back, `hidden` floats each, from
   * `offset` floats in): a new [n, vocab] array. The weights are read once for all n.
   */
  logits(hidden: Float32Array, n: number, offset = 0): Float32Array {
    this.compute(hidden, n, offset)
    return new Float32Array(this.kernel.memory.buffer, this.outAt, n * this.vocab).slice()
  }

  /**
   * `logits`, one array per row: each has a buffer of its own, which its caller may free
   * (core/free-buffer.ts) when it is done with it, whatever the other rows' callers do.
   */
  logitRows(hidden: Float32Array, n: number, offset = 0): Float32Array[] {
    this.compute(hidden, n, offset)
    const { vocab, outAt } = this
    const buf = this.kernel.memory.buffer
    return Array.from({ length: n }, (_, r) =>
      new Float32Array(buf, outAt + 4 * r * vocab, vocab).slice(),
    )
  }

  /** The logits of `n` rows into the out area. */
  private compute(hidden: Float32Array, n: number, offset: number): void {
    this.load(hidden, n, offset)
    const { vocab, stride, zpAt, scaleAt } = this
    const k = this.kernel
    if (this.q4) {
      this.q4Gemv(0, this.kb, 0, vocab, this.xAt, n, this.outAt, vocab)
      return
    }
    let j = 0
    for (; j + 4 <= n && n > 1; j += 4) {
      k.rows4(
        0,
        stride,
        zpAt,
        scaleAt,
        0,
        vocab,
        ...this.vectorArgs(j),
        this.outAt + 4 * j * vocab,
        vocab,
      )
    }
    if (j < n) {
      k.rows(
        0,
        stride,
        zpAt,
        scaleAt,
        0,
        vocab,
        ...this.vectorArgs(j),
        n - j,
        this.outAt + 4 * j * vocab,
        vocab,
      )
    }
  }

  /** Logits of one hidden row at the vocabulary rows `ids` only (a label set): [ids.length]. */
  columns(hidden: Float32Array, ids: readonly number[], offset = 0): Float32Array {
    this.load(hidden, 1, offset)
    const { vocab, stride, zpAt, scaleAt } = this
    const out = new Float32Array(ids.length)
    for (let i = 0; i < ids.length; i++) {
      const v = ids[i]
      if (!(Number.isInteger(v) && v >= 0 && v < vocab))
        throw new AppError('bad_request', `token id ${v} is out of range`)
      // out[v] of the scratch row, like a full pass would write it
      if (this.q4) this.q4Gemv(0, this.kb, v, v + 1, this.xAt, 1, this.outAt, vocab)
      else
        this.kernel.rows(
          0,
          stride,
          zpAt,
          scaleAt,
          v,
          v + 1,
          ...this.vectorArgs(0),
          1,
          this.outAt,
          vocab,
        )
      out[i] = new Float32Array(this.kernel.memory.buffer, this.outAt + 4 * v, 1)[0]
    }
    return out
  }

  private vectorArgs(j: number): [number, number, number] {
    return [this.xAt + 2 * j * this.stride, this.sumAt + 4 * j, this.xScaleAt + 4 * j]
  }

  /**
   * Quantizes `n` rows into the scratch area: to int16 with one scale per row, or for a q4 head
   * to int8 per block of 32 (quant_b32; its input, f32 rows zero padded, at the out area).
   */
  private load(hidden: Float32Array, n: number, offset: number): void {
    const H = this.hidden
    if (offset + n * H > hidden.length) throw new Error('hidden rows out of range')
    this.reserve(n)
    if (this.q4) {
      const cols = 32 * this.kb
      const f = new Float32Array(this.kernel.memory.buffer, this.outAt, n * cols)
      f.fill(0)
      for (let j = 0; j < n; j++)
        f.set(hidden.subarray(offset + j * H, offset + (j + 1) * H), j * cols)
      this.kernel.quant_b32(this.outAt, cols, cols, n, this.xAt)
      return
    }
    // f32 rows at the out area, to 'a16-row' (quant_a16)
    new Float32Array(this.kernel.memory.buffer, this.outAt, n * H).set(
      hidden.subarray(offset, offset + n * H),
    )
    const done = this.kernel.quant_a16(
      this.outAt,
      H,
      H,
      n,
      this.xLimit,
      this.xAt,
      this.stride,
      this.sumAt,
      this.xScaleAt,
    )
    if (done < n) throw new AppError('internal', 'the hidden state is not finite')
  }

  /** Scratch for `n` vectors (grows the memory; the padding of x stays zero). */
  private reserve(n: number): void {
    if (n <= this.capacity) return
    const capacity = Math.max(n, 4)
    const { stride, vocab } = this
    const xAt = this.scratchAt
    // a q4 head's a8-b32 rows (the f32 input rows of either format go to the out area)
    const xBytes = this.q4 ? 40 * this.kb * capacity : 2 * capacity * stride
    const sumAt = align(xAt + xBytes, 16)
    const xScaleAt = align(sumAt + 4 * capacity, 16)
    const outAt = align(xScaleAt + 4 * capacity, 16)
    const end = outAt + 4 * capacity * Math.max(vocab, 32 * this.kb, this.hidden)
    const memory = this.kernel.memory
    const pages = Math.ceil(end / PAGE) - memory.buffer.byteLength / PAGE
    if (pages > 0) {
      try {
        memory.grow(pages)
      } catch (err) {
        throw new AppError('model_unavailable', 'Out of memory for the lm_head', { cause: err })
      }
    }
    // old x rows may hold values in the padding columns of the new layout: start clean
    new Uint8Array(memory.buffer, xAt, end - xAt).fill(0)
    this.capacity = capacity
    this.xAt = xAt
    this.sumAt = sumAt
    this.xScaleAt = xScaleAt
    this.outAt = outAt
  }
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to
}
