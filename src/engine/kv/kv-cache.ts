/**
 * The KV cache of one sequence, as the engine passes it between forward steps. Three kinds
 * exist: a plain one (its own tensors: after a single-sequence run, or copied), a row of a
 * batched run (graph/model.ts: cut out of the batch's present on first read) and one resident in
 * the engine's decoder memory (wasm/decoder.ts: copied out on first read). Whatever the kind, a
 * cache is immutable to its users: a step returns a new cache, and the old one stays valid.
 */
import { ort, type Tensor } from '../graph/ort.ts'

export interface KvCache {
  /** Tokens already in the cache. */
  readonly length: number
  /** Keyed by input name: past_key_values.{i}.key|value → [1, kv_heads, length, head_dim]. */
  readonly tensors: Readonly<Record<string, Tensor>>
  /**
   * A cache holding only this sequence's tensors, for keeping long (turn-cache.ts): a batch row
   * still holds the whole batch's present, and a decoder cache lives in the decoder's memory
   * until its stream ends. Absent: the cache is already its own.
   */
  detach?(): KvCache
  /**
   * Its first `length` positions, for a cache that cannot be read as tensors (a pipeline's,
   * whose KV lives in its stages). Absent: sliceKvCache copies the tensors.
   */
  slice?(length: number): KvCache
  /**
   * Positions the sequence stepped on from this cache may reach (a generation's prompt and the
   * most tokens it may add): the decoder (wasm/kv-arena.ts) then takes a block of that size at
   * once instead of moving to one twice as large midway, which leaves the smaller one's memory
   * behind, touched. A hint; absent, the room grows as needed.
   */
  readonly reserve?: number
  /**
   * Keeps this cache past its stream's end without copying it out (turn-cache.ts): the decoder
   * holds its sequence in its memory, fitted to its length, until the kept cache's `dispose`.
   * Only the newest cache of a sequence can be kept; undefined otherwise (keep a detached copy).
   */
  keep?(): KeptKvCache | undefined
}

/**
 * A cache kept resident (KvCache.keep): whoever holds it hands out forks, never the cache itself
 * (a fork is a sequence of its own, so giving the kept one back cannot pull memory from under a
 * stream that started from it), and disposes of it when it drops it.
 */
export interface KeptKvCache extends KvCache {
  /** A new sequence holding the first `length` positions, with room for `reserve` in all. */
  fork(length: number, reserve?: number): KvCache
  /** Gives the memory back; the cache must not be used again. */
  dispose(): void
}

/** `cache` as a plain cache of its own tensors (see KvCache.detach). */
export function detachKvCache(cache: KvCache): KvCache {
  return cache.detach?.() ?? cache
}

type KvData = Float32Array | Uint16Array
type KvDataConstructor = new (length: number) => KvData

/**
 * The first `length` positions of every tensor along the sequence axis (axis 2), as new
 * tensors: [1, kv_heads, cache.length, head_dim] → [1, kv_heads, length, head_dim]. Works on
 * float32 and float16 data (Uint16Array on Node 20, Float16Array on workerd and Deno) alike.
 */
export function sliceKvCache(cache: KvCache, length: number): KvCache {
  if (!Number.isInteger(length) || length < 0 || length > cache.length) {
    throw new RangeError(`sliceKvCache: length ${length} outside [0, ${cache.length}]`)
  }
  if (cache.slice) return cache.slice(length)
  const tensors: Record<string, Tensor> = {}
  for (const [name, t] of Object.entries(cache.tensors)) {
    const [batch, heads, past, headDim] = t.dims
    if (t.dims.length !== 4 || batch !== 1 || past !== cache.length) {
      throw new Error(
        `sliceKvCache: ${name} has dims [${t.dims}], expected [1, h, ${cache.length}, d]`,
      )
    }
    if (!ArrayBuffer.isView(t.data)) throw new Error(`sliceKvCache: ${name} has ${t.type} data`)
    // Same typed-array class as the source, so float16 stays in whatever form ORT gave it.
    const src = t.data as KvData
    const out = new (src.constructor as KvDataConstructor)(heads * length * headDim)
    const rows = length * headDim
    for (let h = 0; h < heads; h++) {
      const from = h * past * headDim
      out.set(src.subarray(from, from + rows), h * rows)
    }
    tensors[name] = new ort.Tensor(t.type, out, [1, heads, length, headDim])
  }
  return { length, tensors }
}
