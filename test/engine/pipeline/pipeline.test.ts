/**
 * A package split into stages (format/pipeline.ts), its stages in this process
 * (pipeline/stage.ts) behind the front's model (pipeline/pipeline-model.ts): the same logits,
 * bit for bit, as the whole model in the kernels; each stage reads only its shards; KV is
 * released in every stage; a stage that restarts mid-reply costs a recompute, not the reply.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { isAppError } from '../../../src/core/errors.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import { openPackage } from '../../../src/engine/package/loader.ts'
import type { ModelSource } from '../../../src/engine/package/sources/model-source.ts'
import { passOver } from '../../../src/engine/pipeline/pass.ts'
import { PipelineModel } from '../../../src/engine/pipeline/pipeline-model.ts'
import { ModelStage, type StageApi } from '../../../src/engine/pipeline/stage.ts'
import { StageSlot } from '../../../src/adapters/workers/stage-rpc.ts'
import { streamKernelModel } from '../../../src/engine/wasm/kernel-loader.ts'
import type { KernelModel } from '../../../src/engine/wasm/kernel-model.ts'
import {
  headFileName,
  headSliceSegments,
  kvBytesPerPosition,
  qwen2Shape,
  overlapsSegments,
  parseManifest,
  type Manifest,
} from '../../../src/format/index.ts'
import { ensureModel } from '../../helpers/models.ts'
import { argmax } from '../../helpers/numeric.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]
const MiB = 1024 * 1024

/** Reads through `inner`, recording every key asked for. */
function recording(inner: ModelSource): ModelSource & { keys: string[] } {
  const keys: string[] = []
  return {
    keys,
    describe: () => inner.describe(),
    get: (key) => {
      keys.push(key)
      return inner.get(key)
    },
  }
}

/** A stage whose isolate can be swapped for a freshly loaded one (a restart). */
class Swappable implements StageApi {
  constructor(public target: StageApi) {}
  state = () => this.target.state()
  forward: StageApi['forward'] = (...a) => this.target.forward(...a)
  apply: StageApi['apply'] = (...a) => this.target.apply(...a)
  embed: StageApi['embed'] = (...a) => this.target.embed(...a)
  logits: StageApi['logits'] = (...a) => this.target.logits(...a)
}

function same(a: Float32Array, b: Float32Array): boolean {
  return (
    a.length === b.length &&
    Buffer.compare(
      Buffer.from(a.buffer, a.byteOffset, a.byteLength),
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    ) === 0
  )
}

