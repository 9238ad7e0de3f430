/**
 * Seeded random weights for a Qwen2 causal LM, and their fp32 / q8 / q4 encodings.
 *
 * Every tensor is drawn from its own PRNG stream, seeded from (seed, tensor name), so any one
 * tensor can be regenerated alone, in any order, with the same bytes. Tensors are produced in
 * Hugging Face layout (`[out_features, in_features]` for linear layers, `[vocab, hidden]` for
 * the embedding) and then re-laid out for the graph.
 *
 * Scales keep activations O(1) through the layers: linear weights have std 1/sqrt(fan_in) (so
 * attention scores are O(1) and RoPE / masking errors show up in the logits), the embedding
 * has std 1/sqrt(hidden) (tied lm_head logits then have std ~1), norm weights are 1 ± 0.2,
 * q/k/v biases have std 0.2. Uniform distributions: cheap, and enough to check that a graph
 * computes what it should. Measuring how much a format loses needs weights that look trained:
 * a `WeightDistribution` (model-presets.ts) adds heavy tails, outlier channels and a logit
 * spread on top of the same scales.
 */
import {
  Q4_BLOCK_SIZE,
  dequantizeBlocksQ4,
  dequantizeRowsU8,
  quantizeBlocksQ4,
  quantizeRowsU8,
} from '../../src/format/index.ts'
import { DataType } from './onnx/index.ts'
import type { ModelDims, WeightDistribution, WeightFormat } from './model-presets.ts'

/** Block size of the q4 (MatMulNBits) format, as the onnx-community q4 exports use. */

export type HfTensorKind = 'embedding' | 'linear' | 'bias' | 'norm'

/** A tensor of the Hugging Face checkpoint. `shape` is `[rows, cols]` or `[n]`. */
export interface HfTensorSpec {
  name: string
  kind: HfTensorKind
  shape: number[]
}

/** The checkpoint's tensors, in the order the generator writes them. */
export function hfTensorSpecs(d: ModelDims): HfTensorSpec[] {
  const q = d.numHeads * d.headDim
  const kv = d.numKvHeads * d.headDim
  const specs: HfTensorSpec[] = [
    { name: 'model.embed_tokens.weight', kind: 'embedding', shape: [d.vocabSize, d.hiddenSize] },
  ]
  for (let i = 0; i < d.numLayers; i++) {
    const p = `model.layers.${i}`
    const linear = (name: string, out: number, inp: number): HfTensorSpec => ({
      name: `${p}.${name}.weight`,
      kind: 'linear',
      shape: [out, inp],
    })
    const bias = (name: string, out: number): HfTensorSpec[] =>
      d.qkvBias ? [{ name: `${p}.${name}.bias`, kind: 'bias', shape: [out] }] : []
    specs.push(
      { name: `${p}.input_layernorm.weight`, kind: 'norm', shape: [d.hiddenSize] },
      linear('self_attn.q_proj', q, d.hiddenSize),
      ...bias('self_attn.q_proj', q),
      linear('self_attn.k_proj', kv, d.hiddenSize),
      ...bias('self_attn.k_proj', kv),
      linear('self_attn.v_proj', kv, d.hiddenSize),
      ...bias('self_attn.v_proj', kv),
      linear('self_attn.o_proj', d.hiddenSize, q),
      { name: `${p}.post_attention_layernorm.weight`, kind: 'norm', shape: [d.hiddenSize] },
      linear('mlp.gate_proj', d.intermediateSize, d.hiddenSize),
      linear('mlp.up_proj', d.intermediateSize, d.hiddenSize),
      linear('mlp.down_proj', d.hiddenSize, d.intermediateSize),
    )
  }
  specs.push({ name: 'model.norm.weight', kind: 'norm', shape: [d.hiddenSize] })
  if (!d.tieWordEmbeddings)
    specs.push({ name: 'lm_head.weight', kind: 'linear', shape: [d.vocabSize, d.hiddenSize] })
  return specs
}

// ---------------------------------------------------------------- random values

/** FNV-1a of the name, mixed with the seed: one independent stream per tensor. */
export function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1)
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/**
 * Fill `out` with uniform values of mean `mean` and standard deviation `std` (mulberry32: a
 * 2^32-period stream, enough for the largest tensor, 136M values).
 */
export function fillUniform(out: Float32Array, streamSeed: number, mean: number, std: number) {
  const half = std * Math.sqrt(3) // uniform(-a, a) has std a / sqrt(3)
  const scale = (2 * half) / 4294967296
  const base = mean - half
  let a = streamSeed | 0
  for (let i = 0; i < out.length; i++) {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    out[i] = base + ((t ^ (t >>> 14)) >>> 0) * scale
  }
  return out
}

