/**
 * AWQ in `model:prepare --format q4` (scripts/lib/awq.ts): the groups it finds in a generated
 * fp32 export, the scaled fp32 graph computing the same function, and on a model with outlier
 * channels (tiny-outliers) a q4 package whose logits are closer to fp32's than plain q4's, with
 * the head and the decoder still in the engine's kernels.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  parseQwen2Config,
  roundActivationsLikeQ4Kernels,
  type Qwen2Config,
} from '../../src/format/index.ts'
import { dequantizeBlock, quantizeBlocks } from '../../src/engine/wasm/activations.ts'
import {
  applyAwq,
  AWQ_MIN_GAIN,
  findAwqGroups,
  jsDots,
  layerGroups,
  searchAwq,
  type Encode,
} from '../../scripts/lib/awq.ts'
import { checkLogits } from '../../scripts/lib/logit-check.ts'
import {
  decodeModel,
  initializer,
  initializers,
  node,
  tensorRawData,
  type ModelProto,
} from '../../scripts/lib/onnx/index.ts'
import { preparePackage } from '../../scripts/prepare-model.ts'
import { ensureModel } from '../helpers/models.ts'

let work: string
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-awq-'))
})
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

/** An fp32 export (its data inline in the graph), and its config. */
async function fp32Export(preset: 'tiny' | 'tiny-outliers') {
  const dir = await ensureModel(preset, 'fp32', { externalData: false })
  const model = decodeModel(await readFile(join(dir, 'onnx/model.onnx')))
  const config = parseQwen2Config(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')))
  return { dir, model, config }
}

/** Rounds to a grid of 1/8: a crude quantizer, enough to make scaling matter. */
const coarse: Encode = (w) => Float32Array.from(w, (v) => Math.round(v * 8) / 8)

describe('AWQ', () => {
  it('finds the q/k/v and gate/up groups behind each layer norm, not the tied head', async () => {
    const { model, config } = await fp32Export('tiny')
    const groups = findAwqGroups(model, config.hidden_size)
    expect(groups.map((g) => [g.gamma, g.weights.length])).toEqual(
      Array.from({ length: config.num_hidden_layers }, (_, l) => [
        [`model.layers.${l}.input_layernorm.weight`, 3],
        [`model.layers.${l}.post_attention_layernorm.weight`, 2],
      ]).flat(),
    )
  })

  it('leaves an untied lm_head out of the groups it scales', () => {
    // two norms, each read by one MatMul: a layer's [4, 6] matrix and an lm_head's [4, vocab]
    const f = (n: number) => new Float32Array(n).fill(0.5)
    const model: ModelProto = {
      graph: {
        node: [
          node('Mul', ['x', 'g1'], ['y1']),
          node('MatMul', ['y1', 'w1'], ['h']),
          node('Mul', ['h2', 'g2'], ['y2']),
          node('MatMul', ['y2', 'head'], ['logits']),
        ],
        initializer: [
          initializer('g1', f(4), [4]),
          initializer('w1', f(24), [4, 6]),
          initializer('g2', f(4), [4]),
          initializer('head', f(32), [4, 8]),
        ],
        output: [{ name: 'logits' }, { name: 'h' }],
      },
    }
    const config = { hidden_size: 4, vocab_size: 8 } as Qwen2Config
    expect(findAwqGroups(model, 4).map((g) => g.weights)).toEqual([['w1'], ['head']])
    expect(layerGroups(model, config).map((g) => g.weights)).toEqual([['w1']])
  })

  it('the search never picks worse than plain quantization on its own rows', () => {
    // two input channels 30x the others: scaling them up gives them finer steps
    const k = 16
    const rows = Array.from({ length: 20 }, (_, r) =>
      Float32Array.from({ length: k }, (_, c) => (c < 2 ? 30 : 1) * Math.sin(r * 7 + c * 3)),
    )
    const w = Float32Array.from({ length: 4 * k }, (_, i) => Math.cos(i * 1.3) * 0.3)
    const choice = searchAwq([{ w, n: 4 }], rows, k, coarse)
    expect(choice.plainErr).toBeGreaterThan(0)
    expect(choice.alpha).toBeGreaterThan(0)
    expect(choice.err).toBeLessThan(choice.plainErr)
    expect(choice.s[0]).toBeGreaterThan(choice.s[5]) // the salient channels scaled up
    // rows seen many times (a chat template's shared prefix) count once
    const repeated = [...rows, ...Array.from({ length: 50 }, () => Float32Array.from(rows[3]))]
    const again = searchAwq([{ w, n: 4 }], repeated, k, coarse)
    expect([again.alpha, again.err]).toEqual([choice.alpha, choice.err])
  })

  it('a scaling that cuts the error by less than AWQ_MIN_GAIN is not taken', () => {
    // channels within 2% of each other: some alpha still helps a little
    const k = 16
    const rows = Array.from({ length: 20 }, (_, r) =>
      Float32Array.from(
        { length: k },
        (_, c) => (1 + 0.02 * Math.cos(c)) * Math.sin(r * 7 + c * 3),
      ),
    )
    const w = Float32Array.from({ length: 4 * k }, (_, i) => Math.cos(i * 1.3) * 0.3)
    const any = searchAwq([{ w, n: 4 }], rows, k, coarse, { minGain: 0 })
    expect(any.alpha).toBeGreaterThan(0) // precondition: a small gain exists
    expect(any.err).toBeGreaterThan((1 - AWQ_MIN_GAIN) * any.plainErr)
    const chosen = searchAwq([{ w, n: 4 }], rows, k, coarse)
    expect(chosen.alpha).toBe(0)
    expect(chosen.err).toBe(chosen.plainErr)
    expect([...chosen.s]).toEqual(new Array(k).fill(1))
  })

  it('its blocked products are the plain triple loop, to the bit', () => {
    for (const [n, k, m] of [
      [7, 48, 3],
      [33, 64, 9], // a block of eight vectors and one left over
      [5, 20, 8],
      [4, 40, 23], // two blocks and seven left over
    ]) {
      const w = Float32Array.from({ length: n * k }, (_, i) => Math.sin(i * 0.7))
      const xs = Array.from({ length: m }, (_, j) =>
        Float32Array.from({ length: k }, (_, c) => Math.cos(c * 1.1 + j)),
      )
      const got = jsDots(w, n, k, xs)
      expect(got.length).toBe(n * m)
      for (let r = 0; r < n; r++)
        for (let i = 0; i < m; i++) {
          let e = 0
          for (let c = 0; c < k; c++) e += w[r * k + c] * xs[i][c]
          expect(got[r * m + i]).toBe(e)
        }
    }
  })

  it("searches with the activations the q4 kernels multiply (the engine's reference)", () => {
    const k = 100 // three whole blocks and a tail of 4
    const x = Float32Array.from({ length: k }, (_, i) => Math.sin(i * 2.3) * (i === 7 ? 40 : 1))
    const a = quantizeBlocks(x, 1, k)
    const got = roundActivationsLikeQ4Kernels(x)
    // q · d in f32, as the row is stored
    expect([...got]).toEqual(
      Array.from({ length: k }, (_, i) => Math.fround(dequantizeBlock(a, 0, i))),
    )
    expect(got[3]).not.toBe(x[3]) // precondition: rounded, not passed through
  })

  it('the scaled fp32 graph computes what the original does', async () => {
    const { dir, model, config } = await fp32Export('tiny-outliers')
    const calibration = [[151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198]]
    const { model: scaled, report } = await applyAwq(model, config, calibration, coarse)
    expect(report.applied).toBe(true)
    // precondition: something was scaled (outlier channels are what AWQ acts on)
    expect(report.alphas!.some((a) => a > 0)).toBe(true)
    expect(report.error!).toBeLessThan(report.plainError!)
    const check = await checkLogits(
      { path: join(dir, 'onnx/model.onnx') },
      { model: scaled },
      config,
    )
    expect(check.maxAbsError).toBeLessThan(1e-4 * check.referenceMaxAbs)
    expect(check.top1Agrees).toBe(true)
    // the input model is untouched
    const again = findAwqGroups(model, config.hidden_size)[0]
    const gamma = [...initializers(model)].find((t) => t.name === again.gamma)!
    const original = [...initializers((await fp32Export('tiny-outliers')).model)].find(
      (t) => t.name === again.gamma,
    )!
    expect(Buffer.from(tensorRawData(gamma)).equals(Buffer.from(tensorRawData(original)))).toBe(
      true,
    )
  })

  it('prepare --format q4 on outlier channels: closer to fp32 than plain q4, still in the kernels', async () => {
    const { dir } = await fp32Export('tiny-outliers')
    const prepare = (id: string, awq: boolean) =>
      preparePackage({ folder: dir, id, out: work, quiet: true, format: 'q4', awq })
    const plain = await prepare('plain', false)
    const scaled = await prepare('awq', true)
    expect(plain.report!.awq).toBeUndefined()
    expect(scaled.report!.awq).toMatchObject({ applied: true, groups: 4 })
    for (const r of [plain, scaled]) {
      expect(r.report!.head?.applied).toBe(true) // the fp32 export's Gemm lm_head, converted
      expect(r.report!.decoder?.applied).toBe(true)
    }
    const [a, b] = [plain, scaled].map((r) => r.report!.logits!)
    expect(b.meanAbsError).toBeLessThan(a.meanAbsError)
  })
})
