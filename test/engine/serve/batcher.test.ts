/**
 * Continuous batching: `QwenModel.forwardBatch` on a real graph against single-sequence steps,
 * and the `DecodeBatcher`'s gathering on a scripted model.
 */
import { beforeAll, describe, expect, it } from 'vitest'
import { loadHfFolder } from '../../../src/adapters/node/hf-folder.ts'
import { DecodeBatcher, type BatchModel } from '../../../src/engine/serve/batcher.ts'
import type { StepResult } from '../../../src/engine/forward.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import { Scheduler } from '../../../src/engine/serve/scheduler.ts'
import { ensureModel } from '../../helpers/models.ts'
import { maxAbsDiff } from '../../helpers/numeric.ts'

describe('QwenModel.forwardBatch (tiny, fp32)', () => {
  let model: QwenModel
  beforeAll(async () => {
    model = await QwenModel.load(await loadHfFolder(await ensureModel('tiny', 'fp32')))
  })

  it('gives each sequence the logits and cache of its own step, over several steps', async () => {
    const prompts = [[151644, 872, 198], [9707, 11, 1879, 0, 358, 1079, 1588, 13], [105043]]
    const singles: StepResult[] = []
    for (const p of prompts) singles.push(await model.forward(p, model.emptyCache()))
    let batched = singles.map((s) => s.cache)
    let alone = singles.map((s) => s.cache)
    const steps = [
      [100, 200, 300],
      [151645, 198, 42],
      [7, 8, 9],
    ]
    for (const tokens of steps) {
      const together = await model.forwardBatch(
        tokens,
        batched.map((c) => c),
      )
      const separate: StepResult[] = []
      for (let r = 0; r < tokens.length; r++) {
        separate.push(await model.forward([tokens[r]], alone[r]))
      }
      for (let r = 0; r < tokens.length; r++) {
        expect(together[r].rows).toBe(1)
        expect(together[r].cache.length).toBe(alone[r].length + 1)
        expect(maxAbsDiff(together[r].logits, separate[r].logits)).toBeLessThan(1e-4)
        for (const name of Object.keys(separate[r].cache.tensors)) {
          const a = together[r].cache.tensors[name]
          const b = separate[r].cache.tensors[name]
          expect(a.dims).toEqual(b.dims)
          expect(maxAbsDiff(a.data as Float32Array, b.data as Float32Array)).toBeLessThan(1e-4)
        }
      }
      batched = together.map((t) => t.cache)
      alone = separate.map((s) => s.cache)
    }
  })

  it('feeds an unchanged batch its last present as past (no copies); a changed one is copied', async () => {
    const seen: { feeds: Record<string, unknown>; out: Record<string, unknown> }[] = []
    const session = model.session as { run: QwenModel['session']['run'] }
    const run = session.run.bind(model.session)
    session.run = (async (feeds: Record<string, unknown>, ...rest: unknown[]) => {
      const out = await (run as (...a: unknown[]) => Promise<Record<string, unknown>>)(
        feeds,
        ...rest,
      )
      seen.push({ feeds, out })
      return out
    }) as typeof run
    try {
      const a = (await model.forward([151644, 872, 198, 9707], model.emptyCache())).cache
      const b = (await model.forward([105043], model.emptyCache())).cache
      const first = await model.forwardBatch([100, 200], [a, b])
      seen.length = 0
      const same = await model.forwardBatch(
        [300, 400],
        first.map((r) => r.cache),
      )
      // the run after `first` was fed first's own present tensors, not copies
      const firstPresent = first[0].cache as unknown as {
        batch: { present: Record<string, unknown> }
      }
      expect(seen[0].feeds['past_key_values.0.key']).toBe(
        firstPresent.batch.present['past_key_values.0.key'],
      )
      // reversed order: not the same batch, so the caches are cut out and padded again
      seen.length = 0
      const swapped = await model.forwardBatch([400, 300], [first[1].cache, first[0].cache])
      expect(seen[0].feeds['past_key_values.0.key']).not.toBe(
        firstPresent.batch.present['past_key_values.0.key'],
      )
      expect(maxAbsDiff(same[0].logits, swapped[1].logits)).toBeLessThan(1e-5)
      expect(maxAbsDiff(same[1].logits, swapped[0].logits)).toBeLessThan(1e-5)
      const name = 'past_key_values.1.value'
      expect(
        maxAbsDiff(
          same[1].cache.tensors[name].data as Float32Array,
          swapped[0].cache.tensors[name].data as Float32Array,
        ),
      ).toBeLessThan(1e-5)
      expect(same[1].cache.tensors[name].dims).toEqual([
        1,
        model.shape.kvHeads,
        3,
        model.shape.headDim,
      ])
    } finally {
      session.run = run
    }
  })

  it('leaves the input caches untouched (caches are immutable)', async () => {
    const a = (await model.forward([1, 2, 3, 4], model.emptyCache())).cache
    const b = (await model.forward([5], model.emptyCache())).cache
    const name = Object.keys(a.tensors)[0]
    const copy = Float32Array.from(a.tensors[name].data as Float32Array)
    await model.forwardBatch([6, 7], [a, b])
    expect(a.length).toBe(4)
    expect(a.tensors[name].data).toEqual(copy)
  })

  it('refuses mismatched inputs', async () => {
    await expect(model.forwardBatch([1, 2], [model.emptyCache()])).rejects.toThrow(/one cache/)
  })
})

