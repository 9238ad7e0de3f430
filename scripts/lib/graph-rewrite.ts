/**
 * Structural transforms of a decoder export's graph, applied by `model:prepare`:
 *
 * - `addLogitsToKeep`: give an export that computes logits for every position ([b, s, V]) the
 *   `num_logits_to_keep` input of this project's generator (qwen2-graph.ts `/keep`), so the
 *   lm_head runs only on the last n positions.
 * - `convertFloatType`: retype a graph between fp16 and fp32 (initializers, constants, Cast
 *   targets, inputs / outputs / value_info), so fp16 exports can be quantized like fp32 ones.
 *
 * Both return a new ModelProto and leave the one they were given untouched; tensors that do not
 * change are shared between the two (same objects, same raw_data views).
 */
import {
  attribute,
  AttributeType,
  DataType,
  initializer,
  node,
  tensorElementCount,
  tensorRawData,
  valueInfo,
  type AttributeProto,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type TypeProto,
  type ValueInfoProto,
} from './onnx/index.ts'

export const LOGITS_TO_KEEP = 'num_logits_to_keep'

// ---------------------------------------------------------------- graph queries

export interface GraphIndex {
  /** Tensor name → the node that outputs it. */
  producer: Map<string, NodeProto>
  /** Tensor name → the nodes that read it (subgraphs of If / Loop / Scan included). */
  consumers: Map<string, NodeProto[]>
}

export function indexGraph(graph: GraphProto): GraphIndex {
  const producer = new Map<string, NodeProto>()
  const consumers = new Map<string, NodeProto[]>()
  for (const n of graph.node ?? []) {
    for (const o of n.output ?? []) if (o) producer.set(o, n)
    for (const i of nodeReads(n)) {
      let list = consumers.get(i)
      if (!list) consumers.set(i, (list = []))
      if (!list.includes(n)) list.push(n)
    }
  }
  return { producer, consumers }
}

/** Every tensor a node reads: its inputs, and outer-scope names its subgraphs use. */
export function nodeReads(n: NodeProto): string[] {
  const names = (n.input ?? []).filter((i) => i !== '')
  for (const a of n.attribute ?? [])
    for (const g of [...(a.g ? [a.g] : []), ...(a.graphs ?? [])]) names.push(...graphReads(g))
  return names
}

function graphReads(g: GraphProto): string[] {
  const names: string[] = []
  for (const n of g.node ?? []) names.push(...nodeReads(n))
  return names
}

/** The nodes `outputs` depend on, transitively. */
export function ancestors(index: GraphIndex, outputs: string[]): Set<NodeProto> {
  const seen = new Set<NodeProto>()
  const stack = [...outputs]
  while (stack.length) {
    const n = index.producer.get(stack.pop()!)
    if (!n || seen.has(n)) continue
    seen.add(n)
    stack.push(...nodeReads(n))
  }
  return seen
}

/** A name not used by any tensor, node output or value of the graph yet. */
export function uniqueNamer(graph: GraphProto): (base: string) => string {
  const used = new Set<string>()
  for (const t of graph.initializer ?? []) if (t.name) used.add(t.name)
  for (const v of [...(graph.input ?? []), ...(graph.output ?? []), ...(graph.value_info ?? [])])
    if (v.name) used.add(v.name)
  for (const n of graph.node ?? []) {
    for (const o of n.output ?? []) used.add(o)
    if (n.name) used.add(n.name)
  }
  return (base) => {
    let name = base
    for (let i = 1; used.has(name); i++) name = `${base}_${i}`
    used.add(name)
    return name
  }
}

/** The `ai.onnx` opset the model imports (0 when none is named). */
export function onnxOpset(model: ModelProto): number {
  const entry = (model.opset_import ?? []).find((o) => !o.domain || o.domain === 'ai.onnx')
  return entry?.version ?? 0
}

/** Unsqueeze `x` at `axes`: axes as an input from opset 13, as an attribute before. */
export function unsqueezeNode(
  model: ModelProto,
  x: string,
  axes: number[],
  out: string,
  name: string,
  constant: (values: number[]) => string,
): NodeProto {
  if (onnxOpset(model) >= 13) return node('Unsqueeze', [x, constant(axes)], [out], {}, { name })
  return node('Unsqueeze', [x], [out], { axes }, { name })
}

/** Rank of a graph input / value_info / output when the graph declares it. */
export function declaredRank(graph: GraphProto, name: string): number | undefined {
  for (const v of [...(graph.input ?? []), ...(graph.value_info ?? []), ...(graph.output ?? [])])
    if (v.name === name) return v.type?.tensor_type?.shape?.dim?.length
  return undefined
}

