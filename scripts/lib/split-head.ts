/**
 * The prepare-time "split head" (`model:prepare --head wasm`, the default): the lm_head of a q8
 * graph, and for tied weights the embedding lookup, move out of the ONNX graph into one file,
 * `head.q8`, which the engine runs with its own WASM SIMD kernel (about 3x faster than
 * onnxruntime-web's DynamicQuantizeMatMul on the 151936 x 896 lm_head of Qwen2.5-0.5B).
 *
 * What it applies to: the q8 form (qwen2-graph.ts `--format q8`, or quantize.ts `convertToQ8`),
 * where graph output `logits` [b, n, V] is `com.microsoft DynamicQuantizeMatMul(A, B, scale, zp)`
 * with B uint8 [H, V], scale float [V] and zp uint8 [V] initializers (per column), no bias. A
 * tied model also reads B, zp and scale with Gathers by `input_ids` and dequantizes the columns:
 * embedding[t][k] = (B[k][t] - zp[t]) * scale[t].
 *
 * The graph after the split:
 *   outputs  hidden_states  float [b, n, H]   A, what the lm_head multiplied (replaces logits)
 *   inputs   inputs_embeds  float [b, s, H]   tied only: replaces the embedding subgraph; the
 *                                             engine looks the rows up in the head file
 *            input_ids      kept as an input even when nothing reads it any more
 * B, scale and zp are pruned when nothing else reads them.
 *
 * The head file ('q8-rows', src/core/manifest.ts `headLayout`), little-endian:
 *   [0, V*S)           row v: int8 B[k][v] - 128 for k < H, then zeros up to the stride S
 *   [V*S, V*S + V)     int8 zp[v] - 128
 *   [align4(..), +4V)  float32 scale[v]
 * so (row[v][k] - zp'[v]) = (B[k][v] - zp[v]) exactly: the same integers the graph used.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { InferenceSession, Tensor } from 'onnxruntime-node'
import { headLayout, headStride, type Qwen2Config } from '../../src/format/index.ts'
import { indexGraph, nodeReads, pruneInitializers, uniqueNamer } from './graph-rewrite.ts'
import { CHECK_TOKENS, tokenFeeds, writeModelWithExternalData } from './logit-check.ts'
import {
  DataType,
  isExternal,
  tensorRawData,
  valueInfo,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type TensorShapeDimension,
  type ValueInfoProto,
} from './onnx/index.ts'
import { floatValues } from './quantize.ts'

export const HIDDEN_STATES = 'hidden_states'
export const INPUTS_EMBEDS = 'inputs_embeds'
const MS = 'com.microsoft'

/** Ops the embedding subgraph may consist of (the generator's and convertToQ8's use a subset). */
const EMBEDDING_OPS = new Set([
  'Gather',
  'Transpose',
  'Cast',
  'Sub',
  'Mul',
  'Unsqueeze',
  'Squeeze',
  'Reshape',
  'Identity',
])

/** The head file's contents and shape. */
export interface HeadRows {
  vocab: number
  hidden: number
  /** Bytes per row: hidden rounded up to a multiple of 32. */
  stride: number
  /** True when the graph takes `inputs_embeds` (tied weights: the rows are the embedding). */
  embedding: boolean
  /** The 'q8-rows' file. */
  bytes: Uint8Array
}

export interface SplitHeadStats {
  /** The DynamicQuantizeMatMul node removed. */
  lmHead: string
  /** The tensor now output as `hidden_states` (the lm_head's activation input). */
  hiddenTensor: string
  /** The tensor the removed embedding subgraph produced, now read from `inputs_embeds`. */
  embeddingTensor?: string
  /** Nodes removed with the embedding (0 when untied). */
  embeddingNodes: number
  /** Initializers nothing reads any more. */
  removedInitializers: string[]
}

export type SplitHeadResult =
  | ({ applied: true; model: ModelProto; head: HeadRows } & SplitHeadStats)
  | { applied: false; reason: string; model: ModelProto }

/**
 * Move the lm_head (and a tied embedding) of a q8 graph into head rows. The model must hold its
 * data inline. Returns `applied: false` with a reason, and the model untouched, when the graph
 * is not in the expected form. The model given is never modified; unchanged tensors are shared.
 */
