import { describe, expect, it } from 'vitest'
import { createRng } from '../../src/core/rng.ts'
import {
  applyRepetitionPenalty,
  argmax,
  candidates,
  drawCandidate,
  pickToken,
  topKIndices,
} from '../../src/core/sampling.ts'

const logits = () => new Float32Array([1, 3, 2, 0.5, 2.5, -1])
const params = { temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1 }

describe('sampling', () => {
  it('greedy picks the argmax whatever the coin', () => {
    expect(argmax(logits())).toBe(1)
    for (const coin of [0, 0.5, 0.999]) {
      expect(pickToken(logits(), { ...params, temperature: 0 }, coin)).toBe(1)
    }
  })

  it('top-k keeps exactly the k largest, most likely first', () => {
    expect([...topKIndices(logits(), 3)]).toEqual([1, 4, 2])
    const c = candidates(logits(), { ...params, topK: 2 })
    expect([...c.ids]).toEqual([1, 4])
    expect(c.probs[0] + c.probs[1]).toBeCloseTo(1, 6)
    // softmax of [3, 2.5] renormalised over the two
    expect(c.probs[0]).toBeCloseTo(1 / (1 + Math.exp(-0.5)), 6)
  })

  it('top-k never samples outside the k, for any coin', () => {
    for (let i = 0; i < 200; i++) {
      const id = pickToken(logits(), { ...params, topK: 2 }, i / 200)
      expect([1, 4]).toContain(id)
    }
  })

  it('top-p keeps the smallest set whose mass reaches p', () => {
    const probs = new Float32Array([0.6, 0.3, 0.1])
    const lg = probs.map(Math.log)
    expect([...candidates(lg, { ...params, topP: 0.8 }).ids]).toEqual([0, 1])
    expect([...candidates(lg, { ...params, topP: 0.5 }).ids]).toEqual([0])
    expect([...candidates(lg, { ...params, topP: 1 }).ids]).toEqual([0, 1, 2])
    for (let i = 0; i < 100; i++)
      expect(pickToken(lg, { ...params, topP: 0.8 }, i / 100)).not.toBe(2)
  })

  it('top-p over a large vocabulary without top-k matches a full sort', () => {
    const rng = createRng(7)
    const lg = new Float32Array(50_000).map(() => rng() * 10)
    const c = candidates(lg, { ...params, topP: 0.3 })
    // brute force: sort everything, take the prefix reaching 0.3
    const max = Math.max(...lg)
    const e = Array.from(lg, (v) => Math.exp(v - max))
    const z = e.reduce((a, b) => a + b, 0)
    const order = [...e.keys()].sort((a, b) => e[b] - e[a])
    let mass = 0
    let n = 0
    while (mass < 0.3) mass += e[order[n++]] / z
    expect([...c.ids]).toEqual(order.slice(0, n))
  })

  it('temperature sharpens and flattens the distribution', () => {
    const cold = candidates(logits(), { ...params, temperature: 0.2 })
    const hot = candidates(logits(), { ...params, temperature: 2 })
    expect(cold.probs[0]).toBeGreaterThan(hot.probs[0])
    expect(cold.ids[0]).toBe(1)
  })

  it('draws by cumulative mass', () => {
    const c = { ids: Int32Array.of(5, 6, 7), probs: Float32Array.of(0.5, 0.3, 0.2) }
    expect(drawCandidate(c, 0)).toBe(5)
    expect(drawCandidate(c, 0.49)).toBe(5)
    expect(drawCandidate(c, 0.51)).toBe(6)
    expect(drawCandidate(c, 0.85)).toBe(7)
    expect(drawCandidate(c, 0.99999999)).toBe(7)
  })

  it('repetition penalty lowers seen tokens on both sides of zero', () => {
    const lg = Float32Array.of(2, -2, 1)
    applyRepetitionPenalty(lg, [0, 1], 2)
    expect([...lg]).toEqual([1, -4, 1])
  })
})

describe('rng', () => {
  it('is reproducible per seed and differs across seeds', () => {
    const a = createRng(42)
    const b = createRng(42)
    const c = createRng(43)
    const xa = Array.from({ length: 8 }, a)
    expect(Array.from({ length: 8 }, b)).toEqual(xa)
    expect(Array.from({ length: 8 }, c)).not.toEqual(xa)
    for (const x of xa) expect(x >= 0 && x < 1).toBe(true)
  })
})

describe('full-vocabulary sampling', () => {
  it('draws each token about as often as its probability', () => {
    const lg = Float32Array.from([0, Math.log(3), Math.log(6)]) // p = 0.1, 0.3, 0.6
    const counts = [0, 0, 0]
    const rng = createRng(3)
    for (let i = 0; i < 20_000; i++) counts[pickToken(lg, params, rng())]++
    expect(counts[0] / 20_000).toBeCloseTo(0.1, 1)
    expect(counts[1] / 20_000).toBeCloseTo(0.3, 1)
    expect(counts[2] / 20_000).toBeCloseTo(0.6, 1)
  })
})
