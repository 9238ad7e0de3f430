/**
 * The 'q4-b32' format and its scalar reference (src/format/q4-b32.ts): MatMulNBits tensors packed
 * without changing a bit, the byte order the kernels rely on, and the quantizers' bounds.
 */
import { describe, expect, it } from 'vitest'
import {
  a8At,
  a8Get,
  a8Scale,
  a8Sum,
  dequantizeBlock,
  quantizeBlocks,
} from '../../src/engine/wasm/activations.ts'
import {
  dequantizeQ4,
  f16ToF32,
  packMatMulNBits,
  packMatMulNBitsInto,
  placeQ4,
  placeQ4Bytes,
  q4Get,
  q4GroupBytes,
  q4PlacedBytes,
  q4PlacedRowAt,
  q4RowBytes,
  q4NibbleAt,
  emptyQ4,
  nbitsSymmetric,
  q4Scale,
  q4ScaleAt,
  q4SetBlock,
  q4Zero,
  quantizeQ4,
  type MatMulNBitsTensors,
} from '../../src/format/q4-b32.ts'
import { quantizeBlocksQ4 } from '../../src/format/quant.ts'

/** MatMulNBits tensors of random weights [n, k] ('symmetric': without zero points, as exported). */
function quantizeBlocksForTest(
  n: number,
  k: number,
  seed: number,
  sym: boolean,
): Pick<MatMulNBitsTensors, 'b' | 'scales' | 'zeroPoints'> {
  let x = seed
  const w = Float32Array.from({ length: n * k }, () => {
    x = (x * 1103515245 + 12345) >>> 0
    return x / 2 ** 31 - 1
  })
  const q = quantizeBlocksQ4(w, n, k, 32, sym ? 'symmetric' : 'asymmetric')
  return { b: q.packed, scales: q.scales, ...(!sym && { zeroPoints: q.zeroPoints }) }
}

/** onnxruntime's MatMulNBits dequantization, straight from its tensors (the spec, not q4-b32.ts). */
function matMulNBitsWeight(t: MatMulNBitsTensors, v: number, k: number): number {
  const nBlocks = Math.ceil(t.k / t.blockSize)
  const c = Math.floor(k / t.blockSize)
  const at = k % t.blockSize
  const byte = t.b[(v * nBlocks + c) * (t.blockSize / 2) + (at >> 1)]
  const q = at % 2 ? byte >> 4 : byte & 15
  let zp = 8
  if (t.zeroPoints) {
    const z = t.zeroPoints[v * Math.ceil(nBlocks / 2) + (c >> 1)]
    zp = c % 2 ? z >> 4 : z & 15
  }
  const raw = t.scales[v * nBlocks + c]
  const scale = t.scales instanceof Uint16Array ? f16ToF32(raw) : raw
  return Math.fround((q - zp) * scale)
}

// N = 2, K = 80: 3 blocks of 32 (the last holds 16 inputs and 16 of padding), 16 bytes each
const B = Uint8Array.from({ length: 2 * 3 * 16 }, (_, i) => (i * 37 + 11) & 255)
const SCALES = Float32Array.from([0.5, -0.25, 3e-3, 1e-7, 7, -0])
// 1, −1, 1/3 (rounded), the smallest subnormal, the largest finite, −0
const SCALES_F16 = Uint16Array.from([0x3c00, 0xbc00, 0x3555, 0x0001, 0x7bff, 0x8000])
const ZERO_POINTS = Uint8Array.from([0x5a, 0x03, 0xf0, 0x0f]) // row 0: 10, 5, 3; row 1: 0, 15, 15

