/**
 * 'q8-rows', today's format of the decoder's and the lm_head's matrices (decoder.ts, head.ts):
 * per row `stride` int8 (a multiple of 32, zero padded), an int8 zero point and an f32 scale,
 * w[v, i] = (q − zp) · scale. Three arrays here; in kernel memory they are regions passed by
 * pointer. The quantizer is for comparisons (the error numbers of issue 13): real q8 weights come
 * from the graph's own quantization.
 */
import { quantizeRowsU8 } from './quant.ts'

export interface Q8Rows {
  n: number
  k: number
  stride: number
  q: Int8Array
  zp: Int8Array
  scale: Float32Array
}

export function q8Stride(k: number): number {
  return Math.ceil(k / 32) * 32
}

/**
 * The format's q8 quantizer (quant.ts `quantizeRowsU8`: per-row asymmetric uint8, the range
 * widened to hold 0), stored shifted to int8 as decoder.ts does.
 */
export function quantizeQ8Rows(w: Float32Array, n: number, k: number): Q8Rows {
  const stride = q8Stride(k)
  const u8 = quantizeRowsU8(w, n, k)
  const out: Q8Rows = {
    n,
    k,
    stride,
    q: new Int8Array(n * stride),
    zp: new Int8Array(n),
    scale: u8.scale,
  }
  for (let v = 0; v < n; v++) {
    for (let i = 0; i < k; i++) out.q[v * stride + i] = u8.q[v * k + i] - 128
    out.zp[v] = u8.zeroPoint[v] - 128
  }
  return out
}

export function dequantizeQ8Rows(m: Q8Rows): Float32Array {
  const out = new Float32Array(m.n * m.k)
  for (let v = 0; v < m.n; v++)
    for (let i = 0; i < m.k; i++) out[v * m.k + i] = (m.q[v * m.stride + i] - m.zp[v]) * m.scale[v]
  return out
}
