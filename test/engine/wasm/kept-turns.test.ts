/**
 * Kept turns (KvCache.keep, decoder.ts KeptCache): a finished stream's KV stays in the decoder's
 * memory, fitted in place to its length, instead of being copied out to JS. Checked on the tiny
 * q8 model against fresh prefills of the same ids: a fork of a kept turn (whole or a prefix)
 * continues exactly as a fresh prefill does, the kept positions never change, releases of the
 * stream leave it be and only `dispose` gives it back.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { ResidentCache, type Q8Decoder } from '../../../src/engine/wasm/decoder.ts'
import { KernelModel } from '../../../src/engine/wasm/kernel-model.ts'
import { TurnCache } from '../../../src/engine/kv/turn-cache.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import { ensureModel } from '../../helpers/models.ts'

const PROMPT = [100, 137, 174, 211, 248, 285, 322, 359, 396, 433, 470]
const NEXT = [507, 544, 581]

function sameFloats(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((x, i) => Object.is(x, b[i]))
}

describe('kept turns in the decoder (tiny, q8)', () => {
  let work: string
  let model: KernelModel
  let decoder: Q8Decoder

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-kept-'))
    await preparePackage({ folder: hf, id: 'tiny', out: work, quiet: true, verify: false })
    // a decoder of its own: no other test's sequences in its counts
    model = await KernelModel.load(await loadPackage(fsSource(work), 'tiny'))
    decoder = model.decoder
  })

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true })
  })

  /** A fresh prefill of `ids`: its last logits, and its cache. */
  const fresh = async (ids: number[], reserve?: number) => {
    const start: KvCache = { ...model.emptyCache(), ...(reserve && { reserve }) }
    const r = await model.forward(ids, start)
    return { logits: r.logits.slice(), cache: r.cache as ResidentCache }
  }

  /** The KV of a decoder cache read from its sequence now. */
  const kvNow = (c: ResidentCache) =>
    Object.values(decoder.exportKv(c.sequence, c.length)).map((t) => t.data as Float32Array)

  it('fits the kept block in place, and forks of it continue exactly as fresh prefills', async () => {
    const posBytes = decoder.kvPositionBytes
    expect(decoder.kvBytes).toBe(0)
    // a stream with room for the 300 positions it reserved, no more, that used 11
    const stream = await fresh(PROMPT, 300)
    expect(stream.cache.sequence.capacity).toBe(300)
    const before = kvNow(stream.cache)
    const kept = stream.cache.keep()!
    expect(kept).toBeDefined()
    expect(stream.cache.keep()).toBeUndefined() // kept once
    // fitted: its block is its 11 positions, the rest went back; the values moved with it
    expect(kept.sequence.capacity).toBe(PROMPT.length)
    expect(decoder.kvBytes).toBe(PROMPT.length * posBytes)
    kvNow(kept).forEach((data, i) => expect(sameFloats(data, before[i]), `tensor ${i}`).toBe(true))
    // the stream ends: its release leaves the kept turn
    model.releaseCache(stream.cache)
    expect(decoder.sequences).toBe(0)
    expect(decoder.keptSequences).toBe(1)

    // the whole turn, continued: the logits of a fresh prefill of all the ids
    const whole = kept.fork(PROMPT.length, 40)
    expect(whole.sequence).not.toBe(kept.sequence)
    expect(whole.sequence.capacity).toBe(40)
    const go = await model.forward(NEXT, whole)
    const want = await fresh([...PROMPT, ...NEXT])
    expect(sameFloats(go.logits, want.logits)).toBe(true)
    // a prefix of it, continued with other ids
    const part = kept.fork(6)
    const other = await model.forward([...NEXT, 618], part)
    const wantOther = await fresh([...PROMPT.slice(0, 6), ...NEXT, 618])
    expect(sameFloats(other.logits, wantOther.logits)).toBe(true)
    // stepping the kept cache itself forks too: its sequence keeps its length
    const direct = await model.forward([NEXT[0]], kept)
    expect((direct.cache as ResidentCache).sequence).not.toBe(kept.sequence)
    expect(kept.sequence.filled).toBe(PROMPT.length)
    kvNow(kept).forEach((data, i) => expect(sameFloats(data, before[i]), `tensor ${i}`).toBe(true))

    for (const c of [go.cache, other.cache, direct.cache, want.cache, wantOther.cache])
      model.releaseCache(c)
    expect(decoder.sequences).toBe(0)
    expect(decoder.kvBytes).toBe(PROMPT.length * posBytes)
    kept.dispose()
    expect(decoder.keptSequences).toBe(0)
    expect(decoder.kvBytes).toBe(0)
    expect(() => kept.fork(3)).toThrow(/released/)
  })

  it('keeps only the newest cache of a sequence', async () => {
    const a = await fresh(PROMPT.slice(0, 5))
    const b = await model.forward([PROMPT[5]], a.cache) // grows a's sequence in place
    expect((b.cache as ResidentCache).sequence).toBe(a.cache.sequence)
    expect(a.cache.keep()).toBeUndefined()
    const kept = (b.cache as ResidentCache).keep()!
    expect(kept.length).toBe(6)
    model.releaseCache(b.cache)
    kept.dispose()
    expect(decoder.sequences + decoder.keptSequences).toBe(0)
  })

  it('a resident turn cache keeps turns without copies and gives them back when it drops them', async () => {
    const turns = new TurnCache({ maxTokens: 20, minReuse: 1, resident: true })
    const first = await fresh(PROMPT)
    turns.store(PROMPT, first.cache)
    model.releaseCache(first.cache)
    expect(decoder.keptSequences).toBe(1)
    const ids = [...PROMPT, ...NEXT]
    const hit = turns.lookup(ids, 64)!
    expect(hit.reused).toBe(PROMPT.length)
    // a fork, in the decoder's memory: stepping it never touches the kept turn
    expect(hit.cache).toBeInstanceOf(ResidentCache)
    const on = await model.forward(NEXT, hit.cache)
    const want = await fresh(ids)
    expect(sameFloats(on.logits, want.logits)).toBe(true)
    model.releaseCache(want.cache)
    // the conversation moved on: storing it drops the turn it extends
    turns.store(ids, on.cache)
    model.releaseCache(on.cache)
    expect(turns.size).toBe(1)
    expect(decoder.keptSequences).toBe(1)
    expect(decoder.kvBytes).toBe(ids.length * decoder.kvPositionBytes)
    // over the budget: the oldest goes, and its memory with it
    const more = await fresh(NEXT.concat(PROMPT).slice(0, 12))
    turns.store(NEXT.concat(PROMPT).slice(0, 12), more.cache)
    model.releaseCache(more.cache)
    expect(turns.size).toBe(1)
    expect(decoder.keptSequences).toBe(1)
    expect(decoder.kvBytes).toBe(12 * decoder.kvPositionBytes)
    turns.clear()
    expect(decoder.keptSequences + decoder.sequences).toBe(0)
    expect(decoder.kvBytes).toBe(0)
  })
})