describe("q4-b32 holds MatMulNBits' values exactly", () => {
  const cases: Array<[string, MatMulNBitsTensors]> = [
    [
      'f32 scales, zero points',
      { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES, zeroPoints: ZERO_POINTS },
    ],
    ['f32 scales, no zero points', { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES }],
    [
      'f16 scales, zero points',
      { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES_F16, zeroPoints: ZERO_POINTS },
    ],
    [
      'f16 scales, no zero points',
      { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES_F16 },
    ],
  ]
  for (const [name, t] of cases) {
    it(`${name}: every q, zero point and scale, and the dequantized weights`, () => {
      const m = packMatMulNBits(t)
      expect([m.n, m.k, m.kb]).toEqual([2, 80, 4])
      for (let v = 0; v < 2; v++) {
        // all 96 inputs of the 3 blocks, the 16 past K too: the blob is kept whole
        for (let k = 0; k < 96; k++) {
          const byte = B[v * 48 + (k >> 1)]
          expect(q4Get(m, v, k)).toBe(k % 2 ? byte >> 4 : byte & 15)
        }
        for (let c = 0; c < 3; c++) {
          const zp = t.zeroPoints
            ? [
                [10, 5, 3],
                [0, 15, 15],
              ][v][c]
            : 8
          expect(q4Zero(m, v, c)).toBe(zp)
          const s =
            t.scales instanceof Uint16Array ? f16ToF32(t.scales[3 * v + c]) : t.scales[3 * v + c]
          expect(Object.is(q4Scale(m, v, c), s)).toBe(true)
        }
        // the padding block
        expect([q4Scale(m, v, 3), q4Zero(m, v, 3)]).toEqual([0, 0])
        for (let k = 96; k < 128; k++) expect(q4Get(m, v, k)).toBe(0)
      }
      const w = dequantizeQ4(m)
      for (let v = 0; v < 2; v++)
        for (let k = 0; k < 80; k++)
          expect(Object.is(w[v * 80 + k], matMulNBitsWeight(t, v, k))).toBe(true)
    })
  }

  it('the packed bytes, by hand', () => {
    const m = packMatMulNBits(cases[0][1])
    // byte 0 of row 0: input 0 (low nibble of B[0]) low, input 16 (low nibble of B[8]) high
    const q = m.data
    expect(q[0]).toBe((B[0] & 15) | ((B[8] & 15) << 4))
    // byte 1: inputs 1 (high nibble of B[0]) and 17 (high of B[8])
    expect(q[1]).toBe((B[0] >> 4) | (B[8] & 0xf0))
    // byte 4: block 1's inputs 32 and 48 (B[16], B[24] low nibbles)
    expect(q[4]).toBe((B[16] & 15) | ((B[24] & 15) << 4))
    // byte 16 + 8 + 3: block 2, inputs 64 + 4 + 3 = 71 (high of B[35]) and 87 (high of B[43])
    expect(q[27]).toBe((B[35] >> 4) | (B[43] & 0xf0))
    // the group's scales at 64 (f32, little-endian), zero points at 80: row 0's 10, 5, 3, 0
    const f32 = new DataView(q.buffer, q.byteOffset)
    expect([64, 68, 72, 76].map((at) => f32.getFloat32(at, true))).toEqual([
      ...Array.from(SCALES.subarray(0, 3)),
      0,
    ])
    expect(Array.from(q.subarray(80, 84))).toEqual([10, 5, 3, 0])
    // row 1 starts at 21 · kb = 84
    expect(q[84]).toBe((B[48] & 15) | ((B[56] & 15) << 4))
    expect(Array.from(q.subarray(84 + 80, 84 + 84))).toEqual([0, 15, 15, 0])
    expect(f16ToF32(0x3555)).toBe(0.333251953125)
    expect(f16ToF32(0x0001)).toBe(2 ** -24)
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true)
  })

  it('packs into a place of a larger buffer: every byte written, padding blocks included, nothing around it', () => {
    for (const [, t] of cases) {
      const want = packMatMulNBits(t).data
      // a buffer of garbage (0xa5) with room before and after the matrix
      const dst = new Uint8Array(want.length + 12).fill(0xa5)
      expect(packMatMulNBitsInto(t, dst, 8)).toBe(want.length)
      expect(Array.from(dst.subarray(8, 8 + want.length))).toEqual(Array.from(want))
      expect(Array.from(dst.subarray(0, 8))).toEqual(new Array(8).fill(0xa5))
      expect(Array.from(dst.subarray(8 + want.length))).toEqual([0xa5, 0xa5, 0xa5, 0xa5])
      // precondition: the padding group holds zeros where the garbage was
      expect(want.subarray(64 + 12, 64 + 16).every((b) => b === 0)).toBe(true)
    }
    expect(() => packMatMulNBitsInto(cases[0][1], new Uint8Array(100), 0)).toThrow(/no room/)
    expect(() => packMatMulNBitsInto(cases[0][1], new Uint8Array(400), 2)).toThrow(/no room/)
  })

  it('a block of 64 or 128 becomes 2 or 4 blocks with the same scale and zero point', () => {
    for (const blockSize of [64, 128]) {
      const nBlocks = 256 / blockSize
      const t: MatMulNBitsTensors = {
        n: 3,
        k: 256,
        bits: 4,
        blockSize,
        b: Uint8Array.from({ length: 3 * 128 }, (_, i) => (i * 101 + 7) & 255),
        scales: Float32Array.from({ length: 3 * nBlocks }, (_, i) => 0.01 * (i + 1)),
        zeroPoints: Uint8Array.from({ length: 3 * Math.ceil(nBlocks / 2) }, (_, i) => i * 29),
      }
      const m = packMatMulNBits(t)
      const w = dequantizeQ4(m)
      for (let v = 0; v < 3; v++)
        for (let k = 0; k < 256; k++)
          expect(Object.is(w[v * 256 + k], matMulNBitsWeight(t, v, k))).toBe(true)
    }
  })

  it('refuses what it cannot hold exactly', () => {
    const base = { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES }
    expect(() => packMatMulNBits({ ...base, bits: 8 })).toThrow(/only 4/)
    expect(() => packMatMulNBits({ ...base, blockSize: 16 })).toThrow(/multiple of 32/)
    expect(() => packMatMulNBits({ ...base, b: B.subarray(1) })).toThrow(/B has/)
    expect(() => packMatMulNBits({ ...base, zeroPoints: ZERO_POINTS.subarray(1) })).toThrow(
      /zero_points/,
    )
  })
})

