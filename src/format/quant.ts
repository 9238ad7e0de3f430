/**
 * How the package format encodes numbers, as plain scalar functions: the one definition that the
 * model toolchain (random generator, converter, checks), the engine's kernels and the tests all
 * use, so none of them keeps its own rounding (as ggml keeps its `_ref` quantizers).
 *
 * - q8 rows: uint8, asymmetric, one scale and zero point per row (onnxruntime's quantizer).
 * - q4 blocks in `MatMulNBits` layout: 4-bit values along each row in blocks, a scale and a
 *   4-bit zero point per block.
 * - Activations as `DynamicQuantizeMatMul` quantizes them: uint8, one scale and zero point for
 *   the whole tensor, round half to even (`quantizeLikeDynamicQuantizeLinear`).
 */

/** Elements per q4 block along a row (MatMulNBits' block_size as exported). */
export const Q4_BLOCK_SIZE = 32

/** IEEE round half to even (std::nearbyint in the default rounding mode). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

/**
 * The q4 kernels' activations, one block of `len` (≤ 32) values of `x` from `from`: int8 with
 * d = max|x| / 127 and q = nearest(x · (127 / max)), ties to even, all in f32 (as llama.cpp's
 * q8_0). Writes q to `q[0..len)`; returns d.
 */
export function quantizeActivationBlock(
  x: ArrayLike<number>,
  from: number,
  len: number,
  q: Int8Array,
): number {
  let max = 0
  for (let i = 0; i < len; i++) max = Math.max(max, Math.abs(x[from + i]))
  const inv = max > 0 ? Math.fround(127 / max) : 0
  for (let i = 0; i < len; i++) q[i] = roundHalfEven(Math.fround(x[from + i] * inv))
  return Math.fround(max / 127)
}

/** A row as the q4 kernels multiply it: every block of 32 quantized, then q · d. */
export function roundActivationsLikeQ4Kernels(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length)
  const q = new Int8Array(Q4_BLOCK_SIZE)
  for (let from = 0; from < x.length; from += Q4_BLOCK_SIZE) {
    const len = Math.min(Q4_BLOCK_SIZE, x.length - from)
    const d = quantizeActivationBlock(x, from, len, q)
    for (let i = 0; i < len; i++) out[from + i] = q[i] * d
  }
  return out
}

/**
 * onnxruntime's DynamicQuantizeLinear: uint8, one scale and zero point for all of `x` (a range
 * that includes 0), in float32 arithmetic. Returns q − zero point per element (exact integers
 * for the integer dot products that follow) and the scale.
 */
export function quantizeLikeDynamicQuantizeLinear(x: ArrayLike<number>): {
  centered: Int32Array
  scale: number
} {
  const f = Math.fround
  let min = 0
  let max = 0
  for (let i = 0; i < x.length; i++) {
    if (x[i] < min) min = x[i]
    if (x[i] > max) max = x[i]
  }
  min = f(min)
  max = f(max)
  const scale = max === min ? 1 : f(f(max - min) / 255)
  const zp = roundHalfEven(Math.min(255, Math.max(0, f(0 - f(min / scale)))))
  const centered = new Int32Array(x.length)
  for (let i = 0; i < x.length; i++)
    centered[i] = Math.min(255, Math.max(0, roundHalfEven(f(x[i] / scale)) + zp)) - zp
  return { centered, scale }
}

/**
 * uint8, asymmetric, one scale and zero point per row of `w` ([rows, cols]); the range always
 * includes 0, as ORT's quantizer does. Dequantized value: (q - zeroPoint[r]) * scale[r].
 */
export function quantizeRowsU8(w: Float32Array, rows: number, cols: number) {
  const q = new Uint8Array(rows * cols)
  const scale = new Float32Array(rows)
  const zeroPoint = new Uint8Array(rows)
  for (let r = 0; r < rows; r++) {
    const off = r * cols
    let min = 0
    let max = 0
    for (let c = 0; c < cols; c++) {
      const v = w[off + c]
      if (v < min) min = v
      if (v > max) max = v
    }
    const s = Math.fround(max > min ? (max - min) / 255 : 1)
    const zp = Math.min(255, Math.max(0, Math.round(-min / s)))
    scale[r] = s
    zeroPoint[r] = zp
    for (let c = 0; c < cols; c++)
      q[off + c] = Math.min(255, Math.max(0, Math.round(w[off + c] / s) + zp))
  }
  return { q, scale, zeroPoint }
}

