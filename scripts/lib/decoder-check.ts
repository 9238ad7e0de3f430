/**
 * The check of a decoder map (decoder-map.ts) before prepare writes it: the decoder layers
 * computed in plain TypeScript from the mapped tensors, against onnxruntime-node running the
 * split graph itself, over a short prompt and two decode steps with a KV cache.
 *
 * Layer by layer, teacher-forced: each layer starts from the graph's own residual stream (and
 * KV cache), so an error shows where it is made and does not compound over the layers. Per
 * layer and step, compared with the graph: the attention block's result (o_proj), the new keys
 * and values (`present.{i}.*`), the MLP's result (down_proj); at the end `hidden_states` (the
 * final norm of the graph's residual stream). Each error is max |ours − graph| / max |graph|
 * over the tensor.
 *
 * The arithmetic is transformers' Qwen2 (eager attention): RMSNorm with `rms_norm_eps`,
 * rotate-half RoPE with `rope_theta`, grouped-query causal attention, SiLU MLP, each matrix
 * dequantized as (B − zero point) · scale per column. Two passes:
 * - the deciding one does the graph's arithmetic: DynamicQuantizeMatMul quantizes its input
 *   to uint8 (one scale per tensor), multiplies in integers and scales in float32. It matches
 *   the graph to float rounding, except where that rounding moves an activation across a
 *   quantization step, which changes that matmul's result by about 1/255 of its range;
 * - the plain float one (activations not quantized), reported as `float`: how far the graph's
 *   activation quantization is from the float model the weights describe.
 * A MatMulNBits matrix (an 'nbits' map) is dequantized block by block and multiplied in float64
 * in both passes: onnxruntime's default accuracy level multiplies float activations (5.9e-7 on
 * the tiny q4 model). A wrong mapping (k and v swapped, gate and up swapped, one norm weight for
 * another, a missing bias, another layer's scales) is an error of 0.06 to 2
 * (test/toolchain/decoder-map.test.ts, q4-prepare.test.ts).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { InferenceSession, Tensor } from 'onnxruntime-node'
import type { Qwen2Config } from '../../src/format/index.ts'
import {
  quantizeLikeDynamicQuantizeLinear,
  type DecoderLayerData,
  type DecoderMatrixData,
  type NBitsMatrixData,
  dequantizeQ4,
  packMatMulNBits,
  type DecoderWeights,
} from '../../src/format/index.ts'
import { decoderWeightsOf, type DecoderNames } from './decoder-map.ts'
import {
  attentionBlock,
  headDimOf,
  mlpBlock,
  rmsNorm,
  type ReferenceLayer,
} from './qwen2-reference.ts'
import { LOGITS_TO_KEEP } from './graph-rewrite.ts'
import { CHECK_TOKENS, tokenFeeds, writeModelWithExternalData } from './logit-check.ts'
import { DataType, valueInfo, type ModelProto, type ValueInfoProto } from './onnx/index.ts'
import { HIDDEN_STATES, INPUTS_EMBEDS, headEmbedding, type HeadRows } from './split-head.ts'

/**
 * Largest error the check accepts (of the pass doing the graph's arithmetic). Measured with
 * onnxruntime-node 1.30: 2e-7 on the tiny generator model, 4e-4 on the synthetic Qwen2.5-0.5B
 * (an activation across a quantization step); the plain float pass: 0.02 and 0.044; a wrong
 * mapping: 0.13 (k_proj's bias missing) to 1.8 (k and v swapped).
 */
export const DECODER_TOLERANCE = 0.03

/** Tokens fed one at a time after the prompt. */
const DECODE_TOKENS = [9707, 11]

type Kind = 'attention' | 'key' | 'value' | 'mlp' | 'hidden'

/** Largest errors against the graph, relative to each tensor's range (max |x|). */
export interface DecoderErrors {
  /** The attention block's result (o_proj's, added to the residual stream). */
  attentionError: number
  /** present.{i}.key and present.{i}.value (their past rows are the graph's own). */
  keyError: number
  valueError: number
  /** The MLP's result (down_proj's). */
  mlpError: number
  /** hidden_states: the final norm. */
  hiddenError: number
  /** The largest of them, and where. */
  maxError: number
  worst: string
}