describe("q4-b32's symmetric layout (every zero point 8, none stored)", () => {
  const cases: Array<[string, MatMulNBitsTensors]> = [
    ['no zero points', { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES }],
    [
      'zero points all 8, f16 scales',
      {
        n: 2,
        k: 80,
        bits: 4,
        blockSize: 32,
        b: B,
        scales: SCALES_F16,
        zeroPoints: Uint8Array.from([0x88, 0x08, 0x88, 0x08]),
      },
    ],
  ]
  for (const [name, t] of cases)
    it(`${name}: 80-byte groups, each the first 80 bytes of the layout with zero points; the same values`, () => {
      const full = packMatMulNBits(t)
      const m = packMatMulNBits(t, true)
      expect([m.sym, m.kb, m.data.length, full.data.length]).toEqual([true, 4, 2 * 80, 2 * 84])
      for (let v = 0; v < 2; v++)
        expect(Array.from(m.data.subarray(80 * v, 80 * v + 80))).toEqual(
          Array.from(full.data.subarray(84 * v, 84 * v + 80)),
        )
      // precondition: the full layout stored 8 for the real blocks
      expect([0, 1, 2].map((c) => q4Zero(full, 1, c))).toEqual([8, 8, 8])
      for (let v = 0; v < 2; v++) {
        for (let k = 0; k < 128; k++) expect(q4Get(m, v, k)).toBe(q4Get(full, v, k))
        for (let c = 0; c < 4; c++) {
          expect(Object.is(q4Scale(m, v, c), q4Scale(full, v, c))).toBe(true)
          expect(q4Zero(m, v, c)).toBe(8)
        }
      }
      const w = dequantizeQ4(m)
      for (let v = 0; v < 2; v++)
        for (let k = 0; k < 80; k++)
          expect(Object.is(w[v * 80 + k], matMulNBitsWeight(t, v, k))).toBe(true)
      // offsets: a nibble and a scale of row 1, group 0, in bytes of the 80-byte row
      expect(q4NibbleAt(33, true)).toEqual({ byte: 5, high: false })
      expect(q4ScaleAt(5, true)).toBe(80 + 64 + 4)
    })

  it('refuses zero points other than 8, and sets only 8', () => {
    expect(() => packMatMulNBits({ ...cases[0][1], zeroPoints: ZERO_POINTS }, true)).toThrow(
      /symmetric/,
    )
    const m = emptyQ4(1, 32, true)
    expect(m.data.length).toBe(80)
    q4SetBlock(m, 0, 0, 0.5, 8)
    expect(q4Scale(m, 0, 0)).toBe(0.5)
    expect(() => q4SetBlock(m, 0, 0, 0.5, 7)).toThrow(/symmetric/)
  })
})

