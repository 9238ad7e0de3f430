/**
 * TurnCache (prefix lookup, sharing vs slicing, LRU by token budget) on hand-built caches whose
 * values encode (tensor, head, position, dim), and sliceKvCache on the real tiny model.
 */
import { describe, expect, it } from 'vitest'
import { loadHfFolder } from '../../../src/adapters/node/hf-folder.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import { ort } from '../../../src/engine/graph/ort.ts'
import { sliceKvCache } from '../../../src/engine/kv/kv-cache.ts'
import { TurnCache } from '../../../src/engine/kv/turn-cache.ts'
import { ensureModel } from '../../helpers/models.ts'
import { maxAbsDiff } from '../../helpers/numeric.ts'

const NAMES = [
  'past_key_values.0.key',
  'past_key_values.0.value',
  'past_key_values.1.key',
  'past_key_values.1.value',
]
const HEADS = 2
const DIM = 3

/** Small integers, exact in float16 bits and float32 alike; unique per (tensor, head, pos, dim). */
const f = (k: number, h: number, pos: number, d: number) => k * 10_000 + h * 1000 + pos * 10 + d

function makeCache(length: number, type: 'float32' | 'float16' = 'float32'): KvCache {
  const tensors: Record<string, ort.Tensor> = {}
  NAMES.forEach((name, k) => {
    const data =
      type === 'float32'
        ? new Float32Array(HEADS * length * DIM)
        : new Uint16Array(HEADS * length * DIM)
    for (let h = 0; h < HEADS; h++)
      for (let pos = 0; pos < length; pos++)
        for (let d = 0; d < DIM; d++) data[(h * length + pos) * DIM + d] = f(k, h, pos, d)
    tensors[name] = new ort.Tensor(type, data, [1, HEADS, length, DIM])
  })
  return { length, tensors }
}

/** Checks dims and every value of a cache of `length` positions built by makeCache. */
function expectCacheValues(cache: KvCache, length: number) {
  expect(cache.length).toBe(length)
  expect(Object.keys(cache.tensors)).toEqual(NAMES)
  NAMES.forEach((name, k) => {
    const t = cache.tensors[name]
    expect(t.dims).toEqual([1, HEADS, length, DIM])
    const expected: number[] = []
    for (let h = 0; h < HEADS; h++)
      for (let pos = 0; pos < length; pos++)
        for (let d = 0; d < DIM; d++) expected.push(f(k, h, pos, d))
    expect(Array.from(t.data as ArrayLike<number>)).toEqual(expected)
  })
}

const range = (n: number, start = 0) => Array.from({ length: n }, (_, i) => start + i)

describe.each(['float32', 'float16'] as const)('sliceKvCache on %s data', (type) => {
  it('keeps the first positions of every head as new tensors of the same type', () => {
    const full = makeCache(10, type)
    const sliced = sliceKvCache(full, 6)
    expectCacheValues(sliced, 6)
    for (const name of NAMES) {
      const t = sliced.tensors[name]
      expect(t.type).toBe(type)
      const source = full.tensors[name].data as Float32Array | Uint16Array
      expect(t.data).toBeInstanceOf(source.constructor)
      expect((t.data as Float32Array | Uint16Array).buffer).not.toBe(source.buffer)
    }
    expectCacheValues(full, 10) // the source is untouched
  })

  it('slices to 0 and to the full length', () => {
    expectCacheValues(sliceKvCache(makeCache(5, type), 0), 0)
    expectCacheValues(sliceKvCache(makeCache(5, type), 5), 5)
  })
})

describe('sliceKvCache', () => {
  it('rejects a length outside [0, cache.length]', () => {
    const cache = makeCache(4)
    expect(() => sliceKvCache(cache, 5)).toThrow(RangeError)
    expect(() => sliceKvCache(cache, -1)).toThrow(RangeError)
    expect(() => sliceKvCache(cache, 1.5)).toThrow(RangeError)
  })
})