/**
 * The check's result. The errors at the top level are those of the pass that does the graph's
 * arithmetic, which decide; `float` those of the plain float pass (information).
 */
export interface DecoderCheck extends DecoderErrors {
  runtime: string
  /** The prompt, then one decode step per token of `decodeTokens`. */
  tokens: number[]
  decodeTokens: number[]
  float: DecoderErrors
  tolerance: number
  passed: boolean
}

type Config = Pick<
  Qwen2Config,
  | 'hidden_size'
  | 'num_hidden_layers'
  | 'num_attention_heads'
  | 'num_key_value_heads'
  | 'head_dim'
  | 'rms_norm_eps'
  | 'rope_theta'
  | 'vocab_size'
>

/**
 * Run the check on `model` (the split graph, data inline) with the decoder tensors `names`.
 * `head` gives the embedding rows when the graph takes `inputs_embeds`; otherwise the graph's
 * own embedding (`names.embeddings`) is read out of it.
 */
export async function checkDecoder(
  model: ModelProto,
  names: DecoderNames,
  config: Config,
  head?: HeadRows,
): Promise<DecoderCheck> {
  const ort = await import('onnxruntime-node')
  const graph = model.graph!
  const takesEmbeds = (graph.input ?? []).some((v) => v.name === INPUTS_EMBEDS)
  if (takesEmbeds && !head?.embedding)
    throw new Error(`decoder check: the graph takes ${INPUTS_EMBEDS} but no head rows hold them`)
  const embeddings = names.embeddings
  if (!takesEmbeds && !embeddings)
    throw new Error('decoder check: the tensor the first layer starts from is unknown')
  const H = config.hidden_size
  const L = config.num_hidden_layers
  const kv = config.num_key_value_heads
  const hd = headDimOf(config)
  const weights = decoderWeightsOf(model, names)

  // the graph's residual stream as extra outputs: each layer's o_proj and down_proj results
  const wanted = names.layers.flatMap((l) => [l.o.output, l.down.output])
  if (!takesEmbeds) wanted.push(embeddings!)
  const have = new Set((graph.output ?? []).map((v) => v.name))
  const extra: ValueInfoProto[] = [...new Set(wanted)]
    .filter((name) => !have.has(name))
    .map((name) => valueInfo(name, DataType.FLOAT, ['batch', 'sequence', H]))
  const checked: ModelProto = {
    ...model,
    graph: { ...graph, output: [...(graph.output ?? []), ...extra] },
  }

  const dir = await mkdtemp(join(tmpdir(), 'qwen-edge-decoder-check-'))
  let session: InferenceSession | undefined
  try {
    session = await ort.InferenceSession.create(
      writeModelWithExternalData(checked, dir, 'decoder-check.onnx'),
      {
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        logSeverityLevel: 3,
      },
    )
    const data = (t: Tensor | undefined, name: string, length: number) => {
      const d = t?.data
      if (!(d instanceof Float32Array) || d.length !== length)
        throw new Error(`decoder check: ${name} is not float32 of ${length} values`)
      return d
    }
    let past: Record<string, Tensor> = {}
    for (let i = 0; i < L; i++)
      for (const kind of ['key', 'value'])
        past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
          1,
          kv,
          0,
          hd,
        ])
    const passes = [
      { quantize: true, errors: new Errors() },
      { quantize: false, errors: new Errors() },
    ]
    const tokens = CHECK_TOKENS.map((t) => t % config.vocab_size)
    const decodeTokens = DECODE_TOKENS.map((t) => t % config.vocab_size)
    let p = 0
    for (const [step, ids] of [tokens, ...decodeTokens.map((t) => [t])].entries()) {
      const n = ids.length
      const all: Record<string, Tensor> = {
        ...past,
        ...tokenFeeds(ort.Tensor, ids, p),
        [LOGITS_TO_KEEP]: new ort.Tensor('int64', BigInt64Array.of(0n), []), // every position
      }
      if (takesEmbeds)
        all[INPUTS_EMBEDS] = new ort.Tensor('float32', headEmbedding(head!, ids), [1, n, H])
      const feeds: Record<string, Tensor> = {}
      for (const name of session.inputNames) {
        if (!all[name]) throw new Error(`decoder check: unexpected input ${name}`)
        feeds[name] = all[name]
      }
      const out = await session.run(feeds)
      const at = step === 0 ? `prompt of ${n}` : `decode step ${step}`
      // the graph's residual stream, rebuilt with its own float32 Adds
      const r = Float32Array.from(
        takesEmbeds
          ? (all[INPUTS_EMBEDS].data as Float32Array)
          : data(out[embeddings!], embeddings!, n * H),
      )
      for (let i = 0; i < L; i++) {
        const layer = weights.layers[i]
        const ln = names.layers[i]
        const o = data(out[ln.o.output], ln.o.output, n * H)
        const down = data(out[ln.down.output], ln.down.output, n * H)
        const [key, value] = ['key', 'value'].map((kind) =>
          data(out[`present.${i}.${kind}`], `present.${i}.${kind}`, kv * (p + n) * hd),
        )
        const [pastKey, pastValue] = ['key', 'value'].map(
          (kind) => past[`past_key_values.${i}.${kind}`].data as Float32Array,
        )
        const mid = r.map((x, j) => x + o[j])
        for (const { quantize, errors } of passes) {
          const ref = referenceLayer(layer, quantize)
          const a = attentionBlock(ref, config, r, n, pastKey, pastValue)
          const where = `layer ${i}, ${at}`
          errors.note('attention', where, relativeError(o, a.out))
          errors.note('key', where, relativeError(key, a.key))
          errors.note('value', where, relativeError(value, a.value))
          errors.note('mlp', where, relativeError(down, mlpBlock(ref, config, mid, n)))
        }
        r.set(mid.map((x, j) => x + down[j]))
      }
      // hidden_states may hold the last positions only (a graph without num_logits_to_keep)
      const graphHidden = out[HIDDEN_STATES]?.data as Float32Array
      const ours = rmsNorm(r, n, weights.finalNorm, config.rms_norm_eps)
      for (const { errors } of passes)
        errors.note(
          'hidden',
          at,
          relativeError(graphHidden, ours.subarray(ours.length - graphHidden.length)),
        )
      past = {}
      for (let i = 0; i < L; i++)
        for (const kind of ['key', 'value'])
          past[`past_key_values.${i}.${kind}`] = out[`present.${i}.${kind}`]
      p += n
    }
    const [exact, float] = passes.map((r) => r.errors.summary())
    return {
      runtime: `onnxruntime-node ${ort.env.versions.node ?? ort.env.versions.common}, 1 thread`,
      tokens,
      decodeTokens,
      ...exact,
      float,
      tolerance: DECODER_TOLERANCE,
      passed: exact.maxError <= DECODER_TOLERANCE,
    }
  } finally {
    await session?.release()
    await rm(dir, { recursive: true, force: true })
  }
}

