/**
 * Turning one row of logits into one token id. Pure functions: the random coin is passed in
 * (as in llama2.c), so every path is testable with a fixed coin.
 *
 * Order of operations follows Hugging Face transformers: repetition penalty → temperature →
 * top-k → top-p → sample. Temperature 0 means greedy (argmax).
 */

export interface SamplingParams {
  temperature: number
  /** Keep the k most likely tokens; 0 disables. */
  topK: number
  /** Keep the smallest set of most likely tokens whose mass reaches topP; 1 disables. */
  topP: number
  /** > 1 discourages tokens already in the context (CTRL paper); 1 disables. */
  repetitionPenalty: number
}

/** In place: divide positive logits of seen tokens by `penalty`, multiply negative ones. */
export function applyRepetitionPenalty(
  logits: Float32Array,
  seen: Iterable<number>,
  penalty: number,
): void {
  if (penalty === 1) return
  for (const id of seen) {
    const v = logits[id]
    logits[id] = v > 0 ? v / penalty : v * penalty
  }
}

export function argmax(logits: Float32Array): number {
  let best = 0
  let bestValue = logits[0]
  for (let i = 1; i < logits.length; i++) {
    if (logits[i] > bestValue) {
      bestValue = logits[i]
      best = i
    }
  }
  return best
}

/** The indices of the k largest values, most likely first. O(n log k) with a min-heap. */
export function topKIndices(values: Float32Array, k: number): Int32Array {
  const n = Math.min(k, values.length)
  const heap = new Int32Array(n) // min-heap of indices ordered by value
  let size = 0
  const less = (i: number, j: number) => values[heap[i]] < values[heap[j]]
  const swap = (i: number, j: number) => {
    const t = heap[i]
    heap[i] = heap[j]
    heap[j] = t
  }
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < size && less(l, m)) m = l
      if (r < size && less(r, m)) m = r
      if (m === i) return
      swap(i, m)
      i = m
    }
  }
  for (let idx = 0; idx < values.length; idx++) {
    if (size < n) {
      heap[size] = idx
      let i = size++
      while (i > 0) {
        const p = (i - 1) >> 1
        if (!less(i, p)) break
        swap(i, p)
        i = p
      }
    } else if (values[idx] > values[heap[0]]) {
      heap[0] = idx
      siftDown(0)
    }
  }
  return heap.sort((a, b) => values[b] - values[a] || a - b)
}

export interface Candidates {
  /** Token ids, most likely first. */
  ids: Int32Array
  /** Their probabilities, renormalised to sum to 1. */
  probs: Float32Array
}

/**
 * The support the sampler draws from after temperature, top-k and top-p, with probabilities.
 * Does not modify `logits`.
 */
export function candidates(logits: Float32Array, p: SamplingParams): Candidates {
  const t = p.temperature
  let ids: Int32Array
  let sum = 0 // softmax normaliser: over the k kept (top-k renormalises) or over the whole vocabulary
  if (p.topK > 0 && p.topK < logits.length) {
    ids = topKIndices(logits, p.topK)
    const max = logits[ids[0]]
    for (let i = 0; i < ids.length; i++) sum += Math.exp((logits[ids[i]] - max) / t)
  } else {
    // Without top-k, sorting 150k ids per token is wasteful: tokens with probability below
    // (1 - topP) / (n - 1) can never be in the nucleus (llama2.c's cut), so drop them first.
    const max = logits[argmax(logits)]
    for (let i = 0; i < logits.length; i++) sum += Math.exp((logits[i] - max) / t)
    const floor = p.topP < 1 ? ((1 - p.topP) / (logits.length - 1)) * sum : 0
    const kept: number[] = []
    for (let i = 0; i < logits.length; i++) {
      if (Math.exp((logits[i] - max) / t) >= floor) kept.push(i)
    }
    ids = Int32Array.from(kept).sort((a, b) => logits[b] - logits[a] || a - b)
  }
  const probs = new Float32Array(ids.length)
  const max = logits[ids[0]]
  for (let i = 0; i < ids.length; i++) probs[i] = Math.exp((logits[ids[i]] - max) / t)
  let cut = ids.length
  let mass = 0
  for (let i = 0; i < ids.length; i++) {
    probs[i] /= sum
    mass += probs[i]
    if (p.topP < 1 && mass >= p.topP && cut === ids.length) cut = i + 1 // smallest set reaching topP
  }
  if (cut < ids.length) {
    ids = ids.slice(0, cut)
    const kept = probs.slice(0, cut)
    const total = kept.reduce((a, b) => a + b, 0)
    for (let i = 0; i < kept.length; i++) kept[i] /= total
    return { ids, probs: kept }
  }
  return { ids, probs }
}

/** Draw from candidates with `coin` ∈ [0, 1). */
export function drawCandidate(c: Candidates, coin: number): number {
  let r = coin
  for (let i = 0; i < c.ids.length; i++) {
    r -= c.probs[i]
    if (r < 0) return c.ids[i]
  }
  return c.ids[c.ids.length - 1] // rounding left a sliver of mass
}

/** One token from one row of logits. `coin` is only used when temperature > 0. */
export function pickToken(logits: Float32Array, p: SamplingParams, coin: number): number {
  if (p.temperature === 0) return argmax(logits)
  if ((p.topK <= 0 || p.topK >= logits.length) && p.topP >= 1) return drawFull(logits, p, coin)
  return drawCandidate(candidates(logits, p), coin)
}

/** Plain softmax sampling over the whole vocabulary: no sort needed when nothing is cut. */
function drawFull(logits: Float32Array, p: SamplingParams, coin: number): number {
  const max = logits[argmax(logits)]
  let sum = 0
  for (let i = 0; i < logits.length; i++) sum += Math.exp((logits[i] - max) / p.temperature)
  let r = coin * sum
  for (let i = 0; i < logits.length; i++) {
    r -= Math.exp((logits[i] - max) / p.temperature)
    if (r < 0) return i
  }
  return argmax(logits) // rounding left a sliver of mass
}
