/**
 * The engine's own decode step (decoder.ts) on the tiny q8 model, against the plain TypeScript
 * forward pass on the same dequantized weights (float activations) and against the graph's
 * decode step; its batches, its caches (immutable to their users, grown in place, forked,
 * copied in and out of the graph's layout, given back) and bad input.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveDims } from '../../../scripts/lib/model-presets.ts'
import { synthesizeWeights } from '../../../scripts/lib/synth-weights.ts'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { Q8Decoder, ResidentCache } from '../../../src/engine/wasm/decoder.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import { instantiateKernels, type KernelExports } from '../../../src/engine/wasm/kernel.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import type { LoadedPackage } from '../../../src/engine/package/model-package.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import type { Tensor } from '../../../src/engine/graph/ort.ts'
import type { DqmmMatrixData } from '../../../src/format/index.ts'
import { decoderWeightsByName } from '../../helpers/decoder-by-name.ts'
import { ensureModel } from '../../helpers/models.ts'
import { Qwen2Reference } from '../../reference/qwen2-reference.ts'
import { argmax, maxAbs, maxAbsDiff } from '../../helpers/numeric.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]

/** Every KV tensor of `a` equals `b`'s first a.length positions exactly. */
function samePrefix(a: KvCache, b: KvCache) {
  for (const name of Object.keys(a.tensors)) {
    const [, heads, n, d] = a.tensors[name].dims
    const x = a.tensors[name].data as Float32Array
    const y = b.tensors[name].data as Float32Array
    const m = b.length
    for (let h = 0; h < heads; h++) {
      const got = y.subarray(h * m * d, h * m * d + n * d)
      expect(maxAbsDiff(x.subarray(h * n * d, (h + 1) * n * d), got), name).toBe(0)
    }
  }
}

/** A decoder cache as a plain cache of its positions now. */
function readNowCache(cache: KvCache): KvCache {
  return { length: cache.length, tensors: readNow(cache) }
}

/** A decoder cache's KV copied out now (not the copy its `tensors` keeps from its first read). */
function readNow(cache: KvCache): Record<string, Tensor> {
  const { decoder, sequence, length } = cache as ResidentCache
  return decoder.exportKv(sequence, length)
}

/** The KV tensors of `a` and `b` are equal exactly. */
function sameKv(a: Record<string, Tensor>, b: Record<string, Tensor>) {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort())
  for (const name of Object.keys(a)) {
    expect(a[name].dims, name).toEqual(b[name].dims)
    expect(maxAbsDiff(a[name].data as Float32Array, b[name].data as Float32Array), name).toBe(0)
  }
}