/** The largest relative errors seen, per kind of tensor, and where the largest was. */
class Errors {
  private readonly max: Record<Kind, number> = {
    attention: 0,
    key: 0,
    value: 0,
    mlp: 0,
    hidden: 0,
  }
  private top = 0
  private worst = ''

  note(kind: Kind, where: string, e: number): void {
    if (!(e <= this.max[kind])) this.max[kind] = e // NaN sticks
    if (!(e <= this.top)) {
      this.top = e
      this.worst = kind === 'hidden' ? `${HIDDEN_STATES}, ${where}` : `${kind} of ${where}`
    }
  }

  summary(): DecoderErrors {
    const m = this.max
    return {
      attentionError: m.attention,
      keyError: m.key,
      valueError: m.value,
      mlpError: m.mlp,
      hiddenError: m.hidden,
      maxError: this.top,
      worst: this.worst,
    }
  }
}

/** max |a − b| / max |a|; a is the reference. Infinity when the sizes differ. */
function relativeError(a: Float32Array | undefined, b: Float32Array): number {
  if (!a || a.length !== b.length) return Infinity
  let diff = 0
  let range = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i])
    if (!(d <= diff)) diff = d
    range = Math.max(range, Math.abs(a[i]))
  }
  return range > 0 ? diff / range : diff
}

