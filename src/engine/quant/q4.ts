/**
 * 'q4-b32': 4-bit weights in blocks of 32 inputs, the format of the engine's q4 kernels
 * (kernels/engine.wat), and its scalar reference: packing onnxruntime `MatMulNBits` tensors,
 * quantizing float rows, dequantizing. Pure TypeScript: the model toolchain's converter and the
 * tests use it as is.
 *
 * A matrix of N rows (outputs) of K inputs, w[v, k] = (q − zp) · scale with q, zp in 0..15 per
 * block of 32 inputs. kb = 4 · ceil(K / 128) blocks per row: a row is whole groups of 4 blocks
 * (128 inputs), the kernels' unit; blocks past ceil(K / 32) are padding (q 0, scale 0, zp 0).
 * Three arrays, each its own region of kernel memory:
 *
 *   q  N · kb · 16 bytes   row v at 16·kb·v, group g (blocks 4g … 4g+3) at + 64g. In a group,
 *                          byte 16j + 4b + r (j, b, r in 0..3) holds, for input i = 32(4g + b):
 *                            low nibble   w[v, i + 4j + r]
 *                            high nibble  w[v, i + 16 + 4j + r]
 *   s  N · kb f32          scale of block c of row v at byte 4(kb·v + c)
 *   z  N · kb u8           zero point of block c of row v at byte kb·v + c
 *
 * Why this order: a 16-byte load of a group holds 4 inputs of each of its 4 blocks, block b in
 * bytes 4b … 4b+3, so its nibbles (`& 15` and `>> 4`) are two vectors whose 4-byte lanes are
 * the 4 blocks. `i32x4.relaxed_dot_i8x16_i7x16_add_s` sums exactly 4 adjacent byte products
 * per i32 lane: over the group's 4 loads each lane accumulates the whole dot product of one
 * block, with no shuffle. Plain SIMD128 (`i32x4.dot_i16x8_s` sums byte pairs) needs one
 * shuffle-add per group. Activations (activations.ts) are stored in the same order.
 *
 * Why f32 scales: MatMulNBits exports of fp32 models carry f32 scales, which f16 could not hold
 * exactly; f16 would save 2 of the 21 bytes per block but needs a conversion in the kernel that
 * SIMD128 has no instruction for. Why a zero point per block: the onnxruntime quantizer is
 * asymmetric by default (exports carry zero_points), and for the toolchain's own conversion an
 * asymmetric block has a lower error than a symmetric one (see the report of issue 13); the
 * kernels handle it with one integer multiply per block. Why SoA: scales and zero points of 4
 * blocks are one load each (the kernels read 4 blocks at a time).
 */

export const Q4_BLOCK = 32
/** Blocks per kernel group: rows hold whole groups. */
export const Q4_GROUP = 4

/** A matrix in 'q4-b32' (layout above). */
export interface Q4Matrix {
  /** Rows (outputs). */
  n: number
  /** Inputs per row. */
  k: number
  /** Blocks per row, padding included: 4 · ceil(k / 128). */
  kb: number
  q: Uint8Array
  s: Float32Array
  z: Uint8Array
}

/** Blocks per row of a matrix with k inputs. */
export function q4Blocks(k: number): number {
  return Math.ceil(k / (Q4_BLOCK * Q4_GROUP)) * Q4_GROUP
}

/** Byte offset of input i's nibble in its row's q, and whether it is the high nibble. */
export function q4NibbleAt(i: number): { byte: number; high: boolean } {
  const block = i >> 5
  const r = i & 31
  return {
    byte: 64 * (block >> 2) + 16 * ((r >> 2) & 3) + 4 * (block & 3) + (r & 3),
    high: r >= 16,
  }
}

export function emptyQ4(n: number, k: number): Q4Matrix {
  if (!(Number.isInteger(n) && Number.isInteger(k) && n > 0 && k > 0))
    throw new Error(`bad q4 shape ${n} x ${k}`)
  const kb = q4Blocks(k)
  return {
    n,
    k,
    kb,
    q: new Uint8Array(n * kb * 16),
    s: new Float32Array(n * kb),
    z: new Uint8Array(n * kb),
  }
}

/** q of input i of row v (0..15). */
export function q4Get(m: Q4Matrix, v: number, i: number): number {
  const r = i & 31
  const byte = 64 * (i >> 7) + 16 * ((r >> 2) & 3) + 4 * ((i >> 5) & 3) + (r & 3)
  const b = m.q[16 * m.kb * v + byte]
  return r >= 16 ? b >> 4 : b & 15
}

function q4Set(m: Q4Matrix, v: number, i: number, q: number): void {
  const { byte, high } = q4NibbleAt(i)
  const at = 16 * m.kb * v + byte
  m.q[at] = high ? (m.q[at] & 0x0f) | (q << 4) : (m.q[at] & 0xf0) | q
}

/** The dequantized matrix, [n, k] row-major: (q − zp) · scale, rounded once to f32. */
export function dequantizeQ4(m: Q4Matrix): Float32Array {
  const out = new Float32Array(m.n * m.k)
  for (let v = 0; v < m.n; v++)
    for (let i = 0; i < m.k; i++) {
      const c = m.kb * v + (i >> 5)
      out[v * m.k + i] = (q4Get(m, v, i) - m.z[c]) * m.s[c]
    }
  return out
}

