import { describe, expect, it } from 'vitest'
import { logprobsOf } from '../../src/core/logprobs.ts'

describe('logprobsOf', () => {
  it('is log softmax: exact on a small row, most likely alternatives first', () => {
    const logits = new Float32Array([1, 3, 2, 3, -1])
    const z = Math.log([1, 3, 2, 3, -1].reduce((s, x) => s + Math.exp(x), 0))
    const r = logprobsOf(logits, 2, 3)
    expect(r.logprob).toBeCloseTo(2 - z, 6)
    // ties keep the lower id first
    expect(r.top.map((t) => t.id)).toEqual([1, 3, 2])
    expect(r.top[0].logprob).toBeCloseTo(3 - z, 6)
    expect(logprobsOf(logits, 0, 0).top).toEqual([])
  })

  it('stays finite and sums to 1 over a vocabulary-sized row with large logits', () => {
    const n = 151_936
    const logits = new Float32Array(n)
    for (let i = 0; i < n; i++) logits[i] = 80 + Math.sin(i) * 20
    let z = 0 // log-sum-exp in float64, shifted by hand
    for (let i = 0; i < n; i++) z += Math.exp(logits[i] - 100)
    z = 100 + Math.log(z)
    const r = logprobsOf(logits, 7, 20)
    expect(r.logprob).toBeCloseTo(logits[7] - z, 5)
    for (const t of r.top) expect(t.logprob).toBeCloseTo(logits[t.id] - z, 5)
    expect(r.top[0].logprob).toBeLessThan(0)
    expect(r.top.every((t, i) => i === 0 || t.logprob <= r.top[i - 1].logprob)).toBe(true)
  })
})
