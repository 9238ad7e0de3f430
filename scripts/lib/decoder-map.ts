/**
 * The prepare-time "decoder map" (`model:prepare --decoder wasm`, the default with a head split):
 * find, in a q8 or q4 graph whose lm_head was split off (split-head.ts), the operands of every
 * decoder layer's `com.microsoft DynamicQuantizeMatMul` (DQMM, entry format 'dqmm') or
 * `MatMulNBits` (bits 4, blocks of a multiple of 32, no g_idx: format 'nbits') and its RMSNorm
 * weights, and record where their bytes are (manifest.ts `DecoderEntry`), so the engine can run
 * the layers with its own kernels on the very bytes onnxruntime uses. Below, "DQMM" stands for
 * either: a MatMulNBits' [K, N] are its attributes, its bias its 6th input. One kind per graph.
 *
 * Found by structure, not by name (real exports converted by quantize.ts `convertToQ8` name
 * their initializers `onnx::MatMul_123` and may keep a bias as an Add after the matmul), per
 * layer i:
 *
 *   k_proj, v_proj  the one DQMM that `present.{i}.key` / `.value` (Concat of the past and the
 *                   new rows) depends on, walking back through reshapes, rope and bias Adds
 *                   (not through Shape: a shape carries no values)
 *   q_proj          the other DQMM reading k_proj's input, with N = heads x head_dim
 *   gate, up        between this layer's q/k/v and the next layer's (graph order): the two DQMMs
 *                   [H, I] reading the same input; gate is the one whose output feeds a Sigmoid
 *                   (SiLU = x * sigmoid(x))
 *   down            after them, [I, H]
 *   o_proj          before them, [heads x head_dim, H]
 *   inputNorm       the float [H] initializer that RMSNorm multiplies q/k/v's input with: the
 *                   producer of that input is a Mul by it, or a (Skip)SimplifiedLayerNormalization
 *                   / RMSNormalization with it as scale
 *   postNorm        likewise for gate/up's input
 *   finalNorm       likewise for `hidden_states` (through the Slice of `num_logits_to_keep`)
 *
 * A DQMM without a bias input whose output is read only by an Add with a float [N] initializer
 * has that initializer as its bias. B, scale, zero point and bias must be initializers, every
 * past_key_values input float32. Anything else: `applied: false` and the reason. What is found
 * is a claim about the graph's arithmetic, which decoder-check.ts verifies before prepare
 * records it.
 *
 * Where the bytes are (`mapDecoder`, on the graph as prepare writes it): an initializer in the
 * graph's external data is referenced there (file index, offset); one held inline in the graph
 * (prepare keeps tensors under 1 KiB inline: norms and scales of small models, zero points,
 * biases) is copied into the decoder file, `decoder.bin`, as is a one-byte 0 for a DQMM without
 * a zero point.
 */
