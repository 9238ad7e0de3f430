/**
 * How the decoder stores its KV cache (KV_FORMAT), and the reference of the q8 attention
 * kernels (engine.wat's dots_q8 and mix_q8), computed in the kernels' order with their f32
 * roundings, so that both ISA variants must equal it bit for bit.
 *
 * - 'f32': per position and KV head, head_dim floats (4 · head_dim bytes).
 * - 'q8': per position and KV head, a record of head_dim int8 values and their f32 scale
 *   (max |x| / 127, symmetric, rounded to nearest): head_dim + 4 bytes, 3.8x smaller at
 *   head_dim 64. Written once per position (keys after RoPE), so prefill and decode steps store
 *   the same bytes. Attention reads them with the query as int16 (one scale per head) and the
 *   attention weights as int16 (one scale per head and step): integer dot products, f32 after.
 *   A key channel far larger than the rest would set each record's scale and leave the other
 *   channels a few levels: Qwen2 has k_proj biases of that kind in some layers. So the channels
 *   whose bias stands out (`keyOutlierChannels`, up to 2 RoPE pairs a head) are kept apart, as
 *   f32 after the scale (0 among the int8 values): key records are head_dim + 4 + 4 · slots
 *   bytes, slots the most channels any head of the model keeps apart (0 for most models).
 */
import { kvRecordBytes, MAX_KEY_SLOTS } from '../../format/index.ts'

/** Bias norm of a RoPE pair above this many times the median pair's: kept apart. */
const OUTLIER_RATIO = 4
/** RoPE pairs (2 channels each) a head keeps apart at most: as many as a key record holds. */
const OUTLIER_PAIRS = MAX_KEY_SLOTS / 2

/**
 * Per KV head, the key channels a q8 record keeps apart as f32: both channels of each RoPE
 * rotate-half pair (d, d + dim/2; RoPE mixes them) whose bias norm is more than 4x the median
 * pair's, the largest 2 pairs at most, in channel order. `bias`: the layer's key bias,
 * kvHeads · dim values.
 */
export function keyOutlierChannels(
  bias: ArrayLike<number>,
  kvHeads: number,
  dim: number,
): number[][] {
  const half = dim / 2
  return Array.from({ length: kvHeads }, (_, g) => {
    const norms = Array.from({ length: half }, (_, j) =>
      Math.hypot(bias[g * dim + j], bias[g * dim + half + j]),
    )
    const median = [...norms].sort((a, b) => a - b)[half >> 1]
    const pairs = norms
      .map((norm, j) => ({ norm, j }))
      .filter((p) => p.norm > OUTLIER_RATIO * median)
      .sort((a, b) => b.norm - a.norm)
      .slice(0, OUTLIER_PAIRS)
      .map((p) => p.j)
    return pairs.flatMap((j) => [j, j + half]).sort((a, b) => a - b)
  })
}

const f = Math.fround

/** The largest |x| of `n` values of `src` from `from`. */
function absMax(src: ArrayLike<number>, from: number, n: number): number {
  let max = 0
  for (let d = 0; d < n; d++) max = Math.max(max, Math.abs(src[from + d]))
  return max
}

/** f32 bits as bytes (little-endian, as WASM memory), without a view per record. */
const scaleF32 = new Float32Array(1)
const scaleBytes = new Uint8Array(scaleF32.buffer)

/**
 * `dim` floats of `src` from `from` as a q8 record at byte `at` of `bytes` (values, then the
 * scale). A row of zeros gets scale 0.
 */
export function writeQ8Record(
  src: ArrayLike<number>,
  from: number,
  dim: number,
  bytes: Uint8Array,
  at: number,
): void {
  const max = absMax(src, from, dim)
  const inv = max > 0 ? 127 / max : 0
  for (let d = 0; d < dim; d++) bytes[at + d] = Math.round(src[from + d] * inv) & 255
  scaleF32[0] = max / 127
  bytes.set(scaleBytes, at + dim)
}

/**
 * A key head as a q8 record with `slots` f32 kept apart: `channels` (at most `slots`) as 0
 * among the int8 values and as f32 after the scale, the other slots 0. `row`: dim floats of
 * scratch.
 */
export function writeKeyRecord(
  src: ArrayLike<number>,
  from: number,
  dim: number,
  channels: readonly number[],
  slots: number,
  row: Float32Array,
  bytes: Uint8Array,
  at: number,
): void {
  for (let d = 0; d < dim; d++) row[d] = src[from + d]
  for (const c of channels) row[c] = 0
  writeQ8Record(row, 0, dim, bytes, at)
  for (let i = 0; i < slots; i++) {
    scaleF32[0] = i < channels.length ? src[from + channels[i]] : 0
    bytes.set(scaleBytes, at + dim + 4 + 4 * i)
  }
}

