/**
 * The fidelity harness on tiny-outliers, a few steps: the fp32 floor is ~0, a format with float
 * activations gives the same numbers in onnxruntime-node (its dequantized weights in the fp32
 * graph) as in the TS reference, ORT's MatMulNBits at accuracy level 0 is that same computation,
 * and the AWQ fold alone (no quantization) changes nothing.
 */
import { describe, expect, it } from 'vitest'
import {
  awqWeights,
  runFidelity,
  salientChannels,
  splitWeights,
  type FidelityContext,
  type FidelityRun,
} from '../../scripts/bench/fidelity.ts'
import { resolveDims, resolveDistribution } from '../../scripts/lib/model-presets.ts'
import { outlierChannels, synthesizeWeights } from '../../scripts/lib/synth-weights.ts'
import { Qwen2Reference } from '../reference/qwen2-reference.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]

const run = (formats: string[], dequantizedIn: 'ort' | 'ts') =>
  runFidelity({
    preset: 'tiny-outliers',
    steps: 4,
    prompts: 2,
    formats,
    minLead: 0.5,
    dequantizedIn,
    log: () => {},
  })

const byFormat = (r: FidelityRun) => Object.fromEntries(r.results.map((x) => [x.format, x]))

function tinyContext(): FidelityContext {
  const preset = 'tiny-outliers'
  return {
    preset,
    dims: resolveDims(preset),
    dist: resolveDistribution(preset),
    seed: 0,
    modelDir: () => Promise.reject(new Error('unused')),
    enginePackage: () => Promise.reject(new Error('unused')),
    calibration: [PROMPT.slice(0, 9)],
    dequantizedIn: 'ts',
    log: () => {},
  }
}

describe('the fidelity harness (tiny-outliers)', () => {
  it('agrees with itself across runners; ORT q4 at level 0 is q4 with float activations', async () => {
    const ort = byFormat(await run(['fp32-ts', 'ort-q4', 'q4-q4head', 'q4-q8head'], 'ort'))
    const ts = byFormat(await run(['q4-q8head'], 'ts'))
    expect(ort['fp32-ts'].meanKl).toBeLessThan(1e-8)
    expect(ort['fp32-ts'].agree).toBe(8)
    // quantization makes a visible difference, the same one in every runner
    expect(ort['q4-q8head'].meanKl).toBeGreaterThan(1e-2)
    expect(ort['q4-q8head'].meanKl).toBeCloseTo(ts['q4-q8head'].meanKl, 4)
    expect(ort['q4-q8head'].maxAbs).toBeCloseTo(ts['q4-q8head'].maxAbs, 3)
    expect(ort['ort-q4'].meanKl).toBeCloseTo(ort['q4-q4head'].meanKl, 4)
    expect(ort['ort-q4'].agree).toBe(ort['q4-q4head'].agree)
  })

  it('AWQ: folding the scales into the norms alone computes the same logits', async () => {
    const ctx = tinyContext()
    const same = (w: Float32Array) => w
    const scaled = (await awqWeights(ctx, same, same, [1])).weights
    const fp32 = synthesizeWeights(ctx.dims, 0, 'fp32', ctx.dist)
    const logits = (w: typeof fp32) => {
      const ref = new Qwen2Reference(ctx.dims, w)
      return ref.forward(PROMPT, ref.emptyCache(), 1)[0]
    }
    const want = logits(fp32)
    const norm = (name: string, w: typeof fp32) => w.get(`model.layers.0.${name}.weight`)!
    expect(norm('input_layernorm', scaled)).not.toEqual(norm('input_layernorm', fp32))
    const got = logits(scaled)
    let worst = 0
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]))
    expect(worst).toBeLessThan(1e-3)
  })

  it('split: calibration finds the outlier channels, whose columns alone keep fp32 values', async () => {
    expect(salientChannels([1, 1.2, 0.9, 9, 1.1, 30])).toEqual([5, 3])
    expect(salientChannels([1, 2, 3, 4, 5])).toEqual([])
    const ctx = tinyContext()
    const H = ctx.dims.hiddenSize
    const planted = outlierChannels(ctx.dist, H, ctx.seed).sort((a, b) => a - b)
    expect(planted.length).toBe(3)
    // every column to 0, the kept ones back from fp32
    const zero = (w: Float32Array) => new Float32Array(w.length)
    const { weights, channels } = await splitWeights(ctx, zero, zero)
    expect(channels.length).toBe(2 * ctx.dims.numLayers)
    for (const c of channels) expect([...c].sort((a, b) => a - b)).toEqual(planted)
    const fp32 = synthesizeWeights(ctx.dims, 0, 'fp32', ctx.dist)
    const name = 'model.layers.1.mlp.up_proj.weight'
    const got = weights.get(name)!
    const want = fp32.get(name)!
    let kept = 0
    for (let i = 0; i < got.length; i++) {
      const keptColumn = planted.includes(i % H)
      expect(got[i]).toBe(keptColumn ? want[i] : 0)
      if (keptColumn && want[i] !== 0) kept++
    }
    expect(kept).toBe((3 * got.length) / H)
    // the matrices that read no norm are the encoder's alone
    expect(weights.get('model.layers.1.mlp.down_proj.weight')!.every((v) => v === 0)).toBe(true)
  })
})