/**
 * Fill `out` with Student-t values of `dof` degrees of freedom, scaled to standard deviation
 * `std` (Bailey's polar method: two uniforms per try, no tables, same stream as fillUniform).
 */
export function fillStudentT(out: Float32Array, streamSeed: number, std: number, dof: number) {
  const scale = std * Math.sqrt((dof - 2) / dof) // t has variance dof / (dof - 2)
  const uniform = mulberry32(streamSeed)
  for (let i = 0; i < out.length;) {
    const u = 2 * uniform() - 1
    const v = 2 * uniform() - 1
    const w = u * u + v * v
    if (w >= 1 || w === 0) continue
    out[i++] = scale * u * Math.sqrt((dof * (Math.pow(w, -2 / dof) - 1)) / w)
  }
  return out
}

/**
 * The hidden channels a distribution's outliers sit on: `count` distinct ones drawn from the
 * seed, sorted. The same in every layer.
 */
export function outlierChannels(dist: WeightDistribution, hidden: number, seed: number): number[] {
  const count = Math.min(dist.outliers?.count ?? 0, hidden)
  const picked = new Set<number>()
  const uniform = mulberry32(tensorSeed(seed, 'outlier_channels'))
  while (picked.size < count) picked.add(Math.floor(uniform() * hidden))
  return [...picked].sort((x, y) => x - y)
}

/** The norms whose output feeds q/k/v or gate/up, and the matrices that read those outputs. */
const OUTLIER_NORM = /\.(input_layernorm|post_attention_layernorm)\.weight$/
const OUTLIER_READER = /\.(self_attn\.[qkv]_proj|mlp\.(gate|up)_proj)\.weight$/

