/**
 * The prepare-time "split head" (`model:prepare --head wasm`, the default): the lm_head of a q8
 * or q4 graph, and for tied weights the embedding lookup, move out of the ONNX graph into one
 * file, which the engine runs with its own WASM SIMD kernels (about 3x faster than
 * onnxruntime-web's DynamicQuantizeMatMul on the 151936 x 896 lm_head of Qwen2.5-0.5B).
 *
 * What it applies to:
 * - the q8 form (qwen2-graph.ts `--format q8`, or quantize.ts `convertToQ8`), where graph output
 *   `logits` [b, n, V] is `com.microsoft DynamicQuantizeMatMul(A, B, scale, zp)` with B uint8
 *   [H, V], scale float [V] and zp uint8 [V] initializers (per column), no bias. A tied model
 *   also reads B, zp and scale with Gathers by `input_ids` and dequantizes the columns:
 *   embedding[t][k] = (B[k][t] - zp[t]) * scale[t]. Head file: 'q8-rows', `head.q8`.
 * - a q4 export (qwen2-graph.ts `--format q4`, onnx-community q4), where `logits` is
 *   `com.microsoft MatMulNBits(A, B, scales, zero_points)` with bits 4, K = H, N = V, a block
 *   size that is a multiple of 32, no g_idx, no bias, float32 logits (not q4f16). A tied model
 *   Gathers rows of B, scales and zero points by `input_ids` and unpacks and dequantizes them
 *   (nibbles by arithmetic or bit ops, (q − zp) · scale per block). Head file: 'q4-b32'
 *   (`head.q4`, src/format/q4-b32.ts), the exported values repacked, none changed; or with
 *   format 'q8' those rows dequantized and requantized per row into 'q8-rows', one rounding
 *   more (the check measures it).
 * - an export that writes a tied model's embedding as its own float table (onnx-community's
 *   q4 files: `MatMul4BitsQuantizer` rounds the lm_head MatMul, the embedding stays a float32
 *   or float16 Gather): when the config ties the weights and the table matches the head rows to
 *   within their rounding (`TIED_TABLE_TOLERANCE`), the table is dropped and the embedding read
 *   from the head rows as for a tied graph: one copy of the matrix, each embedding row rounded
 *   like the lm_head's (the check measures what that changes). `embedding: 'graph'` keeps it.
 *   An untied export keeps its own embedding in the graph.
 *
 * The graph after the split:
 *   outputs  hidden_states  float [b, n, H]   A, what the lm_head multiplied (replaces logits)
 *   inputs   inputs_embeds  float [b, s, H]   tied only: replaces the embedding subgraph; the
 *                                             engine looks the rows up in the head file
 *            input_ids      kept as an input even when nothing reads it any more
 * The lm_head's initializers are pruned when nothing else reads them.
 *
 * The 'q8-rows' head file (src/format/manifest.ts `headLayout`), little-endian:
 *   [0, V*S)           row v: int8 B[k][v] - 128 for k < H, then zeros up to the stride S
 *   [V*S, V*S + V)     int8 zp[v] - 128
 *   [align4(..), +4V)  float32 scale[v]
 * so (row[v][k] - zp'[v]) = (B[k][v] - zp[v]) exactly: the same integers the graph used.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { InferenceSession, Tensor } from 'onnxruntime-node'
import {
  headLayout,
  headStride,
  isQ4Head,
  nbitsSymmetric,
  packMatMulNBits,
  q4RowBytes,
  q4NibbleAt,
  q4ScaleAt,
  q4ZeroAt,
  quantizeRowsU8,
  type HeadFormat,
  type MatMulNBitsTensors,
  type Q4Matrix,
  type Qwen2Config,
} from '../../src/format/index.ts'
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

/**
 * What a MatMulNBits head's embedding adds: its codes are two per byte, unpacked with
 * arithmetic (the generator: Div, Floor, Sub, Concat) or bit ops, and cut to H with Slice.
 */
const NBITS_EMBEDDING_OPS = new Set([
  ...EMBEDDING_OPS,
  'Div',
  'Floor',
  'Add',
  'Concat',
  'Slice',
  'Mod',
  'BitShift',
  'BitwiseAnd',
  'Flatten',
  'Expand',
])

/**
 * How the head rows are written: 'q4' keeps a MatMulNBits lm_head's 4-bit values as exported
 * ('q4-b32', exact), 'q8' requantizes its dequantized rows to uint8 per row ('q8-rows', 1.6x
 * larger, adds a rounding). A DynamicQuantizeMatMul lm_head is always 'q8-rows'.
 */