import {
  decoderTensorBytes,
  zeroPointsAllEight,
  type Qwen2Config,
  type DecoderEntry,
  type DecoderLayerRef,
  type DecoderMatrixRef,
  type DecoderTensorRef,
  type DecoderTensorType,
} from '../../src/format/index.ts'
import type { DecoderLayerData, DecoderMatrixData, DecoderWeights } from '../../src/format/index.ts'
import { indexGraph, nodeReads } from './graph-rewrite.ts'
import {
  DataType,
  getExternalData,
  tensorByteLength,
  tensorRawData,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx/index.ts'
import { floatValues } from './quantize.ts'
import { HIDDEN_STATES, INPUTS_EMBEDS, nbitsMatrix } from './split-head.ts'

const MS = 'com.microsoft'
/** Offsets of tensors in decoder.bin are multiples of this (as prepare aligns external data). */
export const DECODER_FILE_ALIGN = 64

/** The initializers of one DQMM or MatMulNBits. */
export interface DecoderMatrixNames {
  /** Absent: 'dqmm'. */
  kind?: 'dqmm' | 'nbits'
  /** The node, for reports. */
  node: string
  /** DQMM: B [K, N], uint8 or int8; MatMulNBits: B uint8 [N, blocks, blockSize / 2]. */
  weight: string
  /** DQMM: float [N], [1] or []; MatMulNBits: float or float16 [N · blocks] or [N, blocks]. */
  scale: string
  /** MatMulNBits: inputs, outputs and inputs per block (its attributes K, N, block_size). */
  k?: number
  n?: number
  blockSize?: number
  /** Absent when the node has none (zero). */
  zeroPoint?: string
  /** float [N]: the node's 5th input, or the initializer of the Add right after it. */
  bias?: string
  /** The tensor holding the result (bias included): the node's output or that Add's. */
  output: string
}

export interface DecoderLayerNames {
  inputNorm: string
  q: DecoderMatrixNames
  k: DecoderMatrixNames
  v: DecoderMatrixNames
  o: DecoderMatrixNames
  postNorm: string
  gate: DecoderMatrixNames
  up: DecoderMatrixNames
  down: DecoderMatrixNames
}

/** What `findDecoder` found: initializer names. */
export interface DecoderNames {
  layers: DecoderLayerNames[]
  finalNorm: string
  /**
   * The tensor layer 0 starts from (its residual input): `inputs_embeds` when the graph takes
   * it, else the graph's own embedding output. Absent when it could not be told.
   */
  embeddings?: string
}

export type FindDecoderResult =
  { applied: true; names: DecoderNames } | { applied: false; reason: string }

class Skip extends Error {}

/**
 * Find the decoder layers' tensors of a q8 graph after the head split (see the module comment).
 * `applied: false` with the reason when the graph is not in that form.
 */
export function findDecoder(
  model: ModelProto,
  config: Pick<
    Qwen2Config,
    | 'hidden_size'
    | 'intermediate_size'
    | 'num_hidden_layers'
    | 'num_attention_heads'
    | 'num_key_value_heads'
    | 'head_dim'
  >,
): FindDecoderResult {
  try {
    return { applied: true, names: find(model, config) }
  } catch (err) {
    if (err instanceof Skip) return { applied: false, reason: err.message }
    throw err
  }
}

function find(model: ModelProto, config: Parameters<typeof findDecoder>[1]): DecoderNames {
  const graph = model.graph
  if (!graph) throw new Skip('the model has no graph')
  const H = config.hidden_size
  const I = config.intermediate_size
  const L = config.num_hidden_layers
  const hd = config.head_dim ?? H / config.num_attention_heads
  const qDim = config.num_attention_heads * hd
  const kvDim = config.num_key_value_heads * hd
  const outputs = new Set((graph.output ?? []).map((v) => v.name))
  if (!outputs.has(HIDDEN_STATES))
    throw new Skip(`the graph has no ${HIDDEN_STATES} output (the lm_head is not split off)`)
  const inputs = new Map((graph.input ?? []).map((v) => [v.name!, v]))
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]))
  const constant = (name: string) => inits.has(name) && !inputs.has(name)
  const index = indexGraph(graph)
  const order = new Map((graph.node ?? []).map((n, i) => [n, i]))
  const isDqmm = (n: NodeProto) => n.op_type === 'DynamicQuantizeMatMul' && n.domain === MS
  const isNBits = (n: NodeProto) => n.op_type === 'MatMulNBits' && n.domain === MS
  const isMatrix = (n: NodeProto) => isDqmm(n) || isNBits(n)
  /** [K, N]: a DQMM's weight dims, a MatMulNBits' attributes. */
  const dimsOf = (n: NodeProto) =>
    isNBits(n)
      ? [intAttr(n, 'K') ?? -1, intAttr(n, 'N') ?? -1]
      : (inits.get(n.input?.[1] ?? '')?.dims ?? []).map(Number)

  for (let i = 0; i < L; i++)
    for (const kind of ['key', 'value']) {
      const name = `past_key_values.${i}.${kind}`
      const type = inputs.get(name)?.type?.tensor_type?.elem_type
      if (type !== DataType.FLOAT)
        throw new Skip(
          inputs.has(name) ? `${name} is ${typeName(type)}, not float32` : `no input ${name}`,
        )
    }

  /** The one matrix the new rows of `present` come from. */
  const projection = (present: string, past: string): NodeProto => {
    const concat = index.producer.get(present)
    const ins = concat?.input ?? []
    const axis = concat && intAttr(concat, 'axis')
    if (
      concat?.op_type !== 'Concat' ||
      concat.domain ||
      ins.length !== 2 ||
      ins[0] !== past ||
      (axis !== 2 && axis !== -2)
    )
      throw new Skip(
        `${present} is ${concat ? `made by ${describe(concat)}` : 'not made by a node'}, ` +
          `not Concat(${past}, new rows) on the sequence axis`,
      )
    const found = new Set<NodeProto>()
    const seen = new Set<string>()
    const stack = [ins[1]]
    while (stack.length) {
      const name = stack.pop()!
      if (seen.has(name)) continue
      seen.add(name)
      const p = index.producer.get(name)
      if (!p || p.op_type === 'Shape' || p.op_type === 'Size') continue
      if (isMatrix(p)) found.add(p)
      else stack.push(...nodeReads(p))
    }
    if (found.size !== 1)
      throw new Skip(
        `${present} depends on ${found.size} DynamicQuantizeMatMul or MatMulNBits nodes, ` +
          'expected one' +
          (found.size ? ` (${[...found].slice(0, 3).map(describe).join(', ')})` : ''),
      )
    return [...found][0]
  }

  const isBias = (name: string | undefined, n: number) => {
    const t = name && constant(name) ? inits.get(name) : undefined
    return t?.data_type === DataType.FLOAT && sameDims(t.dims, [n])
  }
  /** The Add of a float [n] initializer that is the only reader of a matrix's output. */
  const biasAdd = (matrix: NodeProto, n: number) => {
    const out = matrix.output![0]
    const readers = index.consumers.get(out) ?? []
    const add = readers[0]
    if (readers.length !== 1 || add.op_type !== 'Add' || add.domain || outputs.has(out)) return
    const bias = add.input?.[0] === out ? add.input?.[1] : add.input?.[0]
    const own = matrix.input?.[isNBits(matrix) ? 5 : 4]
    return own || !isBias(bias, n) ? undefined : { bias: bias!, output: add.output![0] }
  }
  /** The tensor with a DQMM's result, bias included. */
  const result = (dqmm: NodeProto, n: number) => biasAdd(dqmm, n)?.output ?? dqmm.output![0]

  const operands = (n: NodeProto, what: string, k: number, nOut: number): DecoderMatrixNames =>
    isNBits(n) ? nbitsOperands(n, what, k, nOut) : dqmmOperands(n, what, k, nOut)

  const nbitsOperands = (
    n: NodeProto,
    what: string,
    k: number,
    nOut: number,
  ): DecoderMatrixNames => {
    const [, b, s, z, g, bias] = n.input ?? []
    const at = `${what} (${describe(n)})`
    for (const [name, role] of [
      [b, 'weight'],
      [s, 'scales'],
      [z, 'zero points'],
      [bias, 'bias'],
    ])
      if (name && !constant(name))
        throw new Skip(`${at}: its ${role} ${name} is not an initializer`)
    if (g) throw new Skip(`${at}: a g_idx input (act-order blocks)`)
    const m = nbitsMatrix(n, k, nOut, inits)
    if (typeof m === 'string') throw new Skip(`${at}: ${m}`)
    if (bias && !isBias(bias, nOut))
      throw new Skip(`${at}: its bias ${bias} is not float [${nOut}]`)
    const separate = bias ? undefined : biasAdd(n, nOut)
    const names: DecoderMatrixNames = {
      kind: 'nbits',
      node: describe(n),
      weight: b,
      scale: s,
      k,
      n: nOut,
      blockSize: m.blockSize,
      output: separate?.output ?? n.output![0],
    }
    // zero points that are all 8 say nothing MatMulNBits' default does not: left out of the map,
    // the matrix takes the engine's symmetric q4 layout (4 bytes less a group of 4 blocks). Only
    // an initializer whose bytes are at hand (prepare finds the decoder before it writes the
    // external data) can be read here; any other keeps its zero points.
    const zp = z ? inits.get(z) : undefined
    const allEight =
      zp !== undefined &&
      !getExternalData(zp) &&
      zeroPointsAllEight(tensorRawData(zp), nOut, Math.ceil(k / m.blockSize))
    if (z && !allEight) names.zeroPoint = z
    if (bias || separate) names.bias = bias || separate!.bias
    return names
  }

  const dqmmOperands = (
    n: NodeProto,
    what: string,
    k: number,
    nOut: number,
  ): DecoderMatrixNames => {
    const [, b, s, z, bias] = n.input ?? []
    const at = `${what} (${describe(n)})`
    for (const [name, role] of [
      [b, 'weight'],
      [s, 'scale'],
      [z, 'zero point'],
      [bias, 'bias'],
    ])
      if (name && !constant(name))
        throw new Skip(`${at}: its ${role} ${name} is not an initializer`)
    if (!b || !s) throw new Skip(`${at}: no weight or scale`)
    const B = inits.get(b)!
    if (B.data_type !== DataType.UINT8 && B.data_type !== DataType.INT8)
      throw new Skip(`${at}: its weight ${b} is ${typeName(B.data_type)}, not uint8 or int8`)
    if (!sameDims(dimsOf(n), [k, nOut]))
      throw new Skip(`${at}: its weight is [${dimsOf(n).join(', ')}], not [${k}, ${nOut}]`)
    const perColumn = (t: TensorProto) => [[nOut], [1], []].some((d) => sameDims(t.dims, d))
    const S = inits.get(s)!
    if (S.data_type !== DataType.FLOAT || !perColumn(S))
      throw new Skip(`${at}: its scale ${s} is not float [${nOut}], [1] or []`)
    if (z) {
      const Z = inits.get(z)!
      if (Z.data_type !== B.data_type || !perColumn(Z))
        throw new Skip(
          `${at}: its zero point ${z} is not ${typeName(B.data_type)} [${nOut}] or [1]`,
        )
    }
    if (bias && !isBias(bias, nOut))
      throw new Skip(`${at}: its bias ${bias} is not float [${nOut}]`)
    const separate = biasAdd(n, nOut) // none when the node has a bias input
    const names: DecoderMatrixNames = {
      node: describe(n),
      weight: b,
      scale: s,
      output: separate?.output ?? n.output![0],
    }
    if (z) names.zeroPoint = z
    if (bias || separate) names.bias = bias || separate!.bias
    return names
  }

  /** The RMSNorm weight `tensor` was multiplied with. */
  const normWeight = (tensor: string, what: string): string => {
    const isWeight = (name: string | undefined): name is string => {
      const t = name && constant(name) ? inits.get(name) : undefined
      return t?.data_type === DataType.FLOAT && sameDims(t.dims, [H])
    }
    for (let name = tensor; ;) {
      const p = index.producer.get(name)
      if (!p) throw new Skip(`${what}: ${name} is not computed by a node`)
      const op = p.op_type
      if (!p.domain && (op === 'Identity' || (op === 'Cast' && intAttr(p, 'to') === 1))) {
        name = p.input![0]
        continue
      }
      if (op === 'Mul' && !p.domain) {
        const weights = (p.input ?? []).filter(isWeight)
        if (weights.length === 1) return weights[0]
        throw new Skip(`${what}: ${describe(p)} does not multiply by one float [${H}] initializer`)
      }
      const scaleAt =
        (op === 'SimplifiedLayerNormalization' && (!p.domain || p.domain === MS)) ||
        (op === 'RMSNormalization' && !p.domain)
          ? 1
          : op === 'SkipSimplifiedLayerNormalization' && p.domain === MS
            ? 2
            : -1
      if (scaleAt > 0 && p.output?.[0] === name) {
        const w = p.input?.[scaleAt]
        if (isWeight(w)) return w
        throw new Skip(`${what}: the scale of ${describe(p)} is not a float [${H}] initializer`)
      }
      throw new Skip(
        `${what}: ${name} comes from ${describe(p)}, not an RMSNorm ` +
          '(a Mul by its weight, or SimplifiedLayerNormalization)',
      )
    }
  }

  const attention: NodeProto[][] = []
  for (let i = 0; i < L; i++) {
    const k = projection(`present.${i}.key`, `past_key_values.${i}.key`)
    const v = projection(`present.${i}.value`, `past_key_values.${i}.value`)
    if (k === v) throw new Skip(`layer ${i}: key and value come from the same ${describe(k)}`)
    const x = k.input![0]
    if (v.input![0] !== x) throw new Skip(`layer ${i}: k_proj and v_proj read different inputs`)
    const qs = (index.consumers.get(x) ?? []).filter(
      (n) => isMatrix(n) && n !== k && n !== v && sameDims(dimsOf(n), [H, qDim]),
    )
    if (qs.length !== 1)
      throw new Skip(
        `layer ${i}: ${qs.length} matrices [${H}, ${qDim}] read k_proj's input, ` +
          'expected one (q_proj)',
      )
    attention.push([qs[0], k, v])
  }

  const nodes = graph.node ?? []
  const layers: DecoderLayerNames[] = []
  for (let i = 0; i < L; i++) {
    const [q, k, v] = attention[i]
    const lo = Math.max(...attention[i].map((n) => order.get(n)!))
    const hi = i + 1 < L ? Math.min(...attention[i + 1].map((n) => order.get(n)!)) : nodes.length
    if (hi <= lo) throw new Skip(`layer ${i + 1}'s q/k/v come before layer ${i}'s`)
    const between = nodes.slice(lo + 1, hi).filter(isMatrix)
    const mlpIn = between.filter((n) => sameDims(dimsOf(n), [H, I]))
    if (mlpIn.length !== 2 || mlpIn[0].input![0] !== mlpIn[1].input![0])
      throw new Skip(
        `layer ${i}: ${mlpIn.length} matrices [${H}, ${I}] after the attention, ` +
          'expected two reading the same input (gate_proj, up_proj)',
      )
    const feedsSigmoid = (n: NodeProto) =>
      (index.consumers.get(result(n, I)) ?? []).some((c) => c.op_type === 'Sigmoid' && !c.domain)
    const gates = mlpIn.filter(feedsSigmoid)
    if (gates.length !== 1)
      throw new Skip(
        `layer ${i}: ${gates.length} of the two [${H}, ${I}] matmuls feed a Sigmoid, ` +
          'expected one (gate_proj, SiLU)',
      )
    const gate = gates[0]
    const up = mlpIn.find((n) => n !== gate)!
    const first = Math.min(order.get(gate)!, order.get(up)!)
    const last = Math.max(order.get(gate)!, order.get(up)!)
    const downs = between.filter((n) => order.get(n)! > last && sameDims(dimsOf(n), [I, H]))
    const os = between.filter((n) => order.get(n)! < first && sameDims(dimsOf(n), [qDim, H]))
    if (downs.length !== 1 || os.length !== 1)
      throw new Skip(
        `layer ${i}: ${os.length} matrices [${qDim}, ${H}] before gate/up and ` +
          `${downs.length} [${I}, ${H}] after them, expected one each (o_proj, down_proj)`,
      )
    const known = new Set([...mlpIn, downs[0], os[0]])
    const extra = between.find((n) => !known.has(n))
    if (extra) throw new Skip(`layer ${i}: unexpected ${describe(extra)} in the layer`)
    layers.push({
      inputNorm: normWeight(q.input![0], `layer ${i} input norm`),
      q: operands(q, `layer ${i} q_proj`, H, qDim),
      k: operands(k, `layer ${i} k_proj`, H, kvDim),
      v: operands(v, `layer ${i} v_proj`, H, kvDim),
      o: operands(os[0], `layer ${i} o_proj`, qDim, H),
      postNorm: normWeight(gate.input![0], `layer ${i} post-attention norm`),
      gate: operands(gate, `layer ${i} gate_proj`, H, I),
      up: operands(up, `layer ${i} up_proj`, H, I),
      down: operands(downs[0], `layer ${i} down_proj`, I, H),
    })
  }

  // the final norm: behind hidden_states, through the Slice of num_logits_to_keep and the like
  let hidden = HIDDEN_STATES
  for (let p = index.producer.get(hidden); p && FINAL_PASS.has(p.op_type ?? '') && !p.domain;) {
    if (p.op_type === 'Cast' && intAttr(p, 'to') !== 1) break
    hidden = p.input![0]
    p = index.producer.get(hidden)
  }
  const finalNorm = normWeight(hidden, 'final norm')

  // the engine packs one kind of matrix per decoder (its entry's format)
  const kinds = new Set(
    layers.flatMap((l) => [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].map((m) => m.kind ?? 'dqmm')),
  )
  if (kinds.size > 1)
    throw new Skip('the layers mix DynamicQuantizeMatMul and MatMulNBits matrices')

  const names: DecoderNames = { layers, finalNorm }
  const embeddings = inputs.has(INPUTS_EMBEDS) ? INPUTS_EMBEDS : residualInput(layers[0].o.output)
  if (embeddings) names.embeddings = embeddings
  return names

  /** What o_proj's result is added to: the layer's residual input. */
  function residualInput(out: string): string | undefined {
    for (const c of index.consumers.get(out) ?? []) {
      const [a, b] = c.input ?? []
      if ((c.op_type === 'Add' && !c.domain) || c.op_type === 'SkipSimplifiedLayerNormalization')
        return a === out ? b : b === out ? a : undefined
    }
    return undefined
  }
}