export function splitHead(
  model: ModelProto,
  config: Pick<Qwen2Config, 'vocab_size' | 'hidden_size'>,
): SplitHeadResult {
  const graph = model.graph
  const skip = (reason: string) => ({ applied: false as const, reason, model })
  if (!graph) return skip('the model has no graph')
  const H = config.hidden_size
  const V = config.vocab_size
  if (!(graph.output ?? []).some((v) => v.name === 'logits')) return skip('no logits output')
  const taken = uniqueNamer(graph)
  for (const name of [HIDDEN_STATES, INPUTS_EMBEDS])
    if (taken(name) !== name) return skip(`the graph already has a tensor named ${name}`)

  const index = indexGraph(graph)
  const head = index.producer.get('logits')
  if (!head) return skip('logits is not computed by a node')
  if (head.op_type !== 'DynamicQuantizeMatMul' || head.domain !== MS) {
    return skip(
      `logits comes from ${describe(head)}, not a com.microsoft DynamicQuantizeMatMul ` +
        '(the q8 form: --format q8)',
    )
  }
  const [a, b, s, z, bias] = head.input ?? []
  if (bias) return skip(`the lm_head ${describe(head)} has a bias`)
  if (!z) return skip(`the lm_head ${describe(head)} has no zero point`)
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]))
  const graphInputs = new Set((graph.input ?? []).map((v) => v.name))
  const B = inits.get(b)
  const S = inits.get(s)
  const Z = inits.get(z)
  if (!B || !S || !Z || [b, s, z].some((n) => graphInputs.has(n)))
    return skip(`the lm_head's weight, scale and zero point are not all initializers`)
  const shape = (t: TensorProto) => `${typeName(t.data_type)} [${(t.dims ?? []).join(', ')}]`
  if (B.data_type !== DataType.UINT8 || !sameDims(B.dims, [H, V]))
    return skip(`the lm_head weight ${b} is ${shape(B)}, not uint8 [${H}, ${V}]`)
  if (S.data_type !== DataType.FLOAT || !sameDims(S.dims, [V]))
    return skip(`the lm_head scale ${s} is ${shape(S)}, not float [${V}] (one per column)`)
  if (Z.data_type !== DataType.UINT8 || !sameDims(Z.dims, [V]))
    return skip(`the lm_head zero point ${z} is ${shape(Z)}, not uint8 [${V}] (one per column)`)
  for (const t of [B, S, Z])
    if (isExternal(t)) throw new Error(`splitHead: ${t.name} is external data; load it inline`)

  // ---- the embedding: Gathers of B / zp / scale by input_ids, and what computes from them only

  const seeds: NodeProto[] = []
  for (const t of [b, s, z]) {
    for (const n of index.consumers.get(t) ?? []) {
      if (n === head || seeds.includes(n)) continue
      if (n.op_type === 'Gather' && !n.domain && n.input![0] === t && n.input![1] === 'input_ids') {
        seeds.push(n)
        continue
      }
      return skip(`${t} is also read by ${describe(n)}, not only by the lm_head and an embedding`)
    }
  }
  let embedding: { nodes: Set<NodeProto>; output: string } | undefined
  if (seeds.length) {
    const found = findEmbedding(graph, index, seeds, b, inits)
    if (typeof found === 'string') return skip(found)
    embedding = found
  }

  // ---- the new graph

  const nodes: NodeProto[] = []
  const removed = new Set<NodeProto>([head, ...(embedding?.nodes ?? [])])
  const aProducer = index.producer.get(a)
  const renameA =
    aProducer !== undefined &&
    !removed.has(aProducer) &&
    (index.consumers.get(a) ?? []).every((n) => n === head) &&
    !(graph.output ?? []).some((v) => v.name === a)
  for (const n of graph.node ?? []) {
    if (removed.has(n)) continue
    let out = n
    if (renameA && n === aProducer)
      out = { ...out, output: out.output!.map((o) => (o === a ? HIDDEN_STATES : o)) }
    if (embedding && (n.input ?? []).includes(embedding.output))
      out = { ...out, input: out.input!.map((i) => (i === embedding.output ? INPUTS_EMBEDS : i)) }
    nodes.push(out)
  }
  if (!renameA)
    nodes.push({
      op_type: 'Identity',
      input: [a],
      output: [HIDDEN_STATES],
      name: taken('/hidden_states/Identity'),
    })
  dropOrphans(nodes, removed, graph)

  const logitsInfo = graph.output!.find((v) => v.name === 'logits')!
  const logitsDims = logitsInfo.type?.tensor_type?.shape?.dim ?? []
  const hiddenInfo = valueInfoWithDims(HIDDEN_STATES, [
    logitsDims[0] ?? { dim_param: 'batch_size' },
    logitsDims[1] ?? { dim_param: 'sequence_length' },
    { dim_value: H },
  ])
  const inputs = [...(graph.input ?? [])]
  if (embedding) {
    const idsDims = inputs.find((v) => v.name === 'input_ids')?.type?.tensor_type?.shape?.dim
    const embeds = valueInfoWithDims(INPUTS_EMBEDS, [
      idsDims?.[0] ?? { dim_param: 'batch_size' },
      idsDims?.[1] ?? { dim_param: 'sequence_length' },
      { dim_value: H },
    ])
    const at = inputs.findIndex((v) => v.name === 'input_ids')
    inputs.splice(at + 1, 0, embeds)
  }
  const dropInfo = new Set([
    'logits',
    ...(renameA ? [a] : []),
    ...(embedding ? [embedding.output] : []),
  ])
  let next: ModelProto = {
    ...model,
    graph: {
      ...graph,
      node: nodes,
      input: inputs,
      output: graph.output!.map((v) => (v.name === 'logits' ? hiddenInfo : v)),
      value_info: (graph.value_info ?? []).filter((v) => !dropInfo.has(v.name!)),
    },
  }
  const pruned = pruneInitializers(next)
  next = pruned.model
  const dangling = danglingInputs(next.graph!)
  if (dangling.length)
    return skip(`the split would leave unresolved tensors: ${dangling.slice(0, 4).join(', ')}`)

  const bytes = packHeadRows(tensorRawData(B), floatValues(S), tensorRawData(Z), H, V)
  return {
    applied: true,
    model: next,
    head: { vocab: V, hidden: H, stride: headStride(H), embedding: !!embedding, bytes },
    lmHead: describe(head),
    hiddenTensor: a,
    ...(embedding ? { embeddingTensor: embedding.output } : {}),
    embeddingNodes: embedding?.nodes.size ?? 0,
    removedInitializers: pruned.removed,
  }
}