export type SplitHeadFormat = 'q4' | 'q8'

/**
 * A tied model's separate embedding table is taken as the head's own matrix when
 * ‖table − head rows‖ ≤ this × ‖table‖ (over every row): a 4-bit rounding of the same matrix is
 * 0.08-0.12 on the synthetic presets (heavy tails and outlier channels included), an 8-bit one
 * under 0.01, a different matrix of the same spread about 1.4.
 */
export const TIED_TABLE_TOLERANCE = 0.25

/** The head file's contents and shape. */
export interface HeadRows {
  format: HeadFormat
  vocab: number
  hidden: number
  /** Bytes per row: hidden rounded up to a multiple of 32 ('q8-rows'), 21 per block ('q4-b32'). */
  stride: number
  /** True when the graph takes `inputs_embeds` (tied weights: the rows are the embedding). */
  embedding: boolean
  /** The head file in `format`. */
  bytes: Uint8Array
}

export interface SplitHeadStats {
  /** The DynamicQuantizeMatMul or MatMulNBits node removed. */
  lmHead: string
  /** The tensor now output as `hidden_states` (the lm_head's activation input). */
  hiddenTensor: string
  /** The tensor the removed embedding subgraph produced, now read from `inputs_embeds`. */
  embeddingTensor?: string
  /** Nodes removed with the embedding (0 when untied). */
  embeddingNodes: number
  /**
   * A separate float embedding table of a tied model: `dropped` when the embedding now comes
   * from the head rows (`relativeError` ‖table − rows‖ / ‖table‖ over every row; `reason` when
   * kept in the graph).
   */
  embeddingTable?: {
    name: string
    dropped: boolean
    relativeError?: number
    /** The largest relative error of one row. */
    maxRowError?: number
    reason?: string
  }
  /** Initializers nothing reads any more. */
  removedInitializers: string[]
}

export type SplitHeadResult =
  | ({
      applied: true
      model: ModelProto
      /** What prepare writes. */
      head: HeadRows
      /**
       * A MatMulNBits head written as 'q8-rows': its 4-bit rows as exported, exactly what the
       * graph computed with (the check feeds the graph's embedding from these).
       */
      exact?: HeadRows
    } & SplitHeadStats)
  | { applied: false; reason: string; model: ModelProto }

/**
 * Move the lm_head (and a tied embedding) of a q8 or q4 graph into head rows. The model must hold
 * its data inline. Returns `applied: false` with a reason, and the model untouched, when the
 * graph is not in the expected form. The model given is never modified; unchanged tensors are
 * shared. `format` applies to a MatMulNBits lm_head (default 'q4').
 */