// ---------------------------------------------------------------- last-position logits

/** Ops that compute the lm_head: the first of these found walking back from `logits`. */
const HEAD_OPS = new Set([
  'MatMul',
  'Gemm',
  'FusedMatMul',
  'DynamicQuantizeMatMul',
  'MatMulNBits',
  'MatMulInteger',
  'MatMulIntegerToFloat',
])
/** Ops between the lm_head and `logits` that keep the sequence axis: walked through. */
const PASS_THROUGH = new Set([
  'Cast',
  'Identity',
  'Reshape',
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Tanh',
  'Softcap',
])
const MAX_WALK = 8

export type LogitsRewrite =
  { applied: true; lmHead: string; hidden: string } | { applied: false; reason: string }

/**
 * Give the graph an int64 scalar input `num_logits_to_keep` and compute the lm_head only on the
 * last n positions, exactly as qwen2-graph.ts does: `hidden[:, -n:, :]` right before the
 * lm_head (n = 0 keeps every position, as in transformers).
 *
 * The lm_head is the first matmul-like node found walking back from `logits` (through Cast,
 * Reshape, elementwise ops); the sliced tensor is its activation input, or the input of the
 * Reshape that flattens it to rows (the Gemm form). Every reader of that tensor that only
 * feeds `logits` (not a `present.*` output) reads the sliced tensor instead.
 *
 * Assumes the hidden states are [batch, seq, hidden], as in every Optimum decoder export.
 */
export function addLogitsToKeep(model: ModelProto): { model: ModelProto; result: LogitsRewrite } {
  const graph = model.graph
  const skip = (reason: string) => ({ model, result: { applied: false as const, reason } })
  if (!graph) return skip('the model has no graph')
  if ((graph.input ?? []).some((v) => v.name === LOGITS_TO_KEEP))
    return skip(`the graph already has ${LOGITS_TO_KEEP}`)
  if (!(graph.output ?? []).some((v) => v.name === 'logits')) return skip('no logits output')
  const index = indexGraph(graph)

  const findHead = (name: string, depth: number): NodeProto | undefined => {
    const n = index.producer.get(name)
    if (!n || depth > MAX_WALK) return undefined
    if (HEAD_OPS.has(n.op_type ?? '')) return n
    if (!PASS_THROUGH.has(n.op_type ?? '')) return undefined
    for (const i of n.input ?? []) {
      const found = i && findHead(i, depth + 1)
      if (found) return found
    }
    return undefined
  }
  const head = findHead('logits', 0)
  if (!head) return skip('no MatMul / Gemm / MatMulNBits found behind the logits output')

  let hidden = head.input![0]
  const quantizer = index.producer.get(hidden)
  if (quantizer?.op_type === 'DynamicQuantizeLinear') hidden = quantizer.input![0]
  const flatten = index.producer.get(hidden)
  if (flatten?.op_type === 'Reshape') hidden = flatten.input![0]
  const rank = declaredRank(graph, hidden)
  if (rank !== undefined && rank !== 3)
    return skip(`the lm_head input ${hidden} has rank ${rank}, not [batch, seq, hidden]`)

  const others = (graph.output ?? []).map((v) => v.name!).filter((n) => n !== 'logits')
  const shared = ancestors(index, others)
  const logitsOnly = ancestors(index, ['logits'])
  const readers = (index.consumers.get(hidden) ?? []).filter(
    (n) => logitsOnly.has(n) && !shared.has(n),
  )
  if (!readers.length) return skip(`no reader of ${hidden} feeds only the logits`)

  const name = uniqueNamer(graph)
  const constants: TensorProto[] = []
  const i64 = (base: string, values: number[]) => {
    const t = initializer(name(base), BigInt64Array.from(values, BigInt), [values.length])
    constants.push(t)
    return t.name!
  }
  // hidden[:, -n:, :]; n = 0 gives -0 = 0: every position
  const n1 = name('/keep/Unsqueeze_output_0')
  const start = name('/keep/Neg_output_0')
  const kept = name('/keep/Slice_output_0')
  const added: NodeProto[] = [
    unsqueezeNode(model, LOGITS_TO_KEEP, [0], n1, name('/keep/Unsqueeze'), (v) =>
      i64('/keep/axes_0', v),
    ),
    node('Neg', [n1], [start], {}, { name: name('/keep/Neg') }),
    node(
      'Slice',
      [hidden, start, i64('/keep/end', [2 ** 62]), i64('/keep/axes_1', [1])],
      [kept],
      {},
      { name: name('/keep/Slice') },
    ),
  ]
  const rewired = new Set(readers)
  const nodes: NodeProto[] = []
  const producer = index.producer.get(hidden)
  if (!producer) nodes.push(...added) // hidden is a graph input
  for (const n of graph.node ?? []) {
    nodes.push(rewired.has(n) ? { ...n, input: n.input!.map((i) => (i === hidden ? kept : i)) } : n)
    if (n === producer) nodes.push(...added)
  }

  const output = (graph.output ?? []).map((v) => (v.name === 'logits' ? keptLogitsInfo(v) : v))
  const next: ModelProto = {
    ...model,
    graph: {
      ...graph,
      node: nodes,
      initializer: [...(graph.initializer ?? []), ...constants],
      input: [...(graph.input ?? []), valueInfo(LOGITS_TO_KEEP, DataType.INT64, [])],
      output,
    },
  }
  const lmHead = head.name || `${head.op_type} → ${head.output![0]}`
  return { model: next, result: { applied: true, lmHead, hidden } }
}

