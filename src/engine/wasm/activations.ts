/**
 * Activations as the kernels read them, and their scalar reference quantizers (the kernels'
 * `quant_b32` must match `quantizeBlocks` bit for bit).
 *
 * 'a8-b32', for q4 weights (as llama.cpp pairs q4_0 weights with q8_0 activations): per block
 * of 32 inputs an int8 value each in [−127, 127], a scale d = max|x| / 127 (f32) and the sum of
 * the int8 values (i32, for the zero-point term: Σ (q − zp) · x = Σ q · x − zp · Σ x). Row j of
 * kb blocks (src/format/q4-b32.ts: 4 · ceil(k / 128), zero padded) at 40·kb·j, group g (blocks 4g … 4g+3) at
 * + 160g, each group
 *
 *   bytes   0..127  byte 16m + 4b + r (m in 0..7, b and r in 0..3) is x[128g + 32b + 4m + r]
 *   bytes 128..143  d of blocks 4g … 4g+3, f32
 *   bytes 144..159  Σ q of blocks 4g … 4g+3, i32
 *
 * The order is the weights' (q4-b32.ts): bytes 0..63 of a group meet the low nibbles of the
 * weights' 4 loads, bytes 64..127 the high ones, block b in the 4-byte lanes b.
 *
 * 'a16-row', for q8 rows: one int16 row of `stride` per vector (zero padded), its scale
 * max|x| / limit with limit = min(32767, ⌊(2^31 − 1) / (128 · stride)⌋) so that every int32 dot
 * product is exact, and the sum of its values (f32). The kernels' `quant_a16` must match
 * `quantizeRows` bit for bit; decoder.ts and head.ts quantize with it.
 */
import { Q4_BLOCK, q4Blocks, quantizeActivationBlock, roundHalfEven } from '../../format/index.ts'

export const A8_GROUP_BYTES = 160

export interface BlockActivations {
  /** Rows. */
  t: number
  /** Inputs per row. */
  k: number
  kb: number
  /** t · 40 · kb bytes. */
  data: Uint8Array
}

/** Byte offset of input i in its row. */
export function a8At(i: number): number {
  const block = i >> 5
  const r = i & 31
  return A8_GROUP_BYTES * (block >> 2) + 16 * (r >> 2) + 4 * (block & 3) + (r & 3)
}

/** Byte offsets of block c's scale (f32) and sum (i32) in its row. */
export function a8ScaleAt(c: number): number {
  return A8_GROUP_BYTES * (c >> 2) + 128 + 4 * (c & 3)
}

export function a8SumAt(c: number): number {
  return A8_GROUP_BYTES * (c >> 2) + 144 + 4 * (c & 3)
}

function view(a: BlockActivations): DataView {
  return new DataView(a.data.buffer, a.data.byteOffset, a.data.byteLength)
}

/** The int8 value of input i of row j. */
export function a8Get(a: BlockActivations, j: number, i: number): number {
  return (a.data[40 * a.kb * j + a8At(i)] << 24) >> 24
}

export function a8Scale(a: BlockActivations, j: number, c: number): number {
  return view(a).getFloat32(40 * a.kb * j + a8ScaleAt(c), true)
}

export function a8Sum(a: BlockActivations, j: number, c: number): number {
  return view(a).getInt32(40 * a.kb * j + a8SumAt(c), true)
}

/**
 * Rows [t, k] of `x` (row j from float j · ldx) to 'a8-b32'. All f32 arithmetic, in the kernel's
 * order: d = max / 127, q = nearest(x · (127 / max)).
 */
export function quantizeBlocks(x: Float32Array, t: number, k: number, ldx = k): BlockActivations {
  const kb = q4Blocks(k)
  const out: BlockActivations = { t, k, kb, data: new Uint8Array(t * kb * 40) }
  const dv = view(out)
  const q = new Int8Array(Q4_BLOCK)
  for (let j = 0; j < t; j++)
    for (let c = 0; c * Q4_BLOCK < k; c++) {
      const from = j * ldx + c * Q4_BLOCK
      const len = Math.min(Q4_BLOCK, k - c * Q4_BLOCK)
      const d = quantizeActivationBlock(x, from, len, q)
      let sum = 0
      for (let i = 0; i < len; i++) {
        out.data[40 * kb * j + a8At(c * Q4_BLOCK + i)] = q[i] & 255
        sum += q[i]
      }
      dv.setFloat32(40 * kb * j + a8ScaleAt(c), d, true)
      dv.setInt32(40 * kb * j + a8SumAt(c), sum, true)
    }
  return out
}

/** The value of input i of row j: q · d. */
export function dequantizeBlock(a: BlockActivations, j: number, i: number): number {
  return a8Get(a, j, i) * a8Scale(a, j, i >> 5)
}

export interface RowActivations {
  t: number
  k: number
  stride: number
  x: Int16Array
  /** Σ of each row's int16 values, as f32. */
  sum: Float32Array
  scale: Float32Array
}

/** The largest int16 magnitude that keeps Σ w · x (|w| ≤ 128) exact in int32. */
export function a16Limit(stride: number): number {
  return Math.min(32767, Math.floor(0x7fffffff / (128 * stride)))
}

/**
 * Rows [t, k] to 'a16-row' (row j from float j · ldx). All f32 arithmetic, in the kernel's
 * order: scale = max / limit, q = nearest(x · (1 / scale)).
 */
export function quantizeRows(
  x: Float32Array,
  t: number,
  k: number,
  stride: number,
  ldx = k,
): RowActivations {
  const limit = a16Limit(stride)
  const out: RowActivations = {
    t,
    k,
    stride,
    x: new Int16Array(t * stride),
    sum: new Float32Array(t),
    scale: new Float32Array(t),
  }
  for (let j = 0; j < t; j++) {
    let max = 0
    for (let i = 0; i < k; i++) max = Math.max(max, Math.abs(x[j * ldx + i]))
    const scale = Math.fround(max / limit)
    const inv = scale > 0 ? Math.fround(1 / scale) : 0
    let sum = 0
    for (let i = 0; i < k; i++) {
      const q = roundHalfEven(Math.fround(x[j * ldx + i] * inv))
      out.x[j * stride + i] = q
      sum += q
    }
    out.sum[j] = sum
    out.scale[j] = scale
  }
  return out
}