export function splitHead(
  model: ModelProto,
  config: Pick<Qwen2Config, 'vocab_size' | 'hidden_size' | 'tie_word_embeddings'>,
  options: {
    format?: SplitHeadFormat
    /** A tied model's separate embedding table: 'head' (default) reads it from the head rows. */
    embedding?: 'head' | 'graph'
  } = {},
): SplitHeadResult {
  const graph = model.graph
  const skip = (reason: string) => ({ applied: false as const, reason, model })
  if (!graph) return skip('the model has no graph')
  const H = config.hidden_size
  const V = config.vocab_size
  const logitsOut = (graph.output ?? []).find((v) => v.name === 'logits')
  if (!logitsOut) return skip('no logits output')
  const taken = uniqueNamer(graph)
  for (const name of [HIDDEN_STATES, INPUTS_EMBEDS])
    if (taken(name) !== name) return skip(`the graph already has a tensor named ${name}`)

  const index = indexGraph(graph)
  const head = index.producer.get('logits')
  if (!head) return skip('logits is not computed by a node')
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]))
  const graphInputs = new Set((graph.input ?? []).map((v) => v.name))
  const found =
    head.domain === MS && head.op_type === 'DynamicQuantizeMatMul'
      ? dqmmHead(head, inits, graphInputs, H, V)
      : head.domain === MS && head.op_type === 'MatMulNBits'
        ? nbitsHead(head, inits, graphInputs, H, V, logitsOut, options.format ?? 'q4')
        : `logits comes from ${describe(head)}, not a com.microsoft DynamicQuantizeMatMul ` +
          '(the q8 form: --format q8) or MatMulNBits (a q4 export)'
  if (typeof found === 'string') return skip(found)
  const { a, operands, weightAxis, ops } = found
  const [b] = operands

  // ---- the embedding: Gathers of the lm_head's operands by input_ids, and what computes from
  // them only

  const seeds: NodeProto[] = []
  for (const t of operands) {
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
  let rows: ReturnType<LmHead['rows']> | undefined
  let embeddingTable: SplitHeadStats['embeddingTable']
  if (seeds.length) {
    const emb = findEmbedding(graph, index, seeds, b, weightAxis, ops, inits)
    if (typeof emb === 'string') return skip(emb)
    embedding = emb
  } else {
    const table = findTableEmbedding(graph, index, inits, H, V)
    if (table) {
      const kept = (reason: string) => ({ name: table.name, dropped: false, reason })
      if (options.embedding === 'graph') embeddingTable = kept('--embedding graph')
      else if (config.tie_word_embeddings !== true)
        embeddingTable = kept('config.json does not set tie_word_embeddings')
      else {
        const tiedRows = found.rows(true)
        const e = tableError(inits.get(table.name)!, tiedRows.head)
        const dropped = e.relative <= TIED_TABLE_TOLERANCE
        embeddingTable = {
          name: table.name,
          dropped,
          relativeError: e.relative,
          maxRowError: e.maxRow,
          ...(!dropped && {
            reason:
              `‖table − head rows‖ / ‖table‖ = ${e.relative.toPrecision(3)}, above ` +
              `${TIED_TABLE_TOLERANCE}: not the head's matrix`,
          }),
        }
        if (dropped) {
          embedding = table
          rows = tiedRows
        }
      }
    }
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

  const logitsDims = logitsOut.type?.tensor_type?.shape?.dim ?? []
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

  rows ??= found.rows(!!embedding)
  return {
    applied: true,
    model: next,
    head: rows.head,
    ...(rows.exact && { exact: rows.exact }),
    lmHead: describe(head),
    hiddenTensor: a,
    ...(embedding ? { embeddingTensor: embedding.output } : {}),
    embeddingNodes: embedding?.nodes.size ?? 0,
    ...(embeddingTable && { embeddingTable }),
    removedInitializers: pruned.removed,
  }
}

/** An lm_head the split can take: its operands, how its embedding reads them, its rows. */
interface LmHead {
  /** The activation input. */
  a: string
  /** The initializers the lm_head reads (weight first); an embedding Gathers them. */
  operands: string[]
  /** The axis the embedding Gathers the weight on (token v is column v of a [H, V] weight). */
  weightAxis: 0 | 1
  ops: Set<string>
  rows(embedding: boolean): { head: HeadRows; exact?: HeadRows }
}

/**
 * A DynamicQuantizeMatMul lm_head: uint8 B [H, V], per-column float scale and uint8 zero point,
 * no bias. Its rows are 'q8-rows', the very integers the graph used.
 */
function dqmmHead(
  head: NodeProto,
  inits: Map<string, TensorProto>,
  graphInputs: Set<string | undefined>,
  H: number,
  V: number,
): LmHead | string {
  const [a, b, s, z, bias] = head.input ?? []
  if (bias) return `the lm_head ${describe(head)} has a bias`
  if (!z) return `the lm_head ${describe(head)} has no zero point`
  const B = inits.get(b)
  const S = inits.get(s)
  const Z = inits.get(z)
  if (!B || !S || !Z || [b, s, z].some((n) => graphInputs.has(n)))
    return `the lm_head's weight, scale and zero point are not all initializers`
  if (B.data_type !== DataType.UINT8 || !sameDims(B.dims, [H, V]))
    return `the lm_head weight ${b} is ${shape(B)}, not uint8 [${H}, ${V}]`
  if (S.data_type !== DataType.FLOAT || !sameDims(S.dims, [V]))
    return `the lm_head scale ${s} is ${shape(S)}, not float [${V}] (one per column)`
  if (Z.data_type !== DataType.UINT8 || !sameDims(Z.dims, [V]))
    return `the lm_head zero point ${z} is ${shape(Z)}, not uint8 [${V}] (one per column)`
  for (const t of [B, S, Z])
    if (isExternal(t)) throw new Error(`splitHead: ${t.name} is external data; load it inline`)
  return {
    a,
    operands: [b, s, z],
    weightAxis: 1,
    ops: EMBEDDING_OPS,
    rows: (embedding) => ({
      head: {
        format: 'q8-rows',
        vocab: V,
        hidden: H,
        stride: headStride(H),
        embedding,
        bytes: packHeadRows(tensorRawData(B), floatValues(S), tensorRawData(Z), H, V),
      },
    }),
  }
}

/**
 * A MatMulNBits lm_head (bits 4, K = H, N = V, blocks of a multiple of 32): B uint8 [V, blocks,
 * block_size / 2], scales float or float16 [V · blocks] or [V, blocks], optional uint8 zero
 * points [V · ⌈blocks / 2⌉] or [V, ⌈blocks / 2⌉]; no g_idx, no bias, float32 logits. Its rows
 * are 'q4-b32' repacked without changing a value ('q4s-b32', its symmetric layout, when every zero
 * point is 8), or with `format` 'q8' requantized per row.
 */
function nbitsHead(
  head: NodeProto,
  inits: Map<string, TensorProto>,
  graphInputs: Set<string | undefined>,
  H: number,
  V: number,
  logitsOut: ValueInfoProto,
  format: SplitHeadFormat,
): LmHead | string {
  const at = `the lm_head ${describe(head)}`
  const [a, b, s, z, g, bias] = head.input ?? []
  const matrix = nbitsMatrix(head, H, V, inits)
  if (typeof matrix === 'string') return `${at}: ${matrix}`
  if (g) return `${at} has a g_idx input (act-order blocks)`
  if (bias) return `${at} has a bias`
  const logitsType = logitsOut.type?.tensor_type?.elem_type
  if (logitsType !== undefined && logitsType !== DataType.FLOAT)
    return (
      `the logits are ${typeName(logitsType)}, not float32: the engine's head takes float32 ` +
      'hidden states (model:prepare widens a q4f16 export unless --head graph)'
    )
  if ([b, s, z].some((n) => n && graphInputs.has(n)))
    return `${at}: its weight, scales and zero points are not all initializers`
  for (const n of [b, s, z]) {
    const t = n ? inits.get(n) : undefined
    if (t && isExternal(t)) throw new Error(`splitHead: ${t.name} is external data; load it inline`)
  }
  const tensors = (): MatMulNBitsTensors => {
    const S = inits.get(s)!
    return {
      n: V,
      k: H,
      bits: 4,
      blockSize: matrix.blockSize,
      b: tensorRawData(inits.get(b)!),
      scales:
        S.data_type === DataType.FLOAT16
          ? new Uint16Array(new Uint8Array(tensorRawData(S)).buffer)
          : floatValues(S),
      ...(z && { zeroPoints: tensorRawData(inits.get(z)!) }),
    }
  }
  return {
    a,
    operands: z ? [b, s, z] : [b, s],
    weightAxis: 0,
    ops: NBITS_EMBEDDING_OPS,
    rows: (embedding) => {
      // zero points all 8 (or none): the symmetric layout, 4 bytes less a group of 4 blocks
      const t = tensors()
      const sym = nbitsSymmetric(t)
      const m = packMatMulNBits(t, sym)
      const q4Format = sym ? 'q4s-b32' : 'q4-b32'
      const exact: HeadRows = {
        format: q4Format,
        vocab: V,
        hidden: H,
        stride: headStride(H, q4Format),
        embedding,
        bytes: m.data,
      }
      if (format === 'q4') return { head: exact }
      return { head: requantizeQ8(m, embedding), exact }
    },
  }
}

/**
 * Whether a MatMulNBits node is one the engine's q4 kernels run as is: its attributes (K, N,
 * bits 4, block_size a multiple of 32) and the shapes and types of its weight, scales and zero
 * points, all initializers (checked against `k` × `n`). The reason when not.
 */
export function nbitsMatrix(
  node: NodeProto,
  k: number,
  n: number,
  inits: Map<string, TensorProto>,
): { blockSize: number } | string {
  const K = intAttr(node, 'K')
  const N = intAttr(node, 'N')
  const bits = intAttr(node, 'bits') ?? 4
  const blockSize = intAttr(node, 'block_size') ?? 0
  if (bits !== 4) return `${bits}-bit weights (the kernels take 4)`
  if (!(blockSize >= 32 && blockSize % 32 === 0))
    return `block_size ${blockSize} is not a multiple of 32`
  if (K !== k || N !== n) return `K ${K} and N ${N}, not ${k} and ${n}`
  const [, b, s, z, g] = node.input ?? []
  if (g) return 'a g_idx input (act-order blocks)'
  const blocks = Math.ceil(k / blockSize)
  const zpBytes = Math.ceil(blocks / 2)
  const B = inits.get(b ?? '')
  const S = inits.get(s ?? '')
  if (!B || !S) return 'its weight or scales are not initializers'
  if (B.data_type !== DataType.UINT8 || !sameDims(B.dims, [n, blocks, blockSize / 2]))
    return `its weight ${b} is ${shape(B)}, not uint8 [${n}, ${blocks}, ${blockSize / 2}]`
  if (
    (S.data_type !== DataType.FLOAT && S.data_type !== DataType.FLOAT16) ||
    !(sameDims(S.dims, [n * blocks]) || sameDims(S.dims, [n, blocks]))
  )
    return `its scales ${s} are ${shape(S)}, not float or float16 [${n}, ${blocks}]`
  if (z) {
    const Z = inits.get(z)
    if (!Z) return `its zero points ${z} are not an initializer`
    if (
      Z.data_type !== DataType.UINT8 ||
      !(sameDims(Z.dims, [n * zpBytes]) || sameDims(Z.dims, [n, zpBytes]))
    )
      return `its zero points ${z} are ${shape(Z)}, not packed uint8 [${n}, ${zpBytes}]`
  }
  return { blockSize }
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
  weightAxis: 0 | 1,
  ops: Set<string>,
  inits: Map<string, TensorProto>,
): { nodes: Set<NodeProto>; output: string } | string {
  const weightGather = seeds.find((n) => n.input![0] === weight)
  if (!weightGather)
    return 'the lm_head scale or zero point is gathered by input_ids, its weight not'
  if ((intAttr(weightGather, 'axis') ?? 0) !== weightAxis)
    return (
      `the embedding Gather ${describe(weightGather)} of the lm_head weight is not on axis ` +
      `${weightAxis} (its tokens)`
    )
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
          !ops.has(m.op_type ?? '') ||
          !!m.domain ||
          (m.attribute ?? []).some((x) => x.g || x.graphs?.length),
      )
      if (odd) return `the embedding subgraph has an unexpected node ${describe(odd)}`
      return { nodes, output: out }
    }
  }
  return 'no single tensor carries the embedding Gathers of input_ids to the rest of the graph'
}