export function dequantizeRowsU8(
  q: Uint8Array,
  scale: Float32Array,
  zeroPoint: Uint8Array,
  rows: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(rows * cols)
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) out[r * cols + c] = (q[r * cols + c] - zeroPoint[r]) * scale[r]
  return out
}

/**
 * How a block of 4-bit weights is quantized. 'asymmetric': the block's range widened to hold 0,
 * onto 0..15 with a zero point of its own (onnxruntime's `MatMul4BitsQuantizer` default).
 * 'symmetric': scale = the block's signed extreme / −8, zero point 8 (llama.cpp's q4_0; what the
 * quantizer writes with `is_symmetric`, which transformers.js's conversion script sets for every
 * q4 and q4f16 file it makes: those exports have no zero_points input, and 8 is its default).
 */
export type Q4Scheme = 'asymmetric' | 'symmetric'

/**
 * 4-bit blocks along each row, MatMulNBits layout: `packed` [rows, blocks, blockSize/2]
 * (element 2j in the low nibble of byte j), `scales` [rows, blocks], `zeroPoints`
 * [rows, ceil(blocks/2)] (block 2j in the low nibble; all 8 when 'symmetric'). A partial last
 * block is padded with its zero point. Dequantized value: (q - zp) * scale.
 */
export function quantizeBlocksQ4(
  w: Float32Array,
  rows: number,
  cols: number,
  blockSize = Q4_BLOCK_SIZE,
  scheme: Q4Scheme = 'asymmetric',
) {
  const symmetric = scheme === 'symmetric'
  const blocks = Math.ceil(cols / blockSize)
  const blob = blockSize / 2
  const zpBytes = Math.ceil(blocks / 2)
  const packed = new Uint8Array(rows * blocks * blob)
  const scales = new Float32Array(rows * blocks)
  const zeroPoints = new Uint8Array(rows * zpBytes)
  for (let r = 0; r < rows; r++)
    for (let b = 0; b < blocks; b++) {
      const start = r * cols + b * blockSize
      const end = r * cols + Math.min(cols, (b + 1) * blockSize)
      let s: number
      let zp: number
      if (symmetric) {
        let extreme = 0
        for (let i = start; i < end; i++) if (Math.abs(w[i]) > Math.abs(extreme)) extreme = w[i]
        s = Math.fround(extreme / -8) || 0
        zp = 8
      } else {
        let min = 0
        let max = 0
        for (let i = start; i < end; i++) {
          if (w[i] < min) min = w[i]
          if (w[i] > max) max = w[i]
        }
        s = Math.fround(max > min ? (max - min) / 15 : 1)
        zp = Math.min(15, Math.max(0, Math.round(-min / s)))
      }
      // asymmetric: w / s, as before; symmetric: w · (1 / s), as onnxruntime's quantizer does
      const inv = s !== 0 ? 1 / s : 0
      scales[r * blocks + b] = s
      zeroPoints[r * zpBytes + (b >> 1)] |= zp << ((b & 1) * 4)
      const blobOff = (r * blocks + b) * blob
      for (let j = 0; j < blockSize; j++) {
        const i = start + j
        let v = zp
        if (i < end) {
          const q = symmetric ? Math.round(w[i] * inv) : Math.round(w[i] / s)
          v = Math.min(15, Math.max(0, q + zp))
        }
        packed[blobOff + (j >> 1)] |= v << ((j & 1) * 4)
      }
    }
  return { packed, scales, zeroPoints, blocks }
}

export function dequantizeBlocksQ4(
  packed: Uint8Array,
  scales: Float32Array,
  zeroPoints: Uint8Array,
  rows: number,
  cols: number,
  blockSize = Q4_BLOCK_SIZE,
): Float32Array {
  const blocks = Math.ceil(cols / blockSize)
  const blob = blockSize / 2
  const zpBytes = Math.ceil(blocks / 2)
  const out = new Float32Array(rows * cols)
  for (let r = 0; r < rows; r++)
    for (let b = 0; b < blocks; b++) {
      const zp = (zeroPoints[r * zpBytes + (b >> 1)] >> ((b & 1) * 4)) & 15
      const scale = scales[r * blocks + b]
      const blobOff = (r * blocks + b) * blob
      const end = Math.min(blockSize, cols - b * blockSize)
      for (let j = 0; j < end; j++) {
        const q = (packed[blobOff + (j >> 1)] >> ((j & 1) * 4)) & 15
        out[r * cols + b * blockSize + j] = (q - zp) * scale
      }
    }
  return out
}
