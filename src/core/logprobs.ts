/**
 * Log-probabilities of one row of logits, as OpenAI reports them: the distribution the sampler
 * saw (after the repetition penalty) before temperature, top-k and top-p, so the numbers mean
 * the same thing whatever the sampling settings. Pure: the caller turns ids into text.
 */
import { topKIndices } from './sampling.ts'

export interface IdLogprob {
  id: number
  logprob: number
}

/** log softmax(logits)[chosen], and the `top` most likely ids with theirs (most likely first). */
export function logprobsOf(
  logits: Float32Array,
  chosen: number,
  top: number,
): IdLogprob & { top: IdLogprob[] } {
  let max = -Infinity
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i]
  let sum = 0 // in float64: 150k small terms
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max)
  const norm = max + Math.log(sum)
  const best = top > 0 ? topKIndices(logits, top) : new Int32Array(0)
  return {
    id: chosen,
    logprob: logits[chosen] - norm,
    top: Array.from(best, (id) => ({ id, logprob: logits[id] - norm })),
  }
}