describe('the decoder (tiny, q8)', () => {
  let work: string
  let pkg: LoadedPackage
  let graph: QwenModel
  let fast: QwenModel
  let decoder: Q8Decoder

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-decoder-'))
    await preparePackage({ folder: hf, id: 'tiny', out: work, quiet: true, verify: false })
    pkg = await loadPackage(fsSource(work), 'tiny')
    graph = await QwenModel.load(pkg, { decoder: false })
    fast = await QwenModel.load(pkg)
    decoder = fast.decoder!
  })

  afterAll(async () => {
    await graph?.release()
    await fast?.release()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('is loaded from the package: its weights are the graph initializers', () => {
    expect(graph.decoder).toBeUndefined()
    expect(decoder).toBeInstanceOf(Q8Decoder)
    const byName = decoderWeightsByName(pkg)
    const entry = pkg.decoder!
    expect(entry.layers.length).toBe(byName.layers.length)
    entry.layers.forEach((l, i) => {
      const want = byName.layers[i]
      for (const name of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) {
        const [m, w] = [l[name], want[name]] as DqmmMatrixData[]
        expect(Buffer.compare(m.weight, w.weight), `${i} ${name}`).toBe(0)
        expect([...m.scale]).toEqual([...w.scale])
        expect([...m.zeroPoint]).toEqual([...w.zeroPoint])
        expect(m.bias && [...m.bias]).toEqual(w.bias && [...w.bias])
      }
      expect([...l.inputNorm]).toEqual([...want.inputNorm])
      expect([...l.postNorm]).toEqual([...want.postNorm])
    })
    expect([...entry.finalNorm]).toEqual([...byName.finalNorm])
  })

  it('matches the float forward pass on the same weights far more closely than the graph', async () => {
    const dims = resolveDims('tiny')
    const ref = new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'q8'))
    const refCache = ref.emptyCache()
    // the prompt one token at a time through the decoder, and the graph's prefill of it
    let cache: KvCache = decoder.step([PROMPT[0]], [fast.emptyCache()])[0].cache
    ref.forward([PROMPT[0]], refCache, 1)
    let ours: Float32Array = new Float32Array(0)
    for (const id of PROMPT.slice(1, -1)) {
      ;({ cache } = decoder.step([id], [cache])[0])
      ref.forward([id], refCache, 1)
    }
    const graphPrefix = await graph.forward(PROMPT.slice(0, -1), graph.emptyCache(), 1)
    let graphCache = graphPrefix.cache
    let worstOurs = 0
    let worstGraph = 0
    let id = PROMPT[PROMPT.length - 1]
    for (let step = 0; step < 6; step++) {
      const r = decoder.step([id], [cache])[0]
      ours = r.logits
      cache = r.cache
      const want = ref.forward([id], refCache, 1)[0]
      const g = await graph.forward([id], graphCache, 1)
      graphCache = g.cache
      const range = maxAbs(want)
      worstOurs = Math.max(worstOurs, maxAbsDiff(ours, want) / range)
      worstGraph = Math.max(worstGraph, maxAbsDiff(g.logits, want) / range)
      expect(argmax(ours)).toBe(argmax(want))
      id = argmax(want)
    }
    // a few times the error seen (about 9e-5 of the range): tight enough that a 0.15% error in
    // the scales of any one matrix fails
    expect(worstOurs).toBeLessThan(3e-4)
    expect(worstOurs * 5).toBeLessThan(worstGraph)
  })

  /** `ids` stepped one token at a time: the last cache and the last step's logits. */
  const stepEach = (ids: readonly number[]) => {
    let stepped: KvCache = fast.emptyCache()
    let last = new Float32Array(0)
    for (const id of ids) {
      const r = decoder.step([id], [stepped])[0]
      last = r.logits.slice()
      stepped = r.cache
    }
    return { stepped, last }
  }

  it('prefills a prompt in the kernels exactly as it steps it one token at a time', async () => {
    // one token at a time: each step's row is the prefill's row at that position
    const { stepped, last } = stepEach(PROMPT)
    const whole = decoder.prefill(PROMPT, fast.emptyCache(), 1)
    expect(whole.rows).toBe(1)
    expect(maxAbsDiff(whole.logits, last)).toBe(0) // rows do not depend on their neighbours
    samePrefix(whole.cache, readNowCache(stepped))
    // in chunks (prefill continues any cache, its own or a copy), and only some columns
    const a = decoder.prefill(PROMPT.slice(0, 5), fast.emptyCache(), 0)
    expect([a.rows, a.logits.length]).toEqual([0, 0])
    const b = decoder.prefill(PROMPT.slice(5), a.cache, 2, [7, 1234, 151645])
    expect(b.rows).toBe(2)
    expect([...b.logits.subarray(3)]).toEqual([7, 1234, 151645].map((c) => last[c]))
    samePrefix(b.cache, readNowCache(stepped))
    const g = await graph.forward(PROMPT.slice(0, 5), graph.emptyCache(), 0)
    const fromGraph = decoder.prefill(PROMPT.slice(5), g.cache, 1)
    expect(argmax(fromGraph.logits)).toBe(argmax(last))
    // and the float reference agrees as closely as with decode steps
    const dims = resolveDims('tiny')
    const ref = new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'q8'))
    const want = ref.forward(PROMPT, ref.emptyCache(), 1)[0]
    expect(maxAbsDiff(whole.logits, want) / maxAbs(want)).toBeLessThan(3e-4)
    for (const c of [whole.cache, a.cache, b.cache, fromGraph.cache, stepped]) decoder.release(c)
  })

  it('prefills a prompt longer than one q8 slice (32 rows a q8_gemm call) exactly as it steps it', async () => {
    const long = [...PROMPT, ...PROMPT, ...PROMPT, 1, 2, 3] // 45 rows: slices of 32 and 13
    const { stepped, last } = stepEach(long)
    const whole = decoder.prefill(long, fast.emptyCache(), 1)
    expect(maxAbsDiff(whole.logits, last)).toBe(0)
    samePrefix(whole.cache, readNowCache(stepped))
    for (const c of [whole.cache, stepped]) decoder.release(c)
  })

  it('continues the graph prefill: the same greedy tokens as the graph decoding', async () => {
    const first = await graph.forward(PROMPT, graph.emptyCache(), 1)
    let a: KvCache = first.cache
    let b: KvCache = first.cache
    let id = argmax(first.logits)
    for (let step = 0; step < 8; step++) {
      const g = await graph.forward([id], a, 1)
      const [d] = await fast.decode([id], [b])
      expect(d.cache).toBeInstanceOf(ResidentCache)
      expect(argmax(d.logits)).toBe(argmax(g.logits))
      expect(maxAbsDiff(d.logits, g.logits) / maxAbs(g.logits)).toBeLessThan(0.05)
      a = g.cache
      b = d.cache
      id = argmax(g.logits)
    }
    // the decoder's cache, copied out, is the graph's layout and continues in the graph
    const kv = b.tensors['past_key_values.1.value']
    expect(kv.dims).toEqual([1, 2, PROMPT.length + 8, 16])
    const g = await graph.forward([id], b, 1)
    expect(argmax(g.logits)).toBe(argmax((await graph.forward([id], a, 1)).logits))
  })

  it('gives each row of a batch exactly its own step alone', async () => {
    const prompts = [PROMPT.slice(0, 3), PROMPT.slice(0, 8), PROMPT.slice(0, 1)]
    const starts = await Promise.all(prompts.map((p) => graph.forward(p, graph.emptyCache(), 1)))
    let alone = starts.map((s) => s.cache)
    let together = starts.map((s) => s.cache)
    let ids = starts.map((s) => argmax(s.logits))
    for (let step = 0; step < 3; step++) {
      const single = alone.map((c, r) => decoder.step([ids[r]], [c])[0])
      const batch = decoder.step(ids, together)
      batch.forEach((row, r) => expect(maxAbsDiff(row.logits, single[r].logits)).toBe(0))
      alone = single.map((s) => s.cache)
      together = batch.map((s) => s.cache)
      ids = single.map((s) => argmax(s.logits))
    }
    // and five rows (a group of four, then one)
    const five = decoder.step([1, 2, 3, 4, 5], [...together, ...alone.slice(0, 2)])
    const each = [...together, ...alone.slice(0, 2)].map((c, r) => decoder.step([r + 1], [c])[0])
    five.forEach((row, r) => expect(maxAbsDiff(row.logits, each[r].logits)).toBe(0))
  })

  it('keeps caches immutable: stepping an older cache forks, the newer one is unchanged', async () => {
    const start = (await graph.forward(PROMPT, graph.emptyCache(), 1)).cache
    const c1 = decoder.step([100], [start])[0]
    const c2 = decoder.step([200], [c1.cache])[0]
    const before = readNow(c2.cache)
    // c1 again, with another token: a fork, which must not overwrite c2's last position; read
    // right away (catches an older cache stepped in place, which a later step could write back)
    const other = decoder.step([300], [c1.cache])[0]
    sameKv(readNow(c2.cache), before)
    expect((other.cache as ResidentCache).sequence).not.toBe((c2.cache as ResidentCache).sequence)
    const c2again = decoder.step([200], [c1.cache])[0]
    expect(maxAbsDiff(c2again.logits, c2.logits)).toBe(0)
    sameKv(readNow(c2again.cache), before)
    const after = decoder.step([5], [c2.cache])[0] // c2 is still its sequence's newest
    expect((after.cache as ResidentCache).sequence).toBe((c2.cache as ResidentCache).sequence)
    sameKv(readNow(c2.cache), before)
    // the newest cache twice in one batch with different tokens: each row is its own step alone
    // (catches both rows claiming the sequence in place: row 0 would hold row 1's position)
    const twice = decoder.step([7, 8], [after.cache, after.cache])
    const rows = twice.map((t) => readNow(t.cache))
    const alone = [7, 8].map((id) => decoder.step([id], [after.cache])[0])
    twice.forEach((t, r) => {
      expect(maxAbsDiff(t.logits, alone[r].logits), `row ${r}`).toBe(0)
      sameKv(rows[r], readNow(alone[r].cache))
    })
    expect(maxAbsDiff(twice[0].logits, twice[1].logits)).toBeGreaterThan(0)
  })

  it('grows a sequence past its capacity, keeping every position; copied out and back in it gives the same step', async () => {
    let cache: KvCache = (await graph.forward(PROMPT, graph.emptyCache(), 1)).cache
    // the early positions copied out before any growth, so that growth that loses or zeroes
    // them is compared with what was there, not with the grown storage itself
    let early: KvCache | undefined
    let capacity = 0
    for (let i = 0; i < 300; i++) {
      cache = decoder.step([1000 + i], [cache])[0].cache
      if (i === 9) {
        early = { length: cache.length, tensors: readNow(cache) }
        capacity = (cache as ResidentCache).sequence.capacity
      }
    }
    const seq = (cache as ResidentCache).sequence
    expect(capacity).toBeLessThan(PROMPT.length + 300)
    expect(seq.capacity).toBeGreaterThanOrEqual(PROMPT.length + 300)
    samePrefix(early!, cache)
    const copied: KvCache = { length: cache.length, tensors: cache.tensors }
    const inPlace = decoder.step([42], [cache])[0]
    const imported = decoder.step([42], [copied])[0]
    expect((imported.cache as ResidentCache).sequence).not.toBe(seq)
    expect(maxAbsDiff(imported.logits, inPlace.logits)).toBe(0)
    decoder.release(inPlace.cache)
    decoder.release(imported.cache)
  })

  it('gives memory back: many short streams do not grow it; a released cache cannot be read', async () => {
    const start = (await graph.forward(PROMPT, graph.emptyCache(), 1)).cache
    const run = () => {
      let c: KvCache = start
      for (let i = 0; i < 5; i++) c = decoder.step([i + 10], [c])[0].cache
      return c
    }
    fast.releaseCache(run())
    const bytes = decoder.memoryBytes
    for (let n = 0; n < 200; n++) fast.releaseCache(run())
    expect(decoder.memoryBytes).toBe(bytes)
    const gone = run()
    fast.releaseCache(gone)
    expect(() => gone.tensors).toThrow(/released/)
    expect(() => decoder.step([1], [gone])).toThrow(/released/)
    // a cache the decoder did not make is left alone
    expect(() => fast.releaseCache(start)).not.toThrow()
    expect(start.tensors['past_key_values.0.key'].dims[2]).toBe(PROMPT.length)
  })

  it('rejects a bad token id with bad_request and keeps working', async () => {
    const start = (await graph.forward(PROMPT, graph.emptyCache(), 1)).cache
    const good = decoder.step([5], [start])[0]
    expect(() => decoder.step([151936], [good.cache])).toThrow(
      expect.objectContaining({ code: 'bad_request' }),
    )
    expect(() => decoder.step([-1], [good.cache])).toThrow(/out of range/)
    const again = decoder.step([6], [good.cache])[0]
    expect(again.cache.length).toBe(PROMPT.length + 2)
  })
})