describe("the kernels' placement: panels of 4 rows, their groups interleaved", () => {
  // 7 rows of 300 inputs: 3 groups a row; the second panel holds 3 rows and a padding row
  const tensors = (n: number, seed: number, sym: boolean): MatMulNBitsTensors => {
    const q = quantizeBlocksForTest(n, 300, seed, sym)
    return { n, k: 300, bits: 4, blockSize: 32, ...q }
  }
  for (const sym of [false, true]) {
    const layout = sym ? 'symmetric' : 'with zero points'
    const m = packMatMulNBits(tensors(7, 3, sym), sym)
    const G = q4GroupBytes(sym)
    const S = q4RowBytes(m.kb, sym)

    it(`row v's group g at (v >> 2)·4·rowBytes + g·4·groupBytes + (v & 3)·groupBytes (${layout})`, () => {
      expect(m.kb).toBe(12)
      expect(q4PlacedBytes(7, m.kb, sym)).toBe(8 * S)
      const dst = new Uint8Array(8 * S + 8).fill(0xa5)
      placeQ4(m, dst, 4)
      for (let v = 0; v < 7; v++)
        for (let g = 0; g < m.kb / 4; g++) {
          const at = 4 + (v >> 2) * 4 * S + g * 4 * G + (v & 3) * G
          expect(q4PlacedRowAt(v, m.kb, sym) + g * 4 * G).toBe(at - 4)
          expect([...dst.subarray(at, at + G)]).toEqual([
            ...m.data.subarray(v * S + g * G, (v + 1) * S).subarray(0, G),
          ])
        }
      // the padding row is zeros, nothing outside the placement is written
      for (let g = 0; g < m.kb / 4; g++) {
        const at = 4 + 4 * S + g * 4 * G + 3 * G
        expect(dst.subarray(at, at + G).every((b) => b === 0)).toBe(true)
      }
      expect([...dst.subarray(0, 4), ...dst.subarray(4 + 8 * S)]).toEqual(new Array(8).fill(0xa5))
    })

    it(`a file placed piece by piece, cut anywhere, in any order, is placed whole (${layout})`, () => {
      const whole = new Uint8Array(q4PlacedBytes(7, m.kb, sym))
      placeQ4(m, whole, 0)
      const cuts = [0, 1, 83, 84, 85, 200, S - 1, S, 3 * S + 7, 5 * S + 41, m.data.length]
      const pieces = cuts
        .slice(1)
        .map((end, i) => [cuts[i], end] as const)
        .reverse()
      const dst = new Uint8Array(whole.length)
      for (const [from, to] of pieces)
        placeQ4Bytes(m.data.subarray(from, to), from, m.kb, sym, dst, 0)
      expect(dst).toEqual(whole)
    })

    it(`MatMulNBits parts pack straight into their rows' places (${layout})`, () => {
      // two parts, as the engine fuses q, k and v: rows 0..4 and 5..6 of one matrix
      const [a, b] = [tensors(5, 11, sym), tensors(2, 12, sym)]
      const dst = new Uint8Array(q4PlacedBytes(7, m.kb, sym) + 16).fill(0xa5)
      packMatMulNBitsInto(a, dst, 16, sym, { row0: 0 })
      packMatMulNBitsInto(b, dst, 16, sym, { row0: 5 })
      const joined = new Uint8Array(7 * S)
      joined.set(packMatMulNBits(a, sym).data, 0)
      joined.set(packMatMulNBits(b, sym).data, 5 * S)
      const want = new Uint8Array(q4PlacedBytes(7, m.kb, sym))
      placeQ4({ n: 7, k: 300, kb: m.kb, ...(sym && { sym }), data: joined }, want, 0)
      // every row's bytes (the padding row is not written)
      for (let v = 0; v < 7; v++)
        for (let g = 0; g < m.kb / 4; g++) {
          const at = q4PlacedRowAt(v, m.kb, sym) + g * 4 * G
          expect([...dst.subarray(16 + at, 16 + at + G)]).toEqual([...want.subarray(at, at + G)])
        }
      expect([...dst.subarray(0, 16)]).toEqual(new Array(16).fill(0xa5))
      expect(() => packMatMulNBitsInto(b, dst, 16, sym, { row0: 7 })).toThrow(/no room/)
    })
  }
})