/** `logits` [b, s, V] → [b, logits_length, V] (the generator's name for the kept length). */
function keptLogitsInfo(v: ValueInfoProto): ValueInfoProto {
  const dims = v.type?.tensor_type?.shape?.dim
  if (!dims || dims.length !== 3) return v
  const dim = [dims[0], { dim_param: 'logits_length' }, dims[2]]
  return { ...v, type: { ...v.type, tensor_type: { ...v.type!.tensor_type, shape: { dim } } } }
}

// ---------------------------------------------------------------- fp16 <-> fp32

const F32 = new Float32Array(1)
const U32 = new Uint32Array(F32.buffer)

/** IEEE half bits → number. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >> 10) & 0x1f
  const frac = h & 0x3ff
  if (exp === 0) return sign * frac * 2 ** -24
  if (exp === 31) return frac ? NaN : sign * Infinity
  return sign * (1 + frac / 1024) * 2 ** (exp - 15)
}

/** number → IEEE half bits, round to nearest even (overflow → ±Infinity). */
export function floatToHalf(f: number): number {
  F32[0] = f
  const x = U32[0]
  const sign = (x >>> 16) & 0x8000
  const exp = (x >>> 23) & 0xff
  let mant = x & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0)
  const e = exp - 127 + 15
  if (e >= 31) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    const half = 1 << (shift - 1)
    const rest = mant & ((1 << shift) - 1)
    let h = mant >> shift
    if (rest > half || (rest === half && h & 1)) h++
    return sign | h
  }
  let h = (e << 10) | (mant >> 13)
  const rest = mant & 0x1fff
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++ // may carry into the exponent: correct
  return sign | h
}

/** A FLOAT16 tensor's values as fp32 (exact). */
export function halfTensorToFloat32(t: TensorProto): Float32Array {
  const raw = tensorRawData(t)
  const bits =
    raw.byteOffset % 2 === 0
      ? new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2)
      : new Uint16Array(new Uint8Array(raw).buffer) // a copy: raw may be a Buffer
  const out = new Float32Array(bits.length)
  const table = halfTable()
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]]
  return out
}

let halfTableMemo: Float32Array | undefined
function halfTable(): Float32Array {
  if (!halfTableMemo) {
    halfTableMemo = new Float32Array(65536)
    for (let h = 0; h < 65536; h++) halfTableMemo[h] = halfToFloat(h)
  }
  return halfTableMemo
}

type FloatKind = typeof DataType.FLOAT | typeof DataType.FLOAT16

/** The tensor retyped to `to` (a new TensorProto; the same object when already that type). */
export function retypeTensor(t: TensorProto, to: FloatKind): TensorProto {
  const from = to === DataType.FLOAT ? DataType.FLOAT16 : DataType.FLOAT
  if (t.data_type !== from) return t
  let data: Float32Array | Uint16Array
  if (to === DataType.FLOAT) data = halfTensorToFloat32(t)
  else {
    const raw = tensorRawData(t)
    const f = new Float32Array(new Uint8Array(raw).buffer)
    data = Uint16Array.from(f, floatToHalf)
  }
  const out: TensorProto = { name: t.name, dims: t.dims, data_type: to }
  if (t.doc_string) out.doc_string = t.doc_string
  out.raw_data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (tensorElementCount(out) !== data.length) throw new Error(`tensor ${t.name}: bad size`)
  return out
}

/** Ops whose attribute names a float type to produce. */
const DTYPE_ATTRS: Record<string, string> = {
  Cast: 'to',
  EyeLike: 'dtype',
  RandomNormal: 'dtype',
  RandomNormalLike: 'dtype',
  RandomUniform: 'dtype',
  RandomUniformLike: 'dtype',
  Multinomial: 'dtype',
  Bernoulli: 'dtype',
}

