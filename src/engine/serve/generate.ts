/**
 * The decode loop, at the level of token ids. It only coordinates: forward steps (model.ts,
 * serialised by the scheduler), logits processing and sampling (core/sampling.ts); text,
 * stop strings and events are the caller's job (engine.ts).
 */
import { applyRepetitionPenalty, pickToken, type SamplingParams } from '../../core/sampling.ts'
import type { FinishReason } from '../types.ts'
import type { ForwardModel, StepResult } from '../forward.ts'
import type { KvCache } from '../kv/kv-cache.ts'

/** What the loop needs of a model: lets tests script logits exactly. */
export type StepModel = Pick<ForwardModel, 'forward' | 'emptyCache'> &
  Partial<Pick<ForwardModel, 'releaseCache' | 'releaseLogits'>>

/**
 * Runs one forward step when it is this generation's turn (Scheduler.step); a step whose
 * `signal` aborted while it waited is dropped and rejects.
 */
export type StepRunner = <T>(task: () => Promise<T>, signal?: AbortSignal) => Promise<T>

export interface DecodeOptions {
  maxNewTokens: number
  sampling: SamplingParams
  /** Draws the coin for each sampled token. */
  rng: () => number
  eosIds: ReadonlySet<number>
  signal?: AbortSignal
  /**
   * Long prompts run in chunks of this many tokens so other streams get steps in between; a
   * function is asked before every chunk (the engine shortens chunks while others decode).
   */
  prefillChunk: number | (() => number)
  /** Runs one decode step (batcher.ts); default: `model.forward` through `run`, alone. */
  decode?: (token: number, cache: KvCache) => Promise<StepResult>
  /**
   * Called with each chosen token (eos included) and the logits it was drawn from, after the
   * repetition penalty and before temperature (what logprobs report). Must not keep `logits`.
   */
  onSample?: (id: number, logits: Float32Array) => void
  /**
   * Called once when the loop ends (any reason, after the prefill) with the last cache and the
   * ids it holds: the prompt and every generated token that was fed back (turn-cache.ts). The
   * cache is released right after: keep a detached copy, or the cache itself (KvCache.keep).
   */
  onEnd?: (cache: KvCache, ids: number[]) => void
  /**
   * `start` is the caller's to give back (a turn cache fork in the decoder's memory): released
   * here when the prompt's first chunk never ran (cancelled while queued, max_tokens 0, an
   * error); after it, the chunks extend it in place and it goes with their cache.
   */
  ownsStart?: boolean
}

/**
 * Feeds `ids` after `cache` in chunks; returns the last position's logits (all, or only
 * `columns`) and the new cache. Earlier chunks ask for no logits. Returns undefined if `signal`
 * aborted between chunks or while a chunk waited for its turn; then (and on an error) the cache
 * the chunks made so far is released, so `cache` must be the caller's own (a plain cache, or one
 * nothing else steps): in the decoder the chunks extend its sequence in place.
 */
export async function prefill(
  model: StepModel,
  run: StepRunner,
  ids: readonly number[],
  cache: KvCache,
  chunk: number | (() => number),
  signal?: AbortSignal,
  columns?: readonly number[],
): Promise<StepResult | undefined> {
  let result: StepResult | undefined
  const abandon = () => {
    if (result) model.releaseCache?.(result.cache)
  }
  for (let i = 0; i < ids.length;) {
    if (signal?.aborted) {
      abandon()
      return undefined
    }
    const from: KvCache = result?.cache ?? cache
    const at = i
    // the size is chosen when the step runs, not when it is queued: by then other streams may
    // have started decoding
    try {
      result = await run(() => {
        const size = typeof chunk === 'number' ? chunk : chunk()
        i = at + size
        return model.forward(ids.slice(at, i), from, i >= ids.length ? 1 : 0, columns)
      }, signal)
    } catch (err) {
      abandon()
      if (signal?.aborted) return undefined
      throw err
    }
  }
  return result
}

/**
 * Yields generated token ids (eos excluded); returns why it ended. Abort is checked before
 * every step, so a cancelled generation stops within one step. `start` holds the KV of the
 * prompt's first `start.length` ids (a reused cache), which are not computed again.
 */
export async function* generateTokens(
  model: StepModel,
  run: StepRunner,
  prompt: readonly number[],
  o: DecodeOptions,
  start: KvCache = model.emptyCache(),
): AsyncGenerator<number, FinishReason> {
  const dropStart = () => {
    if (o.ownsStart) model.releaseCache?.(start)
  }
  if (o.maxNewTokens <= 0) {
    dropStart()
    return 'length'
  }
  if (start.length >= prompt.length) {
    dropStart()
    throw new Error('the start cache must leave a prompt token')
  }
  const rest = start.length ? prompt.slice(start.length) : prompt
  // a new sequence: room for all it may reach (KvCache.reserve)
  if (start.length === 0) start = { ...start, reserve: prompt.length + o.maxNewTokens }
  let first: StepResult | undefined
  try {
    first = await prefill(model, run, rest, start, o.prefillChunk, o.signal)
  } catch (err) {
    dropStart() // a no-op when the chunks that ran already gave its sequence back
    throw err
  }
  if (!first) {
    dropStart()
    return 'cancelled'
  }
  let { logits, cache } = first
  const seen = new Set(prompt)
  const fed: number[] = []
  const decode =
    o.decode ?? ((token: number, from: KvCache) => run(() => model.forward([token], from, 1)))
  try {
    for (let n = 0; ; n++) {
      if (o.signal?.aborted) return 'cancelled'
      applyRepetitionPenalty(logits, seen, o.sampling.repetitionPenalty)
      const next = pickToken(logits, o.sampling, o.sampling.temperature > 0 ? o.rng() : 0)
      o.onSample?.(next, logits)
      if (o.eosIds.has(next)) return 'stop'
      yield next
      if (n + 1 >= o.maxNewTokens) return 'length'
      if (o.signal?.aborted) return 'cancelled'
      seen.add(next)
      const used = logits
      ;({ logits, cache } = await decode(next, cache))
      // read by pickToken and onSample only (which must not keep them): 600 KB a step at
      // Qwen's vocabulary, given back now rather than when the collector gets to them
      model.releaseLogits?.(used)
      fed.push(next)
    }
  } finally {
    model.releaseLogits?.(logits)
    o.onEnd?.(cache, prompt.concat(fed))
    // the decoder's memory for the sequence (unless onEnd kept it); also when no
    // decode step ran, so the batcher never saw a cache of this stream
    model.releaseCache?.(cache)
  }
}