/** A scripted model: logits say which token and cache length produced them. */
function scriptedModel(canBatch = true) {
  const batches: number[][] = []
  const cache = (length: number): KvCache => ({ length, tensors: {} })
  const model: BatchModel = {
    canBatch,
    async forward(ids, c) {
      batches.push([ids[0]])
      return { logits: Float32Array.of(ids[0], c.length), rows: 1, cache: cache(c.length + 1) }
    },
    async forwardBatch(tokens, caches) {
      batches.push([...tokens])
      return tokens.map((t, i) => ({
        logits: Float32Array.of(t, caches[i].length),
        rows: 1,
        cache: cache(caches[i].length + 1),
      }))
    },
  }
  return { model, batches, cache }
}

describe('DecodeBatcher', () => {
  it('runs the steps waiting together as one batch and routes each result back', async () => {
    const { model, batches, cache } = scriptedModel()
    const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const batcher = new DecodeBatcher(model, (t) => scheduler.step(t), 4)
    const streams = [0, 1, 2].map(() => batcher.open())
    const results = await Promise.all(streams.map((s, i) => s.step(10 + i, cache(5 * i))))
    expect(batches).toEqual([[10, 11, 12]])
    expect(results.map((r) => Array.from(r.logits))).toEqual([
      [10, 0],
      [11, 5],
      [12, 10],
    ])
    expect(batcher.stats).toEqual({ runs: 1, tokens: 3, largest: 3 })
    expect(batcher.active).toBe(3)
    for (const s of streams) s.close()
    expect(batcher.active).toBe(0)
  })

  it('caps a run at maxBatch and runs the rest next', async () => {
    const { model, batches, cache } = scriptedModel()
    const scheduler = new Scheduler({ maxActive: 8, maxQueued: 8 })
    const batcher = new DecodeBatcher(model, (t) => scheduler.step(t), 2)
    const streams = [0, 1, 2, 3, 4].map(() => batcher.open())
    await Promise.all(streams.map((s, i) => s.step(i, cache(1))))
    expect(batches).toEqual([[0, 1], [2, 3], [4]])
  })

  it('waits one turn for streams still busy with their last token, then batches them', async () => {
    const { model, batches, cache } = scriptedModel()
    const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const batcher = new DecodeBatcher(model, (t) => scheduler.step(t), 4)
    const a = batcher.open()
    const b = batcher.open()
    await Promise.all([a.step(1, cache(1)), b.step(2, cache(1))])
    // a comes back at once; b only after some microtask hops (sampling, detokenizing)
    const pa = a.step(3, cache(2))
    let hops = Promise.resolve()
    for (let i = 0; i < 50; i++) hops = hops.then(() => {})
    const pb = hops.then(() => b.step(4, cache(2)))
    await Promise.all([pa, pb])
    expect(batches).toEqual([
      [1, 2],
      [3, 4],
    ])
  })

  it('does not wait for a stream that is not stepping (a stalled consumer)', async () => {
    const { model, batches, cache } = scriptedModel()
    const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const batcher = new DecodeBatcher(model, (t) => scheduler.step(t), 4)
    const a = batcher.open()
    const b = batcher.open()
    await Promise.all([a.step(1, cache(1)), b.step(2, cache(1))])
    for (let i = 3; i < 6; i++) await a.step(i, cache(i)) // b never asks again
    expect(batches).toEqual([[1, 2], [3], [4], [5]])
  })

  it('runs steps one by one when batching is off or the graph cannot batch', async () => {
    for (const [maxBatch, canBatch] of [
      [1, true],
      [4, false],
    ] as const) {
      const { model, batches, cache } = scriptedModel(canBatch)
      const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
      const batcher = new DecodeBatcher(model, (t) => scheduler.step(t), maxBatch)
      const streams = [0, 1, 2].map(() => batcher.open())
      await Promise.all(streams.map((s, i) => s.step(i, cache(1))))
      expect(batches).toEqual([[0], [1], [2]])
    }
  })

  it('never puts a solo stream into a shared run', async () => {
    const { model, batches, cache } = scriptedModel()
    const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const batcher = new DecodeBatcher(model, (t) => scheduler.step(t), 4)
    const [a, solo, b] = [batcher.open(), batcher.open(true), batcher.open()]
    await Promise.all([a.step(1, cache(1)), solo.step(2, cache(1)), b.step(3, cache(1))])
    expect(batches).toEqual([[1, 3], [2]])
    expect(batcher.active).toBe(2) // the solo stream is not waited for
  })

  it('lets a reproducible stream share runs when the model batches exactly', async () => {
    const { model, batches, cache } = scriptedModel()
    const exact: BatchModel = { ...model, exactBatches: true }
    const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const batcher = new DecodeBatcher(exact, (t) => scheduler.step(t), 4)
    const [a, seeded, b] = [batcher.open(), batcher.open(true), batcher.open()]
    await Promise.all([a.step(1, cache(1)), seeded.step(2, cache(1)), b.step(3, cache(1))])
    expect(batches).toEqual([[1, 2, 3]])
    expect(batcher.active).toBe(3)
  })

  it('rejects every step of a failed run, and the next run still works', async () => {
    const { model, cache } = scriptedModel()
    let fail = true
    const flaky: BatchModel = {
      canBatch: true,
      forward: model.forward,
      async forwardBatch(tokens, caches) {
        if (fail) throw new Error('wasm trap')
        return model.forwardBatch(tokens, caches)
      },
    }
    const scheduler = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const batcher = new DecodeBatcher(flaky, (t) => scheduler.step(t), 4)
    const [a, b] = [batcher.open(), batcher.open()]
    const settled = await Promise.allSettled([a.step(1, cache(1)), b.step(2, cache(1))])
    expect(settled.map((s) => s.status)).toEqual(['rejected', 'rejected'])
    fail = false
    const ok = await Promise.all([a.step(3, cache(1)), b.step(4, cache(1))])
    expect(ok.map((r) => r.logits[0])).toEqual([3, 4])
    a.close()
    await expect(a.step(5, cache(2))).rejects.toThrow(/closed/)
  })
})