describe('the block order the kernels rely on', () => {
  it('weights: a bijection; input i of block b in bytes 4b..4b+3 of a 16-byte load', () => {
    const seen = new Set<string>()
    for (let i = 0; i < 256; i++) {
      const { byte, high } = q4NibbleAt(i)
      seen.add(`${byte}${high}`)
      expect(Math.floor(((byte % 84) % 16) / 4)).toBe((i >> 5) % 4)
      expect(Math.floor(byte / 84)).toBe(i >> 7)
      expect(byte % 84).toBeLessThan(64)
    }
    expect(seen.size).toBe(256)
  })

  it('activations: a bijection, input i where the kernels meet its weight', () => {
    const seen = new Set<number>()
    for (let i = 0; i < 256; i++) {
      const { byte, high } = q4NibbleAt(i)
      // low nibbles of the group's 64 bytes meet activation bytes 0..63, high ones 64..127
      expect(a8At(i)).toBe(160 * Math.floor(byte / 84) + (byte % 84) + (high ? 64 : 0))
      seen.add(a8At(i))
    }
    expect(seen.size).toBe(256)
  })
})

describe('scalar quantizers', () => {
  const r = (() => {
    let s = 7
    return () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1
  })()
  const w = Float32Array.from({ length: 4 * 100 }, (_, i) => r() * (i % 33 === 0 ? 20 : 1))

  it('asymmetric q4: within half a step of every weight, zeros exact', () => {
    w[5] = 0
    const m = quantizeQ4(w, 4, 100)
    const d = dequantizeQ4(m)
    for (let v = 0; v < 4; v++)
      for (let k = 0; k < 100; k++) {
        const s = Math.abs(q4Scale(m, v, k >> 5))
        expect(Math.abs(d[v * 100 + k] - w[v * 100 + k])).toBeLessThanOrEqual(s / 2 + 1e-6 * s)
      }
    expect(d[5]).toBe(0)
  })

  it('symmetric q4: zero point 8, the extreme at −8, half a step (a step past +7)', () => {
    const m = quantizeQ4(w, 4, 100, 'symmetric')
    const d = dequantizeQ4(m)
    for (let v = 0; v < 4; v++) expect(q4Zero(m, v, 0)).toBe(8)
    for (let v = 0; v < 4; v++)
      for (let k = 0; k < 100; k++) {
        const s = Math.abs(q4Scale(m, v, k >> 5))
        const x = w[v * 100 + k]
        // q4_0's range is [−8, 7] steps: the other side of the extreme clamps at 7
        const bound = Math.max(s / 2, Math.abs(x) - 7 * s)
        expect(Math.abs(d[v * 100 + k] - x)).toBeLessThanOrEqual(bound + 1e-6 * s)
      }
  })

  it('nbitsSymmetric: no zero points or all 8 (the padding nibble of an odd block count ignored); any other not', () => {
    // 2 rows of 80 inputs in blocks of 32: 3 blocks, zero points 2 bytes a row, nibble 3 padding
    const base = { n: 2, k: 80, bits: 4, blockSize: 32, b: B, scales: SCALES }
    expect(nbitsSymmetric(base)).toBe(true)
    expect(nbitsSymmetric({ ...base, zeroPoints: Uint8Array.from([0x88, 0x08, 0x88, 0xf8]) })).toBe(
      true,
    )
    // one real block's zero point 7 (row 1, block 2: the low nibble of its second byte)
    expect(nbitsSymmetric({ ...base, zeroPoints: Uint8Array.from([0x88, 0x08, 0x88, 0x87]) })).toBe(
      false,
    )
    expect(nbitsSymmetric({ ...base, zeroPoints: ZERO_POINTS })).toBe(false)
  })

  it('a8-b32 activations: in [−127, 127], within half a step, the extreme exact in 127', () => {
    const a = quantizeBlocks(w, 4, 100)
    for (let j = 0; j < 4; j++)
      for (let k = 0; k < 100; k++) expect(Math.abs(a8Get(a, j, k))).toBeLessThanOrEqual(127)
    for (let j = 0; j < 4; j++)
      for (let k = 0; k < 100; k++) {
        const d = a8Scale(a, 0 + j, k >> 5)
        expect(Math.abs(dequantizeBlock(a, j, k) - w[j * 100 + k])).toBeLessThanOrEqual(
          d / 2 + 1e-6 * d,
        )
      }
    let sum = 0
    for (let k = 0; k < 32; k++) sum += a8Get(a, 0, k)
    expect(a8Sum(a, 0, 0)).toBe(sum)
  })
})
