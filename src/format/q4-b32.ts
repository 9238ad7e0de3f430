/**
 * 'q4-b32': 4-bit weights in blocks of 32 inputs, the format of the engine's q4 kernels
 * (kernels/engine.wat), and its scalar reference: packing onnxruntime `MatMulNBits` tensors,
 * quantizing float rows, dequantizing. Pure TypeScript: the model toolchain's converter and the
 * tests use it as is.
 *
 * A matrix of N rows (outputs) of K inputs, w[v, i] = (q − zp) · scale with q, zp in 0..15 per
 * block of 32 inputs. kb = 4 · ceil(K / 128) blocks per row: a row is whole groups of 4 blocks
 * (128 inputs), the kernels' unit; blocks past ceil(K / 32) are padding (q 0, scale 0, zp 0).
 * One array: row v at 21·kb·v, group g (blocks 4g … 4g+3) at + 84g, each group
 *
 *   bytes  0..63   nibbles: byte 16j + 4b + r (j, b, r in 0..3) holds, for i = 32(4g + b),
 *                    low nibble   q[v, i + 4j + r]
 *                    high nibble  q[v, i + 16 + 4j + r]
 *   bytes 64..79   scales of blocks 4g … 4g+3, f32
 *   bytes 80..83   zero points of blocks 4g … 4g+3, u8
 *
 * Why this order: a 16-byte load of a group holds 4 inputs of each of its 4 blocks, block b in
 * bytes 4b … 4b+3, so its nibbles (`& 15` and `>> 4`) are two vectors whose 4-byte lanes are
 * the 4 blocks. `i16x8.relaxed_dot_i8x16_i7x16_s` sums adjacent byte products in pairs, and
 * `i32x4.extadd_pairwise_i16x8_s` those pairs again: after the group's 4 loads, i32 lane b holds
 * the whole dot product of block b, with no shuffle (plain SIMD128, `i32x4.dot_i16x8_s` on
 * widened halves, needs one shuffle-add per group). The scales and zero points of the 4 blocks
 * are then one load each, at fixed offsets from the nibbles: a kernel walks one pointer per
 * weight row and the prefetcher sees one stream. Activations (activations.ts) are grouped the
 * same way.
 *
 * Why f32 scales: MatMulNBits exports of fp32 models carry f32 scales, which f16 could not hold
 * exactly; f16 would save 2 of the 21 bytes per block but needs a conversion in the kernel that
 * SIMD128 has no instruction for. Why a zero point per block: onnxruntime's quantizer is
 * asymmetric by default (its exports carry zero_points), and for the toolchain's own conversion
 * an asymmetric block has a lower error than a symmetric one (scripts/bench/kernels.ts --errors);
 * the kernels handle it with one integer multiply per block. Exports without zero points
 * (symmetric: transformers.js's script, which made onnx-community's q4 and q4f16 files) get 8 in
 * every block: those matrices take the symmetric layout below, and the kernels' `q4s_` copies.
 *
 * The symmetric layout (`sym`, for `MatMulNBits` without zero points, or with every one 8): the
 * same groups without bytes 80..83, 80 bytes a group (20·kb a row), every zero point 8 by
 * definition. At 0.5B shapes that is 15 MiB of a q4 package's 320 less in memory, and as much
 * less read by every decode step. (Alignment itself buys nothing: 84-byte groups, whose loads
 * are unaligned, measured as fast as 80-byte ones with zero points elsewhere.)
 */
import { Q4_BLOCK_SIZE, quantizeBlocksQ4, type Q4Scheme } from './quant.ts'

export type { Q4Scheme }

export const Q4_BLOCK = Q4_BLOCK_SIZE
/** Blocks per kernel group: rows hold whole groups. */
export const Q4_GROUP = 4

/** Bytes of one group: 64 of nibbles, 16 of scales, 4 of zero points. */
export const Q4_GROUP_BYTES = 84
/** Bytes of one group of the symmetric layout: 64 of nibbles, 16 of scales. */
export const Q4S_GROUP_BYTES = 80