/**
 * The embedding subgraph: the seed Gathers and the nodes computed from them (and constants)
 * only, up to the first tensor through which everything they compute reaches the rest of the
 * graph. A reason string when there is no such tensor or the subgraph is not plain arithmetic.
 */
function findEmbedding(
  graph: GraphProto,
  index: ReturnType<typeof indexGraph>,
  seeds: NodeProto[],
  weight: string,
  inits: Map<string, TensorProto>,
): { nodes: Set<NodeProto>; output: string } | string {
  const weightGather = seeds.find((n) => n.input![0] === weight)
  if (!weightGather)
    return 'the lm_head scale or zero point is gathered by input_ids, its weight not'
  if (intAttr(weightGather, 'axis') !== 1)
    return `the embedding Gather ${describe(weightGather)} of the [H, V] weight is not on axis 1`
  for (const n of seeds)
    if (n !== weightGather && (intAttr(n, 'axis') ?? 0) !== 0)
      return `the embedding Gather ${describe(n)} is not on axis 0`

  const constant = (name: string) => {
    if (inits.has(name)) return true
    const p = index.producer.get(name)
    return p?.op_type === 'Constant' && !p.domain && (p.input ?? []).length === 0
  }
  // forward closure in graph order (ONNX graphs are topologically sorted)
  const closure = new Set<NodeProto>(seeds)
  const inClosure = (name: string) => {
    const p = index.producer.get(name)
    return p !== undefined && closure.has(p)
  }
  for (const n of graph.node ?? []) {
    if (closure.has(n)) continue
    const reads = nodeReads(n)
    if (reads.some(inClosure) && reads.every((r) => inClosure(r) || constant(r))) closure.add(n)
  }
  const graphOutputs = new Set((graph.output ?? []).map((v) => v.name))
  const within = (out: string) => {
    const nodes = new Set<NodeProto>()
    const stack = [out]
    while (stack.length) {
      const p = index.producer.get(stack.pop()!)
      if (!p || !closure.has(p) || nodes.has(p)) continue
      nodes.add(p)
      stack.push(...nodeReads(p))
    }
    return nodes
  }
  for (const n of graph.node ?? []) {
    if (!closure.has(n)) continue
    for (const out of n.output ?? []) {
      if (!out) continue
      const nodes = within(out)
      if (!seeds.every((sd) => nodes.has(sd))) continue
      // every other value computed here stays inside; `out` is what the rest of the graph reads
      const leaks = [...nodes].some((m) =>
        (m.output ?? []).some(
          (o) =>
            o !== out &&
            (graphOutputs.has(o) || (index.consumers.get(o) ?? []).some((c) => !nodes.has(c))),
        ),
      )
      if (leaks) continue
      if (graphOutputs.has(out)) return `the embedding ${out} is a graph output`
      if (!(index.consumers.get(out) ?? []).length) continue
      const odd = [...nodes].find(
        (m) =>
          !EMBEDDING_OPS.has(m.op_type ?? '') ||
          !!m.domain ||
          (m.attribute ?? []).some((x) => x.g || x.graphs?.length),
      )
      if (odd) return `the embedding subgraph has an unexpected node ${describe(odd)}`
      return { nodes, output: out }
    }
  }
  return 'no single tensor carries the embedding Gathers of input_ids to the rest of the graph'
}

