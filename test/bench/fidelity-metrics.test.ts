/**
 * The fidelity harness's numbers against hand-computed ones: KL divergence, |Δlogit|, top-1
 * agreement and the clear-lead filter; and AWQ's scales.
 */
import { describe, expect, it } from 'vitest'
import { awqScales } from '../../scripts/lib/awq.ts'
import {
  compareStep,
  entropy,
  logSoftmax,
  summarize,
  top2,
} from '../../scripts/bench/fidelity-metrics.ts'

const ln = Math.log

describe('compareStep', () => {
  it('gives KL 0 and no difference for identical logits', () => {
    const x = [1.5, -2, 0.25, 3]
    expect(compareStep(x, x)).toEqual({
      maxAbs: 0,
      meanAbs: 0,
      kl: 0,
      refTop1: 3,
      top1: 3,
      lead: 1.5,
    })
  })

  it('computes KL(p ‖ q) of known distributions, whatever constant the logits carry', () => {
    // p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4): KL = 1/2 ln 2 + 1/4 ln(1/2) = ln(2) / 4
    const p = [ln(0.5), ln(0.25), ln(0.25)]
    const q = [ln(0.25) + 7, ln(0.5) + 7, ln(0.25) + 7] // softmax ignores the + 7
    const c = compareStep(p, q)
    expect(c.kl).toBeCloseTo(ln(2) / 4, 12)
    expect(compareStep(q, p).kl).toBeCloseTo(ln(2) / 4, 12) // symmetric pair, same value
    // and an asymmetric one: p = (0.9, 0.1), q = (0.5, 0.5)
    const kl = 0.9 * ln(0.9 / 0.5) + 0.1 * ln(0.1 / 0.5)
    expect(compareStep([ln(0.9), ln(0.1)], [0, 0]).kl).toBeCloseTo(kl, 12)
    expect(compareStep([0, 0], [ln(0.9), ln(0.1)]).kl).toBeCloseTo(
      0.5 * ln(0.5 / 0.9) + 0.5 * ln(0.5 / 0.1),
      12,
    )
  })

  it('takes max and mean |Δlogit| over the vocabulary, and each side’s top-1', () => {
    const c = compareStep([0, 1, 2, 5], [0.5, 1, 4, 3])
    expect(c.maxAbs).toBe(2)
    expect(c.meanAbs).toBe((0.5 + 0 + 2 + 2) / 4)
    expect([c.refTop1, c.top1, c.lead]).toEqual([3, 2, 3])
  })

  it('stays finite for logits far from 0', () => {
    const c = compareStep([1000, 990], [-1000, -1010])
    expect(c.kl).toBeCloseTo(0, 12)
    expect(c.maxAbs).toBe(2000)
  })
})

describe('summarize', () => {
  it('counts top-1 agreement over all steps and over steps with a clear lead', () => {
    const steps = [
      compareStep([3, 0, 0], [3, 0, 0]), // lead 3, agrees
      compareStep([3, 0, 0], [0, 3, 0]), // lead 3, disagrees
      compareStep([1, 0.8, 0], [0.8, 1, 0]), // lead 0.2, disagrees
      compareStep([1, 0.6, 0], [1, 0.6, 0]), // lead 0.4, agrees
      compareStep([1, 0.5, 0], [1, 0.5, 0]), // lead exactly 0.5: not clear
    ]
    const s = summarize(steps, 0.5)
    expect(s).toMatchObject({ steps: 5, agree: 3, clearSteps: 2, clearAgree: 1, minLead: 0.5 })
    expect(s.maxAbs).toBe(3)
    expect(s.meanKl).toBeCloseTo(steps.reduce((a, c) => a + c.kl, 0) / 5, 15)
    expect(summarize(steps, 0.1)).toMatchObject({ clearSteps: 5, clearAgree: 3 })
  })
})

describe('helpers', () => {
  it('entropy, log softmax, top-2', () => {
    expect(entropy([2, 2, 2, 2])).toBeCloseTo(ln(4), 14)
    expect(entropy([0, -Infinity])).toBe(0)
    expect([...logSoftmax([0, ln(3)])].map(Math.exp)).toEqual([
      expect.closeTo(0.25, 14),
      expect.closeTo(0.75, 14),
    ])
    expect(top2([1, 4, 4, 2])).toEqual({ top1: 1, lead: 0 })
  })

  it('normalises AWQ scales to max · min = 1; alpha 0 scales nothing', () => {
    expect([...awqScales([0.5, 2, 40], 0)]).toEqual([1, 1, 1])
    const s = awqScales([0.5, 2, 40], 0.5)
    expect(Math.max(...s) * Math.min(...s)).toBeCloseTo(1, 6)
    expect(s[2] / s[0]).toBeCloseTo(Math.sqrt(80), 5)
  })
})