describe('the decoder kernels', () => {
  let k: KernelExports
  beforeAll(async () => {
    k = await instantiateKernels()
    k.memory.grow(4)
  })

  it('silu_mul is g / (1 + e^-g) · u within 1e-6 relative, from -100 to 100, any n', () => {
    const f = new Float32Array(k.memory.buffer)
    // 8 vectors a step, then one at a time: 4000 has no tail, 4028 a tail of 7, 12 and 4 only
    // a tail
    for (const n of [4000, 4028, 12, 4]) {
      for (let i = 0; i < n; i++) {
        f[i] = -100 + (200 * i) / n + (i % 7) * 1e-3
        f[n + i] = 0.5 + (i % 13) / 10
      }
      f[3 * n] = 12345
      k.silu_mul(0, 4 * n, n, 8 * n)
      for (let i = 0; i < n; i++) {
        const g = f[i]
        const want = (g / (1 + Math.exp(-g))) * f[n + i]
        expect(Math.abs(f[2 * n + i] - want), `n=${n} g=${g}`).toBeLessThanOrEqual(
          1e-6 * Math.abs(want) + 1e-30,
        )
      }
      expect(f[3 * n]).toBe(12345) // nothing written past out's n floats
    }
    // a value gets the same bits in the 8-vector step and in the tail: values 32..35 repeat 0..3
    const n = 36
    for (let i = 0; i < n; i++) {
      f[i] = i < 32 ? -30 + 1.9 * i : f[i - 32]
      f[n + i] = i < 32 ? 1 + i / 7 : f[n + i - 32]
    }
    k.silu_mul(0, 4 * n, n, 8 * n)
    const bits = new Uint32Array(k.memory.buffer, 8 * n, n)
    expect(f[2 * n + 1]).not.toBe(f[2 * n]) // distinct values, not a constant
    expect(Array.from(bits.subarray(32, 36))).toEqual(Array.from(bits.subarray(0, 4)))
  })

  it('softmax is e^(s − max) / Σ in float64 within 1e-6 relative (1e-12 absolute), any n', () => {
    const f = new Float32Array(k.memory.buffer)
    for (const n of [1, 2, 5, 37, 300]) {
      // scores from −60 to +40 around a few large ones; a sentinel after the padding
      for (let t = 0; t < n; t++) f[t] = Math.sin(t * 1.7) * 50 - 10 + (t % 11 === 3 ? 30 : 0)
      const scores = Array.from(f.subarray(0, n))
      const pad = Math.ceil(n / 4) * 4
      f[pad] = 12345
      k.softmax(0, n)
      const max = Math.max(...scores)
      const sum = scores.reduce((a, s) => a + Math.exp(s - max), 0)
      let total = 0
      for (let t = 0; t < n; t++) {
        const want = Math.exp(scores[t] - max) / sum
        expect(Math.abs(f[t] - want), `n=${n} t=${t}`).toBeLessThanOrEqual(1e-6 * want + 1e-12)
        total += f[t]
      }
      expect(total).toBeCloseTo(1, 5)
      expect(f[pad]).toBe(12345) // nothing written past the padding
    }
  })

  it('dots and mix are q·K and p·V in float64 within float32 rounding, for g heads at once as for one', () => {
    const dim = 32
    const n = 37
    const g = 3 // query heads sharing the KV head
    const ld = n + 5 // floats a head's scores (or weights) row takes
    const f = new Float32Array(k.memory.buffer)
    const q = 0 // g × dim
    const keys = q + g * dim // n × dim
    const p = keys + n * dim // g rows of ld
    const out = p + g * ld // g rows of ld scores, then g × dim outputs
    const one = out + g * ld // one head's own call
    for (let i = 0; i < out; i++) f[i] = Math.sin(i * 0.37) * 2
    k.dots(4 * q, g, 4 * keys, n, dim, 4 * out, ld)
    for (let h = 0; h < g; h++) {
      for (let t = 0; t < n; t++) {
        let want = 0
        for (let d = 0; d < dim; d++) want += f[q + h * dim + d] * f[keys + t * dim + d]
        expect(f[out + h * ld + t]).toBeCloseTo(want, 4)
      }
      k.dots(4 * (q + h * dim), 1, 4 * keys, n, dim, 4 * one, ld)
      expect(f.subarray(one, one + n)).toEqual(f.subarray(out + h * ld, out + h * ld + n))
    }
    expect(
      new Set(f.subarray(out, out + g * ld).map((x, i) => (i % ld < n ? x : 0))).size,
    ).toBeGreaterThan(g * n - 2) // precondition: distinct heads
    k.mix(4 * p, ld, g, 4 * keys, n, dim, 4 * out)
    for (let h = 0; h < g; h++) {
      for (let d = 0; d < dim; d++) {
        let want = 0
        for (let t = 0; t < n; t++) want += f[p + h * ld + t] * f[keys + t * dim + d]
        expect(f[out + h * dim + d]).toBeCloseTo(want, 4)
      }
      k.mix(4 * (p + h * ld), ld, 1, 4 * keys, n, dim, 4 * one)
      expect(f.subarray(one, one + dim)).toEqual(f.subarray(out + h * dim, out + (h + 1) * dim))
    }
  })
})

