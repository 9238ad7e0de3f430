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
 */
export type KvFormat = 'f32' | 'q8'

export const KV_FORMATS: readonly KvFormat[] = ['f32', 'q8']

/** Bytes of one position of one KV head (a record). */
export function kvRecordBytes(format: KvFormat, headDim: number): number {
  return format === 'q8' ? headDim + 4 : 4 * headDim
}

const f = Math.fround

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
  let max = 0
  for (let d = 0; d < dim; d++) max = Math.max(max, Math.abs(src[from + d]))
  const inv = max > 0 ? 127 / max : 0
  for (let d = 0; d < dim; d++) bytes[at + d] = Math.round(src[from + d] * inv) & 255
  scaleF32[0] = max / 127
  bytes.set(scaleBytes, at + dim)
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
  let max = 0
  for (let d = 0; d < dim; d++) max = Math.max(max, Math.abs(src[from + d]))
  const inv = max > 0 ? 32767 / max : 0
  for (let d = 0; d < dim; d++) {
    const q = Math.round(src[from + d] * inv)
    bytes[at + 2 * d] = q & 255
    bytes[at + 2 * d + 1] = (q >> 8) & 255
  }
  return f(max / 32767)
}

/** q8 KV records: `n` positions of `dim`, record t at byte t · (dim + 4). */
export interface Q8Records {
  bytes: Uint8Array
  dim: number
  n: number
}

function recordValue(r: Q8Records, t: number, d: number): number {
  const v = r.bytes[t * (r.dim + 4) + d]
  return v > 127 ? v - 256 : v
}

function recordScale(r: Q8Records, t: number): number {
  const at = r.bytes.byteOffset + t * (r.dim + 4) + r.dim
  return new DataView(r.bytes.buffer).getFloat32(at, true)
}

/** dots_q8: the scores of an int16 query (values q16, scale qs) against the keys `k`. */
export function dotsQ8Ref(q16: Int16Array, qs: number, k: Q8Records): Float32Array {
  const out = new Float32Array(k.n)
  for (let t = 0; t < k.n; t++) {
    let dot = 0
    for (let d = 0; d < k.dim; d++) dot += q16[d] * recordValue(k, t, d)
    out[t] = f(f(f(dot) * recordScale(k, t)) * f(qs))
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
