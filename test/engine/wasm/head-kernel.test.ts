/**
 * The split lm_head's WASM SIMD kernels (src/engine/wasm/kernels/engine.wat) through `Q8Head`,
 * against plain TypeScript arithmetic on random heads; and the committed kernel bytes against
 * a fresh assembly of the .wat.
 */
import { describe, expect, it } from 'vitest'
import { isAppError } from '../../../src/core/errors.ts'
import { dequantizeQ4, headLayout, headStride, quantizeQ4 } from '../../../src/format/index.ts'
import { quantizeBlocks } from '../../../src/engine/wasm/activations.ts'
import { q4Gemm } from '../../../src/engine/wasm/kernel-ref.ts'
import { Q8Head, type HeadWeights } from '../../../src/engine/wasm/head.ts'

/** xorshift32 in [0, 1) */
function rng(seed: number) {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return (s >>> 0) / 2 ** 32
  }
}

interface RandomHead {
  weights: HeadWeights
  rows: Int8Array
  zp: Int8Array
  scale: Float32Array
}

function randomHead(vocab: number, hidden: number, seed: number): RandomHead {
  const stride = Math.ceil(hidden / 32) * 32
  const data = new Uint8Array(headLayout(vocab, stride).bytes)
  const rows = new Int8Array(data.buffer, 0, vocab * stride)
  const zp = new Int8Array(data.buffer, vocab * stride, vocab)
  const scaleAt = Math.ceil((vocab * stride + vocab) / 4) * 4
  const scale = new Float32Array(data.buffer, scaleAt, vocab)
  const r = rng(seed)
  for (let v = 0; v < vocab; v++) {
    // the extremes -128 and 127 included: the kernel must stay exact there
    for (let k = 0; k < hidden; k++) rows[v * stride + k] = Math.floor(r() * 256) - 128
    zp[v] = Math.floor(r() * 40) - 20
    scale[v] = 0.001 + r() * 0.01
  }
  return {
    weights: { format: 'q8-rows', vocab, hidden, stride, embedding: true, data },
    rows,
    zp,
    scale,
  }
}

function randomHidden(n: number, hidden: number, seed: number): Float32Array {
  const r = rng(seed)
  const x = new Float32Array(n * hidden)
  for (let i = 0; i < x.length; i++) x[i] = (r() * 2 - 1) * (1 + 20 * (i % 7 === 0 ? r() : 0))
  return x
}

/** Float64 logits of one row with the dequantized weights: what the head approximates. */
function referenceLogits(h: RandomHead, x: Float32Array, offset: number): Float64Array {
  const { vocab, hidden, stride } = h.weights
  const out = new Float64Array(vocab)
  for (let v = 0; v < vocab; v++) {
    let s = 0
    for (let k = 0; k < hidden; k++) s += (h.rows[v * stride + k] - h.zp[v]) * x[offset + k]
    out[v] = s * h.scale[v]
  }
  return out
}

/** The bound of the int16 activation rounding: |Δ| ≤ scale_v · Σ|w − zp| · (max|x| / limit) / 2. */
function roundingBound(h: RandomHead, x: Float32Array, offset: number, v: number): number {
  const { hidden, stride } = h.weights
  let max = 0
  for (let k = 0; k < hidden; k++) max = Math.max(max, Math.abs(x[offset + k]))
  const limit = Math.min(32767, Math.floor(0x7fffffff / (128 * stride)))
  let l1 = 0
  for (let k = 0; k < hidden; k++) l1 += Math.abs(h.rows[v * stride + k] - h.zp[v])
  return h.scale[v] * l1 * (max / limit / 2) * 1.001 + 1e-6
}