/**
 * A separate embedding table: `Gather(T, input_ids)` on axis 0 of a float or float16
 * initializer T [V, H], with the Cast to float that follows a float16 table, and nothing else
 * reading T. Undefined when the graph has none.
 */
function findTableEmbedding(
  graph: GraphProto,
  index: ReturnType<typeof indexGraph>,
  inits: Map<string, TensorProto>,
  H: number,
  V: number,
): { nodes: Set<NodeProto>; output: string; name: string } | undefined {
  for (const n of index.consumers.get('input_ids') ?? []) {
    if (n.op_type !== 'Gather' || n.domain || n.input![1] !== 'input_ids') continue
    if ((intAttr(n, 'axis') ?? 0) !== 0) continue
    const t = inits.get(n.input![0])
    if (!t || !sameDims(t.dims, [V, H])) continue
    if (t.data_type !== DataType.FLOAT && t.data_type !== DataType.FLOAT16) continue
    if ((index.consumers.get(t.name!) ?? []).length !== 1) continue
    if (isExternal(t)) throw new Error(`splitHead: ${t.name} is external data; load it inline`)
    const nodes = new Set<NodeProto>([n])
    let output = n.output![0]
    if (t.data_type === DataType.FLOAT16) {
      const next = index.consumers.get(output) ?? []
      const cast = next[0]
      if (next.length !== 1 || cast.op_type !== 'Cast' || cast.domain) continue
      if (intAttr(cast, 'to') !== DataType.FLOAT) continue
      nodes.add(cast)
      output = cast.output![0]
    }
    if ((graph.output ?? []).some((v) => v.name === output)) continue
    return { nodes, output, name: t.name! }
  }
  return undefined
}