/** Ops between the final norm and `hidden_states` that keep its values. */
const FINAL_PASS = new Set([
  'Slice',
  'Gather',
  'Reshape',
  'Squeeze',
  'Unsqueeze',
  'Identity',
  'Cast',
])

// ---------------------------------------------------------------- where the bytes are

export interface MapDecoderOptions {
  /** The stage's external-data locations in manifest order: a ref's `file` is an index here. */
  externalData: string[]
  /** What `findDecoder` found on this graph before, if known (saves finding it again). */
  names?: DecoderNames
}

export type MapDecoderResult =
  | {
      applied: true
      /** The manifest entry without `file`: prepare adds it once decoder.bin is written. */
      entry: Omit<DecoderEntry, 'file'>
      /** decoder.bin: the inline tensors (empty when there are none). */
      bytes: Uint8Array
      names: DecoderNames
      /** Tensors referenced in the graph's external data / copied into decoder.bin. */
      external: number
      inline: number
    }
  | { applied: false; reason: string }

/**
 * The manifest's decoder entry for `model` as it will be written: external initializers must
 * already point at their final offsets (prepare calls this after writing the data file).
 */
export function mapDecoder(
  model: ModelProto,
  config: Parameters<typeof findDecoder>[1],
  options: MapDecoderOptions,
): MapDecoderResult {
  let names = options.names
  if (!names) {
    const found = findDecoder(model, config)
    if (!found.applied) return found
    names = found.names
  }
  const inits = new Map((model.graph?.initializer ?? []).map((t) => [t.name!, t]))
  const parts: Uint8Array[] = []
  let size = 0
  let external = 0
  let inline = 0
  const append = (bytes: Uint8Array) => {
    const pad = (DECODER_FILE_ALIGN - (size % DECODER_FILE_ALIGN)) % DECODER_FILE_ALIGN
    if (pad) parts.push(new Uint8Array(pad))
    const offset = size + pad
    parts.push(bytes)
    size = offset + bytes.byteLength
    return offset
  }
  const refs = new Map<string, DecoderTensorRef>()
  const ref = (name: string): DecoderTensorRef => {
    let r = refs.get(name)
    if (r) return r
    const t = inits.get(name)
    if (!t) throw new Skip(`no initializer ${name}`)
    const type = tensorType(t)
    const dims = (t.dims ?? []).map(Number)
    const ext = getExternalData(t)
    if (ext) {
      const file = options.externalData.indexOf(ext.location)
      if (file < 0)
        throw new Skip(`${name} is in ${ext.location}, not in the package's external data`)
      if (ext.length !== tensorByteLength(t))
        throw new Skip(`${name}: ${ext.length} bytes of external data for its shape`)
      r = { file, offset: ext.offset, dims, type }
      external++
    } else {
      const bytes = tensorRawData(t)
      if (bytes.byteLength !== decoderTensorBytes({ dims, type }))
        throw new Skip(`${name}: ${bytes.byteLength} bytes for its shape`)
      r = { file: 'decoder', offset: append(bytes), dims, type }
      inline++
    }
    refs.set(name, r)
    return r
  }
  const zeros = new Map<DecoderTensorType, DecoderTensorRef>()
  const matrix = (m: DecoderMatrixNames): DecoderMatrixRef => {
    if (m.kind === 'nbits')
      return {
        kind: 'nbits',
        bits: 4,
        k: m.k!,
        n: m.n!,
        blockSize: m.blockSize!,
        weight: ref(m.weight),
        scale: ref(m.scale),
        ...(m.zeroPoint && { zeroPoint: ref(m.zeroPoint) }),
        ...(m.bias && { bias: ref(m.bias) }),
      }
    const weight = ref(m.weight)
    let zeroPoint: DecoderTensorRef
    if (m.zeroPoint) zeroPoint = ref(m.zeroPoint)
    else {
      // DQMM without a zero point: 0, one byte for the whole matrix
      zeroPoint = zeros.get(weight.type) ?? {
        file: 'decoder',
        offset: append(new Uint8Array(1)),
        dims: [],
        type: weight.type,
      }
      zeros.set(weight.type, zeroPoint)
    }
    return { weight, scale: ref(m.scale), zeroPoint, ...(m.bias && { bias: ref(m.bias) }) }
  }
  try {
    const layers = names.layers.map((l): DecoderLayerRef => ({
      inputNorm: ref(l.inputNorm),
      q: matrix(l.q),
      k: matrix(l.k),
      v: matrix(l.v),
      o: matrix(l.o),
      postNorm: ref(l.postNorm),
      gate: matrix(l.gate),
      up: matrix(l.up),
      down: matrix(l.down),
    }))
    const format = names.layers[0]?.q.kind === 'nbits' ? ('nbits' as const) : ('dqmm' as const)
    const entry = { format, layers, finalNorm: ref(names.finalNorm) }
    const bytes = new Uint8Array(size)
    let at = 0
    for (const p of parts) {
      bytes.set(p, at)
      at += p.byteLength
    }
    return { applied: true, entry, bytes, names, external, inline }
  } catch (err) {
    if (err instanceof Skip) return { applied: false, reason: err.message }
    throw err
  }
}

