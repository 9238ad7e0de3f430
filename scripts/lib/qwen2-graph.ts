/**
 * The ONNX graph of a Qwen2 causal LM with the Optimum / onnx-community signature, built from
 * standard ops (opset 17) plus `com.microsoft` quantized matmuls.
 *
 * Notation in shape comments: b batch, s new tokens, p past tokens, t = p + s, H hidden,
 * nh query heads, kv key/value heads, g = nh / kv, hd head_dim, I intermediate, V vocab,
 * n logits kept.
 *
 * Inputs   input_ids                 int64 [b, s]
 *          attention_mask            int64 [b, t]   1 = real token, 0 = padding
 *          position_ids              int64 [b, s]
 *          past_key_values.{i}.key   float [b, kv, p, hd]   (and .value; p may be 0)
 *          num_logits_to_keep        int64 []       optional: logits for the last n positions
 *                                                   (0 = all, as in transformers)
 * Outputs  logits                    float [b, n or s, V]
 *          present.{i}.key           float [b, kv, t, hd]   (and .value)
 */
import {
  DataType,
  deferredInitializer,
  initializer,
  irVersionForOpset,
  node,
  opset,
  valueInfo,
  type AttributeValue,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx/index.ts'
import type { ModelDims, WeightFormat } from './model-presets.ts'
import { Q4_BLOCK_SIZE } from '../../src/format/index.ts'
import { hfTensorSpecs, layoutSlots, weightNames, type WeightSlot } from './synth-weights.ts'

/**
 * ai.onnx opset of the generated graphs. ORT-web's wasm backend is the full CPU execution
 * provider, so every opset ORT 1.30 knows runs; 17 is what the onnx-community Qwen exports use
 * (14-18), and it keeps ReduceMean's `axes` an attribute, the RMSNorm pattern ORT fuses into
 * SimplifiedLayerNormalization.
 */
export const OPSET = 17
const MS = 'com.microsoft'
const FLOAT_MIN = -3.4028234663852886e38 // torch.finfo(float32).min, what transformers masks with

export interface GraphOptions {
  format: WeightFormat
  /** Add the `num_logits_to_keep` input (default true). */
  logitsToKeep?: boolean
  /**
   * q8 / q4: the embedding as a float [V, H] table beside the quantized lm_head, as exporters
   * lay out a tied model (synth-weights.ts `SlotLayout`). Default false: a tied embedding reads
   * the lm_head's own quantized initializers.
   */
  embeddingTable?: boolean
}

export interface Qwen2Graph {
  /** Weight initializers have no data yet: fill them in `weights` order when writing. */
  model: ModelProto
  /** The deferred weight initializers, in the order the generator produces them. */
  weights: WeightSlot[]
}

/** Collects nodes and constants; names outputs after the node that makes them. */
class GraphBuilder {
  readonly nodes: NodeProto[] = []
  readonly constants: TensorProto[] = []
  private readonly constantNames = new Map<string, string>()
  private readonly used = new Set<string>()

  /** Add a node with one output; returns the output name. */
  op(
    scope: string,
    type: string,
    inputs: string[],
    attrs: Record<string, AttributeValue | undefined> = {},
    domain?: string,
  ): string {
    return this.opN(scope, type, inputs, 1, attrs, domain)[0]
  }

  opN(
    scope: string,
    type: string,
    inputs: string[],
    outputs: number | string[],
    attrs: Record<string, AttributeValue | undefined> = {},
    domain?: string,
  ): string[] {
    let name = `${scope}/${type}`
    for (let i = 1; this.used.has(name); i++) name = `${scope}/${type}_${i}`
    this.used.add(name)
    const outs =
      typeof outputs === 'number'
        ? Array.from({ length: outputs }, (_, i) => `${name}_output_${i}`)
        : outputs
    this.nodes.push(node(type, inputs, outs, attrs, { name, domain }))
    return outs
  }

  /** An int64 constant, shared by every node that needs the same values. */
  i64(values: number[], dims: number[] = [values.length]): string {
    return this.constant('i64', values, dims, () => BigInt64Array.from(values, BigInt))
  }

  f32(values: number[], dims: number[] = [values.length]): string {
    return this.constant('f32', values, dims, () => Float32Array.from(values))
  }

  private constant(
    kind: string,
    values: number[],
    dims: number[],
    make: () => Float32Array | BigInt64Array,
  ): string {
    const key = `${kind}[${dims}]:${values.join(',')}`
    let name = this.constantNames.get(key)
    if (!name) {
      name = `/const/${kind}_${this.constantNames.size}`
      this.constantNames.set(key, name)
      this.constants.push(initializer(name, make(), dims))
    }
    return name
  }
}

/** Build the graph for `dims` in `format`. */
export function buildQwen2Graph(d: ModelDims, options: GraphOptions): Qwen2Graph {
  const { format } = options
  const logitsToKeep = options.logitsToKeep ?? true
  const layout = { embeddingTable: options.embeddingTable, tied: d.tieWordEmbeddings }
  const table = !!options.embeddingTable && format !== 'fp32'
  const g = new GraphBuilder()
  const nh = d.numHeads
  const kv = d.numKvHeads
  const hd = d.headDim
  const group = nh / kv
  const H = d.hiddenSize
  const V = d.vocabSize

  // ---- shared values: RoPE tables and the attention mask, computed once for all layers

  // cos/sin of position * inv_freq, duplicated over the two halves: [b, 1, s, hd]
  const invFreq = Array.from({ length: hd / 2 }, (_, i) => 1 / Math.pow(d.ropeTheta, (2 * i) / hd))
  const pos = g.op('/rope', 'Cast', ['position_ids'], { to: DataType.FLOAT }) // [b, s]
  const pos3 = g.op('/rope', 'Unsqueeze', [pos, g.i64([2])]) // [b, s, 1]
  const freqs = g.op('/rope', 'Mul', [pos3, g.f32(invFreq, [hd / 2])]) // [b, s, hd/2]
  const cosHalf = g.op('/rope', 'Cos', [freqs])
  const sinHalf = g.op('/rope', 'Sin', [freqs])
  const cos = g.op('/rope', 'Concat', [cosHalf, cosHalf], { axis: -1 }) // [b, s, hd]
  // rotate_half(x) * sin == concat(x2, x1) * concat(-sin, sin): the sign lives in the table
  const negSin = g.op('/rope', 'Neg', [sinHalf])
  const sinSigned = g.op('/rope', 'Concat', [negSin, sinHalf], { axis: -1 }) // [b, s, hd]
  const cos4 = g.op('/rope', 'Unsqueeze', [cos, g.i64([1])]) // [b, 1, s, hd]
  const sin4 = g.op('/rope', 'Unsqueeze', [sinSigned, g.i64([1])]) // [b, 1, s, hd]

  // mask: key j visible to query i iff j <= p + i (causal over cache slots) and mask[b, j] = 1
  const idsShape = g.op('/mask', 'Shape', ['input_ids']) // [2] = (b, s)
  const maskShape = g.op('/mask', 'Shape', ['attention_mask']) // [2] = (b, t)
  const s = g.op('/mask', 'Gather', [idsShape, g.i64([1], [])], { axis: 0 }) // scalar s
  const t = g.op('/mask', 'Gather', [maskShape, g.i64([1], [])], { axis: 0 }) // scalar t
  const p = g.op('/mask', 'Sub', [t, s]) // scalar p
  const keySlots = g.op('/mask', 'Range', [g.i64([0], []), t, g.i64([1], [])]) // [t]
  const querySlots = g.op('/mask', 'Range', [p, t, g.i64([1], [])]) // [s] = p .. t-1
  const causal = g.op('/mask', 'LessOrEqual', [
    g.op('/mask', 'Unsqueeze', [keySlots, g.i64([0])]), // [1, t]
    g.op('/mask', 'Unsqueeze', [querySlots, g.i64([1])]), // [s, 1]
  ]) // [s, t] bool
  const padding = g.op('/mask', 'Cast', ['attention_mask'], { to: DataType.BOOL }) // [b, t]
  const visible = g.op('/mask', 'And', [
    causal,
    g.op('/mask', 'Unsqueeze', [padding, g.i64([1])]), // [b, 1, t]
  ]) // [b, s, t]
  // fully masked rows (left padding) get a uniform softmax instead of NaN, as in transformers
  const bias3 = g.op('/mask', 'Where', [visible, g.f32([0], []), g.f32([FLOAT_MIN], [])]) // [b, s, t]
  let maskBias = g.op('/mask', 'Unsqueeze', [bias3, g.i64([1])]) // [b, 1, s, t]
  // queries are laid out [b, kv, g*s, hd] (row = head_in_group * s + i): repeat the rows g times
  if (group > 1) maskBias = g.op('/mask', 'Tile', [maskBias, g.i64([1, 1, group, 1])]) // [b, 1, g*s, t]

  // ---- building blocks

  const rmsNorm = (scope: string, x: string, weight: string) => {
    // x / sqrt(mean(x^2) + eps) * weight, the pattern ORT fuses into SimplifiedLayerNormalization
    const sq = g.op(scope, 'Pow', [x, g.f32([2], [])])
    const mean = g.op(scope, 'ReduceMean', [sq], { axes: [-1], keepdims: 1 })
    const std = g.op(scope, 'Sqrt', [g.op(scope, 'Add', [mean, g.f32([d.rmsNormEps], [])])])
    return g.op(scope, 'Mul', [g.op(scope, 'Div', [x, std]), weight])
  }

  /** x [..., K] → [..., N] with the checkpoint tensor `hfName` ([N, K]); bias optional. */
  const linear = (
    scope: string,
    x: string,
    hfName: string,
    n: number,
    k: number,
    bias?: string,
    out?: string,
  ) => {
    const w = weightNames(hfName, format)
    const outputs = (last: boolean) => (last && out ? [out] : 1)
    if (format === 'q8') {
      const inputs = [x, w.weight, w.scale, w.zeroPoint, ...(bias ? [bias] : [])]
      return g.opN(scope, 'DynamicQuantizeMatMul', inputs, outputs(true), {}, MS)[0]
    }
    const y =
      format === 'q4'
        ? g.opN(
            scope,
            'MatMulNBits',
            [x, w.weight, w.scale, w.zeroPoint],
            outputs(!bias),
            {
              K: k,
              N: n,
              bits: 4,
              block_size: Q4_BLOCK_SIZE,
            },
            MS,
          )[0]
        : g.opN(scope, 'MatMul', [x, w.weight], outputs(!bias))[0]
    return bias ? g.opN(scope, 'Add', [y, bias], outputs(true))[0] : y
  }

  const rope = (scope: string, x: string) => {
    // x [b, heads, s, hd]: x * cos + concat(x2, x1) * sinSigned
    const [x1, x2] = g.opN(scope, 'Split', [x, g.i64([hd / 2, hd / 2])], 2, { axis: -1 })
    const swapped = g.op(scope, 'Concat', [x2, x1], { axis: -1 })
    return g.op(scope, 'Add', [g.op(scope, 'Mul', [x, cos4]), g.op(scope, 'Mul', [swapped, sin4])])
  }

  // ---- embedding: [b, s] → [b, s, H]

  const embed = weightNames('model.embed_tokens.weight', format)
  let hidden: string
  if (format === 'fp32' || table) {
    const rows = weightNames('model.embed_tokens.weight', 'fp32').weight
    hidden = g.op('/embed', 'Gather', [rows, 'input_ids'], { axis: 0 }) // [b, s, H]
  } else if (format === 'q8') {
    // the [H, V] uint8 matrix the tied lm_head multiplies with; column v is token v's row
    const cols = g.op('/embed', 'Gather', [embed.weight, 'input_ids'], { axis: 1 }) // [H, b, s] u8
    const q = g.op('/embed', 'Cast', [g.op('/embed', 'Transpose', [cols], { perm: [1, 2, 0] })], {
      to: DataType.FLOAT,
    }) // [b, s, H]
    const zp = g.op('/embed', 'Cast', [g.op('/embed', 'Gather', [embed.zeroPoint, 'input_ids'])], {
      to: DataType.FLOAT,
    }) // [b, s]
    const scale = g.op('/embed', 'Gather', [embed.scale, 'input_ids']) // [b, s]
    const centered = g.op('/embed', 'Sub', [q, g.op('/embed', 'Unsqueeze', [zp, g.i64([-1])])])
    hidden = g.op('/embed', 'Mul', [centered, g.op('/embed', 'Unsqueeze', [scale, g.i64([-1])])])
  } else {
    hidden = q4Embedding(g, embed, H)
  }

  // ---- decoder layers

  const pastInputs: string[] = []
  const presentOutputs: string[] = []
  for (let i = 0; i < d.numLayers; i++) {
    const L = `/model/layers.${i}`
    const hf = `model.layers.${i}`
    const pastK = `past_key_values.${i}.key` // [b, kv, p, hd]
    const pastV = `past_key_values.${i}.value` // [b, kv, p, hd]
    const presentK = `present.${i}.key` // [b, kv, t, hd]
    const presentV = `present.${i}.value` // [b, kv, t, hd]
    pastInputs.push(pastK, pastV)
    presentOutputs.push(presentK, presentV)

    const A = `${L}/attn`
    const x = rmsNorm(`${L}/input_layernorm`, hidden, `${hf}.input_layernorm.weight`)
    const bias = (name: string) => (d.qkvBias ? `${hf}.self_attn.${name}.bias` : undefined)
    const q = linear(`${A}/q_proj`, x, `${hf}.self_attn.q_proj.weight`, nh * hd, H, bias('q_proj'))
    const k = linear(`${A}/k_proj`, x, `${hf}.self_attn.k_proj.weight`, kv * hd, H, bias('k_proj'))
    const v = linear(`${A}/v_proj`, x, `${hf}.self_attn.v_proj.weight`, kv * hd, H, bias('v_proj'))
    // [b, s, heads * hd] → [b, heads, s, hd]
    const heads = (scope: string, y: string, n: number) =>
      g.op(scope, 'Transpose', [g.op(scope, 'Reshape', [y, g.i64([0, 0, n, hd])])], {
        perm: [0, 2, 1, 3],
      })
    const qRot = rope(`${A}/q_rope`, heads(`${A}/q_heads`, q, nh)) // [b, nh, s, hd]
    const kRot = rope(`${A}/k_rope`, heads(`${A}/k_heads`, k, kv)) // [b, kv, s, hd]
    const vHeads = heads(`${A}/v_heads`, v, kv) // [b, kv, s, hd]
    g.opN(`${A}/cache`, 'Concat', [pastK, kRot], [presentK], { axis: 2 }) // [b, kv, t, hd]
    g.opN(`${A}/cache`, 'Concat', [pastV, vHeads], [presentV], { axis: 2 }) // [b, kv, t, hd]

    // GQA without copying K/V per head: the g query heads of a kv head become g*s rows
    const qScaled = g.op(`${A}/sdpa`, 'Mul', [qRot, g.f32([1 / Math.sqrt(hd)], [])])
    const qGrouped = g.op(`${A}/sdpa`, 'Reshape', [qScaled, g.i64([0, kv, -1, hd])]) // [b, kv, g*s, hd]
    const kT = g.op(`${A}/sdpa`, 'Transpose', [presentK], { perm: [0, 1, 3, 2] }) // [b, kv, hd, t]
    const scores = g.op(`${A}/sdpa`, 'MatMul', [qGrouped, kT]) // [b, kv, g*s, t]
    const probs = g.op(`${A}/sdpa`, 'Softmax', [g.op(`${A}/sdpa`, 'Add', [scores, maskBias])], {
      axis: -1,
    })
    const ctx = g.op(`${A}/sdpa`, 'MatMul', [probs, presentV]) // [b, kv, g*s, hd]
    const ctxHeads = g.op(`${A}/sdpa`, 'Reshape', [ctx, g.i64([0, nh, -1, hd])]) // [b, nh, s, hd]
    const merged = g.op(`${A}/sdpa`, 'Reshape', [
      g.op(`${A}/sdpa`, 'Transpose', [ctxHeads], { perm: [0, 2, 1, 3] }), // [b, s, nh, hd]
      g.i64([0, 0, nh * hd]),
    ]) // [b, s, nh*hd]
    const attnOut = linear(`${A}/o_proj`, merged, `${hf}.self_attn.o_proj.weight`, H, nh * hd)
    hidden = g.op(L, 'Add', [hidden, attnOut]) // [b, s, H]

    const M = `${L}/mlp`
    const y = rmsNorm(
      `${L}/post_attention_layernorm`,
      hidden,
      `${hf}.post_attention_layernorm.weight`,
    )
    const I = d.intermediateSize
    const gate = linear(`${M}/gate_proj`, y, `${hf}.mlp.gate_proj.weight`, I, H) // [b, s, I]
    const up = linear(`${M}/up_proj`, y, `${hf}.mlp.up_proj.weight`, I, H) // [b, s, I]
    const act = g.op(M, 'Mul', [g.op(M, 'Mul', [gate, g.op(M, 'Sigmoid', [gate])]), up]) // silu(gate) * up
    const down = linear(`${M}/down_proj`, act, `${hf}.mlp.down_proj.weight`, H, I) // [b, s, H]
    hidden = g.op(L, 'Add', [hidden, down])
  }

  // ---- final norm, last n positions, lm_head

  hidden = rmsNorm('/model/norm', hidden, 'model.norm.weight') // [b, s, H]
  if (logitsToKeep) {
    // hidden[:, -n:, :]; n = 0 gives -0 = 0: every position, as transformers does
    const start = g.op('/keep', 'Neg', [
      g.op('/keep', 'Unsqueeze', ['num_logits_to_keep', g.i64([0])]),
    ])
    hidden = g.op('/keep', 'Slice', [hidden, start, g.i64([2 ** 62]), g.i64([1])]) // [b, n, H]
  }
  const headName = d.tieWordEmbeddings && !table ? 'model.embed_tokens.weight' : 'lm_head.weight'
  if (format === 'fp32') {
    // Gemm with transB reads the [V, H] matrix as stored: a tied head needs no transposed copy
    const rows = g.op('/lm_head', 'Reshape', [hidden, g.i64([-1, H])]) // [b*n, H]
    const flat = g.op('/lm_head', 'Gemm', [rows, weightNames(headName, format).weight], {
      transB: 1,
    })
    const lead = g.op('/lm_head', 'Shape', [hidden], { start: 0, end: 2 }) // (b, n)
    const shape = g.op('/lm_head', 'Concat', [lead, g.i64([V])], { axis: 0 })
    g.opN('/lm_head', 'Reshape', [flat, shape], ['logits']) // [b, n, V]
  } else {
    linear('/lm_head', hidden, headName, V, H, undefined, 'logits') // [b, n, V]
  }

  // ---- the model

  const weights = hfTensorSpecs(d).flatMap((spec) => layoutSlots(spec, format, layout))
  const seqOut = logitsToKeep ? 'logits_length' : 'sequence_length'
  const model: ModelProto = {
    ir_version: irVersionForOpset(OPSET),
    opset_import: [opset('', OPSET), opset(MS, 1)],
    producer_name: 'qwen-edge synthetic',
    graph: {
      name: 'qwen2',
      node: g.nodes,
      initializer: [
        ...g.constants,
        ...weights.map((w) => deferredInitializer(w.name, w.dataType, w.dims)),
      ],
      input: [
        valueInfo('input_ids', DataType.INT64, ['batch_size', 'sequence_length']),
        valueInfo('attention_mask', DataType.INT64, ['batch_size', 'total_sequence_length']),
        valueInfo('position_ids', DataType.INT64, ['batch_size', 'sequence_length']),
        ...pastInputs.map((name) =>
          valueInfo(name, DataType.FLOAT, ['batch_size', kv, 'past_sequence_length', hd]),
        ),
        ...(logitsToKeep ? [valueInfo('num_logits_to_keep', DataType.INT64, [])] : []),
      ],
      output: [
        valueInfo('logits', DataType.FLOAT, ['batch_size', seqOut, V]),
        ...presentOutputs.map((name) =>
          valueInfo(name, DataType.FLOAT, ['batch_size', kv, 'total_sequence_length', hd]),
        ),
      ],
    },
  }
  return { model, weights }
}

/**
 * Embedding rows read straight out of the MatMulNBits matrix ([V, blocks, 16] uint8, two
 * 4-bit codes per byte, low nibble first) and dequantized: [b, s] → [b, s, H].
 */
function q4Embedding(g: GraphBuilder, w: ReturnType<typeof weightNames>, H: number): string {
  const E = '/embed'
  const blocks = Math.ceil(H / Q4_BLOCK_SIZE)
  /** uint8 bytes [..., m] → float nibbles [..., 2m] (low nibble first). */
  const unpack = (bytes: string, lead: number[]) => {
    const f = g.op(E, 'Cast', [bytes], { to: DataType.FLOAT })
    const hi = g.op(E, 'Floor', [g.op(E, 'Div', [f, g.f32([16], [])])])
    const lo = g.op(E, 'Sub', [f, g.op(E, 'Mul', [hi, g.f32([16], [])])])
    const pair = g.op(
      E,
      'Concat',
      [g.op(E, 'Unsqueeze', [lo, g.i64([-1])]), g.op(E, 'Unsqueeze', [hi, g.i64([-1])])],
      { axis: -1 },
    ) // [..., m, 2]
    return g.op(E, 'Reshape', [pair, g.i64([0, 0, ...lead, -1])])
  }
  const codes = unpack(g.op(E, 'Gather', [w.weight, 'input_ids'], { axis: 0 }), [blocks]) // [b, s, blocks, 32]
  let zp = unpack(g.op(E, 'Gather', [w.zeroPoint, 'input_ids'], { axis: 0 }), []) // [b, s, 2*ceil(blocks/2)]
  if (blocks % 2 === 1) zp = g.op(E, 'Slice', [zp, g.i64([0]), g.i64([blocks]), g.i64([2])])
  const scales = g.op(E, 'Gather', [w.scale, 'input_ids'], { axis: 0 }) // [b, s, blocks]
  const centered = g.op(E, 'Sub', [codes, g.op(E, 'Unsqueeze', [zp, g.i64([-1])])])
  const values = g.op(E, 'Mul', [centered, g.op(E, 'Unsqueeze', [scales, g.i64([-1])])])
  const flat = g.op(E, 'Reshape', [values, g.i64([0, 0, blocks * Q4_BLOCK_SIZE])]) // [b, s, blocks*32]
  if (blocks * Q4_BLOCK_SIZE === H) return flat
  return g.op(E, 'Slice', [flat, g.i64([0]), g.i64([H]), g.i64([2])]) // [b, s, H]
}
