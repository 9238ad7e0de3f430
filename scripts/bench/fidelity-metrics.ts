/**
 * How far a format's next-token logits are from the fp32 model's at the same step: the numbers
 * the fidelity harness (fidelity.ts) reports. Plain functions, in float64, so they can be
 * checked against hand-computed values.
 */

/** One decode step of one format against the reference (fp32) logits of the same step. */
export interface StepComparison {
  /** Largest |Δlogit| over the vocabulary. */
  maxAbs: number
  /** Mean |Δlogit| over the vocabulary. */
  meanAbs: number
  /** KL(reference ‖ format) of the softmax distributions, in nats. */
  kl: number
  /** The reference's top-1 token, and the format's. */
  refTop1: number
  top1: number
  /** The reference's top-1 logit minus its second: how clear its choice is. */
  lead: number
}

/** log softmax(x), stable: x − max − log Σ exp(x − max). */
export function logSoftmax(x: ArrayLike<number>): Float64Array {
  let max = -Infinity
  for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i]
  let sum = 0
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i] - max)
  const shift = max + Math.log(sum)
  const out = new Float64Array(x.length)
  for (let i = 0; i < x.length; i++) out[i] = x[i] - shift
  return out
}

/** Entropy of softmax(logits) in nats. */
export function entropy(logits: ArrayLike<number>): number {
  const lp = logSoftmax(logits)
  let h = 0
  for (let i = 0; i < lp.length; i++) if (lp[i] > -Infinity) h -= Math.exp(lp[i]) * lp[i]
  return h
}

/** Index of the largest value (the first one on a tie) and its lead over the second largest. */
export function top2(x: ArrayLike<number>): { top1: number; lead: number } {
  let best = 0
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i
  let second = -Infinity
  for (let i = 0; i < x.length; i++) if (i !== best && x[i] > second) second = x[i]
  return { top1: best, lead: x[best] - second }
}

export function compareStep(ref: ArrayLike<number>, got: ArrayLike<number>): StepComparison {
  if (ref.length !== got.length) throw new Error(`vocab ${ref.length} vs ${got.length}`)
  let maxAbs = 0
  let sumAbs = 0
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(ref[i] - got[i])
    if (d > maxAbs) maxAbs = d
    sumAbs += d
  }
  const p = logSoftmax(ref)
  const q = logSoftmax(got)
  let kl = 0
  // a token fp32 gives no probability adds nothing, whatever the format gives it
  for (let i = 0; i < p.length; i++) if (p[i] > -Infinity) kl += Math.exp(p[i]) * (p[i] - q[i])
  const r = top2(ref)
  return {
    maxAbs,
    meanAbs: sumAbs / ref.length,
    kl: Math.max(0, kl), // rounding can leave -1e-17 for equal distributions
    refTop1: r.top1,
    top1: top2(got).top1,
    lead: r.lead,
  }
}

/** A format over all measured steps. */
export interface FidelitySummary {
  steps: number
  /** Largest |Δlogit| of any step. */
  maxAbs: number
  /** Mean over steps of each step's mean |Δlogit|. */
  meanAbs: number
  /** Mean KL(reference ‖ format) per step, nats. */
  meanKl: number
  /** Steps where the format's top-1 is the reference's. */
  agree: number
  /** Steps where the reference's top-1 leads by more than `minLead`, and how many of them agree. */
  clearSteps: number
  clearAgree: number
  minLead: number
}

export function summarize(steps: readonly StepComparison[], minLead = 0.5): FidelitySummary {
  const s: FidelitySummary = {
    steps: steps.length,
    maxAbs: 0,
    meanAbs: 0,
    meanKl: 0,
    agree: 0,
    clearSteps: 0,
    clearAgree: 0,
    minLead,
  }
  for (const c of steps) {
    s.maxAbs = Math.max(s.maxAbs, c.maxAbs)
    s.meanAbs += c.meanAbs / steps.length
    s.meanKl += c.kl / steps.length
    const same = c.top1 === c.refTop1
    if (same) s.agree++
    if (c.lead > minLead) {
      s.clearSteps++
      if (same) s.clearAgree++
    }
  }
  return s
}