export interface RetypeStats {
  /** Initializers (and constant tensors in attributes) whose values were converted. */
  tensors: number
  /** Cast / dtype attributes and declared value types that changed. */
  types: number
}

/**
 * Retype every float tensor of the graph between FLOAT16 and FLOAT: initializers, tensors in
 * node attributes (Constant, ConstantOfShape), Cast targets, the declared types of inputs,
 * outputs and value_info, and subgraphs. fp16 → fp32 is exact; a Cast that converted fp32 to
 * fp16 becomes a no-op Cast to fp32, which is harmless. fp32 → fp16 rounds (and overflows to
 * ±Infinity beyond 65504: the -3.4e38 of an attention mask becomes -Infinity).
 */
export function convertFloatType(
  model: ModelProto,
  to: FloatKind,
): { model: ModelProto; stats: RetypeStats } {
  const from = to === DataType.FLOAT ? DataType.FLOAT16 : DataType.FLOAT
  const stats: RetypeStats = { tensors: 0, types: 0 }
  const tensor = (t: TensorProto) => {
    if (t.data_type !== from) return t
    stats.tensors++
    return retypeTensor(t, to)
  }
  const type = (tp: TypeProto | undefined): TypeProto | undefined => {
    if (!tp) return tp
    if (tp.tensor_type?.elem_type === from) {
      stats.types++
      return { ...tp, tensor_type: { ...tp.tensor_type, elem_type: to } }
    }
    if (tp.sequence_type?.elem_type)
      return { ...tp, sequence_type: { elem_type: type(tp.sequence_type.elem_type) } }
    if (tp.optional_type?.elem_type)
      return { ...tp, optional_type: { elem_type: type(tp.optional_type.elem_type) } }
    return tp
  }
  const values = (vs: ValueInfoProto[] | undefined) =>
    vs?.map((v) => ({ ...v, type: type(v.type) }))
  const attribute = (n: NodeProto, a: AttributeProto): AttributeProto => {
    const out = { ...a }
    if (a.t) out.t = tensor(a.t)
    if (a.tensors) out.tensors = a.tensors.map(tensor)
    if (a.g) out.g = graph(a.g)
    if (a.graphs) out.graphs = a.graphs.map(graph)
    if (a.tp) out.tp = type(a.tp)
    const dtypeAttr = DTYPE_ATTRS[n.op_type ?? '']
    if (a.name === dtypeAttr && a.type === AttributeType.INT && Number(a.i) === from) {
      stats.types++
      out.i = to
    }
    return out
  }
  const graph = (g: GraphProto): GraphProto => ({
    ...g,
    node: g.node?.map((n) =>
      n.attribute ? { ...n, attribute: n.attribute.map((a) => attribute(n, a)) } : n,
    ),
    initializer: g.initializer?.map(tensor),
    sparse_initializer: g.sparse_initializer?.map((s) =>
      s.values ? { ...s, values: tensor(s.values) } : s,
    ),
    input: values(g.input),
    output: values(g.output),
    value_info: values(g.value_info),
  })
  return { model: { ...model, graph: model.graph && graph(model.graph) }, stats }
}

/** Drop initializers no node (or subgraph, or graph output) reads any more. */
export function pruneInitializers(model: ModelProto): { model: ModelProto; removed: string[] } {
  const graph = model.graph
  if (!graph) return { model, removed: [] }
  const read = new Set<string>()
  for (const n of graph.node ?? []) for (const i of nodeReads(n)) read.add(i)
  for (const o of graph.output ?? []) if (o.name) read.add(o.name)
  const removed: string[] = []
  const kept = (graph.initializer ?? []).filter((t) => {
    if (read.has(t.name!)) return true
    removed.push(t.name!)
    return false
  })
  const inputs = new Set(removed)
  return {
    model: {
      ...model,
      graph: {
        ...graph,
        initializer: kept,
        // IR < 4 lists initializers as inputs too: drop those entries with their tensors
        input: (graph.input ?? []).filter((v) => !inputs.has(v.name!)),
      },
    },
    removed,
  }
}

/**
 * Sets every MatMulNBits' `accuracy_level` (0: float activations; 4: int8 activations per
 * block, onnxruntime's fastest CPU path). Unlike the rewrites above it changes `model` in place.
 */
export function setAccuracyLevel(model: ModelProto, level: number): void {
  for (const n of model.graph?.node ?? [])
    if (n.op_type === 'MatMulNBits') {
      n.attribute = (n.attribute ?? []).filter((a) => a.name !== 'accuracy_level')
      n.attribute.push(attribute('accuracy_level', level))
    }
}