/** The floats a key record stands for (readQ8Record, then its kept-apart channels). */
export function readKeyRecord(
  bytes: Uint8Array,
  at: number,
  dim: number,
  channels: readonly number[],
  out: Float32Array,
  to: number,
): void {
  readQ8Record(bytes, at, dim, out, to)
  channels.forEach((c, i) => {
    scaleBytes.set(bytes.subarray(at + dim + 4 + 4 * i, at + dim + 8 + 4 * i))
    out[to + c] = scaleF32[0]
  })
}

/** The floats a q8 record at byte `at` stands for, into `out` from `to`. */
export function readQ8Record(
  bytes: Uint8Array,
  at: number,
  dim: number,
  out: Float32Array,
  to: number,
): void {
  scaleBytes.set(bytes.subarray(at + dim, at + dim + 4))
  const scale = scaleF32[0]
  for (let d = 0; d < dim; d++) out[to + d] = ((bytes[at + d] << 24) >> 24) * scale
}

/**
 * A query head (`dim` floats of `src` from `from`) as int16 at byte `at` of `bytes`
 * (little-endian): returns its scale, f32(max |q| / 32767) (0 for a zero head).
 */
export function writeQueryI16(
  src: ArrayLike<number>,
  from: number,
  dim: number,
  bytes: Uint8Array,
  at: number,
): number {
  const max = absMax(src, from, dim)
  const inv = max > 0 ? 32767 / max : 0
  for (let d = 0; d < dim; d++) {
    const q = Math.round(src[from + d] * inv)
    bytes[at + 2 * d] = q & 255
    bytes[at + 2 * d + 1] = (q >> 8) & 255
  }
  return f(max / 32767)
}

/** q8 KV records: `n` positions of `dim` (and `slots` f32 kept apart), record t at t · bytes. */
export interface Q8Records {
  bytes: Uint8Array
  dim: number
  n: number
  slots?: number
}

function recordSize(r: Q8Records): number {
  return kvRecordBytes('q8', r.dim, r.slots ?? 0)
}

function recordValue(r: Q8Records, t: number, d: number): number {
  const v = r.bytes[t * recordSize(r) + d]
  return v > 127 ? v - 256 : v
}

/** The record's scale (i = -1) or its kept-apart value i. */
function recordFloat(r: Q8Records, t: number, i = -1): number {
  const at = r.bytes.byteOffset + t * recordSize(r) + r.dim + 4 + 4 * i
  return new DataView(r.bytes.buffer).getFloat32(at, true)
}

function recordScale(r: Q8Records, t: number): number {
  return recordFloat(r, t)
}

/**
 * dots_q8: the scores of an int16 query (values q16, scale qs; qx: its values at the keys'
 * kept-apart channels, one per slot) against the keys `k`.
 */
export function dotsQ8Ref(
  q16: Int16Array,
  qs: number,
  k: Q8Records,
  qx: Float32Array = new Float32Array(0),
): Float32Array {
  const out = new Float32Array(k.n)
  for (let t = 0; t < k.n; t++) {
    let dot = 0
    for (let d = 0; d < k.dim; d++) dot += q16[d] * recordValue(k, t, d)
    let s = f(f(f(dot) * recordScale(k, t)) * f(qs))
    for (let i = 0; i < (k.slots ?? 0); i++) s = f(s + f(qx[i] * recordFloat(k, t, i)))
    out[t] = s
  }
  return out
}

/** Round half to even, as f32.nearest. */
function nearest(x: number): number {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

/** mix_q8: Σ_t p[t] · v[t] over the values `v` (p: the attention weights, f32). */
export function mixQ8Ref(p: Float32Array, v: Q8Records): Float32Array {
  const n = v.n
  const w = new Float32Array(n)
  let max = 0
  for (let t = 0; t < n; t++) {
    w[t] = f(p[t] * recordScale(v, t))
    max = Math.max(max, Math.abs(w[t]))
  }
  const inv = max > 0 ? f(32767 / max) : 0
  const ws = max > 0 ? f(max / 32767) : 0
  const w16 = Array.from(w, (x) => nearest(f(x * inv)))
  const out = new Float32Array(v.dim)
  for (let d = 0; d < v.dim; d++) {
    let acc = 0
    for (let t0 = 0; t0 < n; t0 += 256) {
      let block = 0
      for (let t = t0; t < Math.min(n, t0 + 256); t++) block += w16[t] * recordValue(v, t, d)
      acc = f(acc + f(block))
    }
    out[d] = f(acc * ws)
  }
  return out
}