/** onnxruntime `MatMulNBits` (com.microsoft) inputs B, scales and zero_points, as stored. */
export interface MatMulNBitsTensors {
  /** Attribute N: output features (rows). */
  n: number
  /** Attribute K: input features. */
  k: number
  /** Attribute bits: only 4. */
  bits: number
  /** Attribute block_size: a multiple of 32 (a block of 64 or 128 becomes 2 or 4 blocks). */
  blockSize: number
  /** uint8 [N, n_blocks, block_size / 2]: input 2t in the low nibble of byte t, 2t+1 high. */
  b: Uint8Array
  /** [N · n_blocks]: float32, or float16 as its raw bits (Uint16Array). */
  scales: Float32Array | Uint16Array
  /** uint8 [N, ceil(n_blocks / 2)], block 2t in the low nibble of byte t; absent: all 8. */
  zeroPoints?: Uint8Array
}

/**
 * Packs MatMulNBits weights into 'q4-b32' without changing any value: every q, zero point and
 * scale is the export's (f16 scales widen to f32 exactly), only their places change.
 */
export function packMatMulNBits(t: MatMulNBitsTensors): Q4Matrix {
  const { n, k, blockSize } = t
  if (t.bits !== 4) throw new Error(`MatMulNBits with bits=${t.bits}: only 4 is supported`)
  if (!(blockSize >= Q4_BLOCK && blockSize % Q4_BLOCK === 0))
    throw new Error(`MatMulNBits with block_size=${blockSize}: a multiple of 32 is needed`)
  const nBlocks = Math.ceil(k / blockSize)
  const blob = blockSize / 2
  if (t.b.length !== n * nBlocks * blob)
    throw new Error(
      `B has ${t.b.length} bytes, [${n}, ${nBlocks}, ${blob}] needs ${n * nBlocks * blob}`,
    )
  if (t.scales.length !== n * nBlocks)
    throw new Error(`scales has ${t.scales.length} values, ${n * nBlocks} needed`)
  const zpBytes = Math.ceil(nBlocks / 2)
  if (t.zeroPoints && t.zeroPoints.length !== n * zpBytes)
    throw new Error(`zero_points has ${t.zeroPoints.length} bytes, ${n * zpBytes} needed`)
  const m = emptyQ4(n, k)
  // inputs past k in the last block are copied too: the blob is kept whole
  const inputs = nBlocks * blockSize
  const ourBlocks = inputs / Q4_BLOCK
  for (let v = 0; v < n; v++) {
    const row = v * nBlocks * blob
    for (let i = 0; i < inputs; i++) {
      const byte = t.b[row + (i >> 1)]
      q4Set(m, v, i, i & 1 ? byte >> 4 : byte & 15)
    }
    for (let c = 0; c < ourBlocks; c++) {
      const src = Math.floor((c * Q4_BLOCK) / blockSize)
      const raw = t.scales[v * nBlocks + src]
      m.s[m.kb * v + c] = t.scales instanceof Uint16Array ? f16ToF32(raw) : raw
      const zp = t.zeroPoints
        ? (t.zeroPoints[v * zpBytes + (src >> 1)] >> (src & 1 ? 4 : 0)) & 15
        : 8
      m.z[m.kb * v + c] = zp
    }
  }
  return m
}

/** IEEE binary16 bits to their (exactly representable) f32 value. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >> 10) & 31
  const frac = h & 1023
  if (exp === 0) return sign * frac * 2 ** -24
  if (exp === 31) return frac ? NaN : sign * Infinity
  return sign * (1 + frac / 1024) * 2 ** (exp - 15)
}

export type Q4Scheme = 'asymmetric' | 'symmetric'

/**
 * Quantizes float rows [n, k] to 'q4-b32' by rounding to nearest (`--format q4` conversion of
 * fp32, fp16 or dequantized q8 weights). 'asymmetric' (the default): the block's [min, max]
 * (widened to hold 0) onto 0..15, scale (max − min) / 15, zero point round(−min / scale). 'symmetric': llama.cpp's
 * q4_0, scale = the signed extreme / −8, zero point 8.
 */
export function quantizeQ4(
  w: Float32Array,
  n: number,
  k: number,
  scheme: Q4Scheme = 'asymmetric',
): Q4Matrix {
  if (w.length !== n * k) throw new Error(`${w.length} weights, ${n} x ${k} expected`)
  const m = emptyQ4(n, k)
  const blocks = Math.ceil(k / Q4_BLOCK)
  for (let v = 0; v < n; v++)
    for (let c = 0; c < blocks; c++) {
      const from = v * k + c * Q4_BLOCK
      const to = v * k + Math.min(k, (c + 1) * Q4_BLOCK)
      let scale: number
      let zp: number
      if (scheme === 'asymmetric') {
        // the range holds 0: q = zp must stay representable with zp in 0..15
        let min = 0
        let max = 0
        for (let i = from; i < to; i++) {
          min = Math.min(min, w[i])
          max = Math.max(max, w[i])
        }
        scale = Math.fround((max - min) / 15)
        zp = scale > 0 ? Math.min(15, Math.max(0, Math.round(-min / scale))) : 0
      } else {
        let extreme = 0
        for (let i = from; i < to; i++) if (Math.abs(w[i]) > Math.abs(extreme)) extreme = w[i]
        scale = Math.fround(extreme / -8)
        zp = 8
      }
      const inv = scale !== 0 ? 1 / scale : 0
      for (let i = from; i < to; i++) {
        const q = Math.min(15, Math.max(0, Math.round(w[i] * inv) + zp))
        q4Set(m, v, c * Q4_BLOCK + (i - from), q)
      }
      m.s[m.kb * v + c] = scale
      m.z[m.kb * v + c] = zp
    }
  return m
}