/**
 * The decoder weights as the engine takes them, straight from the initializers of a model that
 * holds its data inline (views where aligned): the check's input, before anything is written.
 */
export function decoderWeightsOf(model: ModelProto, names: DecoderNames): DecoderWeights {
  const inits = new Map((model.graph?.initializer ?? []).map((t) => [t.name!, t]))
  const get = (name: string) => {
    const t = inits.get(name)
    if (!t) throw new Error(`decoderWeightsOf: no initializer ${name}`)
    return t
  }
  const matrix = (m: DecoderMatrixNames): DecoderMatrixData => {
    if (m.kind === 'nbits') {
      const s = get(m.scale)
      return {
        kind: 'nbits',
        k: m.k!,
        n: m.n!,
        tensors: {
          n: m.n!,
          k: m.k!,
          bits: 4,
          blockSize: m.blockSize!,
          b: tensorRawData(get(m.weight)),
          scales:
            s.data_type === DataType.FLOAT16
              ? new Uint16Array(new Uint8Array(tensorRawData(s)).buffer)
              : floatValues(s),
          ...(m.zeroPoint && { zeroPoints: tensorRawData(get(m.zeroPoint)) }),
        },
        ...(m.bias && { bias: floatValues(get(m.bias)) }),
      }
    }
    const w = get(m.weight)
    const [k, n] = (w.dims ?? []).map(Number)
    return {
      k,
      n,
      weight: tensorRawData(w),
      signed: w.data_type === DataType.INT8,
      scale: floatValues(get(m.scale)),
      zeroPoint: m.zeroPoint ? tensorRawData(get(m.zeroPoint)) : new Uint8Array(1),
      ...(m.bias && { bias: floatValues(get(m.bias)) }),
    }
  }
  return {
    layers: names.layers.map((l): DecoderLayerData => ({
      inputNorm: floatValues(get(l.inputNorm)),
      q: matrix(l.q),
      k: matrix(l.k),
      v: matrix(l.v),
      o: matrix(l.o),
      postNorm: floatValues(get(l.postNorm)),
      gate: matrix(l.gate),
      up: matrix(l.up),
      down: matrix(l.down),
    })),
    finalNorm: floatValues(get(names.finalNorm)),
  }
}

// ---------------------------------------------------------------- helpers

function tensorType(t: TensorProto): DecoderTensorType {
  if (t.data_type === DataType.FLOAT) return 'float32'
  if (t.data_type === DataType.UINT8) return 'uint8'
  if (t.data_type === DataType.INT8) return 'int8'
  if (t.data_type === DataType.FLOAT16) return 'float16'
  throw new Skip(`${t.name} is ${typeName(t.data_type)}, not float32, float16, uint8 or int8`)
}

function describe(n: NodeProto): string {
  return n.name ? `${n.op_type} ${n.name}` : `${n.op_type} → ${n.output?.[0]}`
}

function intAttr(n: NodeProto, name: string): number | undefined {
  const a = n.attribute?.find((x) => x.name === name)
  return a?.i === undefined ? undefined : Number(a.i)
}

function sameDims(dims: Array<number | bigint> | undefined, expected: number[]): boolean {
  return (dims ?? []).length === expected.length && expected.every((d, i) => Number(dims![i]) === d)
}

function typeName(t: number | undefined): string {
  const entry = Object.entries(DataType).find(([, v]) => v === t)
  return entry ? entry[0].toLowerCase() : `type ${t}`
}