/** Bytes of one group in a layout (`sym`: the symmetric one). */
export function q4GroupBytes(sym = false): number {
  return sym ? Q4S_GROUP_BYTES : Q4_GROUP_BYTES
}

/** Bytes of a row of kb blocks: 21·kb, or 20·kb in the symmetric layout. */
export function q4RowBytes(kb: number, sym = false): number {
  return (q4GroupBytes(sym) / Q4_GROUP) * kb
}

/**
 * Rows per panel of the kernels' placement of a matrix in memory. The format above is how a
 * matrix is packed and stored (the head file of a package, `Q4Matrix.data`); in kernel memory
 * its rows are placed in panels of 4 instead, and each panel's groups interleaved: group g of
 * rows 4p … 4p+3 one after another, so row v's group g is at
 *
 *   (v >> 2) · 4 · rowBytes + g · 4 · groupBytes + (v & 3) · groupBytes
 *
 * (a last panel of fewer rows is padded to 4: `q4PlacedBytes`). Why: a decode step reads every
 * weight once, 4 rows at a time (the 4-row tile of one activation row), and rows stored one
 * after another are 4 streams, 1 to 6 KiB apart, that hardware prefetchers did not follow: the
 * kernels had to touch the lines of the next rows first, and a 0.5B q4 step spent 18.9 ms in
 * its products (Node 24, memory at 26 GB/s). Placed in panels, the same tile reads one
 * sequential stream and needs no touching: 13.6-14.0 ms (1.3-1.4x; Deno the same). The values
 * and every sum are the same, only the places differ.
 */
export const Q4_PANEL_ROWS = 4

/** Bytes of n rows of kb blocks in the kernels' placement: whole panels of 4 rows. */
export function q4PlacedBytes(n: number, kb: number, sym = false): number {
  return Math.ceil(n / Q4_PANEL_ROWS) * Q4_PANEL_ROWS * q4RowBytes(kb, sym)
}

/** Offset of row v's first group in the kernels' placement (group g at + g · 4 · groupBytes). */
export function q4PlacedRowAt(v: number, kb: number, sym = false): number {
  return (
    Math.floor(v / Q4_PANEL_ROWS) * Q4_PANEL_ROWS * q4RowBytes(kb, sym) +
    (v % Q4_PANEL_ROWS) * q4GroupBytes(sym)
  )
}

/**
 * Offset in the kernels' placement of byte `b` of row v as the format stores it (b < rowBytes:
 * q4NibbleAt's, q4ScaleAt's and q4ZeroAt's offsets).
 */
export function q4PlacedAt(v: number, b: number, kb: number, sym = false): number {
  const G = q4GroupBytes(sym)
  return q4PlacedRowAt(v, kb, sym) + Math.floor(b / G) * Q4_PANEL_ROWS * G + (b % G)
}

/**
 * Places `src`, bytes [fileAt, fileAt + src.length) of a matrix stored in the format above (kb
 * blocks a row), at their places in a placement that starts at `dst[at]`: the pieces of a file
 * can arrive in any order and cut anywhere. Copies group by group (80 or 84 bytes each).
 */
export function placeQ4Bytes(
  src: Uint8Array,
  fileAt: number,
  kb: number,
  sym: boolean,
  dst: Uint8Array,
  at: number,
): void {
  const G = q4GroupBytes(sym)
  const S = q4RowBytes(kb, sym)
  let from = 0
  while (from < src.length) {
    const o = fileAt + from
    const v = Math.floor(o / S)
    const inRow = o - v * S
    // to the end of its group, the unit that stays together
    const n = Math.min(G - (inRow % G), src.length - from)
    dst.set(src.subarray(from, from + n), at + q4PlacedAt(v, inRow, kb, sym))
    from += n
  }
}

