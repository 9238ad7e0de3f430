/**
 * The generated fp32 graphs, run by bare onnxruntime-web (wasm, one thread), against the plain
 * TypeScript forward pass with the same weights: prefill, cached decode steps, the
 * num_logits_to_keep slice, external data, and a left-padded batch.
 */
import { beforeAll, describe, expect, it } from 'vitest'
import { resolveDims, type PresetName } from '../../scripts/lib/model-presets.ts'
import { synthesizeWeights } from '../../scripts/lib/synth-weights.ts'
import { ensureModel } from '../helpers/models.ts'
import {
  emptyPast,
  loadModel,
  logitsRow,
  runStep,
  type LoadedModel,
} from '../helpers/ort-session.ts'
import { maxAbsDiff } from '../helpers/numeric.ts'
import { Qwen2Reference } from '../reference/qwen2-reference.ts'

/** `<|im_start|>user\nHello, how are you` with the Qwen tokenizer. */
const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498]
/** `?<|im_end|>\n<|im_start|>`: fed one token per decode step. */
const CONTINUATION = [30, 151645, 198, 151644]
const PAD = 151643
/** fp32 all the way; ORT and the reference differ only in summation order (seen: ~4e-6). */
const FP32_TOLERANCE = 1e-4

describe.each<PresetName>(['tiny', 'tiny-mha'])('%s fp32 graph vs TS reference', (preset) => {
  const dims = resolveDims(preset)
  const V = dims.vocabSize
  let model: LoadedModel
  let reference: Qwen2Reference

  beforeAll(async () => {
    model = await loadModel(await ensureModel(preset, 'fp32'))
    reference = new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'fp32'))
  })

  it('matches for every prompt position and for cached decode steps', async () => {
    const cache = reference.emptyCache()
    const want = reference.forward(PROMPT, cache)
    let step = await runStep(model, { ids: [PROMPT], past: emptyPast(model) })
    expect(step.logitsDims).toEqual([1, PROMPT.length, V])
    want.forEach((row, i) =>
      expect(maxAbsDiff(logitsRow(step.logits, V, i), row)).toBeLessThan(FP32_TOLERANCE),
    )
    for (const id of CONTINUATION) {
      step = await runStep(model, { ids: [[id]], past: step.past, keep: 1 })
      const [row] = reference.forward([id], cache)
      expect(step.logitsDims).toEqual([1, 1, V])
      expect(maxAbsDiff(step.logits, row)).toBeLessThan(FP32_TOLERANCE)
    }
    expect(step.past['past_key_values.0.key'].dims).toEqual([
      1,
      dims.numKvHeads,
      PROMPT.length + CONTINUATION.length,
      dims.headDim,
    ])
  })

  it('gives each row of a left-padded batch the logits it has alone', async () => {
    // row 0: the prompt; row 1: its last 5 tokens after 3 pads (transformers' position ids)
    const short = PROMPT.slice(3)
    const pads = PROMPT.length - short.length
    const mask = [PROMPT.map(() => 1), [...Array(pads).fill(0), ...short.map(() => 1)]]
    const positions = [PROMPT.map((_, i) => i), [...Array(pads).fill(1), ...short.map((_, i) => i)]]
    const prefill = await runStep(model, {
      ids: [PROMPT, [...Array(pads).fill(PAD), ...short]],
      attentionMask: mask,
      positionIds: positions,
      past: emptyPast(model, 2),
    })
    expect(prefill.logits.every(Number.isFinite)).toBe(true) // fully masked pad rows: no NaN
    const cacheLong = reference.emptyCache()
    const cacheShort = reference.emptyCache()
    const wantLong = reference.forward(PROMPT, cacheLong)
    const wantShort = reference.forward(short, cacheShort)
    const rows = PROMPT.length
    wantLong.forEach((row, i) =>
      expect(maxAbsDiff(logitsRow(prefill.logits, V, i), row)).toBeLessThan(FP32_TOLERANCE),
    )
    wantShort.forEach((row, i) =>
      expect(maxAbsDiff(logitsRow(prefill.logits, V, rows + pads + i), row)).toBeLessThan(
        FP32_TOLERANCE,
      ),
    )
    const next = CONTINUATION[0]
    const decode = await runStep(model, {
      ids: [[next], [next]],
      attentionMask: mask.map((m) => [...m, 1]),
      positionIds: [[PROMPT.length], [short.length]],
      past: prefill.past,
      keep: 1,
    })
    expect(
      maxAbsDiff(logitsRow(decode.logits, V, 0), reference.forward([next], cacheLong)[0]),
    ).toBeLessThan(FP32_TOLERANCE)
    expect(
      maxAbsDiff(logitsRow(decode.logits, V, 1), reference.forward([next], cacheShort)[0]),
    ).toBeLessThan(FP32_TOLERANCE)
  })
})

describe('num_logits_to_keep', () => {
  it('computes the lm_head for the last n positions only, same values as the full variant', async () => {
    const withKeep = await loadModel(await ensureModel('tiny', 'fp32'))
    const full = await loadModel(await ensureModel('tiny', 'fp32', { logitsToKeep: false }))
    const V = withKeep.config.vocab_size
    expect(withKeep.session.inputNames).toContain('num_logits_to_keep')
    expect(full.session.inputNames).not.toContain('num_logits_to_keep')

    const all = await runStep(full, { ids: [PROMPT], past: emptyPast(full) })
    expect(all.logitsDims).toEqual([1, PROMPT.length, V])
    for (const keep of [1, 3]) {
      const kept = await runStep(withKeep, { ids: [PROMPT], past: emptyPast(withKeep), keep })
      expect(kept.logitsDims).toEqual([1, keep, V])
      const tail = all.logits.subarray((PROMPT.length - keep) * V)
      expect(maxAbsDiff(kept.logits, tail)).toBeLessThan(1e-5)
    }
    // 0 keeps every position, as transformers' logits_to_keep=0 does
    const zero = await runStep(withKeep, { ids: [PROMPT], past: emptyPast(withKeep), keep: 0 })
    expect(zero.logitsDims).toEqual([1, PROMPT.length, V])
  })
})

describe('external data', () => {
  it('loads through the externalData option and computes what the embedded model does', async () => {
    const external = await loadModel(await ensureModel('tiny', 'fp32', { externalData: true }))
    const embedded = await loadModel(await ensureModel('tiny', 'fp32'))
    expect([external.external, embedded.external]).toEqual([true, false])
    const a = await runStep(external, { ids: [PROMPT], past: emptyPast(external) })
    const b = await runStep(embedded, { ids: [PROMPT], past: emptyPast(embedded) })
    expect(maxAbsDiff(a.logits, b.logits)).toBe(0)
  })
})