// ---------------------------------------------------------------- the mapped matrices

/** A layer of mapped q8 matrices as the reference's blocks take it (`quantize`: see linearQ8). */
function referenceLayer(layer: DecoderLayerData, quantize: boolean): ReferenceLayer {
  const lin = (m: DecoderMatrixData) => (x: Float32Array, n: number) => linearQ8(x, n, m, quantize)
  return {
    inputNorm: layer.inputNorm,
    postNorm: layer.postNorm,
    q: lin(layer.q),
    k: lin(layer.k),
    v: lin(layer.v),
    o: lin(layer.o),
    gate: lin(layer.gate),
    up: lin(layer.up),
    down: lin(layer.down),
  }
}

/**
 * A MatMulNBits matrix: x [rows, K] · Wᵀ + bias with W [N, K] dequantized block by block, in
 * float64 (onnxruntime's default accuracy level multiplies float activations).
 */
function linearNBits(x: Float32Array, rows: number, m: NBitsMatrixData): Float32Array {
  const { k: K, n: N } = m
  const w = dequantizeQ4(packMatMulNBits(m.tensors))
  const out = new Float32Array(rows * N)
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < N; j++) {
      let d = 0
      for (let i = 0; i < K; i++) d += x[r * K + i] * w[j * K + i]
      out[r * N + j] = d + (m.bias ? m.bias[j] : 0)
    }
  return out
}

/**
 * x [rows, K] · ((B − zp) · scale) + bias → [rows, N]; B is read once for all rows. With
 * `quantize`, x is first quantized as DynamicQuantizeMatMul does (DynamicQuantizeLinear: uint8,
 * one scale and zero point for the whole tensor, range including 0, round half to even), the
 * products summed in integers and scaled in float32: onnxruntime's arithmetic.
 */
function linearQ8(
  x: Float32Array,
  rows: number,
  m: DecoderMatrixData,
  quantize: boolean,
): Float32Array {
  if (m.kind === 'nbits') return linearNBits(x, rows, m)
  const { k: K, n: N } = m
  // one loop for both signednesses: int8 s − zp = (s ^ 0x80 as uint8) − (zp + 128)
  const b = m.signed ? m.weight.map((u) => u ^ 0x80) : m.weight
  const zpOf = (j: number) => m.zeroPoint[m.zeroPoint.length === 1 ? 0 : j]
  const zp = (j: number) => (m.signed ? ((zpOf(j) << 24) >> 24) + 128 : zpOf(j))
  const a = new Float64Array(rows * K)
  let scaleA = 1
  if (quantize) {
    // q − zero point: the sums below are exact integers
    const q = quantizeLikeDynamicQuantizeLinear(x.subarray(0, rows * K))
    a.set(q.centered)
    scaleA = q.scale
  } else a.set(x)
  // Σ_k a[k] (B[k][j] − zp[j]) = Σ_k a[k] B[k][j] − zp[j] Σ_k a[k]; B read once for all rows
  const acc = new Float64Array(rows * N)
  const sums = new Float64Array(rows)
  for (let kk = 0; kk < K; kk++) {
    const row = kk * N
    for (let r = 0; r < rows; r++) {
      const av = a[r * K + kk]
      if (av === 0) continue
      sums[r] += av
      const base = r * N
      for (let j = 0; j < N; j++) acc[base + j] += av * b[row + j]
    }
  }
  const out = new Float32Array(rows * N)
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < N; j++) {
      const d = acc[r * N + j] - zp(j) * sums[r]
      const scale = m.scale[m.scale.length === 1 ? 0 : j]
      const bias = m.bias ? m.bias[j] : 0
      out[r * N + j] = quantize
        ? Math.fround(Math.fround(Math.fround(d) * Math.fround(scaleA * scale)) + bias)
        : d * scale + bias
    }
  return out
}