/** `m` in the kernels' placement at `dst[at]` (q4PlacedBytes bytes; padding rows zeroed). */
export function placeQ4(m: Q4Matrix, dst: Uint8Array, at: number): void {
  const bytes = q4PlacedBytes(m.n, m.kb, m.sym)
  if (at + bytes > dst.length) throw new Error(`no room for a ${m.n} x ${m.k} q4 matrix at ${at}`)
  // the last panel whole when it has padding rows (they are interleaved with its rows)
  dst.fill(
    0,
    at + q4PlacedBytes(Math.floor(m.n / Q4_PANEL_ROWS) * Q4_PANEL_ROWS, m.kb, m.sym),
    at + bytes,
  )
  placeQ4Bytes(m.data, 0, m.kb, m.sym === true, dst, at)
}

/** A matrix in 'q4-b32' (layout above). */
export interface Q4Matrix {
  /** Rows (outputs). */
  n: number
  /** Inputs per row. */
  k: number
  /** Blocks per row, padding included: 4 · ceil(k / 128). */
  kb: number
  /** The symmetric layout: no zero points stored, every one 8. */
  sym?: boolean
  /** n · q4RowBytes(kb, sym) bytes. */
  data: Uint8Array
}

/** Blocks per row of a matrix with k inputs. */
export function q4Blocks(k: number): number {
  return Math.ceil(k / (Q4_BLOCK * Q4_GROUP)) * Q4_GROUP
}

/** Byte offset of input i's nibble in its row, and whether it is the high nibble. */
export function q4NibbleAt(i: number, sym = false): { byte: number; high: boolean } {
  const block = i >> 5
  const r = i & 31
  return {
    byte: q4GroupBytes(sym) * (block >> 2) + 16 * ((r >> 2) & 3) + 4 * (block & 3) + (r & 3),
    high: r >= 16,
  }
}

/** Byte offset of block c's scale (f32) in its row. */
export function q4ScaleAt(c: number, sym = false): number {
  return q4GroupBytes(sym) * (c >> 2) + 64 + 4 * (c & 3)
}

/** Byte offset of block c's zero point (u8) in its row (the layout with zero points). */
export function q4ZeroAt(c: number): number {
  return Q4_GROUP_BYTES * (c >> 2) + 80 + (c & 3)
}

export function emptyQ4(n: number, k: number, sym = false): Q4Matrix {
  if (!(Number.isInteger(n) && Number.isInteger(k) && n > 0 && k > 0))
    throw new Error(`bad q4 shape ${n} x ${k}`)
  const kb = q4Blocks(k)
  return { n, k, kb, ...(sym && { sym }), data: new Uint8Array(n * q4RowBytes(kb, sym)) }
}

function view(m: Q4Matrix): DataView {
  return new DataView(m.data.buffer, m.data.byteOffset, m.data.byteLength)
}

/** q of input i of row v (0..15). */
export function q4Get(m: Q4Matrix, v: number, i: number): number {
  const { byte, high } = q4NibbleAt(i, m.sym)
  const b = m.data[q4RowBytes(m.kb, m.sym) * v + byte]
  return high ? b >> 4 : b & 15
}

export function q4Scale(m: Q4Matrix, v: number, c: number): number {
  return view(m).getFloat32(q4RowBytes(m.kb, m.sym) * v + q4ScaleAt(c, m.sym), true)
}

/** Block c's zero point: 8 in the symmetric layout. */
export function q4Zero(m: Q4Matrix, v: number, c: number): number {
  return m.sym ? 8 : m.data[21 * m.kb * v + q4ZeroAt(c)]
}

/** Sets block c's scale and zero point (which must be 8 in the symmetric layout). */
export function q4SetBlock(m: Q4Matrix, v: number, c: number, scale: number, zp: number): void {
  view(m).setFloat32(q4RowBytes(m.kb, m.sym) * v + q4ScaleAt(c, m.sym), scale, true)
  if (!m.sym) m.data[21 * m.kb * v + q4ZeroAt(c)] = zp
  else if (zp !== 8) throw new Error(`zero point ${zp} in the symmetric layout`)
}

