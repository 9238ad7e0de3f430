/**
 * Small numeric helpers the tests share: the index of the largest logit, the largest |value|,
 * the largest |a − b|. Plain loops, independent of the engine's own (src/core/sampling.ts).
 */

/** The index of the largest value (the first of equal ones). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i
  return best
}

/** Largest |x|. */
export function maxAbs(x: ArrayLike<number>): number {
  let m = 0
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]))
  return m
}

/** Largest |a − b| over two vectors; throws when their lengths differ. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`)
  let d = 0
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]))
  return d
}