describe('the decoder in a serving engine (tiny, q8)', () => {
  let work: string
  let engine: QwenEngine

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-decoder-engine-'))
    await preparePackage({ folder: hf, id: 'tiny', out: work, quiet: true, verify: false })
    engine = await QwenEngine.create(await loadPackage(fsSource(work), 'tiny'), { maxActive: 4 })
  })

  afterAll(async () => {
    await engine?.model.release()
    if (work) await rm(work, { recursive: true, force: true })
  })

  /** Drains a greedy chat; aborts it after `abortAfter` text events. Returns its text. */
  async function chat(content: string, maxNewTokens: number, abortAfter?: number) {
    const controller = new AbortController()
    const run = await engine.chat([{ role: 'user', content }], {
      maxNewTokens,
      temperature: 0,
      signal: controller.signal,
    })
    let text = ''
    let events = 0
    for await (const e of run.events) {
      if (e.type === 'text') text += e.text
      if (++events === abortAfter) controller.abort()
    }
    return text
  }

  it('runs seeded streams in shared batches, each still the reply it gets alone', async () => {
    const seeded = async (content: string, seed: number) => {
      const run = await engine.chat([{ role: 'user', content }], {
        maxNewTokens: 24,
        temperature: 1,
        topK: 0,
        topP: 1,
        seed,
      })
      let text = ''
      for await (const e of run.events) if (e.type === 'text') text += e.text
      return text
    }
    const asks = ['天气', 'weather', '你好吗', 'how are you'].map((q, i) => [q, 11 + i] as const)
    const alone: string[] = []
    for (const [q, seed] of asks) alone.push(await seeded(q, seed))
    const before = engine.stats().decode!
    const together = await Promise.all(asks.map(([q, seed]) => seeded(q, seed)))
    const after = engine.stats().decode!
    expect(together).toEqual(alone)
    // they shared runs: more tokens than runs
    const steps = after.tokens - before.tokens
    const runs = after.runs - before.runs
    expect(steps / runs).toBeGreaterThan(2)
    expect(engine.model.decoder!.sequences).toBe(0)
  })

  it('gives every stream its memory back: finished, aborted, batched, with kept turns', async () => {
    const decoder = engine.model.decoder!
    expect(decoder.sequences).toBe(0)
    const first = await Promise.all([0, 1, 2, 3].map((i) => chat(`你好 ${i}`, 40)))
    expect(engine.stats().decode?.largestBatch).toBeGreaterThan(1)
    expect(decoder.sequences).toBe(0)
    // finished turns stay in the decoder's memory, held by the turn cache and nothing else,
    // each fitted to its tokens
    const atRest = () => {
      expect(decoder.sequences).toBe(0)
      expect(decoder.keptSequences).toBe(engine.turns.size)
      expect(decoder.kvBytes).toBe(engine.turns.tokens * decoder.kvPositionBytes)
      expect(engine.stats().memory).toMatchObject({
        kvSequences: 0,
        kvBytes: decoder.kvBytes,
        turnCacheTokens: engine.turns.tokens,
        turnCacheResident: engine.turns.size,
      })
    }
    expect(engine.turns.size).toBeGreaterThan(0)
    atRest()
    for (let round = 0; round < 4; round++) {
      const texts = await Promise.all([
        chat('你好 0', 40), // a kept turn starts it
        chat(`hello ${round}`, 40, 3),
        chat('你好 2', 40),
        chat(`again ${round}`, 20),
      ])
      // batched with other streams, a greedy reply is the same as before
      expect(texts[0]).toBe(first[0])
      expect(texts[2]).toBe(first[2])
      atRest()
    }
    // streams that end without a decode step: one token, or cut off at the first
    const short = await Promise.all([chat('one token', 1), chat('cut off', 40, 1), chat('x', 1)])
    expect(short.every((t) => t.length > 0)).toBe(true)
    atRest()
    expect(engine.stats()).toMatchObject({ active: 0, queued: 0, decode: { path: 'decoder' } })
    // dropping the kept turns gives their memory back
    expect(engine.turns.tokens).toBeGreaterThan(0)
    engine.turns.clear()
    expect(decoder.keptSequences).toBe(0)
    expect(decoder.kvBytes).toBe(0)
  })

  it('gives classification memory back: shared prefix, several-token labels, a cut-off text', async () => {
    const decoder = engine.model.decoder!
    expect(engine.model.paths.prefill).toBe('decoder') // the prompts run in the decoder too
    expect(decoder.sequences).toBe(0)
    const labels = ['very good indeed', 'rather bad', 'neutral']
    const texts = ['今天天气很好', 'the service was slow and the food was cold', 'ok']
    const first = await engine.classifyAll(texts, { labels })
    expect(first.map((r) => Object.keys(r.scores))).toEqual(texts.map(() => labels))
    expect(decoder.sequences).toBe(0)
    // again, now from the kept prefix: same answers, still nothing held
    expect(await engine.classifyAll(texts, { labels })).toEqual(first)
    expect(decoder.sequences).toBe(0)
    // a long text whose client leaves mid-prefill
    const controller = new AbortController()
    const long = 'a long review of the food and the service. '.repeat(60)
    const cut = engine.classify(long, { labels, signal: controller.signal })
    setTimeout(() => controller.abort(), 5)
    await expect(cut).rejects.toThrow(/cancelled/)
    expect(decoder.sequences).toBe(0)
    expect(await engine.classifyAll(texts, { labels })).toEqual(first)
    expect(decoder.sequences).toBe(0)
  })
})
