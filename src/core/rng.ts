/**
 * Seeded random numbers for sampling. Each generation owns its own generator, so the same seed
 * gives the same text whatever else runs in the isolate (no global Math.random state).
 */

/** sfc32: small, fast, and good enough for drawing one coin per token. Returns [0, 1). */
export function createRng(seed: number): () => number {
  let a = 0x9e3779b9
  let b = 0x243f6a88
  let c = 0xb7e15162
  let d = seed >>> 0
  // The high bits of a seed above 2^32 still matter: fold them in.
  c ^= Math.floor(seed / 0x100000000) >>> 0
  const next = () => {
    a >>>= 0
    b >>>= 0
    c >>>= 0
    d >>>= 0
    let t = (a + b) | 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) | 0
    c = (c << 21) | (c >>> 11)
    d = (d + 1) | 0
    t = (t + d) | 0
    c = (c + t) | 0
    return (t >>> 0) / 0x100000000
  }
  for (let i = 0; i < 15; i++) next() // mix the seed through the state
  return next
}

/** A seed for callers that gave none. */
export function randomSeed(): number {
  const buf = new Uint32Array(1)
  crypto.getRandomValues(buf)
  return buf[0]
}