describe('q8 head kernel', () => {
  for (const [vocab, hidden] of [
    [997, 64],
    [1001, 72], // stride 96: padded rows
  ]) {
    it(`logits of 1 to 7 rows match float64 within the rounding bound (V ${vocab}, H ${hidden})`, async () => {
      const h = randomHead(vocab, hidden, vocab + hidden)
      const head = await Q8Head.create(h.weights)
      for (const n of [1, 2, 4, 5, 7]) {
        const x = randomHidden(n, hidden, n * 31)
        const logits = head.logits(x, n)
        expect(logits.length).toBe(n * vocab)
        let worst = 0
        for (let j = 0; j < n; j++) {
          const ref = referenceLogits(h, x, j * hidden)
          for (let v = 0; v < vocab; v++) {
            const err = Math.abs(logits[j * vocab + v] - ref[v])
            worst = Math.max(worst, err / roundingBound(h, x, j * hidden, v))
          }
        }
        expect(worst).toBeLessThanOrEqual(1)
      }
    })
  }

  it('a row gets the same logits alone, in a batch of 4 (rows4) and of 7 (rows4 + rows)', async () => {
    const h = randomHead(517, 64, 3)
    const head = await Q8Head.create(h.weights)
    const x = randomHidden(7, 64, 5)
    const batch7 = head.logits(x, 7)
    const batch4 = head.logits(x, 4)
    for (let j = 0; j < 7; j++) {
      const alone = head.logits(x, 1, j * 64)
      expect(Array.from(batch7.subarray(j * 517, (j + 1) * 517))).toEqual(Array.from(alone))
      if (j < 4)
        expect(Array.from(batch4.subarray(j * 517, (j + 1) * 517))).toEqual(Array.from(alone))
    }
  })

  it('columns are exactly the same entries of the full logits', async () => {
    const h = randomHead(700, 96, 9)
    const head = await Q8Head.create(h.weights)
    const x = randomHidden(2, 96, 11)
    const full = head.logits(x, 1, 96)
    const ids = [699, 0, 345, 345]
    expect(Array.from(head.columns(x, ids, 96))).toEqual(ids.map((v) => full[v]))
  })

  it('embeds tokens as (q − zp) · scale, exactly as the graph did', async () => {
    const h = randomHead(300, 72, 13)
    const head = await Q8Head.create(h.weights)
    const ids = [0, 299, 17, 17]
    const e = head.embed(ids)
    expect(e.length).toBe(ids.length * 72)
    ids.forEach((t, i) => {
      for (let k = 0; k < 72; k++) {
        expect(e[i * 72 + k]).toBe(Math.fround((h.rows[t * 96 + k] - h.zp[t]) * h.scale[t]))
      }
    })
    for (const bad of [-1, 300, 1.5]) {
      let caught: unknown
      try {
        head.embed([bad])
      } catch (err) {
        caught = err
      }
      expect(isAppError(caught) && caught.code).toBe('bad_request')
    }
  })

  it('an all-zero hidden row gives zero logits, a non-finite one an error', async () => {
    const head = await Q8Head.create(randomHead(100, 32, 1).weights)
    expect(head.logits(new Float32Array(32), 1).every((v) => v === 0)).toBe(true)
    const x = new Float32Array(32)
    x[3] = NaN
    expect(() => head.logits(x, 1)).toThrow(/not finite/)
  })

  it('refuses a head file of the wrong size or shape', async () => {
    const { weights } = randomHead(50, 32, 2)
    await expect(Q8Head.create({ ...weights, data: weights.data.subarray(1) })).rejects.toThrow(
      /head file has/,
    )
    await expect(Q8Head.create({ ...weights, stride: 48 })).rejects.toThrow(/Bad head shape/)
  })
})

describe('a q4-b32 head', () => {
  // hidden 200: rows of 8 blocks in 2 groups of 128 inputs, the seventh block partly padding,
  // the eighth all; vocab 301: in the kernels' placement (panels of 4 rows whose groups are
  // interleaved) the last panel holds one row
  const vocab = 301
  const hidden = 200
  const r = rng(7)
  const w = Float32Array.from(
    { length: vocab * hidden },
    () => (r() * 2 - 1) * (r() < 0.05 ? 4 : 1),
  )
  const m = quantizeQ4(w, vocab, hidden)
  const weights: HeadWeights = {
    format: 'q4-b32',
    vocab,
    hidden,
    stride: headStride(hidden, 'q4-b32'),
    embedding: true,
    data: m.data,
  }

  it('gives the kernels reference logits bit for bit, for 1 to 6 rows and for label columns', async () => {
    const head = await Q8Head.create(weights)
    for (const n of [1, 4, 6]) {
      const x = randomHidden(n, hidden, 40 + n)
      const got = head.logits(x, n)
      const want = q4Gemm(m, quantizeBlocks(x, n, hidden))
      expect(got.length).toBe(n * vocab)
      expect(maxAbsDiff(got, want)).toBe(0)
      // and close to the float product with the 4-bit weights (the activations' int8 rounding)
      const deq = dequantizeQ4(m)
      let worst = 0
      let range = 0
      for (let v = 0; v < vocab; v++) {
        let d = 0
        for (let i = 0; i < hidden; i++) d += deq[v * hidden + i] * x[i]
        worst = Math.max(worst, Math.abs(d - got[v]))
        range = Math.max(range, Math.abs(d))
      }
      expect(worst / range).toBeLessThan(2e-2)
    }
    const x = randomHidden(3, hidden, 9)
    const all = head.logits(x, 3)
    const ids = [0, 17, 300, 17, 299]
    const cols = head.columns(x, ids, 2 * hidden)
    expect([...cols]).toEqual(ids.map((v) => all[2 * vocab + v]))
  })

  it('looks up the embedding as the dequantized 4-bit rows, exactly', async () => {
    const head = await Q8Head.create(weights)
    const deq = dequantizeQ4(m)
    const ids = [5, 0, 300, 6, 5]
    const got = head.embed(ids)
    ids.forEach((t, i) =>
      expect([...got.subarray(i * hidden, (i + 1) * hidden)]).toEqual([
        ...deq.subarray(t * hidden, (t + 1) * hidden),
      ]),
    )
    expect(() => head.embed([vocab])).toThrow(/out of range/)
  })

  it('refuses a file of the wrong size', async () => {
    const err = await Q8Head.create({ ...weights, data: m.data.subarray(1) }).catch((e) => e)
    expect(isAppError(err) && err.code).toBe('model_invalid')
  })
})

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]))
  return m
}