export function q4Set(m: Q4Matrix, v: number, i: number, q: number): void {
  const { byte, high } = q4NibbleAt(i, m.sym)
  const at = q4RowBytes(m.kb, m.sym) * v + byte
  m.data[at] = high ? (m.data[at] & 0x0f) | (q << 4) : (m.data[at] & 0xf0) | q
}

/** The dequantized matrix, [n, k] row-major: (q − zp) · scale, rounded once to f32. */
export function dequantizeQ4(m: Q4Matrix): Float32Array {
  const out = new Float32Array(m.n * m.k)
  for (let v = 0; v < m.n; v++)
    for (let i = 0; i < m.k; i++)
      out[v * m.k + i] = (q4Get(m, v, i) - q4Zero(m, v, i >> 5)) * q4Scale(m, v, i >> 5)
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
 * Whether every zero point of the MatMulNBits tensors is 8: none given (the operator's default),
 * or 8 in every block (the nibble past an odd block count is padding and does not count). Such
 * a matrix takes the symmetric layout.
 */
export function nbitsSymmetric(t: MatMulNBitsTensors): boolean {
  return !t.zeroPoints || zeroPointsAllEight(t.zeroPoints, t.n, Math.ceil(t.k / t.blockSize))
}

/**
 * Whether packed MatMulNBits zero points (uint8 [n, ⌈blocks / 2⌉], block 2t in the low nibble of
 * byte t) are 8 in every one of the `blocks` blocks of every row.
 */
export function zeroPointsAllEight(z: Uint8Array, n: number, blocks: number): boolean {
  const zpBytes = Math.ceil(blocks / 2)
  if (z.length !== n * zpBytes) return false
  for (let v = 0; v < n; v++)
    for (let c = 0; c < blocks; c++) {
      const byte = z[v * zpBytes + (c >> 1)]
      if (((c & 1 ? byte >> 4 : byte) & 15) !== 8) return false
    }
  return true
}

/**
 * Packs MatMulNBits weights into 'q4-b32' without changing any value: every q, zero point and
 * scale is the export's (f16 scales widen to f32 exactly), only their places change. `sym`: the
 * symmetric layout (every zero point must be 8).
 */
export function packMatMulNBits(t: MatMulNBitsTensors, sym = false): Q4Matrix {
  const m = emptyQ4(t.n, t.k, sym)
  packMatMulNBitsInto(t, m.data, 0, sym)
  return m
}

/**
 * `packMatMulNBits` into `dst` at byte `at` (a multiple of 4): n · q4RowBytes(kb, sym) bytes,
 * every one written (padding blocks as zeros), and their count returned. With `placed`, the
 * rows go to their places in the kernels' placement of a matrix that starts at `at` instead
 * (Q4_PANEL_ROWS), as its rows `placed.row0` … `placed.row0 + n − 1`: the engine packs each
 * matrix (a part of one at a time) straight into kernel memory, with no buffer of its own. Byte
 * by byte within a block, not input by input: at 0.5B shapes that took loading 2.7 s of a q4
 * package's 5.5 (Node 24).
 */
export function packMatMulNBitsInto(
  t: MatMulNBitsTensors,
  dst: Uint8Array,
  at: number,
  sym = false,
  placed?: { row0: number },
): number {
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
  if (sym && !nbitsSymmetric(t))
    throw new Error('zero points other than 8 cannot take the symmetric q4 layout')
  const kb = q4Blocks(k)
  const groupBytes = q4GroupBytes(sym)
  const rowBytes = q4RowBytes(kb, sym)
  // row v's first group, and the step from a group of a row to its next
  const row0 = placed?.row0 ?? 0
  const rowAt = placed
    ? (v: number) => at + q4PlacedRowAt(row0 + v, kb, sym)
    : (v: number) => at + v * rowBytes
  const step = placed ? Q4_PANEL_ROWS * groupBytes : groupBytes
  const end = placed ? at + q4PlacedBytes(row0 + n, kb, sym) : at + n * rowBytes
  if ((dst.byteOffset + at) % 4 !== 0 || end > dst.length)
    throw new Error(`no room for a ${n} x ${k} q4 matrix at ${at}`)
  const f32 = new Float32Array(dst.buffer, 0, dst.buffer.byteLength >> 2)
  const { b, scales, zeroPoints } = t
  const f16 = scales instanceof Uint16Array
  // inputs past k in the last block are copied too (the blob is kept whole), as far as the
  // row's groups reach (kb · 32 ≥ k: blocks past them would hold only inputs past k)
  const ourBlocks = Math.min((nBlocks * blockSize) / Q4_BLOCK, kb)
  const perSource = blockSize / Q4_BLOCK
  for (let v = 0; v < n; v++) {
    const row = rowAt(v)
    const src0 = v * nBlocks * blob
    for (let c = 0; c < kb; c++) {
      // block c's 16 bytes: byte 16m + 4(c mod 4) + j of its group holds inputs 4m + j (low
      // nibble) and 16 + 4m + j (high); in B, input i is nibble i mod 2 of byte i / 2
      const group = row + step * (c >> 2)
      const o = group + 4 * (c & 3)
      if (c >= ourBlocks) {
        for (let m = 0; m < 4; m++) dst.fill(0, o + 16 * m, o + 16 * m + 4)
        f32[(dst.byteOffset + group + 64) / 4 + (c & 3)] = 0
        if (!sym) dst[group + 80 + (c & 3)] = 0
        continue
      }
      const s = src0 + 16 * c
      for (let m = 0; m < 4; m++) {
        const a0 = b[s + 2 * m]
        const a1 = b[s + 2 * m + 1]
        const h0 = b[s + 8 + 2 * m]
        const h1 = b[s + 8 + 2 * m + 1]
        const d = o + 16 * m
        dst[d] = (a0 & 15) | ((h0 & 15) << 4)
        dst[d + 1] = (a0 >> 4) | (h0 & 0xf0)
        dst[d + 2] = (a1 & 15) | ((h1 & 15) << 4)
        dst[d + 3] = (a1 >> 4) | (h1 & 0xf0)
      }
      const src = v * nBlocks + Math.floor(c / perSource)
      const raw = scales[src]
      f32[(dst.byteOffset + group + 64) / 4 + (c & 3)] = f16 ? f16ToF32(raw) : raw
      if (sym) continue
      const sb = src - v * nBlocks
      dst[group + 80 + (c & 3)] = zeroPoints
        ? (zeroPoints[v * zpBytes + (sb >> 1)] >> (sb & 1 ? 4 : 0)) & 15
        : 8
    }
  }
  return n * rowBytes
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

/**
 * Quantizes float rows [n, k] to 'q4-b32' (`--format q4` conversion of fp32, fp16 or
 * dequantized q8 weights): quant.ts `quantizeBlocksQ4` in `scheme` ('asymmetric' by default),
 * packed as the MatMulNBits tensors would be (symmetric: without zero points, as exported).
 */
export function quantizeQ4(
  w: Float32Array,
  n: number,
  k: number,
  scheme: Q4Scheme = 'asymmetric',
): Q4Matrix {
  if (w.length !== n * k) throw new Error(`${w.length} weights, ${n} x ${k} expected`)
  const q = quantizeBlocksQ4(w, n, k, Q4_BLOCK, scheme)
  return packMatMulNBits({
    n,
    k,
    bits: 4,
    blockSize: Q4_BLOCK,
    b: q.packed,
    scales: q.scales,
    ...(scheme === 'asymmetric' && { zeroPoints: q.zeroPoints }),
  })
}
