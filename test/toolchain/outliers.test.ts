/**
 * The trained-looking synthetic presets (`-outliers`): their normalised activations carry a few
 * channels far above the rest, their matrices are heavy-tailed, their next-token distribution
 * has a few nats of entropy where the plain preset's is near uniform; and they are as
 * deterministic as the plain ones. Measured with the TS reference on the tiny shapes.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { entropy } from '../../scripts/bench/fidelity-metrics.ts'
import {
  resolveDims,
  resolveDistribution,
  type PresetName,
} from '../../scripts/lib/model-presets.ts'
import { makeModel } from '../../scripts/lib/synth-model.ts'
import {
  generateHfTensor,
  hfTensorSpecs,
  outlierChannels,
  synthesizeWeights,
} from '../../scripts/lib/synth-weights.ts'
import { REPO_ROOT } from '../helpers/models.ts'
import { Qwen2Reference } from '../reference/qwen2-reference.ts'

const tmp = mkdtempSync(join(tmpdir(), 'qwen-edge-outliers-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

// <|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n
const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]

/** Per layer and norm, each channel's mean |activation| over the prompt; and all logits. */
function run(preset: PresetName) {
  const dims = resolveDims(preset)
  const dist = resolveDistribution(preset)
  const meanAbs = new Map<string, Float64Array>()
  const observe = (name: string, x: Float32Array, rows: number) => {
    // q_proj reads input_layernorm's output, gate_proj post_attention_layernorm's
    if (!/(q_proj|gate_proj)\.weight$/.test(name)) return
    const H = dims.hiddenSize
    const m = new Float64Array(H)
    for (let i = 0; i < x.length; i++) m[i % H] += Math.abs(x[i]) / rows
    meanAbs.set(name, m)
  }
  const ref = new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'fp32', dist), { observe })
  const logits = ref.forward(PROMPT, ref.emptyCache())
  return { dims, dist, meanAbs, logits }
}

const median = (a: ArrayLike<number>) => {
  const s = Array.from(a).sort((x, y) => x - y)
  return s[s.length >> 1]
}

const plain = run('tiny')
const outliers = run('tiny-outliers')

describe('tiny-outliers vs tiny', () => {
  it('has three outlier channels in every normalised input of q/k/v and gate/up', () => {
    const channels = outlierChannels(outliers.dist, outliers.dims.hiddenSize, 0)
    expect(channels).toHaveLength(3)
    expect(outliers.meanAbs.size).toBe(2 * outliers.dims.numLayers)
    const ratios: number[] = []
    for (const [name, m] of outliers.meanAbs) {
      const med = median(m)
      for (const c of channels) expect(m[c] / med, `${name} channel ${c}`).toBeGreaterThan(15)
      for (let c = 0; c < m.length; c++)
        if (!channels.includes(c)) expect(m[c] / med, `${name} channel ${c}`).toBeLessThan(4)
      ratios.push(...channels.map((c) => m[c] / med))
    }
    // the gain is 40x; the residual stream's own spread moves single channels around it
    expect(median(ratios)).toBeGreaterThan(30)
    expect(median(ratios)).toBeLessThan(50)
    // precondition: the plain preset has no such channel
    for (const [name, m] of plain.meanAbs) {
      const med = median(m)
      expect(Math.max(...m) / med, name).toBeLessThan(4)
    }
  })

  it('has heavy-tailed matrices at the plain preset’s scale', () => {
    const spec = hfTensorSpecs(outliers.dims).find((s) =>
      s.name.endsWith('1.mlp.down_proj.weight'),
    )!
    const moments = (w: Float32Array) => {
      let m2 = 0
      let m4 = 0
      for (const v of w) {
        m2 += (v * v) / w.length
        m4 += (v * v * v * v) / w.length
      }
      return { std: Math.sqrt(m2), kurtosis: m4 / (m2 * m2) }
    }
    const t = moments(generateHfTensor(spec, 0, outliers.dist))
    const u = moments(generateHfTensor(spec, 0, plain.dist))
    expect(u.kurtosis).toBeLessThan(2) // uniform: 1.8
    expect(t.kurtosis).toBeGreaterThan(5) // Student-t(5): 9
    expect(t.std / u.std).toBeGreaterThan(0.9)
    expect(t.std / u.std).toBeLessThan(1.1)
  })

  it('has a next-token entropy of a few nats, where the plain preset is near uniform', () => {
    const mean = (l: Float32Array[]) => l.reduce((s, x) => s + entropy(x), 0) / l.length
    const uniform = Math.log(plain.dims.vocabSize)
    expect(mean(plain.logits)).toBeGreaterThan(uniform - 1)
    const h = mean(outliers.logits)
    expect(h).toBeGreaterThan(1)
    expect(h).toBeLessThan(5)
  })
})

describe('determinism', () => {
  const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex')

  it('writes the same bytes for the same arguments; the flags give the preset’s weights', async () => {
    const a = makeModel({ preset: 'tiny-outliers', format: 'q4', outDir: join(tmp, 'a') })
    const b = makeModel({ preset: 'tiny-outliers', format: 'q4', outDir: join(tmp, 'b') })
    const c = makeModel({ preset: 'tiny', format: 'q4', outDir: join(tmp, 'c') })
    const graph = (m: { dir: string; onnxFile: string }) => sha(join(m.dir, m.onnxFile))
    for (const f of a.files) expect(sha(join(b.dir, f)), f).toBe(sha(join(a.dir, f)))
    expect(graph(c)).not.toBe(graph(a))
    const config = JSON.parse(readFileSync(join(a.dir, 'config.json'), 'utf8'))
    expect(config.qwen_edge_synthetic.distribution).toEqual(resolveDistribution('tiny-outliers'))

    const { tailDof, outliers: o, logitScale } = resolveDistribution('tiny-outliers')
    const tsx = join(REPO_ROOT, 'node_modules', '.bin', 'tsx')
    const cli = promisify(execFile)
    const out = join(tmp, 'cli')
    const flags = ['--preset', 'tiny', '--format', 'q4', '--out', out]
    const dist = [`--outliers=${o!.count}x${o!.gain}`, `--tail-dof=${tailDof}`]
    await cli(tsx, ['scripts/make-model.ts', ...flags, ...dist, `--logit-scale=${logitScale}`], {
      cwd: REPO_ROOT,
    })
    expect(sha(join(out, a.onnxFile))).toBe(graph(a))
    await expect(
      cli(tsx, ['scripts/make-model.ts', ...flags, '--outliers', '3'], { cwd: REPO_ROOT }),
    ).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('--outliers') })
  })
})