/** Nodes that only fed removed ones (e.g. a Constant of Unsqueeze axes): removed too. */
function dropOrphans(nodes: NodeProto[], removed: Set<NodeProto>, graph: GraphProto): void {
  const fedRemoved = new Set<string>()
  for (const n of removed) for (const i of nodeReads(n)) fedRemoved.add(i)
  const outputs = new Set((graph.output ?? []).map((v) => v.name))
  for (let changed = true; changed;) {
    changed = false
    const read = new Set<string>()
    for (const n of nodes) for (const i of nodeReads(n)) read.add(i)
    for (let i = nodes.length - 1; i >= 0; i--) {
      const outs = (nodes[i].output ?? []).filter(Boolean)
      if (!outs.some((o) => fedRemoved.has(o))) continue
      if (outs.some((o) => read.has(o) || outputs.has(o))) continue
      for (const x of nodeReads(nodes[i])) fedRemoved.add(x)
      nodes.splice(i, 1)
      changed = true
    }
  }
}

/** Node inputs that no graph input, initializer or earlier node provides; outputs not made. */
function danglingInputs(graph: GraphProto): string[] {
  const known = new Set<string>()
  for (const v of graph.input ?? []) known.add(v.name!)
  for (const t of graph.initializer ?? []) known.add(t.name!)
  const missing: string[] = []
  for (const n of graph.node ?? []) {
    for (const i of n.input ?? []) if (i && !known.has(i)) missing.push(`${i} (${describe(n)})`)
    for (const o of n.output ?? []) if (o) known.add(o)
  }
  for (const v of graph.output ?? []) if (!known.has(v.name!)) missing.push(`output ${v.name}`)
  return missing
}

// ---------------------------------------------------------------- the head file

/**
 * The 'q8-rows' head file from the lm_head's uint8 [H, V] weight (row-major, column v = token
 * v) with per-column scale and zero point. See the module comment for the layout.
 */
export function packHeadRows(
  weight: Uint8Array,
  scale: Float32Array,
  zeroPoint: Uint8Array,
  hidden: number,
  vocab: number,
): Uint8Array {
  if (weight.byteLength !== hidden * vocab || scale.length !== vocab || zeroPoint.length !== vocab)
    throw new Error(`packHeadRows: sizes do not match [${hidden}, ${vocab}]`)
  const stride = headStride(hidden)
  const layout = headLayout(vocab, stride)
  const out = new Uint8Array(layout.bytes)
  // transpose in blocks of columns, so each pass reads a few cache lines of every weight row
  const BLOCK = 64
  for (let v0 = 0; v0 < vocab; v0 += BLOCK) {
    const v1 = Math.min(vocab, v0 + BLOCK)
    for (let k = 0; k < hidden; k++) {
      const src = k * vocab
      for (let v = v0; v < v1; v++) out[v * stride + k] = weight[src + v] ^ 0x80 // uint8 - 128
    }
  }
  for (let v = 0; v < vocab; v++) out[layout.zeroPoints + v] = zeroPoint[v] ^ 0x80
  new Float32Array(out.buffer, layout.scales, vocab).set(scale)
  return out
}

