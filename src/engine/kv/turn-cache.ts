/**
 * KV caches kept across chat turns. Turn 2's prompt ids start with turn 1's prompt and reply,
 * so the longest cached prefix is reused and only the new tokens are prefilled.
 *
 * Entries are few (a memory budget of tokens, ~24 KiB each on the 0.5B model), so lookup is a
 * linear scan comparing token arrays. Caches are immutable (see model.ts): an entry matched in
 * full is handed out as is; a partial match is a sliced copy, so the entry itself stays valid.
 *
 * With `resident`, an entry is the decoder's own memory of the finished stream (KvCache.keep),
 * not a copy of it in JS: nothing is copied when a turn ends, and a hit is a fork inside the
 * decoder's memory (one copy there, as a plain entry's tensors are copied in). Entries that
 * cannot be kept (a pipeline's, the graph's) are detached copies as before.
 */
import { detachKvCache, sliceKvCache, type KeptKvCache, type KvCache } from './kv-cache.ts'
import { ort, type Tensor } from '../graph/ort.ts'

export interface TurnCacheOptions {
  /**
   * Total cached tokens across entries (memory budget; one token of the 0.5B model's KV is
   * ~24 KiB). 0 disables.
   */
  maxTokens: number
  /** Reuse only when at least this many leading tokens match (below it a prefill is cheap). */
  minReuse: number
  /**
   * Keep finished turns where they are (KvCache.keep) instead of copying them out: for a model
   * whose prompts run in the decoder, which can start a prompt from a fork of its own memory.
   */
  resident?: boolean
}

export interface TurnCacheHit {
  /** Covers `ids.slice(0, reused)`; the caller forwards `ids.slice(reused)` from it. */
  cache: KvCache
  reused: number
  /**
   * The cache is the caller's own (a resident entry's fork, in the decoder's memory): the caller
   * must give it back (ForwardModel.releaseCache) if no step ever takes it over.
   */
  owned: boolean
}

interface Entry {
  /** A private copy of the stored ids; `cache.length === ids.length`. */
  readonly ids: readonly number[]
  /** Its own tensors, or kept resident (then only forks of it are handed out). */
  readonly cache: KvCache | KeptKvCache
}

export class TurnCache {
  readonly stats = { hits: 0, misses: 0, reusedTokens: 0 }
  /** Least recently used first. */
  private entries: Entry[] = []
  private total = 0
  private readonly maxTokens: number
  private readonly minReuse: number
  private readonly resident: boolean

  constructor(options: TurnCacheOptions) {
    this.maxTokens = Math.max(0, options.maxTokens)
    this.minReuse = Math.max(1, options.minReuse) // reusing 0 tokens is a miss
    this.resident = options.resident ?? false
  }

  /** Entries held. */
  get size(): number {
    return this.entries.length
  }

  /** Cached tokens across all entries. */
  get tokens(): number {
    return this.total
  }

  /**
   * The longest common prefix of `ids` with any entry, capped at `ids.length - 1` (the caller
   * must still run at least one token to get logits); undefined below `minReuse`. A match
   * covering a whole entry shares its tensors; a shorter one is a sliced copy; a resident entry
   * gives a fork with room for `reserve` positions (the prompt and the most it may add). The
   * entry becomes the most recently used.
   */
  lookup(ids: readonly number[], reserve?: number): TurnCacheHit | undefined {
    const cap = ids.length - 1
    let best = -1
    let reused = 0
    for (let e = this.entries.length - 1; e >= 0; e--) {
      const stored = this.entries[e].ids
      const limit = Math.min(stored.length, cap)
      let n = 0
      while (n < limit && stored[n] === ids[n]) n++
      // On a tie prefer a whole-entry match (no copy), then the more recently used entry.
      if (n > reused || (n === reused && n > 0 && n === stored.length)) {
        best = e
        reused = n
      }
    }
    if (best < 0 || reused < this.minReuse) {
      this.stats.misses++
      return undefined
    }
    const entry = this.entries[best]
    this.entries.splice(best, 1)
    this.entries.push(entry)
    this.stats.hits++
    this.stats.reusedTokens += reused
    const { cache: stored } = entry
    const owned = isKept(stored)
    const cache = owned
      ? stored.fork(reused, reserve)
      : reused === stored.length
        ? stored
        : sliceKvCache(stored, reused)
    return { cache, reused, owned }
  }

  /**
   * Remembers `cache`, the KV of exactly `ids`. Entries whose ids are a prefix of `ids` (the
   * conversation moved on) are dropped; least recently used entries go until the budget holds.
   * An entry larger than the whole budget is not stored (and drops nothing).
   */
  store(ids: readonly number[], cache: KvCache): void {
    if (cache.length !== ids.length) {
      throw new Error(`TurnCache.store: cache holds ${cache.length} tokens for ${ids.length} ids`)
    }
    if (ids.length === 0 || ids.length > this.maxTokens) return
    this.entries = this.entries.filter((entry) => {
      if (!isPrefix(entry.ids, ids)) return true
      this.drop(entry)
      return false
    })
    // a cache left by a batched run would keep the whole batch's tensors alive; a decoder's
    // lives in its memory, kept there or copied out
    const own = (this.resident && cache.keep?.()) || detachKvCache(cache)
    this.entries.push({ ids: ids.slice(), cache: own })
    this.total += ids.length
    while (this.total > this.maxTokens) this.drop(this.entries.shift()!)
  }

  clear(): void {
    for (const entry of this.entries) this.drop(entry)
    this.entries = []
  }

  /** Gives a removed entry's memory back (a resident one's at once; a copy's to the collector). */
  private drop(entry: Entry): void {
    this.total -= entry.ids.length
    if (isKept(entry.cache)) entry.cache.dispose()
  }
}

function isKept(cache: KvCache): cache is KeptKvCache {
  return 'dispose' in cache && 'fork' in cache
}

function isPrefix(prefix: readonly number[], ids: readonly number[]): boolean {
  if (prefix.length > ids.length) return false
  for (let i = 0; i < prefix.length; i++) if (prefix[i] !== ids[i]) return false
  return true
}
