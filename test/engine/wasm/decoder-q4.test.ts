/**
 * The decoder with 4-bit layer matrices (MatMulNBits operands, repacked to q4-b32 at load): the
 * tiny model's layers quantized to q4 blocks of 32, against the float reference on the very same
 * dequantized weights. What is left between them is the activations' per-block int8 rounding.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveDims, type ModelDims } from '../../../scripts/lib/model-presets.ts'
import { synthesizeWeights, type Weights } from '../../../scripts/lib/synth-weights.ts'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import { Q4_ROWS, Q8Decoder } from '../../../src/engine/wasm/decoder.ts'
import { AppError } from '../../../src/core/errors.ts'
import { Q8Head } from '../../../src/engine/wasm/head.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import {
  dequantizeBlocksQ4,
  quantizeBlocksQ4,
  type DecoderLayerData,
  type DecoderWeights,
  type NBitsMatrixData,
  type Q4Scheme,
  qwen2Shape,
} from '../../../src/format/index.ts'
import { ensureModel } from '../../helpers/models.ts'
import { Qwen2Reference } from '../../reference/qwen2-reference.ts'
import { stepEach } from '../../helpers/decoder-steps.ts'
import { argmax, maxAbs, maxAbsDiff } from '../../helpers/numeric.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]

/**
 * The layers of `w` as MatMulNBits operands (q4, blocks of 32, asymmetric unless `scheme` says;
 * symmetric ones without zero points, as onnx-community's exports), and the weights with those
 * matrices replaced by their dequantized values (what the q4 model computes).
 * `breakZeroPoints` leaves the zero points out of what the decoder gets (a mutation).
 */
function q4Layers(
  w: Weights,
  dims: ModelDims,
  breakZeroPoints = false,
  scheme: Q4Scheme = 'asymmetric',
): { weights: DecoderWeights; dequantized: Weights } {
  const dequantized = new Map(w)
  const nbits = (name: string, n: number, bias?: string): NBitsMatrixData => {
    const f = w.get(`${name}.weight`)!
    const k = f.length / n
    const q = quantizeBlocksQ4(f, n, k, 32, scheme)
    dequantized.set(`${name}.weight`, dequantizeBlocksQ4(q.packed, q.scales, q.zeroPoints, n, k))
    const b = bias && w.get(`${name}.bias`)
    return {
      kind: 'nbits',
      k,
      n,
      tensors: {
        n,
        k,
        bits: 4,
        blockSize: 32,
        b: q.packed,
        scales: q.scales,
        ...(!breakZeroPoints && scheme === 'asymmetric' && { zeroPoints: q.zeroPoints }),
      },
      ...(b && { bias: b }),
    }
  }
  const { hiddenSize: H, intermediateSize: I, numHeads, numKvHeads, headDim: D } = dims
  const layers: DecoderLayerData[] = []
  for (let l = 0; l < dims.numLayers; l++) {
    const p = `model.layers.${l}`
    layers.push({
      inputNorm: w.get(`${p}.input_layernorm.weight`)!,
      postNorm: w.get(`${p}.post_attention_layernorm.weight`)!,
      q: nbits(`${p}.self_attn.q_proj`, numHeads * D, 'bias'),
      k: nbits(`${p}.self_attn.k_proj`, numKvHeads * D, 'bias'),
      v: nbits(`${p}.self_attn.v_proj`, numKvHeads * D, 'bias'),
      o: nbits(`${p}.self_attn.o_proj`, H),
      gate: nbits(`${p}.mlp.gate_proj`, I),
      up: nbits(`${p}.mlp.up_proj`, I),
      down: nbits(`${p}.mlp.down_proj`, H),
    })
  }
  return { weights: { layers, finalNorm: w.get('model.norm.weight')! }, dequantized }
}

/** Relative error (max |Δ| / range) of the decoder's steps over the prompt, and argmax agreement. */
function stepError(decoder: Q8Decoder, ref: Qwen2Reference): { error: number; agree: number } {
  let cache: KvCache = { length: 0, tensors: {} }
  const refCache = ref.emptyCache()
  let error = 0
  let agree = 0
  for (const id of PROMPT) {
    const r = decoder.step([id], [cache])[0]
    cache = r.cache
    const want = ref.forward([id], refCache, 1)[0]
    error = Math.max(error, maxAbsDiff(r.logits, want) / maxAbs(want))
    if (argmax(r.logits) === argmax(want)) agree++
  }
  decoder.release(cache)
  return { error, agree: agree / PROMPT.length }
}