/** Typed views of a head file's parts. */
export function headViews(head: HeadRows): {
  rows: Int8Array
  zeroPoints: Int8Array
  scales: Float32Array
} {
  const layout = headLayout(head.vocab, head.stride)
  if (head.bytes.byteLength !== layout.bytes)
    throw new Error(`head file of ${head.bytes.byteLength} bytes, expected ${layout.bytes}`)
  const bytes =
    head.bytes.byteOffset % 4 === 0 ? head.bytes : new Uint8Array(head.bytes) /* aligned copy */
  const { buffer, byteOffset } = bytes
  return {
    rows: new Int8Array(buffer, byteOffset, head.vocab * head.stride),
    zeroPoints: new Int8Array(buffer, byteOffset + layout.zeroPoints, head.vocab),
    scales: new Float32Array(buffer, byteOffset + layout.scales, head.vocab),
  }
}

/**
 * Logits from hidden states with the head rows, in plain TypeScript (float64 accumulation):
 * hidden [rows, H] → [rows, V]. The reference the engine's kernel is measured against.
 */
export function headLogits(head: HeadRows, hidden: Float32Array, rows = 1): Float32Array {
  const { vocab: V, hidden: H, stride } = head
  if (hidden.length !== rows * H)
    throw new Error(`headLogits: ${hidden.length} values, not ${rows} x ${H}`)
  const { rows: q, zeroPoints, scales } = headViews(head)
  const out = new Float32Array(rows * V)
  for (let r = 0; r < rows; r++) {
    const x = hidden.subarray(r * H, (r + 1) * H)
    for (let v = 0; v < V; v++) {
      const base = v * stride
      const zp = zeroPoints[v]
      let acc = 0
      for (let k = 0; k < H; k++) acc += (q[base + k] - zp) * x[k]
      out[r * V + v] = acc * scales[v]
    }
  }
  return out
}

/**
 * The embedding rows of `ids` from a head that holds the embedding: [n, H], float32, exactly
 * what the graph's dequantizing subgraph computed ((q - zp) is an exact integer, one rounding
 * of the product).
 */
export function headEmbedding(head: HeadRows, ids: ArrayLike<number>): Float32Array {
  const { hidden: H, stride } = head
  const { rows, zeroPoints, scales } = headViews(head)
  const out = new Float32Array(ids.length * H)
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i]
    if (!(t >= 0 && t < head.vocab)) throw new RangeError(`token ${t} is outside the vocabulary`)
    for (let k = 0; k < H; k++) out[i * H + k] = (rows[t * stride + k] - zeroPoints[t]) * scales[t]
  }
  return out
}

// ---------------------------------------------------------------- verification

export interface HeadCheck {
  runtime: string
  tokens: number[]
  /** Forward steps compared: a prefill of `tokens`, then decode steps on the KV cache. */
  steps: number
  /** Last-position logits, graph lm_head vs hidden_states x head rows, over every step. */
  maxAbsError: number
  meanAbsError: number
  /** max |logit| of the graph, the scale the errors compare with. */
  referenceMaxAbs: number
  /** Same most likely next token at every step. */
  top1Agrees: boolean
  /** max |Δ| over every present.* output: 0 when the embedding from the head rows is exact. */
  presentMaxAbsError: number
}

/**
 * Run the graph before the split and after it (onnxruntime-node, one thread) on the same
 * prompt and two decode steps on the KV cache; the split graph gets `inputs_embeds` from the
 * head rows and its logits are `headLogits`. The logits differ only by the graph lm_head's
 * activation quantization (DynamicQuantizeMatMul quantizes A to uint8 per tensor).
 */
