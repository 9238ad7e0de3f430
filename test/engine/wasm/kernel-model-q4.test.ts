/**
 * A q4 export (MatMulNBits layers and lm_head, the tied embedding read out of the lm_head's
 * 4-bit matrix) prepared as is: its package runs in the engine's kernels alone (KernelModel: the
 * decoder map's 'nbits' layers, the 'q4-b32' head with the embedding), with the exported 4-bit
 * values. Measured against the float reference on the very same dequantized weights, and
 * against onnxruntime-web running the package's own graph; `--head-format q8` likewise.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveDims } from '../../../scripts/lib/model-presets.ts'
import { synthesizeWeights } from '../../../scripts/lib/synth-weights.ts'
import { preparePackage, type PrepareResult } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import type { ForwardModel } from '../../../src/engine/forward.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import { KernelModel } from '../../../src/engine/wasm/kernel-model.ts'
import { ensureModel } from '../../helpers/models.ts'
import { Qwen2Reference } from '../../reference/qwen2-reference.ts'
import { argmax } from '../../helpers/numeric.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]
const STEPS = 6

interface Run {
  tokens: number[]
  logits: Float32Array[]
}

/** Greedy: the prompt, then STEPS decode steps on the argmax. */
async function greedy(model: ForwardModel): Promise<Run> {
  let r = await model.forward(PROMPT, model.emptyCache())
  const run: Run = { tokens: [], logits: [] }
  for (let i = 0; i < STEPS; i++) {
    run.logits.push(r.logits.slice())
    const next = argmax(r.logits)
    run.tokens.push(next)
    // the decoder extends a cache in place: only the last one is released
    r = (await model.decode([next], [r.cache]))[0]
  }
  model.releaseCache(r.cache)
  return run
}

/** The reference fed the same tokens (teacher-forced on `tokens`). */
function reference(ref: Qwen2Reference, tokens: number[]): Float32Array[] {
  const cache = ref.emptyCache()
  const out = [ref.forward(PROMPT, cache, 1)[0]]
  for (const t of tokens.slice(0, -1)) out.push(ref.forward([t], cache, 1)[0])
  return out
}

/** max |a − b| / max |b| over every step. */
function relativeError(a: Float32Array[], b: Float32Array[]): number {
  let e = 0
  for (let s = 0; s < b.length; s++) {
    let diff = 0
    let range = 0
    for (let i = 0; i < b[s].length; i++) {
      diff = Math.max(diff, Math.abs(a[s][i] - b[s][i]))
      range = Math.max(range, Math.abs(b[s][i]))
    }
    e = Math.max(e, diff / range)
  }
  return e
}

describe('a q4 export prepared as is runs in the kernels alone (tiny)', () => {
  let work: string
  let q4: PrepareResult
  let q8: PrepareResult
  let ref: Qwen2Reference

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q4')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-kernel-q4-'))
    q4 = await preparePackage({ folder: hf, id: 'q4', out: work, quiet: true })
    q8 = await preparePackage({ folder: hf, id: 'q8', out: work, quiet: true, headFormat: 'q8' })
    const dims = resolveDims('tiny')
    ref = new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'q4'))
  }, 60_000)

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('maps the 4-bit layers and writes the 4-bit head with the embedding', () => {
    const m = q4.manifest
    expect(m.decoder?.format).toBe('nbits')
    expect(m.decoder?.layers[0].gate).toMatchObject({ kind: 'nbits', bits: 4, blockSize: 32 })
    // the generator's zero points are all 8: the symmetric layout, none of them in the map
    expect(m.head).toMatchObject({ format: 'q4s-b32', embedding: true, stride: 80 })
    expect(m.decoder?.layers[0].gate.zeroPoint).toBeUndefined()
    expect(m.head?.file.location).toBe('head.q4')
    expect(m.stages[0].io).toBe('embeds->hidden')
    expect(q4.report?.head).toMatchObject({
      applied: true,
      top1Agrees: true,
      presentMaxAbsError: 0,
    })
    expect(q4.report?.decoder).toMatchObject({ applied: true, passed: true, q4Layout: 'symmetric' })
    expect(q8.manifest.head).toMatchObject({ format: 'q8-rows', embedding: true, stride: 64 })
    expect(q8.manifest.decoder?.format).toBe('nbits')
  })

  it('greedy decoding equals the float reference on the same 4-bit weights', async () => {
    const pkg = await loadPackage(fsSource(work), 'q4')
    expect(KernelModel.unsupported(pkg)).toBeUndefined()
    const model = await KernelModel.load(pkg)
    // the generator's q4 is symmetric (zero points 8), as onnx-community's: every layer matrix
    // takes the symmetric kernels
    const layers = resolveDims('tiny').numLayers
    expect(model.decoder.q4Matrices).toEqual({ matrices: 4 * layers, symmetric: 4 * layers })
    const ours = await greedy(model)
    const want = reference(ref, ours.tokens)
    expect(ours.tokens).toEqual(want.map(argmax))
    // measured 1.69e-2 of the logits' range: the kernels' int8 activations per block of 32
    // (decoder-q4.test.ts: 1.9e-2 for the layers alone)
    expect(relativeError(ours.logits, want)).toBeLessThan(3e-2)
  })

  it('onnxruntime-web running the package graph picks the same tokens', async () => {
    const pkg = await loadPackage(fsSource(work), 'q4')
    const graph = await QwenModel.load(pkg, { decoder: false })
    try {
      const ours = await greedy(graph)
      const want = reference(ref, ours.tokens)
      expect(ours.tokens).toEqual(want.map(argmax))
      // measured 5.6e-3: the graph's layers multiply float activations, its head is the
      // kernels' (int8 activations per block)
      expect(relativeError(ours.logits, want)).toBeLessThan(1e-2)
    } finally {
      await graph.release()
    }
  })

  it('--head-format q8: the requantized head picks the same tokens, its error reported', async () => {
    const served = q8.report?.head?.served
    expect(served).toMatchObject({ format: 'q8-rows', top1Agrees: true })
    // measured against the graph's 4-bit lm_head: logits max |Δ| 0.017 (|logit| ≤ 4.4, 0.38%),
    // embedding max |Δ| 8.6e-4 (|value| ≤ 0.23, 0.38%); the exact 4-bit rows: 4.8e-7 and 0
    expect(served!.maxAbsError).toBeGreaterThan(1e-3)
    expect(served!.maxAbsError).toBeLessThan(0.01 * q8.report!.head!.referenceMaxAbs!)
    expect(served!.embeddingMaxAbsError).toBeGreaterThan(0)
    expect(served!.embeddingMaxAbsError).toBeLessThan(0.01 * served!.embeddingMaxAbs)
    expect(q4.report!.head!.maxAbsError).toBeLessThan(1e-5)
    const model = await KernelModel.load(await loadPackage(fsSource(work), 'q8'))
    const ours = await greedy(model)
    const want = reference(ref, ours.tokens)
    expect(ours.tokens).toEqual(want.map(argmax))
    expect(relativeError(ours.logits, want)).toBeLessThan(3e-2)
  })
})