/** The mulberry32 stream of fillUniform, one value in [0, 1) per call. */
function mulberry32(streamSeed: number): () => number {
  let a = streamSeed | 0
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** The fp32 tensor in Hugging Face layout, before any quantization. */
export function generateHfTensor(
  spec: HfTensorSpec,
  seed: number,
  dist: WeightDistribution = {},
): Float32Array {
  const out = new Float32Array(spec.shape.reduce((n, d) => n * d, 1))
  const s = tensorSeed(seed, spec.name)
  const fanIn = spec.shape[spec.shape.length - 1]
  if (spec.kind === 'norm') {
    fillUniform(out, s, 1, 0.2 / Math.sqrt(3))
    if (dist.outliers && OUTLIER_NORM.test(spec.name))
      for (const c of outlierChannels(dist, fanIn, seed)) out[c] *= dist.outliers.gain
    if (dist.logitScale !== undefined && spec.name === 'model.norm.weight')
      for (let i = 0; i < out.length; i++) out[i] *= dist.logitScale
    return out
  }
  if (spec.kind === 'bias') return fillUniform(out, s, 0, 0.2)
  const std = 1 / Math.sqrt(fanIn) // embedding: fan_in = hidden
  if (dist.tailDof === undefined) fillUniform(out, s, 0, std)
  else fillStudentT(out, s, std, dist.tailDof)
  if (dist.outliers && OUTLIER_READER.test(spec.name)) {
    const shrink = 1 / Math.sqrt(dist.outliers.gain)
    const channels = outlierChannels(dist, fanIn, seed)
    for (let r = 0; r < spec.shape[0]; r++) for (const c of channels) out[r * fanIn + c] *= shrink
  }
  return out
}

/** [rows, cols] → [cols, rows], in cache-sized tiles (the embedding is 151936 x 896). */
export function transpose<T extends Float32Array | Uint8Array>(
  a: T,
  rows: number,
  cols: number,
): T {
  const out = new (a.constructor as new (n: number) => T)(a.length)
  const tile = 64
  for (let r0 = 0; r0 < rows; r0 += tile)
    for (let c0 = 0; c0 < cols; c0 += tile) {
      const r1 = Math.min(rows, r0 + tile)
      const c1 = Math.min(cols, c0 + tile)
      for (let r = r0; r < r1; r++)
        for (let c = c0; c < c1; c++) out[c * rows + r] = a[r * cols + c]
    }
  return out
}

// ---------------------------------------------------------------- graph initializers

/** One initializer of the ONNX graph, without its data. */
export interface WeightSlot {
  name: string
  dataType: number
  dims: number[]
}

/** Names of the initializers that hold a linear layer (or embedding / lm_head) in each format. */
export function weightNames(hfName: string, format: WeightFormat) {
  if (format === 'q8')
    return {
      weight: `${hfName}_quantized`,
      scale: `${hfName}_scale`,
      zeroPoint: `${hfName}_zero_point`,
    }
  if (format === 'q4')
    return { weight: `${hfName}_Q4`, scale: `${hfName}_scales`, zeroPoint: `${hfName}_zp` }
  return { weight: hfName, scale: '', zeroPoint: '' }
}

/**
 * The initializers a checkpoint tensor becomes, in the order `encodeTensor` returns their bytes.
 *
 * | tensor | fp32 | q8 (DynamicQuantizeMatMul) | q4 (MatMulNBits) |
 * |---|---|---|---|
 * | linear [N, K] | [K, N] float | [K, N] uint8, scale [N], zero point [N] uint8 | [N, K/32, 16] uint8, scales [N, K/32], zp [N, ceil(K/64)] uint8 |
 * | embedding [V, H] | [V, H] float (Gather) | as linear with N = V: [H, V] | as linear with N = V |
 * | lm_head [V, H] | [V, H] float (Gemm transB) | as linear | as linear |
 * | norm, bias | float | float | float |
 *
 * A tied lm_head is the embedding's initializers (no tensors of its own).
 */
export function weightSlots(spec: HfTensorSpec, format: WeightFormat): WeightSlot[] {
  if (spec.kind === 'norm' || spec.kind === 'bias')
    return [{ name: spec.name, dataType: DataType.FLOAT, dims: spec.shape }]
  const [n, k] = spec.shape
  const names = weightNames(spec.name, format)
  const headLayout = spec.kind === 'embedding' || spec.name === 'lm_head.weight'
  if (format === 'fp32')
    return [{ name: names.weight, dataType: DataType.FLOAT, dims: headLayout ? [n, k] : [k, n] }]
  if (format === 'q8')
    return [
      { name: names.weight, dataType: DataType.UINT8, dims: [k, n] },
      { name: names.scale, dataType: DataType.FLOAT, dims: [n] },
      { name: names.zeroPoint, dataType: DataType.UINT8, dims: [n] },
    ]
  const blocks = Math.ceil(k / Q4_BLOCK_SIZE)
  return [
    { name: names.weight, dataType: DataType.UINT8, dims: [n, blocks, Q4_BLOCK_SIZE / 2] },
    { name: names.scale, dataType: DataType.FLOAT, dims: [n, blocks] },
    { name: names.zeroPoint, dataType: DataType.UINT8, dims: [n, Math.ceil(blocks / 2)] },
  ]
}

/** How the graph lays a model's tensors out beyond their format. */
export interface SlotLayout {
  /**
   * The embedding as its own float [V, H] table (a `Gather`), as exporters write a q4 model
   * (onnx-community's `model_q4.onnx`: `MatMul4BitsQuantizer` quantizes the MatMuls, not the
   * Gather): a tied lm_head then has its own quantized initializers under `lm_head.weight`'s
   * names, the same matrix rounded. No effect in fp32, where the table is the embedding anyway.
   */
  embeddingTable?: boolean
  /** The model ties its lm_head to the embedding (config `tie_word_embeddings`). */
  tied: boolean
}

/** `weightSlots` under a layout: the initializers a tensor becomes in the graph. */
export function layoutSlots(
  spec: HfTensorSpec,
  format: WeightFormat,
  layout: SlotLayout,
): WeightSlot[] {
  if (spec.kind !== 'embedding' || !layout.embeddingTable || format === 'fp32')
    return weightSlots(spec, format)
  const table = weightSlots(spec, 'fp32')
  if (!layout.tied) return table
  return [...table, ...weightSlots({ ...spec, name: 'lm_head.weight' }, format)]
}

/** `encodeTensorData` under a layout: one array per `layoutSlots` slot, same order. */
export function layoutData(
  spec: HfTensorSpec,
  format: WeightFormat,
  w: Float32Array,
  layout: SlotLayout,
): Uint8Array[] {
  if (spec.kind !== 'embedding' || !layout.embeddingTable || format === 'fp32')
    return encodeTensorData(spec, format, w)
  const table = encodeTensorData(spec, 'fp32', w)
  return layout.tied ? [...table, ...encodeTensorData(spec, format, w)] : table
}

export interface EncodedTensor {
  /** One entry per `weightSlots(spec, format)` slot, same order. */
  data: Uint8Array[]
  /** What the graph computes with, in Hugging Face layout. */
  dequantized: Float32Array
}

const bytesOf = (a: Float32Array | Uint8Array) =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength)