export async function checkSplitHead(
  original: ModelProto,
  split: ModelProto,
  head: HeadRows,
  config: Qwen2Config,
): Promise<HeadCheck> {
  const ort = await import('onnxruntime-node')
  const tokens = CHECK_TOKENS.map((t) => t % config.vocab_size)
  const dir = await mkdtemp(join(tmpdir(), 'qwen-edge-head-check-'))
  const options = {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential' as const,
    logSeverityLevel: 3 as const,
  }
  const sessions: InferenceSession[] = []
  try {
    const open = async (model: ModelProto, file: string) => {
      const s = await ort.InferenceSession.create(
        writeModelWithExternalData(model, dir, file),
        options,
      )
      sessions.push(s)
      return s
    }
    const reference = await open(original, 'original.onnx')
    const splitSession = await open(split, 'split.onnx')
    const kvHeads = config.num_key_value_heads
    const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads
    const emptyPast = () => {
      const past: Record<string, Tensor> = {}
      for (let i = 0; i < config.num_hidden_layers; i++)
        for (const kind of ['key', 'value'])
          past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
            1,
            kvHeads,
            0,
            headDim,
          ])
      return past
    }
    const step = async (session: InferenceSession, ids: number[], past: Record<string, Tensor>) => {
      const p = past['past_key_values.0.key'].dims[2]
      const n = ids.length
      const all: Record<string, Tensor> = {
        ...past,
        ...tokenFeeds(ort.Tensor, ids, p),
        num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), []),
      }
      if (session.inputNames.includes(INPUTS_EMBEDS))
        all[INPUTS_EMBEDS] = new ort.Tensor('float32', headEmbedding(head, ids), [
          1,
          n,
          head.hidden,
        ])
      const feeds: Record<string, Tensor> = {}
      for (const name of session.inputNames) {
        if (!all[name]) throw new Error(`head check: unexpected input ${name}`)
        feeds[name] = all[name]
      }
      const out = await session.run(feeds)
      const next: Record<string, Tensor> = {}
      for (const name of session.outputNames)
        if (name.startsWith('present.'))
          next[name.replace('present.', 'past_key_values.')] = out[name]
      let logits: Float32Array
      if (out.logits) {
        const data = out.logits.data as Float32Array
        logits = data.subarray(data.length - head.vocab)
      } else {
        const data = out[HIDDEN_STATES].data as Float32Array
        logits = headLogits(head, data.subarray(data.length - head.hidden))
      }
      return { logits, past: next }
    }

    let max = 0
    let sum = 0
    let count = 0
    let scale = 0
    let presentMax = 0
    let top1Agrees = true
    let pastA = emptyPast()
    let pastB = emptyPast()
    let input = tokens
    const steps = 3
    for (let i = 0; i < steps; i++) {
      const a = await step(reference, input, pastA)
      const b = await step(splitSession, input, pastB)
      for (let v = 0; v < a.logits.length; v++) {
        const d = Math.abs(a.logits[v] - b.logits[v])
        if (!(d <= max)) max = d // NaN sticks
        sum += d
        scale = Math.max(scale, Math.abs(a.logits[v]))
      }
      count += a.logits.length
      for (const [name, t] of Object.entries(a.past)) {
        const x = t.data as Float32Array
        const y = b.past[name]?.data as Float32Array | undefined
        if (!y || y.length !== x.length) throw new Error(`head check: ${name} differs in shape`)
        for (let j = 0; j < x.length; j++) {
          const d = Math.abs(x[j] - y[j])
          if (!(d <= presentMax)) presentMax = d
        }
      }
      const next = argmax(a.logits)
      if (argmax(b.logits) !== next) top1Agrees = false
      pastA = a.past
      pastB = b.past
      input = [next]
    }
    return {
      runtime: `onnxruntime-node ${ort.env.versions.node ?? ort.env.versions.common}, 1 thread`,
      tokens,
      steps,
      maxAbsError: max,
      meanAbsError: sum / count,
      referenceMaxAbs: scale,
      top1Agrees,
      presentMaxAbsError: presentMax,
    }
  } finally {
    for (const s of sessions) await s.release()
    await rm(dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------- helpers

function describe(n: NodeProto): string {
  return n.name ? `${n.op_type} ${n.name}` : `${n.op_type} → ${n.output?.[0]}`
}

function intAttr(n: NodeProto, name: string): number | undefined {
  const a = n.attribute?.find((x) => x.name === name)
  return a?.i === undefined ? undefined : Number(a.i)
}

function sameDims(dims: number[] | undefined, expected: number[]): boolean {
  return (dims ?? []).length === expected.length && expected.every((d, i) => dims![i] === d)
}

function typeName(t: number | undefined): string {
  const entry = Object.entries(DataType).find(([, v]) => v === t)
  return entry ? entry[0].toLowerCase() : `type ${t}`
}

function valueInfoWithDims(name: string, dim: TensorShapeDimension[]): ValueInfoProto {
  const v = valueInfo(name, DataType.FLOAT, [])
  v.type!.tensor_type!.shape = { dim }
  return v
}

function argmax(x: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i
  return best
}