describe('the decoder with q4 layers (tiny)', () => {
  let work: string
  let head: Q8Head
  let decoder: Q8Decoder
  let ref: Qwen2Reference
  let shape: ReturnType<typeof qwen2Shape>
  let plain: Weights

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-decoder-q4-'))
    await preparePackage({ folder: hf, id: 'tiny', out: work, quiet: true, verify: false })
    const pkg = await loadPackage(fsSource(work), 'tiny')
    head = await Q8Head.create(pkg.head!)
    shape = qwen2Shape(pkg.config)
    const dims = resolveDims('tiny')
    plain = synthesizeWeights(dims, 0, 'q8')
    const { weights, dequantized } = q4Layers(plain, dims)
    decoder = await Q8Decoder.create(weights, shape, head)
    ref = new Qwen2Reference(dims, dequantized)
  })

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('steps as the float reference on the same 4-bit weights, within the activation rounding', () => {
    const { error, agree } = stepError(decoder, ref)
    // measured 1.9e-2 of the logits' range: int8 activations per block of 32 against float
    // ones (the q8 decoder's int16 rows give 9e-5; 127 levels against 32767 is 258x coarser)
    expect(error).toBeLessThan(3e-2)
    expect(agree).toBe(1)
    // the precondition that makes this mean something: the q4 weights differ from the q8
    // ones by far more than that (so a decoder that ignored the q4 values would fail)
    const q8 = new Qwen2Reference(resolveDims('tiny'), plain)
    const a = q8.forward(PROMPT, q8.emptyCache(), 1)[0]
    const b = ref.forward(PROMPT, ref.emptyCache(), 1)[0]
    expect(maxAbsDiff(a, b) / maxAbs(b)).toBeGreaterThan(5 * error)
  })

  it('symmetric layers (no zero points, as exported): the symmetric kernels, as near the reference', async () => {
    const dims = resolveDims('tiny')
    expect(decoder.q4Matrices).toEqual({ matrices: 4 * dims.numLayers, symmetric: 0 })
    const sym = q4Layers(plain, dims, false, 'symmetric')
    const d = await Q8Decoder.create(sym.weights, shape, head)
    expect(d.q4Matrices).toEqual({ matrices: 4 * dims.numLayers, symmetric: 4 * dims.numLayers })
    const symRef = new Qwen2Reference(dims, sym.dequantized)
    const { error, agree } = stepError(d, symRef)
    expect(error).toBeLessThan(3e-2)
    expect(agree).toBe(1)
    // precondition: the symmetric weights are not the asymmetric ones (a decoder that ran
    // those instead would miss this reference)
    const a = symRef.forward(PROMPT, symRef.emptyCache(), 1)[0]
    const b = ref.forward(PROMPT, ref.emptyCache(), 1)[0]
    expect(maxAbsDiff(a, b) / maxAbs(a)).toBeGreaterThan(5 * error)
    // prefill (q4s_gemm) is the steps (q4s_gemv), bit for bit
    const { logits: rows, cache } = stepEach(d, PROMPT)
    const whole = d.prefill(PROMPT, { length: 0, tensors: {} }, 1)
    expect(maxAbsDiff(whole.logits, rows.at(-1)!)).toBe(0)
    d.release(cache)
    d.release(whole.cache)
  })

  it('zero points all 8 given: the symmetric layout (20/21 of the bytes), the same bits; told symmetric, other zero points are refused', async () => {
    const dims = resolveDims('tiny')
    const sym = q4Layers(plain, dims, false, 'symmetric')
    // the same layers with every zero point given as 8 (two blocks a byte)
    const eights: DecoderWeights = {
      ...sym.weights,
      layers: sym.weights.layers.map((l) => {
        const out = { ...l }
        for (const m of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) {
          const d = l[m] as NBitsMatrixData
          const zpBytes = Math.ceil(Math.ceil(d.k / 32) / 2)
          out[m] = {
            ...d,
            tensors: { ...d.tensors, zeroPoints: new Uint8Array(d.n * zpBytes).fill(0x88) },
          }
        }
        return out
      }),
    }
    const a = await Q8Decoder.create(sym.weights, shape, head)
    const b = await Q8Decoder.create(eights, shape, head)
    expect(b.q4Matrices).toEqual({ matrices: 4 * dims.numLayers, symmetric: 4 * dims.numLayers })
    const la = a.prefill(PROMPT, { length: 0, tensors: {} }, 1)
    const lb = b.prefill(PROMPT, { length: 0, tensors: {} }, 1)
    expect(maxAbs(la.logits)).toBeGreaterThan(0)
    expect(maxAbsDiff(la.logits, lb.logits)).toBe(0)
    a.release(la.cache)
    b.release(lb.cache)
    // the layout with zero points (the asymmetric decoder's) takes 21 bytes a block, this 20
    const q4Bytes = (d: Q8Decoder) => d.weightBytes
    expect(q4Bytes(a)).toBeLessThan(q4Bytes(decoder))
    expect(q4Bytes(a) / q4Bytes(decoder)).toBeGreaterThan(0.9)
    // told the symmetric layout, a layer with other zero points is refused, not run wrong
    const told = await Q8Decoder.create(q4Layers(plain, dims).weights, shape, head, {
      q4Symmetric: true,
    }).catch((e: unknown) => e)
    expect(told).toBeInstanceOf(AppError)
    expect((told as AppError).message).toMatch(/zero points other than 8/)
  })

  it('misses the reference by far more when a weight operand is broken (zero points dropped)', async () => {
    const dims = resolveDims('tiny')
    const broken = q4Layers(plain, dims, true)
    const bad = await Q8Decoder.create(broken.weights, shape, head)
    const { error } = stepError(bad, ref)
    expect(error).toBeGreaterThan(5 * stepError(decoder, ref).error)
  })

  it('prefills exactly as it steps, and batched rows are each the row alone', () => {
    const { logits: rows, cache: stepped } = stepEach(decoder, PROMPT)
    // the whole prompt in one chunk (q4_gemm over 14 rows) and in two, keeping 3 rows
    const whole = decoder.prefill(PROMPT, { length: 0, tensors: {} }, 1)
    expect(maxAbsDiff(whole.logits, rows.at(-1)!)).toBe(0)
    const a = decoder.prefill(PROMPT.slice(0, 6), { length: 0, tensors: {} }, 0)
    const b = decoder.prefill(PROMPT.slice(6), a.cache, 3)
    const vocab = head.vocab
    for (let r = 0; r < 3; r++)
      expect(
        maxAbsDiff(b.logits.subarray(r * vocab, (r + 1) * vocab), rows[PROMPT.length - 3 + r]),
      ).toBe(0)
    // three sequences at different positions in one decode step
    const starts = [2, 7, 11].map(
      (n) => decoder.prefill(PROMPT.slice(0, n), { length: 0, tensors: {} }, 0).cache,
    )
    const next = [PROMPT[2], PROMPT[7], PROMPT[11]]
    const together = decoder.step(next, starts)
    together.forEach((t, i) => expect(maxAbsDiff(t.logits, rows[[2, 7, 11][i]])).toBe(0))
    for (const c of [stepped, whole.cache, b.cache, ...together.map((t) => t.cache)])
      decoder.release(c)
    expect(decoder.sequences).toBe(0)
  })

  it('prefills a chunk of more rows than one q4 pass (Q4_ROWS) exactly as it steps', () => {
    // rows past the first pass read their activations at their own offset: three passes, the
    // last one partial, against one token a step (the down matrix's width, 176, goes through
    // the zero-padding copy; the others are quantized where they are)
    const ids = Array.from({ length: 2 * Q4_ROWS + 11 }, (_, i) => 100 + ((i * 37) % 5000))
    const { logits: rows, cache: stepped } = stepEach(decoder, ids)
    const vocab = head.vocab
    const whole = decoder.prefill(ids, { length: 0, tensors: {} }, ids.length)
    // precondition: the rows differ from each other, so a row read at the wrong offset shows
    expect(maxAbsDiff(rows[0], rows[Q4_ROWS + 5])).toBeGreaterThan(0)
    for (const r of [0, Q4_ROWS - 1, Q4_ROWS, Q4_ROWS + 5, 2 * Q4_ROWS, ids.length - 1])
      expect(maxAbsDiff(whole.logits.subarray(r * vocab, (r + 1) * vocab), rows[r])).toBe(0)
    decoder.release(stepped)
    decoder.release(whole.cache)
    expect(decoder.sequences).toBe(0)
  })
})
