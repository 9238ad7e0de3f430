import type { KvCache } from '../../src/engine/kv/kv-cache.ts'
import type { Q8Decoder } from '../../src/engine/wasm/decoder.ts'

/** `ids` stepped one at a time after `from` (default: empty): every step's logits and the last cache. */
export function stepEach(
  decoder: Q8Decoder,
  ids: readonly number[],
  from: KvCache = { length: 0, tensors: {} },
): { cache: KvCache; logits: Float32Array[] } {
  let cache = from
  const logits: Float32Array[] = []
  for (const id of ids) {
    const r = decoder.step([id], [cache])[0]
    logits.push(r.logits.slice())
    cache = r.cache
  }
  return { cache, logits }
}