/**
 * The generator's q4 blocks: symmetric (zero point 8), as transformers.js's conversion script
 * quantizes onnx-community's q4 and q4f16 files. Their graphs leave out the zero_points input
 * (8 is its default); this graph keeps it, every point 8, so it has one form for both schemes.
 */
export const Q4_SCHEME = 'symmetric' as const

/** Lay out (and quantize) one checkpoint tensor for the graph. */
export function encodeTensor(
  spec: HfTensorSpec,
  format: WeightFormat,
  w: Float32Array,
): EncodedTensor {
  if (spec.kind === 'norm' || spec.kind === 'bias') return { data: [bytesOf(w)], dequantized: w }
  const [n, k] = spec.shape
  if (format === 'fp32') {
    const headLayout = spec.kind === 'embedding' || spec.name === 'lm_head.weight'
    return { data: [bytesOf(headLayout ? w : transpose(w, n, k))], dequantized: w }
  }
  if (format === 'q8') {
    const { q, scale, zeroPoint } = quantizeRowsU8(w, n, k)
    return {
      data: [transpose(q, n, k), bytesOf(scale), zeroPoint],
      dequantized: dequantizeRowsU8(q, scale, zeroPoint, n, k),
    }
  }
  const { packed, scales, zeroPoints } = quantizeBlocksQ4(w, n, k, Q4_BLOCK_SIZE, Q4_SCHEME)
  return {
    data: [packed, bytesOf(scales), zeroPoints],
    dequantized: dequantizeBlocksQ4(packed, scales, zeroPoints, n, k),
  }
}

/** Encode without computing the dequantized copy (the generator's path: half the memory). */
export function encodeTensorData(
  spec: HfTensorSpec,
  format: WeightFormat,
  w: Float32Array,
): Uint8Array[] {
  if (spec.kind === 'norm' || spec.kind === 'bias' || format === 'fp32')
    return encodeTensor(spec, format, w).data
  const [n, k] = spec.shape
  if (format === 'q8') {
    const { q, scale, zeroPoint } = quantizeRowsU8(w, n, k)
    return [transpose(q, n, k), bytesOf(scale), zeroPoint]
  }
  const { packed, scales, zeroPoints } = quantizeBlocksQ4(w, n, k, Q4_BLOCK_SIZE, Q4_SCHEME)
  return [packed, bytesOf(scales), zeroPoints]
}

/** Hugging Face name → fp32 values, HF layout. */
export type Weights = Map<string, Float32Array>

/**
 * The weights the graph of (dims, seed, format) computes with, in Hugging Face layout: for q8
 * and q4 the dequantized values, exactly (the graph's dequantization is exact in fp32). A tied
 * model has no `lm_head.weight` entry: use the embedding.
 */
export function synthesizeWeights(
  dims: ModelDims,
  seed: number,
  format: WeightFormat,
  dist: WeightDistribution = {},
): Weights {
  const out: Weights = new Map()
  for (const spec of hfTensorSpecs(dims))
    out.set(spec.name, encodeTensor(spec, format, generateHfTensor(spec, seed, dist)).dequantized)
  return out
}

/** The integer side of a q8 weight [N, K]: codes q - zero_point, and the per-row scale. */
export interface Q8Codes {
  codes: Int16Array
  scale: Float32Array
}

/**
 * For the q8 graph: the codes and scales of every matrix (linear layers, embedding, untied
 * lm_head), keyed by Hugging Face name, so a reference can multiply in integers as
 * DynamicQuantizeMatMul does. `dequantized = codes * scale[row]`.
 */
export function synthesizeQ8Codes(
  dims: ModelDims,
  seed: number,
  dist: WeightDistribution = {},
): Map<string, Q8Codes> {
  const out = new Map<string, Q8Codes>()
  for (const spec of hfTensorSpecs(dims)) {
    if (spec.kind !== 'linear' && spec.kind !== 'embedding') continue
    const [n, k] = spec.shape
    const { q, scale, zeroPoint } = quantizeRowsU8(generateHfTensor(spec, seed, dist), n, k)
    const codes = new Int16Array(n * k)
    for (let r = 0; r < n; r++)
      for (let c = 0; c < k; c++) codes[r * k + c] = q[r * k + c] - zeroPoint[r]
    out.set(spec.name, { codes, scale })
  }
  return out
}