describe('TurnCache', () => {
  it('shares the tensors of an entry the prompt fully extends', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    const cache = makeCache(10)
    turns.store(range(10), cache)
    const hit = turns.lookup([...range(10), 500, 501])
    expect(hit?.reused).toBe(10)
    expect(hit?.cache).toBe(cache)
    expect(turns.stats).toEqual({ hits: 1, misses: 0, reusedTokens: 10 })
  })

  it.each(['float32', 'float16'] as const)('slices a partially matching %s entry', (type) => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    const cache = makeCache(10, type)
    turns.store(range(10), cache)
    const hit = turns.lookup([...range(6), 99, 98])
    expect(hit?.reused).toBe(6)
    expect(hit?.cache).not.toBe(cache)
    expectCacheValues(hit!.cache, 6)
    expect(hit!.cache.tensors[NAMES[0]].type).toBe(type)
    expectCacheValues(cache, 10) // the entry stays whole
  })

  it('leaves at least one token to run', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    turns.store(range(10), makeCache(10))
    const same = turns.lookup(range(10))
    expect(same?.reused).toBe(9)
    expectCacheValues(same!.cache, 9)
    expect(turns.lookup(range(5))?.reused).toBe(4)
    expect(turns.lookup([0])).toBeUndefined()
    expect(turns.lookup([])).toBeUndefined()
  })

  it('reuses nothing below minReuse', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 5 })
    turns.store(range(10), makeCache(10))
    expect(turns.lookup([...range(4), 50, 51])).toBeUndefined()
    expect(turns.lookup([7, 8, 9])).toBeUndefined()
    expect(turns.lookup([...range(5), 50])?.reused).toBe(5)
    expect(turns.stats).toEqual({ hits: 1, misses: 2, reusedTokens: 5 })
  })

  it('picks the longest match among entries', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    const short = makeCache(4)
    const long = makeCache(8)
    turns.store([...range(3), 70], short)
    turns.store([...range(7), 80], long)
    const hit = turns.lookup([...range(7), 80, 90])
    expect(hit?.cache).toBe(long)
    expect(turns.lookup([...range(3), 70, 1])?.cache).toBe(short)
  })

  it('prefers an entry it can share over an equally long slice', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    const longer = makeCache(12)
    const exact = makeCache(8)
    turns.store(range(12), longer)
    turns.store(range(8), exact) // a prefix of the older entry: both kept
    expect(turns.size).toBe(2)
    turns.lookup(range(12)) // make `longer` the most recently used
    const hit = turns.lookup([...range(8), 99])
    expect(hit?.reused).toBe(8)
    expect(hit?.cache).toBe(exact)
  })

  it('evicts least recently used entries past maxTokens', () => {
    const turns = new TurnCache({ maxTokens: 25, minReuse: 1 })
    const a = makeCache(10)
    turns.store(range(10, 0), a)
    turns.store(range(10, 100), makeCache(10))
    expect(turns.lookup([...range(10, 0), 1])?.cache).toBe(a) // a is now the most recent
    turns.store(range(10, 200), makeCache(10))
    expect(turns.size).toBe(2)
    expect(turns.tokens).toBe(20)
    expect(turns.lookup([...range(10, 100), 1])).toBeUndefined()
    expect(turns.lookup([...range(10, 0), 1])?.reused).toBe(10)
    expect(turns.lookup([...range(10, 200), 1])?.reused).toBe(10)
  })

  it('does not store an entry larger than maxTokens, and keeps the others', () => {
    const turns = new TurnCache({ maxTokens: 25, minReuse: 1 })
    turns.store(range(10), makeCache(10))
    turns.store(range(26), makeCache(26))
    expect(turns.size).toBe(1)
    expect(turns.tokens).toBe(10)
    turns.store(range(25), makeCache(25)) // exactly the budget fits, replacing its prefix
    expect(turns.size).toBe(1)
    expect(turns.tokens).toBe(25)
  })

  it('replaces the entry of the previous turn with its continuation', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    const other = makeCache(6)
    turns.store(range(6, 300), other)
    turns.store(range(10), makeCache(10))
    const next = makeCache(15)
    turns.store([...range(10), ...range(5, 50)], next)
    expect(turns.size).toBe(2)
    expect(turns.tokens).toBe(21)
    expect(turns.lookup([...range(10), ...range(5, 50), 7])?.cache).toBe(next)
    expect(turns.lookup([...range(6, 300), 7])?.cache).toBe(other)
    turns.store(range(10), makeCache(10)) // a shorter one does not replace a longer one
    expect(turns.size).toBe(3)
  })

  it('keeps its own copy of the ids', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    const ids = range(10)
    turns.store(ids, makeCache(10))
    ids.fill(-1)
    expect(turns.lookup([...range(10), 1])?.reused).toBe(10)
  })

  it('throws when the cache length does not match the ids', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    expect(() => turns.store(range(9), makeCache(10))).toThrow(/10 tokens for 9 ids/)
    expect(turns.size).toBe(0)
  })

  it('stores nothing when maxTokens is 0', () => {
    const turns = new TurnCache({ maxTokens: 0, minReuse: 1 })
    turns.store(range(10), makeCache(10))
    expect([turns.size, turns.tokens]).toEqual([0, 0])
    expect(turns.lookup([...range(10), 1])).toBeUndefined()
    expect(turns.stats.misses).toBe(1)
  })

  it('clear drops every entry', () => {
    const turns = new TurnCache({ maxTokens: 1000, minReuse: 1 })
    turns.store(range(10), makeCache(10))
    turns.store(range(10, 100), makeCache(10))
    turns.clear()
    expect([turns.size, turns.tokens]).toEqual([0, 0])
    expect(turns.lookup([...range(10), 1])).toBeUndefined()
  })
})

describe('a sliced cache on the tiny model', () => {
  it('continues like a fresh prefill within 1e-4', async () => {
    const model = await QwenModel.load(await loadHfFolder(await ensureModel('tiny', 'fp32')))
    // <|im_start|>user\n你好，世界！<|im_end|>\n<|im_start|>assistant\n
    const a = [151644, 872, 198, 108386, 3837, 99489, 6313, 151645, 198, 151644, 77091, 198]
    const b = [...a.slice(0, 8), 9707, 11, 1879, 0] // same first 8 tokens, another ending
    const fullA = await model.forward(a, model.emptyCache())
    expect(fullA.cache.length).toBe(12)

    const head = sliceKvCache(fullA.cache, 8)
    const resumedA = await model.forward(a.slice(8), head)
    expect(resumedA.cache.length).toBe(12)
    expect(maxAbsDiff(resumedA.logits, fullA.logits)).toBeLessThan(1e-4)

    const turns = new TurnCache({ maxTokens: 1000, minReuse: 4 })
    turns.store(a, fullA.cache)
    const hit = turns.lookup(b)
    expect(hit?.reused).toBe(8)
    const resumedB = await model.forward(b.slice(hit!.reused), hit!.cache)
    const fullB = await model.forward(b, model.emptyCache())
    expect(maxAbsDiff(resumedB.logits, fullB.logits)).toBeLessThan(1e-4)
    expect(maxAbsDiff(resumedB.logits, fullA.logits)).toBeGreaterThan(1e-3) // the ending matters
    await model.release()
  })
})