/**
 * How far a float [V, H] table is from the head's rows (dequantized): ‖table − rows‖ /
 * ‖table‖ over the whole matrix, and the largest such ratio of one row.
 */
function tableError(table: TensorProto, head: HeadRows): { relative: number; maxRow: number } {
  const values = floatValues(table)
  const H = head.hidden
  const read = headRowReader(head)
  const row = new Float32Array(H)
  let diff = 0
  let norm = 0
  let maxRow = 0
  for (let v = 0; v < head.vocab; v++) {
    read(v, row)
    let d = 0
    let t = 0
    for (let k = 0; k < H; k++) {
      const x = values[v * H + k]
      d += (x - row[k]) ** 2
      t += x * x
    }
    diff += d
    norm += t
    const r = t > 0 ? Math.sqrt(d / t) : d > 0 ? Infinity : 0
    if (!(r <= maxRow)) maxRow = r
  }
  return { relative: norm > 0 ? Math.sqrt(diff / norm) : diff > 0 ? Infinity : 0, maxRow }
}

/** The rows of a float [V, H] initializer of `model` by token: what its Gather gives, as float32. */
export function tableRows(
  model: ModelProto,
  name: string,
): (ids: readonly number[]) => Float32Array {
  const t = (model.graph?.initializer ?? []).find((x) => x.name === name)
  if (!t || t.dims?.length !== 2) throw new Error(`tableRows: no [V, H] initializer ${name}`)
  const [V, H] = t.dims.map(Number)
  const values = floatValues(t)
  return (ids) => {
    const out = new Float32Array(ids.length * H)
    ids.forEach((v, i) => {
      if (!(v >= 0 && v < V)) throw new RangeError(`token ${v} is outside the table`)
      out.set(values.subarray(v * H, (v + 1) * H), i * H)
    })
    return out
  }
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

/**
 * 'q8-rows' from the dequantized rows of a 4-bit head (`--head-format q8`): uint8 per row,
 * asymmetric, the range including 0 (quant.ts `quantizeRowsU8`, onnxruntime's quantizer). The
 * one rounding this adds to the exported weights is what the report's `served` errors measure.
 */
export function requantizeQ8(m: Q4Matrix, embedding: boolean): HeadRows {
  const { n: V, k: H } = m
  const stride = headStride(H)
  const layout = headLayout(V, stride)
  const bytes = new Uint8Array(layout.bytes)
  const scales = new Float32Array(bytes.buffer, layout.scales, V)
  const row = new Float32Array(H)
  const reader = q4RowReader(H, m.sym === true)
  for (let v = 0; v < V; v++) {
    reader(m.data, q4RowBytes(m.kb, m.sym), v, row)
    const q = quantizeRowsU8(row, 1, H)
    for (let k = 0; k < H; k++) bytes[v * stride + k] = q.q[k] ^ 0x80 // uint8 - 128
    bytes[layout.zeroPoints + v] = q.zeroPoint[0] ^ 0x80
    scales[v] = q.scale[0]
  }
  return { format: 'q8-rows', vocab: V, hidden: H, stride, embedding, bytes }
}

/**
 * A reader of 'q4-b32' rows of `hidden` inputs (`sym`: its symmetric layout, 'q4s-b32'): row v
 * of `data` (rows `stride` bytes apart) dequantized into `out`, (q − zp) · scale rounded once to
 * f32, as dequantizeQ4 and the q4 graph's embedding compute it.
 */
function q4RowReader(
  hidden: number,
  sym: boolean,
): (data: Uint8Array, stride: number, v: number, out: Float32Array) => void {
  const nibble = new Int32Array(hidden) // byte offset in the row, + 1 << 30 for a high nibble
  for (let i = 0; i < hidden; i++) {
    const { byte, high } = q4NibbleAt(i, sym)
    nibble[i] = byte | (high ? 1 << 30 : 0)
  }
  const blocks = Math.ceil(hidden / 32)
  return (data, stride, v, out) => {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
    const base = v * stride
    for (let c = 0; c < blocks; c++) {
      const scale = view.getFloat32(base + q4ScaleAt(c, sym), true)
      const zp = sym ? 8 : data[base + q4ZeroAt(c)]
      for (let i = c * 32; i < Math.min(hidden, c * 32 + 32); i++) {
        const at = nibble[i]
        const byte = data[base + (at & 0x3fffffff)]
        out[i] = ((at & (1 << 30) ? byte >> 4 : byte & 15) - zp) * scale
      }
    }
  }
}

/** Typed views of a 'q8-rows' head file's parts. */
export function headViews(head: HeadRows): {
  rows: Int8Array
  zeroPoints: Int8Array
  scales: Float32Array
} {
  if (head.format !== 'q8-rows') throw new Error(`headViews: a ${head.format} head has no views`)
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

/** Row v of the head, dequantized: [H] float32 (the embedding row of token v when tied). */
function headRowReader(head: HeadRows): (v: number, out: Float32Array) => void {
  const { hidden: H, stride } = head
  if (isQ4Head(head.format)) {
    if (stride !== headStride(H, head.format) || head.bytes.byteLength !== head.vocab * stride)
      throw new Error(`q4 head of ${head.bytes.byteLength} bytes, stride ${stride}: wrong size`)
    const read = q4RowReader(H, head.format === 'q4s-b32')
    return (v, out) => read(head.bytes, stride, v, out)
  }
  const { rows, zeroPoints, scales } = headViews(head)
  return (v, out) => {
    for (let k = 0; k < H; k++) out[k] = (rows[v * stride + k] - zeroPoints[v]) * scales[v]
  }
}

/**
 * Logits from hidden states with the head rows, in plain TypeScript (float64 accumulation):
 * hidden [rows, H] → [rows, V]. The reference the engine's kernel is measured against. 'q8-rows':
 * Σ (row − zp) · x, times the scale; 'q4-b32' and 'q4s-b32': the dequantized rows times x.
 */
export function headLogits(head: HeadRows, hidden: Float32Array, rows = 1): Float32Array {
  const { vocab: V, hidden: H, stride } = head
  if (hidden.length !== rows * H)
    throw new Error(`headLogits: ${hidden.length} values, not ${rows} x ${H}`)
  const out = new Float32Array(rows * V)
  if (isQ4Head(head.format)) {
    const read = headRowReader(head)
    const w = new Float32Array(H)
    for (let v = 0; v < V; v++) {
      read(v, w)
      for (let r = 0; r < rows; r++) {
        let acc = 0
        for (let k = 0; k < H; k++) acc += w[k] * hidden[r * H + k]
        out[r * V + v] = acc
      }
    }
    return out
  }
  const { rows: q, zeroPoints, scales } = headViews(head)
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
  const H = head.hidden
  const read = headRowReader(head)
  const out = new Float32Array(ids.length * H)
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i]
    if (!(t >= 0 && t < head.vocab)) throw new RangeError(`token ${t} is outside the vocabulary`)
    read(t, out.subarray(i * H, (i + 1) * H))
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
  /**
   * A 4-bit head requantized to 'q8-rows' (`--head-format q8`): its logits on the same hidden
   * states against the graph's, and its embedding rows of the check's tokens against the exact
   * ones (the errors above are those of the exact 4-bit rows).
   */
  served?: {
    format: HeadFormat
    maxAbsError: number
    meanAbsError: number
    top1Agrees: boolean
    /** max |Δ| of the embedding rows of every token fed, against the exported rows. */
    embeddingMaxAbsError: number
    /** max |value| of those rows, the scale it compares with. */
    embeddingMaxAbs: number
  }
  /**
   * A dropped embedding table (`SplitHeadStats.embeddingTable`): the numbers above feed the
   * split graph the table's own rows (so its KV cache must match exactly); these feed it the
   * head rows, as the engine will, over the same steps on their own KV cache.
   */
  tiedEmbedding?: {
    maxAbsError: number
    meanAbsError: number
    top1Agrees: boolean
    /** max |Δ| of the embedding rows of every token fed, head rows against the table's. */
    embeddingMaxAbsError: number
    embeddingMaxAbs: number
  }
}

/**
 * Run the graph before the split and after it (onnxruntime-node, one thread) on the same
 * prompt and two decode steps on the KV cache; the split graph gets `inputs_embeds` from the
 * head rows and its logits are `headLogits`. The logits differ only by the graph lm_head's
 * activation quantization (DynamicQuantizeMatMul quantizes A to uint8 per tensor; MatMulNBits
 * multiplies float activations: float rounding only). `served`: rows written instead of `head`
 * (a requantized 4-bit head), measured on the same hidden states. `table`: the rows of a
 * dropped embedding table, fed instead of the head's (then measured on a run of their own).
 */
export async function checkSplitHead(
  original: ModelProto,
  split: ModelProto,
  head: HeadRows,
  config: Qwen2Config,
  served?: HeadRows,
  table?: (ids: readonly number[]) => Float32Array,
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
    const tiedRows = (ids: number[]) => headEmbedding(served ?? head, ids)
    const step = async (
      session: InferenceSession,
      ids: number[],
      past: Record<string, Tensor>,
      embed: (ids: number[]) => Float32Array = table ?? ((i) => headEmbedding(head, i)),
    ) => {
      const p = past['past_key_values.0.key'].dims[2]
      const n = ids.length
      const all: Record<string, Tensor> = {
        ...past,
        ...tokenFeeds(ort.Tensor, ids, p),
        num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), []),
      }
      if (session.inputNames.includes(INPUTS_EMBEDS))
        all[INPUTS_EMBEDS] = new ort.Tensor('float32', embed(ids), [1, n, head.hidden])
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
      let servedLogits: Float32Array | undefined
      if (out.logits) {
        const data = out.logits.data as Float32Array
        logits = data.subarray(data.length - head.vocab)
      } else {
        const data = out[HIDDEN_STATES].data as Float32Array
        const last = data.subarray(data.length - head.hidden)
        logits = headLogits(head, last)
        if (served) servedLogits = headLogits(served, last)
      }
      return { logits, servedLogits, past: next }
    }
    const errors = new LogitErrors()
    const servedErrors = new LogitErrors()
    const servedEmbedding = new MaxError()
    let scale = 0
    let presentMax = 0
    let pastA = emptyPast()
    let pastB = emptyPast()
    let input = tokens
    const steps = 3
    const trace: { input: number[]; logits: Float32Array }[] = []
    for (let i = 0; i < steps; i++) {
      const a = await step(reference, input, pastA)
      const b = await step(splitSession, input, pastB)
      trace.push({ input, logits: a.logits })
      errors.add(a.logits, b.logits)
      for (const x of a.logits) scale = Math.max(scale, Math.abs(x))
      for (const [name, t] of Object.entries(a.past)) {
        const x = t.data as Float32Array
        const y = b.past[name]?.data as Float32Array | undefined
        if (!y || y.length !== x.length) throw new Error(`head check: ${name} differs in shape`)
        for (let j = 0; j < x.length; j++) {
          const d = Math.abs(x[j] - y[j])
          if (!(d <= presentMax)) presentMax = d
        }
      }
      if (b.servedLogits) servedErrors.add(a.logits, b.servedLogits)
      if (served && head.embedding)
        servedEmbedding.add(headEmbedding(head, input), headEmbedding(served, input))
      pastA = a.past
      pastB = b.past
      input = [argmax(a.logits)]
    }
    let tiedEmbedding: HeadCheck['tiedEmbedding']
    if (table) {
      const tied = new LogitErrors()
      const rows = new MaxError()
      let past = emptyPast()
      for (const { input, logits } of trace) {
        const c = await step(splitSession, input, past, tiedRows)
        tied.add(logits, c.servedLogits ?? c.logits)
        rows.add(table(input), tiedRows(input))
        past = c.past
      }
      tiedEmbedding = {
        ...tied.summary(),
        embeddingMaxAbsError: rows.error,
        embeddingMaxAbs: rows.scale,
      }
    }
    return {
      runtime: `onnxruntime-node ${ort.env.versions.node ?? ort.env.versions.common}, 1 thread`,
      tokens,
      steps,
      ...errors.summary(),
      referenceMaxAbs: scale,
      presentMaxAbsError: presentMax,
      ...(served && {
        served: {
          format: served.format,
          ...servedErrors.summary(),
          embeddingMaxAbsError: servedEmbedding.error,
          embeddingMaxAbs: servedEmbedding.scale,
        },
      }),
      ...(tiedEmbedding && { tiedEmbedding }),
    }
  } finally {
    for (const s of sessions) await s.release()
    await rm(dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------- helpers

/** Last-position logits against the graph's over the check's steps: max and mean |Δ|, top-1. */
class LogitErrors {
  private max = 0
  private sum = 0
  private count = 0
  private top1Agrees = true

  add(reference: Float32Array, ours: Float32Array): void {
    for (let v = 0; v < reference.length; v++) {
      const d = Math.abs(reference[v] - ours[v])
      if (!(d <= this.max)) this.max = d // NaN sticks
      this.sum += d
    }
    this.count += reference.length
    if (argmax(ours) !== argmax(reference)) this.top1Agrees = false
  }

  summary(): { maxAbsError: number; meanAbsError: number; top1Agrees: boolean } {
    return {
      maxAbsError: this.max,
      meanAbsError: this.sum / this.count,
      top1Agrees: this.top1Agrees,
    }
  }
}

/** max |exact − ours| (NaN sticks) and max |exact|, the scale it compares with. */
class MaxError {
  error = 0
  scale = 0

  add(exact: Float32Array, ours: Float32Array): void {
    for (let j = 0; j < exact.length; j++) {
      const d = Math.abs(exact[j] - ours[j])
      if (!(d <= this.error)) this.error = d
      this.scale = Math.max(this.scale, Math.abs(exact[j]))
    }
  }
}

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

function shape(t: TensorProto): string {
  return `${typeName(t.data_type)} [${(t.dims ?? []).join(', ')}]`
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
