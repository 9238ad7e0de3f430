/**
 * The engine on a package whose lm_head (and tied embedding) runs in head.ts's WASM kernel,
 * against the same model prepared with the lm_head kept in the graph: same KV caches (the
 * embedding is exact), same top-1, logits within the gap of int16 vs uint8 activations, the
 * same labels' scores; `columns` and `keep` 0 through the real forward step.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import { ensureModel } from '../../helpers/models.ts'

const PROMPT = [151644, 872, 198, 105043, 100165, 11319, 151645, 198, 151644, 77091, 198]

function argmax(a: Float32Array, from = 0, n = a.length): number {
  let best = from
  for (let i = from; i < from + n; i++) if (a[i] > a[best]) best = i
  return best - from
}

function sameCache(a: KvCache, b: KvCache) {
  expect(a.length).toBe(b.length)
  for (const name of Object.keys(a.tensors)) {
    const x = a.tensors[name].data as Float32Array
    const y = b.tensors[name].data as Float32Array
    expect(x.length).toBe(y.length)
    let diff = 0
    for (let i = 0; i < x.length; i++) diff = Math.max(diff, Math.abs(x[i] - y[i]))
    expect(diff, name).toBe(0)
  }
}

describe('a package with its lm_head split off (tiny, q8)', () => {
  let work: string
  let split: QwenEngine
  let graph: QwenEngine

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-split-'))
    for (const head of ['wasm', 'graph'] as const) {
      await preparePackage({ folder: hf, id: head, out: work, quiet: true, head, verify: false })
    }
    // prompts in the graph (its head split is what is tested), not in the kernels
    split = await QwenEngine.create(await loadPackage(fsSource(work), 'wasm'), {
      session: { prefill: 'graph' },
    })
    graph = await QwenEngine.create(await loadPackage(fsSource(work), 'graph'))
  })

  afterAll(async () => {
    await split?.model.release()
    await graph?.model.release()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('loads the head: the graph takes inputs_embeds and ends in hidden_states', () => {
    const model = split.model as QwenModel
    expect(model.head?.embedding).toBe(true)
    expect(model.session.inputNames).toContain('inputs_embeds')
    expect(model.session.outputNames).toContain('hidden_states')
    expect((graph.model as QwenModel).head).toBeUndefined()
  })

  it('gives the same KV caches and top-1 as the graph head, logits within 2% of their range', async () => {
    const vocab = split.model.shape.vocabSize
    let a = await split.model.forward(PROMPT, split.model.emptyCache())
    let b = await graph.model.forward(PROMPT, graph.model.emptyCache())
    for (let step = 0; step < 4; step++) {
      expect(a.logits.length).toBe(vocab)
      sameCache(a.cache, b.cache)
      let range = 0
      let diff = 0
      for (let i = 0; i < vocab; i++) {
        range = Math.max(range, Math.abs(b.logits[i]))
        diff = Math.max(diff, Math.abs(a.logits[i] - b.logits[i]))
      }
      expect(diff).toBeLessThan(0.02 * range)
      const next = argmax(b.logits)
      expect(argmax(a.logits)).toBe(next)
      a = await split.model.forward([next], a.cache)
      b = await graph.model.forward([next], b.cache)
    }
  })

  it('runs a batch through the head: each row picks what it picks alone', async () => {
    const first = await split.model.forward(PROMPT, split.model.emptyCache())
    const other = await split.model.forward([9707, 11, 1879], split.model.emptyCache())
    const rows = await split.model.forwardBatch([100, 200], [first.cache, other.cache])
    const vocab = split.model.shape.vocabSize
    // the layers' DynamicQuantizeMatMul shares one activation scale across the batch, so a row
    // differs from its single step in the last digits (model.ts); the head adds nothing
    // batch-dependent (head-kernel.test.ts)
    for (const [i, [token, cache]] of [
      [100, first.cache],
      [200, other.cache],
    ].entries() as Iterable<[number, [number, KvCache]]>) {
      const alone = await split.model.forward([token], cache)
      expect(rows[i].logits.length).toBe(vocab)
      expect(rows[i].cache.length).toBe(alone.cache.length)
      expect(argmax(rows[i].logits)).toBe(argmax(alone.logits))
    }
  })

  it('columns are those entries of the full logits; keep 0 computes the cache only', async () => {
    const full = await split.model.forward(PROMPT, split.model.emptyCache())
    const ids = [151645, 0, 1000, 151935]
    const cols = await split.model.forward(PROMPT, split.model.emptyCache(), 1, ids)
    expect(Array.from(cols.logits)).toEqual(ids.map((v) => full.logits[v]))
    const none = await split.model.forward(PROMPT, split.model.emptyCache(), 0)
    expect(none.logits.length).toBe(0)
    expect(none.rows).toBe(0)
    sameCache(none.cache, full.cache)
    // the graph head honours both too
    const g = await graph.model.forward(PROMPT, graph.model.emptyCache())
    const gCols = await graph.model.forward(PROMPT, graph.model.emptyCache(), 1, ids)
    expect(Array.from(gCols.logits)).toEqual(ids.map((v) => g.logits[v]))
  })

  it('scores sentiment labels like the graph head, cached prefix or not', async () => {
    for (const text of [
      '这部电影太好看了，演员的表演非常出色！',
      'The service was slow and rude.',
    ]) {
      const a = await split.classify(text)
      const b = await graph.classify(text)
      const c = await split.classifier.classify(text, undefined, { usePrefixCache: false })
      expect(Object.keys(a.scores)).toEqual(Object.keys(b.scores))
      for (const label of Object.keys(a.scores)) {
        expect(Math.abs(a.scores[label] - b.scores[label])).toBeLessThan(0.02)
        expect(Math.abs(a.scores[label] - c.scores[label])).toBeLessThan(0.02)
      }
      const sum = Object.values(a.scores).reduce((x, y) => x + y, 0)
      expect(sum).toBeCloseTo(1, 6)
    }
  })
})