describe.each(['q8', 'q4'] as const)(
  'a package split into stages (tiny %s, 4 layers)',
  (format) => {
    let work: string
    let hf: string
    let manifest: Manifest
    let whole: KernelModel
    let stages: ModelStage[]
    const open = (source: ModelSource = fsSource(work)) =>
      openPackage(source, 'tiny', { smallFiles: false })
    const loadStages = () =>
      Promise.all(manifest.pipeline!.stages.map(async (_, i) => ModelStage.load(await open(), i)))

    beforeAll(async () => {
      hf = await ensureModel('tiny', format, { overrides: { numLayers: 4 } })
      work = await mkdtemp(join(tmpdir(), 'qwen-edge-pipeline-'))
      // a budget that cuts 4 layers (with a long KV cache) in two stages and the head in two
      ;({ manifest } = await preparePackage({
        folder: hf,
        id: 'tiny',
        out: work,
        shardBytes: 256 * 1024,
        quiet: true,
        verify: false,
        stageBudgetBytes: 22 * MiB,
        stageContext: 8192,
      }))
      whole = await streamKernelModel(await openPackage(fsSource(work), 'tiny'))
      stages = await loadStages()
    })

    afterAll(async () => {
      if (work) await rm(work, { recursive: true, force: true })
    })

    it('has a plan of layer stages and a vocabulary-split head, each within the budget', () => {
      const plan = manifest.pipeline!
      const layers = plan.stages.filter((s) => s.layers)
      const rows = plan.stages.filter((s) => s.rows)
      console.log(
        `tiny ${format}: ` +
          plan.stages.map((s) => (s.layers ? `layers ${s.layers}` : `rows ${s.rows}`)).join('; '),
      )
      expect(layers.length).toBeGreaterThanOrEqual(2)
      expect(layers.at(-1)!.layers![1]).toBe(4)
      expect(rows.length).toBeGreaterThanOrEqual(2)
      expect(rows.at(-1)!.rows![1]).toBe(151936)
      for (const s of stages) {
        const state = s.residentBytes()
        expect(state).toBeLessThanOrEqual(plan.budgetBytes)
        // the plan's estimate is an upper bound of what a fresh stage holds
        expect(state).toBeLessThanOrEqual(plan.stages[s.index].residentBytes)
      }
    })

    it('validates a plan: ranges that tile the layers and the vocabulary, a package in the kernels', () => {
      const json = () => JSON.parse(JSON.stringify(manifest))
      const reason = (m: Record<string, any>) => {
        try {
          parseManifest(m)
          return 'accepted'
        } catch (err) {
          return isAppError(err) ? err.message : String(err)
        }
      }
      expect(reason(json())).toBe('accepted') // the precondition
      const gap = json()
      gap.pipeline.stages[1].layers[0] += 1
      expect(reason(gap)).toMatch(/pipeline\.stages\[1\]\.layers must start at 2/)
      const short = json()
      short.pipeline.stages.at(-1).rows[1] -= 1
      expect(reason(short)).toMatch(/row stages end at 151935, not 151936/)
      const both = json()
      both.pipeline.stages[0].rows = [0, 10]
      expect(reason(both)).toMatch(/holds either layers or rows/)
      const noDecoder = json()
      delete noDecoder.decoder
      expect(reason(noDecoder)).toMatch(/pipeline needs a decoder map/)
    })

    it('reads only the shards of its part in each stage', async () => {
      const reads = await Promise.all(
        manifest.pipeline!.stages.map(async (_, i) => {
          const source = recording(fsSource(work))
          await ModelStage.load(await open(source), i)
          return source.keys
        }),
      )
      const head = (k: string) => k.includes(`/${headFileName(manifest.head!.format)}.`)
      const data = (k: string) => k.includes('.onnx_data.')
      // the precondition: the files are cut in many shards
      expect(manifest.head!.file.shards.length).toBeGreaterThan(8)
      for (const [i, keys] of reads.entries()) {
        const st = manifest.pipeline!.stages[i]
        expect(keys.some((k) => k.endsWith('tokenizer.json'))).toBe(false)
        if (st.layers) {
          expect(keys.some(head)).toBe(false)
          expect(keys.some(data)).toBe(true)
        } else {
          expect(keys.some(data)).toBe(false)
          const n = keys.filter(head).length
          expect(n).toBeGreaterThan(0)
          expect(n).toBeLessThan(manifest.head!.file.shards.length)
        }
      }
    })

    it('gives the whole model’s logits bit for bit: prompt, columns, batched decode, a fork', async () => {
      const model = new PipelineModel(manifest, stages)
      const a = await whole.forward(PROMPT, whole.emptyCache(), 2)
      const b = await model.forward(PROMPT, model.emptyCache(), 2)
      expect(b.rows).toBe(2)
      expect(b.logits.length).toBe(2 * 151936)
      expect(same(a.logits, b.logits)).toBe(true)

      const labels = [100, 151935, 99999, 7]
      const ac = await whole.forward([9707, 11], a.cache, 1, labels)
      const bc = await model.forward([9707, 11], b.cache, 1, labels)
      expect(same(ac.logits, bc.logits)).toBe(true)

      // decode two sequences in one batch: the prompt's own (forked: it was stepped above) and
      // the columns run's
      const t1 = argmax(a.logits.subarray(151936))
      const wa = await whole.decode([t1, 42], [a.cache, ac.cache])
      const pa = await model.decode([t1, 42], [b.cache, bc.cache])
      for (let r = 0; r < 2; r++) expect(same(wa[r].logits, pa[r].logits)).toBe(true)
      const wb = await whole.decode([5, 6], [wa[0].cache, wa[1].cache])
      const pb = await model.decode([5, 6], [pa[0].cache, pa[1].cache])
      for (let r = 0; r < 2; r++) expect(same(wb[r].logits, pb[r].logits)).toBe(true)
      // and a mutation check: another token gives other logits
      const other = await model.decode([7], [pa[0].cache])
      expect(same(other[0].logits, pb[0].logits)).toBe(false)
    })

    it('with KV_FORMAT=q8 in every stage, gives the whole q8-KV model’s logits bit for bit', async () => {
      const wholeQ8 = await streamKernelModel(
        await openPackage(fsSource(work), 'tiny'),
        undefined,
        {
          kvFormat: 'q8',
        },
      )
      // the layer stages as a stage's Worker loads them: its KV_FORMAT variable, read at load
      const q8Stages = await Promise.all(
        manifest.pipeline!.stages.map(async (part, i) => {
          if (!part.layers) return stages[i]
          const slot = new StageSlot(
            () => fsSource(work),
            undefined,
            () => 'q8',
          )
          const reply = await slot.state({ model: 'tiny', index: i })
          expect(reply).toMatchObject({ ok: { kvFormat: 'q8', layers: part.layers } })
          return ModelStage.load(await open(), i, { kvFormat: 'q8' })
        }),
      )
      const model = new PipelineModel(manifest, q8Stages)
      expect(model.stageReports().filter((r) => r.layers).length).toBeGreaterThan(0)
      await model.refresh()
      for (const r of model.stageReports().filter((r) => r.layers)) expect(r.kvFormat).toBe('q8')
      const a = await wholeQ8.forward(PROMPT, wholeQ8.emptyCache(), 1)
      const b = await model.forward(PROMPT, model.emptyCache(), 1)
      expect(same(a.logits, b.logits)).toBe(true)
      const f32 = await whole.forward(PROMPT, whole.emptyCache(), 1)
      expect(same(a.logits, f32.logits)).toBe(false) // precondition: q8 KV is not f32 KV
      const t = argmax(a.logits)
      const [wa] = await wholeQ8.decode([t], [a.cache])
      const [pa] = await model.decode([t], [b.cache])
      expect(same(wa.logits, pa.logits)).toBe(true)
      // a bad value fails that stage's load with a clear message (and is not kept)
      const bad = new StageSlot(
        () => fsSource(work),
        undefined,
        () => 'q4',
      )
      const refused = await bad.state({ model: 'tiny', index: 0 })
      expect(JSON.stringify(refused)).toMatch(/KV_FORMAT must be f32 or q8/)
      await wholeQ8.release()
    })

    it('plans for q8 KV (--stage-kv-format q8): fewer layer stages, run in q8 unless KV_FORMAT says f32', async () => {
      const out = await mkdtemp(join(tmpdir(), 'qwen-edge-pipeline-q8kv-'))
      try {
        const { manifest: q8 } = await preparePackage({
          folder: hf,
          id: 'tiny',
          out,
          shardBytes: 256 * 1024,
          quiet: true,
          verify: false,
          stageBudgetBytes: 22 * MiB,
          stageContext: 8192,
          stageKvFormat: 'q8',
        })
        const layerStages = (m: Manifest) => m.pipeline!.stages.filter((st) => st.layers)
        expect(manifest.pipeline!.kvFormat).toBeUndefined() // the f32 plan, as before
        expect(q8.pipeline!.kvFormat).toBe('q8')
        // the same budget and context hold more layers a stage
        expect(layerStages(q8).length).toBeLessThan(layerStages(manifest).length)
        const shape = qwen2Shape(q8.config)
        expect(kvBytesPerPosition(shape, 'q8')).toBeLessThan(kvBytesPerPosition(shape) / 2)
        const i = q8.pipeline!.stages.findIndex((st) => st.layers)
        const part = q8.pipeline!.stages[i]
        const openQ8 = () => openPackage(fsSource(out), 'tiny', { smallFiles: false })
        const stage = await ModelStage.load(await openQ8(), i) // no KV_FORMAT
        expect(await stage.state()).toMatchObject({ kvFormat: 'q8', layers: part.layers })
        expect(await stage.state().then((st) => st.residentBytes)).toBeLessThanOrEqual(
          part.residentBytes,
        )
        const f32 = await ModelStage.load(await openQ8(), i, { kvFormat: 'f32' })
        expect(await f32.state()).toMatchObject({ kvFormat: 'f32' })
        // a plan naming another format is refused
        const bad = JSON.parse(JSON.stringify(q8))
        bad.pipeline.kvFormat = 'q4'
        expect(() => parseManifest(bad)).toThrow(/pipeline\.kvFormat "q4" is not one of f32, q8/)
      } finally {
        await rm(out, { recursive: true, force: true })
      }
    })

    it('hands every forward pass to the pass it is given (a stage host), whole, one call each', async () => {
      // the front's own links, counted: with a pass given, forward runs must not use them
      const direct = { forward: 0, embed: 0, logits: 0 }
      const links: StageApi[] = stages.map((st) => ({
        state: () => st.state(),
        apply: (ops) => st.apply(ops),
        forward: (...a) => (direct.forward++, st.forward(...a)),
        embed: (...a) => (direct.embed++, st.embed(...a)),
        logits: (...a) => (direct.logits++, st.logits(...a)),
      }))
      const runPass = passOver(manifest.pipeline!, manifest.config.hidden_size, 151936, stages)
      let passes = 0
      const model = new PipelineModel(manifest, links, (req) => (passes++, runPass(req)))
      const w = await whole.forward(PROMPT, whole.emptyCache(), 1)
      const p = await model.forward(PROMPT, model.emptyCache(), 1)
      expect(passes).toBe(1) // the precondition: the prompt is one chunk
      expect(same(w.logits, p.logits)).toBe(true)
      const t = argmax(w.logits)
      const wd = await whole.decode([t], [w.cache])
      const pd = await model.decode([t], [p.cache])
      expect(same(wd[0].logits, pd[0].logits)).toBe(true)
      expect(passes).toBe(2)
      expect(direct).toEqual({ forward: 0, embed: 0, logits: 0 })
      model.releaseCache(pd[0].cache)
    })

    it('keeps a detached cache whole through what is made from it and released', async () => {
      const model = new PipelineModel(manifest, stages)
      const r = await model.forward(PROMPT, model.emptyCache(), 1)
      const kept = (r.cache as { detach(): typeof r.cache }).detach()
      model.releaseCache(r.cache)
      const w = await whole.forward(PROMPT, whole.emptyCache(), 1)
      const want = await whole.forward([9707, 11], w.cache, 1)
      for (let round = 0; round < 3; round++) {
        // what classification does with its prefix: step from it, release what came of it
        const got = await model.forward([9707, 11], kept, 1)
        expect(same(got.logits, want.logits)).toBe(true)
        model.releaseCache(got.cache)
      }
    })

    it('answers as the whole model through the engine: the same label scores twice, greedy text', async () => {
      const staged = await QwenEngine.create(await openPackage(fsSource(work), 'tiny'))
      const one = await QwenEngine.create(await openPackage(fsSource(work), 'tiny'), {
        session: { pipeline: 'whole' },
      })
      expect(staged.model).toBeInstanceOf(PipelineModel)
      expect(one.model).not.toBeInstanceOf(PipelineModel)
      for (let i = 0; i < 2; i++)
        expect(await staged.classify('The food was cold.')).toEqual(
          await one.classify('The food was cold.'),
        )
      const text = async (e: QwenEngine) => {
        const run = await e.chat([{ role: 'user', content: 'Hello!' }], {
          maxNewTokens: 8,
          temperature: 0,
        })
        let out = ''
        for await (const ev of run.events) if (ev.type === 'text') out += ev.text
        return out
      }
      const a = await text(one)
      expect(a.length).toBeGreaterThan(0)
      expect(await text(staged)).toBe(a)
      expect(staged.stats().stages?.length).toBe(manifest.pipeline!.stages.length)
    })

    it('refuses KV past a stage budget with model_unavailable, and still serves what fits', async () => {
      const H = manifest.config.hidden_size
      const handle = await open()
      const at = 64 * 1024
      // the budget of a stage that fits its weights and little more
      handle.manifest.pipeline!.budgetBytes = stages[0].residentBytes() + at
      const tight = await ModelStage.load(handle, 0)
      const rows = (n: number) => Float32Array.from({ length: n * H }, (_, i) => Math.sin(i))
      const long = 1024 // 1024 positions x 2 layers x 256 bytes: more than 64 KiB
      const err = await tight
        .forward(rows(long), [{ seq: 'f/1', position: 0, count: long }], [])
        .then(
          () => 'ran',
          (e: unknown) => (isAppError(e) ? e.code : String(e)),
        )
      expect(err).toBe('model_unavailable')
      expect(tight.residentBytes()).toBeLessThanOrEqual(handle.manifest.pipeline!.budgetBytes)
      // not poisoned: a short prompt runs, as on a stage without the cap
      const short = [{ seq: 'f/2', position: 0, count: 8 }]
      const got = await tight.forward(rows(8), short, [])
      const want = await stages[0].forward(rows(8), short, [])
      expect(got.hidden.length).toBe(8 * H)
      expect(same(got.hidden, want.hidden)).toBe(true)
      await stages[0].apply([{ release: 'f/2' }])
    })

    it('releases every sequence in every layer stage', async () => {
      const model = new PipelineModel(manifest, stages)
      const live = async () =>
        (await Promise.all(stages.map((s) => s.state()))).reduce((n, s) => n + s.sequences, 0)
      const before = await live()
      const r = await model.forward(PROMPT, model.emptyCache(), 1)
      const kept = (r.cache as { detach(): unknown }).detach() as typeof r.cache
      const d = await model.decode([1, 2], [r.cache, kept])
      // in each of the two layer stages: the prompt's sequence (stepped in place), the kept copy
      // and the copy stepped from it (a kept cache is never stepped in place)
      expect(await live()).toBe(before + 3 * 2)
      model.releaseCache(d[0].cache)
      model.releaseCache(d[1].cache)
      model.releaseCache(r.cache)
      await new Promise((resolve) => setTimeout(resolve, 0))
      await Promise.all(stages.map((s) => s.state()))
      // the kept copy stays until it is dropped (then the front's finalizer releases it)
      expect(await live()).toBe(before + 2)
      model.releaseCache(kept)
      await new Promise((resolve) => setTimeout(resolve, 0))
      await Promise.all(stages.map((s) => s.state()))
      expect(await live()).toBe(before)
    })

    it('frees the sequences of a front gone quiet; the front recomputes them if it comes back', async () => {
      let now = 0
      const timed = await Promise.all(
        manifest.pipeline!.stages.map(async (_, i) =>
          ModelStage.load(await open(), i, { idleMs: 1000, clock: () => now }),
        ),
      )
      const layerStages = timed.filter((s) => s.decoder)
      const held = async () =>
        (await Promise.all(layerStages.map((s) => s.state()))).map((s) => s.sequences)
      const quiet = new PipelineModel(manifest, timed)
      const other = new PipelineModel(manifest, timed)
      const a = await whole.forward(PROMPT, whole.emptyCache(), 1)
      const q = await quiet.forward(PROMPT, quiet.emptyCache(), 1)
      await other.forward([9707, 11], other.emptyCache(), 1)
      expect(await held()).toEqual(layerStages.map(() => 2)) // the precondition: one each
      now += 999
      await other.forward([9707, 11], other.emptyCache(), 1)
      expect(await held()).toEqual(layerStages.map(() => 3)) // not yet idle long enough
      now += 2
      await other.forward([9707, 11], other.emptyCache(), 1)
      // the quiet front's sequence is gone; the other's three stay (none released by it)
      expect(await held()).toEqual(layerStages.map(() => 3))
      // the quiet front comes back: its cache is recomputed, the answer is the whole model's
      const wa = await whole.decode([33], [a.cache])
      const qa = await quiet.decode([33], [q.cache])
      expect(quiet.restarts).toBe(1)
      expect(same(wa[0].logits, qa[0].logits)).toBe(true)
    })

    it('does not wait for ever on an answer that never comes: the call is done again', async () => {
      // the second layer stage's next forward call is lost on the way (its answer never comes)
      const swappable = stages.map((s) => new Swappable(s))
      const model = new PipelineModel(manifest, swappable, undefined, { callTimeoutMs: 300 })
      const a = await whole.forward(PROMPT, whole.emptyCache(), 1)
      const b = await model.forward(PROMPT, model.emptyCache(), 1)
      let lost = 0
      const layer = manifest.pipeline!.stages.findIndex((st, i) => st.layers && i > 0)
      swappable[layer].forward = (...args) => {
        if (lost++ === 0) return new Promise(() => {})
        return stages[layer].forward(...args)
      }
      const wa = await whole.decode([33], [a.cache])
      const pa = await Promise.race([
        model.decode([33], [b.cache]),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('still waiting')), 10_000),
        ),
      ])
      // the precondition: the first call was lost; then the prompt recomputed, the step again
      expect(lost).toBe(3)
      expect(model.restarts).toBe(1)
      expect(same(wa[0].logits, pa[0].logits)).toBe(true)
    })

    it('recomputes the sequences a restarted stage lost, and goes on bit for bit', async () => {
      const swappable = stages.map((s) => new Swappable(s))
      const model = new PipelineModel(manifest, swappable)
      const a = await whole.forward(PROMPT, whole.emptyCache(), 1)
      const b = await model.forward(PROMPT, model.emptyCache(), 1)
      expect(same(a.logits, b.logits)).toBe(true)
      // stage 1 (the second layer stage) restarts: a new isolate, its KV gone
      const fresh = await ModelStage.load(await open(), 1)
      expect(fresh.epoch).not.toBe(stages[1].epoch)
      swappable[1].target = fresh
      const wa = await whole.decode([33], [a.cache])
      const pa = await model.decode([33], [b.cache])
      expect(model.restarts).toBe(1)
      expect(same(wa[0].logits, pa[0].logits)).toBe(true)
      const wb = await whole.decode([34], [wa[0].cache])
      const pb = await model.decode([34], [pa[0].cache])
      expect(same(wb[0].logits, pb[0].logits)).toBe(true)
      expect(model.restarts).toBe(1)
    })

    it('fails to load the stage whose shard is broken, naming it; the other stages load', async () => {
      const copy = await mkdtemp(join(tmpdir(), 'qwen-edge-pipeline-broken-'))
      try {
        await preparePackage({
          folder: await ensureModel('tiny', format, { overrides: { numLayers: 4 } }),
          id: 'tiny',
          out: copy,
          shardBytes: 256 * 1024,
          quiet: true,
          verify: false,
          stageBudgetBytes: 22 * MiB,
          stageContext: 8192,
        })
        const last = manifest.head!.file.shards.at(-1)!.path
        const file = join(copy, 'tiny', last)
        const bytes = await readFile(file)
        bytes[0] ^= 0xff
        await writeFile(file, bytes)
        const results = await Promise.all(
          manifest.pipeline!.stages.map(async (_, i) =>
            ModelStage.load(
              await openPackage(fsSource(copy), 'tiny', { smallFiles: false }),
              i,
            ).then(
              () => 'ok',
              (err: unknown) => (isAppError(err) ? `${err.code}: ${err.message}` : String(err)),
            ),
          ),
        )
        // the stages whose bytes lie in that shard fail, the others load
        const offset = manifest.head!.file.bytes - manifest.head!.file.shards.at(-1)!.bytes
        const hit = manifest.pipeline!.stages.map(
          (s) =>
            !!s.rows &&
            overlapsSegments(headSliceSegments(manifest.head!, s.rows), offset, bytes.length),
        )
        expect(hit.some((h) => h)).toBe(true)
        expect(hit.some((h) => !h)).toBe(true)
        hit.forEach((h, i) =>
          h
            ? expect(results[i]).toMatch(new RegExp(`model_invalid: .*${last.replace('.', '\\.')}`))
            : expect(results[i]).toBe('ok'),
        )
      } finally {
        await rm(copy, { recursive: true, force: true })
      }
    })
  },
)
