/**
 * Reference dot products: the kernels' (kernels/engine.wat) results, computed in the same order
 * with the same f32 roundings, so both ISA variants must equal them bit for bit. The integer
 * parts are exact; `q4DotF64` and `q8RowDotF64` are the same sums without f32 rounding, to
 * bound what the f32 epilogue costs.
 */
import type { BlockActivations, RowActivations } from './activations.ts'
import { a8Get, a8Scale, a8Sum } from './activations.ts'
import { q4Get, q4Scale, q4Zero, type Q4Matrix } from '../../format/q4-b32.ts'
import type { Q8Rows } from '../../format/q8-rows.ts'

const f = Math.fround

/** Σ (q − zp) · x over block c of weight row v and activation row j: exact integer. */
export function q4BlockInt(m: Q4Matrix, v: number, a: BlockActivations, j: number, c: number) {
  let dot = 0
  for (let i = 32 * c; i < 32 * c + 32; i++) dot += q4Get(m, v, i) * a8Get(a, j, i)
  return dot - q4Zero(m, v, c) * a8Sum(a, j, c)
}

/** Block c's term: the exact integer to f32, × weight scale, × activation scale. */
function q4Term(m: Q4Matrix, v: number, a: BlockActivations, j: number, c: number): number {
  return f(f(q4BlockInt(m, v, a, j, c) * q4Scale(m, v, c)) * a8Scale(a, j, c))
}

/**
 * Weight row v · activation row j as the kernels compute it: per block the exact integer, to
 * f32, × weight scale, × activation scale; block b of every group of 4 summed in its own lane,
 * the 4 lanes added pairwise at the end.
 */
export function q4Dot(m: Q4Matrix, v: number, a: BlockActivations, j: number): number {
  if (m.kb !== a.kb) throw new Error(`q4 row of ${m.kb} blocks, activations of ${a.kb}`)
  const lane = [0, 0, 0, 0]
  for (let c = 0; c < m.kb; c++) lane[c & 3] = f(lane[c & 3] + q4Term(m, v, a, j, c))
  return f(f(lane[0] + lane[1]) + f(lane[2] + lane[3]))
}

/** The same sum in float64 (no rounding after the integers). */
export function q4DotF64(m: Q4Matrix, v: number, a: BlockActivations, j: number): number {
  let sum = 0
  for (let c = 0; c < m.kb; c++)
    sum += q4BlockInt(m, v, a, j, c) * q4Scale(m, v, c) * a8Scale(a, j, c)
  return sum
}

/** Σ over blocks of |term| (bounds the f32 rounding of q4Dot: ≈ kb · 2^-23 of it). */
export function q4DotAbs(m: Q4Matrix, v: number, a: BlockActivations, j: number): number {
  let sum = 0
  for (let c = 0; c < m.kb; c++)
    sum += Math.abs(q4BlockInt(m, v, a, j, c) * q4Scale(m, v, c) * a8Scale(a, j, c))
  return sum
}

/** out[j · n + v] = q4Dot for all rows and activation rows. */
export function q4Gemm(m: Q4Matrix, a: BlockActivations): Float32Array {
  const out = new Float32Array(a.t * m.n)
  for (let j = 0; j < a.t; j++) for (let v = 0; v < m.n; v++) out[j * m.n + v] = q4Dot(m, v, a, j)
  return out
}

/** Σ q · x of q8 row v and int16 row j: exact integer (int32 by the activation limit). */
export function q8RowInt(w: Q8Rows, v: number, a: RowActivations, j: number): number {
  let dot = 0
  for (let i = 0; i < w.stride; i++) dot += w.q[v * w.stride + i] * a.x[j * a.stride + i]
  return dot
}

/** q8 row v · int16 row j as `rows`, `rows4` and `q8_gemm` compute it (their `$store`). */
export function q8RowDot(w: Q8Rows, v: number, a: RowActivations, j: number): number {
  const corr = f(w.zp[v] * a.sum[j])
  return f(f(f(f(q8RowInt(w, v, a, j)) - corr) * w.scale[v]) * a.scale[j])
}

export function q8RowDotF64(w: Q8Rows, v: number, a: RowActivations, j: number): number {
  return (q8RowInt(w, v, a, j) - w.zp[v] * a.sum[j]) * w.scale[v] * a.scale[j]
}

export function q8Gemm(w: Q8Rows, a: RowActivations): Float32Array {
  const out = new Float32Array(a.t * w.n)
  for (let j = 0; j < a.t; j++)
    for (let v = 0; v < w.n; v++) out[j * w.n + v] = q8RowDot(w, v, a, j)
  return out
}

/**
 * rms_norm of one row of n floats (n a multiple of 4), as the kernel computes it: the squares
 * summed in 4 f32 lanes (lane c: i ≡ c mod 4, in i order), the lanes added (0+1)+(2+3), inv =
 * f32(1 / sqrt(f32(ss / n) + eps)), out[i] = f32(f32(x[i] · inv) · w[i]).
 */
export function rmsNormRef(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  const n = x.length
  const lanes = [0, 0, 0, 0]
  for (let i = 0; i < n; i++) lanes[i % 4] = f(lanes[i % 4] + f(x[i] * x[i]))
  const ss = f(f(lanes[0] + lanes[1]) + f(lanes[2] + lanes[3]))
  const inv = f(1 / f(Math.sqrt(f(f(ss / n) + f(eps)))))
  return Float32Array.from(x, (v, i) => f(f(v * inv) * w[i]))
}

/**
 * `dots`: one attention score, q · k over `dim` floats (a multiple of 4) as the kernel sums it
 * whatever tile it is in: 4 f32 lanes (lane c: d ≡ c mod 4, in d order), added (0+1)+(2+3).
 */
export function dotsRef(q: Float32Array, k: Float32Array): number {
  const lanes = [0, 0, 0, 0]
  for (let d = 0; d < q.length; d++) lanes[d % 4] = f(lanes[d % 4] + f(q[d] * k[d]))
  return f(f(lanes[0] + lanes[1]) + f(lanes[2] + lanes[3]))
}

/** `mix`: one output value, Σ_t p[t] · v[t·dim + d], f32, in t order. */
export function mixRef(p: Float32Array, v: Float32Array, dim: number, d: number): number {
  let s = 0
  for (let t = 0; t < p.length; t++) s = f(s + f(p[t] * v[t * dim + d]))
  return s
}
