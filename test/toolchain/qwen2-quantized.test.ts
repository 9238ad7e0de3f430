/**
 * The q8 (DynamicQuantizeMatMul) and q4 (MatMulNBits) graphs on onnxruntime-web against the TS
 * reference run with the same dequantized weights.
 *
 * Tolerances:
 * - q4: MatMulNBits without accuracy_level dequantizes the 4-bit weights to fp32 and multiplies
 *   in fp32, and the embedding is dequantized exactly in-graph, so q4 is held to the fp32 bound.
 * - q8 vs a reference that also quantizes activations (per tensor, uint8, as
 *   DynamicQuantizeMatMul does): integer products are exact, so only float rounding around
 *   them differs (seen: ~1e-6). A single activation landing on the other side of a rounding
 *   boundary would shift one product by scale_a * |w| (~1e-3 here), hence 1e-3, not 1e-5.
 * - q8 vs the float reference: quantizing each matmul input to 8 bits adds noise of
 *   step / sqrt(12) with step = range / 255, about 1% of the input's RMS per matmul; over
 *   7 matmuls per layer and the lm_head the logits' error stays a few % of their RMS (seen:
 *   2-3%), so the bound is 8%. Greedy choice can flip between near-tied logits: the graph's
 *   argmax must be in the reference's top 5 every step and equal its top 1 in most steps.
 */
import { beforeAll, describe, expect, it } from 'vitest'
import { resolveDims, type PresetName } from '../../scripts/lib/model-presets.ts'
import { synthesizeQ8Codes, synthesizeWeights } from '../../scripts/lib/synth-weights.ts'
import { ensureModel } from '../helpers/models.ts'
import {
  emptyPast,
  loadModel,
  logitsRow,
  runStep,
  type LoadedModel,
} from '../helpers/ort-session.ts'
import { argmax, maxAbsDiff } from '../helpers/numeric.ts'
import { Qwen2Reference } from '../reference/qwen2-reference.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498]
const CONTINUATION = [30, 151645, 198, 151644, 77091, 198]

/** Logits of the last prompt position, then of each forced continuation token. */
async function graphLogits(model: LoadedModel): Promise<Float32Array[]> {
  let step = await runStep(model, { ids: [PROMPT], past: emptyPast(model), keep: 1 })
  const rows = [step.logits.slice()]
  for (const id of CONTINUATION) {
    step = await runStep(model, { ids: [[id]], past: step.past, keep: 1 })
    rows.push(step.logits.slice())
  }
  return rows
}

function referenceLogits(reference: Qwen2Reference): Float32Array[] {
  const cache = reference.emptyCache()
  return [PROMPT, ...CONTINUATION.map((id) => [id])].map(
    (ids) => reference.forward(ids, cache, 1)[0],
  )
}

function rms(x: ArrayLike<number>): number {
  let s = 0
  for (let i = 0; i < x.length; i++) s += x[i] * x[i]
  return Math.sqrt(s / x.length)
}

function topK(x: Float32Array, k: number): number[] {
  return [...x.keys()].sort((a, b) => x[b] - x[a]).slice(0, k)
}

describe.each<PresetName>(['tiny', 'tiny-mha'])('%s quantized graphs', (preset) => {
  const dims = resolveDims(preset)

  it('q4: MatMulNBits logits equal the reference on the dequantized weights', async () => {
    const model = await loadModel(await ensureModel(preset, 'q4'))
    const got = await graphLogits(model)
    const want = referenceLogits(new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'q4')))
    got.forEach((row, i) => expect(maxAbsDiff(row, want[i])).toBeLessThan(1e-4))
  })

  describe('q8', () => {
    let got: Float32Array[]
    let weights: ReturnType<typeof synthesizeWeights>
    beforeAll(async () => {
      got = await graphLogits(await loadModel(await ensureModel(preset, 'q8')))
      weights = synthesizeWeights(dims, 0, 'q8')
    })

    it('reproduces a reference that quantizes activations as DynamicQuantizeMatMul does', () => {
      const q8Codes = synthesizeQ8Codes(dims, 0)
      const want = referenceLogits(new Qwen2Reference(dims, weights, { q8Codes }))
      got.forEach((row, i) => expect(maxAbsDiff(row, want[i])).toBeLessThan(1e-3))
    })

    it('stays within a few % of the float reference; greedy argmax mostly agrees', () => {
      const want = referenceLogits(new Qwen2Reference(dims, weights))
      let agree = 0
      got.forEach((row, i) => {
        const err = rms(row.map((v, j) => v - want[i][j]))
        expect(err / rms(want[i])).toBeLessThan(0.08)
        expect(topK(want[i], 5)).toContain(argmax(row))
        if (argmax(row) === argmax(want[i])) agree++
      })
      expect(agree / got.length).toBeGreaterThanOrEqual(0.6)
    })
  })
})
