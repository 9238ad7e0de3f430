/**
 * Weight conversion for `model:prepare --format q8 | q4`: an fp32 graph (fp16 exports are widened
 * first, see graph-rewrite.ts `convertFloatType`) whose matmuls become the forms this project's
 * generator writes (qwen2-graph.ts, synth-weights.ts), so the engine maps it as it maps a
 * generated model:
 *
 * | node | q8 | q4 |
 * |---|---|---|
 * | MatMul(x, B [K, N] float initializer) | DynamicQuantizeMatMul(x, [K, N] uint8, scale [N], zero point [N] uint8) | MatMulNBits(x, [N, K/32, 16] uint8, scales [N, K/32], zero points [N, ceil(K/64)] uint8), bits 4, block 32 |
 * | Gemm(x, B, C) (alpha 1, no transA; transB either way; C [N] with beta 1 or none) | same, C as bias | same, then Add(C) |
 * | MatMulNBits (any bits 2/4/8, block size, zero points packed, float or absent, g_idx) | same, from the dequantized weights | kept as exported (never requantized) |
 * | MatMul / MatMulNBits followed by Add(bias [N]) | same with the bias as DQMM's 5th input | the Add kept |
 * | Gather(E [V, H] float initializer, ids) | Gather of the uint8 [H, V] matrix + dequantize (the generator's q8 embedding) | Gathers of the 4-bit rows, scales and zero points + unpack and dequantize (the generator's q4 embedding) |
 *
 * q8 is `quantizeRowsU8` of src/format/quant.ts: asymmetric uint8, one scale and zero point per
 * output column, range always including 0 (uint8, not int8: signed weights give wrong results
 * on onnxruntime-node / AVX2). q4 is `quantizeBlocksQ4`: asymmetric 4-bit blocks of 32 inputs,
 * a scale and zero point each (onnxruntime's quantizer's default; onnx-community's q4 files are
 * the symmetric form, zero point 8, which the generator writes). A matrix quantized once is shared
 * by every node that uses it, and two matrices with identical quantized bytes become one, so a
 * tied embedding and lm_head (one [V, H] initializer, or a [V, H] and its transposed copy) end
 * up as one matrix read by both the embedding and the lm_head, as in the generator. A q8 export
 * is not converted to q4 (its weights would be rounded twice): convert its fp32 or fp16 export.
 *
 * `dequantizeToFloat`: the fp32 reference the conversion is measured against (MatMulNBits
 * becomes MatMul with its dequantized weights).
 */
import { createHash } from 'node:crypto'
import {
  LOGITS_TO_KEEP,
  ancestors,
  declaredRank,
  indexGraph,
  halfTensorToFloat32,
  pruneInitializers,
  uniqueNamer,
  unsqueezeNode,
} from './graph-rewrite.ts'
import {
  DataType,
  initializer,
  node,
  opset,
  tensorByteLength,
  tensorRawData,
  type AttributeProto,
  type GraphProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx/index.ts'
import {
  Q4_BLOCK_SIZE,
  quantizeBlocksQ4,
  quantizeRowsU8,
  type Q4Scheme,
} from '../../src/format/index.ts'
import { transpose } from './synth-weights.ts'

const MS = 'com.microsoft'

/** What a conversion did. */
export interface ConversionStats {
  /** Nodes turned into DynamicQuantizeMatMul (q8) or MatMulNBits (q4), by original op type. */
  matMul: number
  gemm: number
  matMulNBits: number
  /** Embedding Gathers now reading a quantized matrix. */
  embeddings: number
  /** Bias Adds folded into DynamicQuantizeMatMul (q8). */
  biases: number
  /** Quantized matrices used by more than one node (a tied embedding + lm_head: 1). */
  shared: number
  /** Initializer bytes before and after. */
  bytesBefore: number
  bytesAfter: number
}

/** A quantized matrix's initializers (q8: [K, N], [N], [N]; q4: [N, blocks, 16], [N, blocks], [N, ceil(blocks / 2)]). */
interface QuantizedMatrix {
  weight: string
  scale: string
  zeroPoint: string
  n: number
  k: number
  users: number
}

export type ConvertFormat = 'q8' | 'q4'

const intAttr = (n: NodeProto, name: string): number | undefined => {
  const a = n.attribute?.find((x) => x.name === name)
  return a?.i === undefined ? undefined : Number(a.i)
}
const floatAttr = (n: NodeProto, name: string): number | undefined =>
  n.attribute?.find((x: AttributeProto) => x.name === name)?.f

/**
 * A float initializer's values (fp16 widened). A view when aligned, else a copy (not through
 * onnx.ts `tensorToFloat32`: its copy uses `slice()`, a view on a Node Buffer).
 */
export function floatValues(t: TensorProto): Float32Array {
  if (t.data_type === DataType.FLOAT16) return halfTensorToFloat32(t)
  if (t.data_type !== DataType.FLOAT) throw new Error(`tensor ${t.name} is not a float tensor`)
  const raw = tensorRawData(t)
  if (raw.byteOffset % 4 === 0)
    return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4)
  return new Float32Array(new Uint8Array(raw).buffer)
}

const isFloat = (t: TensorProto | undefined): t is TensorProto =>
  t?.data_type === DataType.FLOAT || t?.data_type === DataType.FLOAT16

/**
 * MatMulNBits weights dequantized to fp32, as [N, K] rows (row n = output feature n):
 * w[n, k] = (q[n, k] - zero_point[n, block]) * scale[n, block], the block being k / block_size
 * or g_idx[k]. Zero points: packed like the weights (uint8), float, or absent (2^(bits-1)).
 */
export function dequantizeMatMulNBits(
  n: NodeProto,
  tensor: (name: string) => TensorProto | undefined,
): { rows: Float32Array; n: number; k: number } {
  const K = intAttr(n, 'K')
  const N = intAttr(n, 'N')
  const bits = intAttr(n, 'bits') ?? 4
  const blockSize = intAttr(n, 'block_size')
  if (!K || !N || !blockSize) throw new Error(`MatMulNBits ${n.name}: missing K, N or block_size`)
  if (bits !== 2 && bits !== 4 && bits !== 8)
    throw new Error(`MatMulNBits ${n.name}: ${bits}-bit weights are not supported`)
  const [, bName, sName, zName, gName] = n.input ?? []
  const need = (name: string, what: string) => {
    const t = tensor(name)
    if (!t) throw new Error(`MatMulNBits ${n.name}: ${what} ${name} is not an initializer`)
    return t
  }
  const blocks = Math.ceil(K / blockSize)
  const blob = (blockSize * bits) / 8
  const B = tensorRawData(need(bName, 'weight'))
  if (B.byteLength !== N * blocks * blob)
    throw new Error(
      `MatMulNBits ${n.name}: weight has ${B.byteLength} bytes, not ${N * blocks * blob}`,
    )
  const scales = floatValues(need(sName, 'scales'))
  if (scales.length !== N * blocks) throw new Error(`MatMulNBits ${n.name}: bad scales size`)
  const mask = (1 << bits) - 1
  const zpT = zName ? need(zName, 'zero points') : undefined
  let zpAt: (row: number, block: number) => number
  if (!zpT) zpAt = () => 1 << (bits - 1)
  else if (isFloat(zpT)) {
    const zf = floatValues(zpT)
    zpAt = (row, block) => zf[row * blocks + block]
  } else {
    const zb = tensorRawData(zpT)
    const perRow = Math.ceil((blocks * bits) / 8)
    if (zb.byteLength !== N * perRow) throw new Error(`MatMulNBits ${n.name}: bad zero points size`)
    zpAt = (row, block) => {
      const bit = block * bits
      return (zb[row * perRow + (bit >> 3)] >> (bit & 7)) & mask
    }
  }
  let gIdx: Int32Array | undefined
  if (gName) {
    const g = tensorRawData(need(gName, 'g_idx'))
    gIdx = new Int32Array(new Uint8Array(g).buffer)
  }

  const rows = new Float32Array(N * K)
  for (let r = 0; r < N; r++) {
    for (let b = 0; b < blocks; b++) {
      const base = (r * blocks + b) * blob
      const end = Math.min(blockSize, K - b * blockSize)
      const scale = scales[r * blocks + b]
      const zp = zpAt(r, b)
      for (let j = 0; j < end; j++) {
        const bit = j * bits
        const q = (B[base + (bit >> 3)] >> (bit & 7)) & mask
        const k = b * blockSize + j
        if (gIdx) {
          const g = gIdx[k]
          rows[r * K + k] = (q - zpAt(r, g)) * scales[r * blocks + g]
        } else rows[r * K + k] = (q - zp) * scale
      }
    }
  }
  return { rows, n: N, k: K }
}

/**
 * `quantizeRowsU8` (src/format/quant.ts) of the transposed matrix, same bytes, without transposing:
 * w is [K, N] and gets one scale and zero point per column; q is [K, N].
 */
export function quantizeColumnsU8(w: Float32Array, k: number, n: number) {
  const min = new Float64Array(n) // the range always includes 0
  const max = new Float64Array(n)
  for (let r = 0; r < k; r++) {
    const off = r * n
    for (let c = 0; c < n; c++) {
      const v = w[off + c]
      if (v < min[c]) min[c] = v
      if (v > max[c]) max[c] = v
    }
  }
  const scale = new Float32Array(n)
  const zeroPoint = new Uint8Array(n)
  for (let c = 0; c < n; c++) {
    const s = Math.fround(max[c] > min[c] ? (max[c] - min[c]) / 255 : 1)
    scale[c] = s
    zeroPoint[c] = Math.min(255, Math.max(0, Math.round(-min[c] / s)))
  }
  const q = new Uint8Array(k * n)
  for (let r = 0; r < k; r++) {
    const off = r * n
    for (let c = 0; c < n; c++)
      q[off + c] = Math.min(255, Math.max(0, Math.round(w[off + c] / scale[c]) + zeroPoint[c]))
  }
  return { q, scale, zeroPoint }
}

/**
 * What a matmul-like node multiplies by: [N, K] rows (row n = output feature n) or [K, N]
 * columns (a MatMul's B as stored), and its bias (input name) if any.
 */
interface WeightSource {
  /** Cache key: the same key means the same quantized matrix. */
  key: string
  /** Base for the new initializers' names. */
  base: string
  matrix: () => { values: Float32Array; layout: 'nk' | 'kn'; n: number; k: number }
  bias?: string
}

/**
 * Convert every matmul with constant weights to DynamicQuantizeMatMul (q8) or MatMulNBits (q4),
 * and the float embedding Gather (a [rows, hidden] table indexed by a graph input) to the
 * generator's form of the same; other Gathers (a q4 embedding's scales, small tables) stay as
 * they are. The model must hold its data inline (`raw_data`), fp32 (fp16 widened beforehand).
 */
export function convertWeights(
  model: ModelProto,
  options: {
    hiddenSize: number
    to: ConvertFormat
    /**
     * The lm_head's matrix (and a tied embedding reading it) in this format instead of `to`:
     * q4 layers with a q8 head quantized from the float weights.
     */
    headTo?: ConvertFormat
    /** q4 blocks: 'asymmetric' (default) or 'symmetric' (zero point 8: quant.ts `Q4Scheme`). */
    q4Scheme?: Q4Scheme
  },
): { model: ModelProto; stats: ConversionStats } {
  const graph = model.graph
  if (!graph) throw new Error('the model has no graph')
  const { to } = options
  const headWeight = options.headTo && options.headTo !== to ? lmHeadWeight(graph) : undefined
  /** The format of the matrix read from initializer `base`. */
  const formatOf = (base: string): ConvertFormat => (base === headWeight ? options.headTo! : to)
  if (to === 'q4' && (graph.node ?? []).some((n) => n.op_type === 'DynamicQuantizeMatMul'))
    throw new Error(
      'a q8 export (DynamicQuantizeMatMul) is not converted to q4: its weights would be rounded ' +
        'twice; convert its fp32 or fp16 export (onnx/model.onnx, onnx/model_fp16.onnx)',
    )
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]))
  const stats: ConversionStats = {
    matMul: 0,
    gemm: 0,
    matMulNBits: 0,
    embeddings: 0,
    biases: 0,
    shared: 0,
    bytesBefore: bytesOf(graph),
    bytesAfter: 0,
  }
  const name = uniqueNamer(graph)
  const added: TensorProto[] = []
  const byKey = new Map<string, QuantizedMatrix>()
  const byContent = new Map<string, QuantizedMatrix>()
  const consumers = new Map<string, NodeProto[]>()
  for (const n of graph.node ?? [])
    for (const i of n.input ?? []) consumers.set(i, [...(consumers.get(i) ?? []), n])
  const graphOutputs = new Set((graph.output ?? []).map((v) => v.name))
  const graphInputs = new Set((graph.input ?? []).map((v) => v.name))

  /** `src` in the target form: its initializers' bytes, names and dims. */
  const encode = (src: WeightSource) => {
    const { values, layout, n, k } = src.matrix()
    if (formatOf(src.base) === 'q4') {
      const rows = layout === 'nk' ? values : transpose(values, k, n)
      const { packed, scales, zeroPoints, blocks } = quantizeBlocksQ4(
        rows,
        n,
        k,
        Q4_BLOCK_SIZE,
        options.q4Scheme,
      )
      return {
        n,
        k,
        data: [packed, scales, zeroPoints] as const,
        names: [`${src.base}_Q4`, `${src.base}_scales`, `${src.base}_zp`],
        dims: [
          [n, blocks, Q4_BLOCK_SIZE / 2],
          [n, blocks],
          [n, Math.ceil(blocks / 2)],
        ],
      }
    }
    let weight: Uint8Array // [K, N]
    let scale: Float32Array
    let zeroPoint: Uint8Array
    if (layout === 'kn') ({ q: weight, scale, zeroPoint } = quantizeColumnsU8(values, k, n))
    else {
      const r = quantizeRowsU8(values, n, k)
      ;({ scale, zeroPoint } = r)
      weight = transpose(r.q, n, k)
    }
    return {
      n,
      k,
      data: [weight, scale, zeroPoint] as const,
      names: [`${src.base}_quantized`, `${src.base}_scale`, `${src.base}_zero_point`],
      dims: [[k, n], [n], [n]],
    }
  }

  const quantized = (src: WeightSource): QuantizedMatrix => {
    let m = byKey.get(src.key)
    if (!m) {
      const e = encode(src)
      const hash = createHash('sha256')
      for (const part of e.data)
        hash.update(new Uint8Array(part.buffer, part.byteOffset, part.byteLength))
      hash.update(`${e.k}x${e.n}`)
      const digest = hash.digest('hex')
      m = byContent.get(digest)
      if (!m) {
        const [weight, scale, zeroPoint] = e.names.map(name)
        m = { weight, scale, zeroPoint, n: e.n, k: e.k, users: 0 }
        added.push(
          initializer(weight, e.data[0], e.dims[0]),
          initializer(scale, e.data[1], e.dims[1]),
          initializer(zeroPoint, e.data[2], e.dims[2]),
        )
        byContent.set(digest, m)
      }
      byKey.set(src.key, m)
    }
    if (++m.users === 2) stats.shared++
    return m
  }

  /** An Add(bias [N]) that is the only reader of `out`: folded into the DQMM. */
  const foldableBias = (out: string, n: number) => {
    const readers = consumers.get(out) ?? []
    if (readers.length !== 1 || graphOutputs.has(out)) return undefined
    const add = readers[0]
    if (add.op_type !== 'Add' || add.domain || add.input?.length !== 2) return undefined
    const bias = add.input[0] === out ? add.input[1] : add.input[0]
    const t = inits.get(bias)
    if (!isFloat(t) || t.dims?.length !== 1 || t.dims[0] !== n) return undefined
    return { add, bias }
  }

  const removed = new Set<NodeProto>()
  const replaced = new Map<NodeProto, NodeProto[]>()
  const { producer } = indexGraph(graph)
  const int64s = (t: string | undefined) => {
    const v = t ? inits.get(t) : undefined
    return v?.data_type === DataType.INT64 && v.dims?.length === 1
      ? Array.from(new BigInt64Array(new Uint8Array(tensorRawData(v)).buffer), Number)
      : undefined
  }
  /**
   * A Gemm between Reshape(h, [-1, K]) and Reshape(·, Concat(Shape(h)[0:2], [N])), as a tied
   * lm_head reads its [V, H] matrix in an fp32 export: the converted node reads h itself and
   * writes the second Reshape's output (MatMulNBits and DynamicQuantizeMatMul take [b, s, K]),
   * so the lm_head is the node that computes logits, as the head split looks for.
   */
  const flattened = (gemm: NodeProto, x: string, N: number) => {
    const r1 = producer.get(x)
    const y = gemm.output![0]
    const r2 = consumers.get(y)?.[0]
    if (r1?.op_type !== 'Reshape' || r1.domain || consumers.get(x)?.length !== 1) return undefined
    if (r2?.op_type !== 'Reshape' || r2.domain || consumers.get(y)?.length !== 1) return undefined
    if (graphOutputs.has(x) || graphOutputs.has(y)) return undefined
    const h = r1.input![0]
    if (int64s(r1.input![1])?.length !== 2) return undefined
    const concat = producer.get(r2.input![1])
    if (concat?.op_type !== 'Concat' || concat.domain || intAttr(concat, 'axis') !== 0)
      return undefined
    const [lead, last] = concat.input ?? []
    const shape = producer.get(lead)
    if (shape?.op_type !== 'Shape' || shape.domain || shape.input![0] !== h) return undefined
    if ((intAttr(shape, 'start') ?? 0) !== 0 || intAttr(shape, 'end') !== 2) return undefined
    const n = int64s(last)
    if (n?.length !== 1 || n[0] !== N || concat.input!.length !== 2) return undefined
    return { x: h, output: r2.output![0], reshapes: [r1, r2] }
  }
  const linear = (
    n: NodeProto,
    x: string,
    src: WeightSource,
    kind: 'matMul' | 'gemm' | 'matMulNBits',
    output = n.output![0],
  ) => {
    const m = quantized(src)
    let bias = src.bias
    let out = output
    stats[kind]++
    if (formatOf(src.base) === 'q4') {
      const attrs = { K: m.k, N: m.n, bits: 4, block_size: Q4_BLOCK_SIZE }
      const y = bias ? name(`${out}_nbits`) : out
      const inputs = [x, m.weight, m.scale, m.zeroPoint]
      const nodes = [node('MatMulNBits', inputs, [y], attrs, { name: n.name, domain: MS })]
      if (bias) nodes.push(node('Add', [y, bias], [out], {}, { name: name(`${n.name}_bias`) }))
      replaced.set(n, nodes)
      return
    }
    if (!bias) {
      const fold = foldableBias(out, m.n)
      if (fold) {
        bias = fold.bias
        out = fold.add.output![0]
        removed.add(fold.add)
        stats.biases++
      }
    }
    const inputs = [x, m.weight, m.scale, m.zeroPoint, ...(bias ? [bias] : [])]
    replaced.set(n, [
      node('DynamicQuantizeMatMul', inputs, [out], {}, { name: n.name, domain: MS }),
    ])
  }
  const matrix = (t: TensorProto, layout: 'kn' | 'nk') => () => {
    const [a, b] = t.dims!
    const values = floatValues(t)
    return layout === 'nk' ? { values, layout, n: a, k: b } : { values, layout, n: b, k: a }
  }

  for (const n of graph.node ?? []) {
    const domain = n.domain ?? ''
    const [x, b, c] = n.input ?? []
    if (n.op_type === 'MatMul' && !domain) {
      const w = inits.get(b)
      if (!isFloat(w) || w.dims?.length !== 2) continue
      linear(n, x, { key: `${b}:kn`, base: b, matrix: matrix(w, 'kn') }, 'matMul')
    } else if (n.op_type === 'Gemm' && !domain) {
      const w = inits.get(b)
      if (!isFloat(w) || w.dims?.length !== 2) continue
      if ((intAttr(n, 'transA') ?? 0) !== 0 || (floatAttr(n, 'alpha') ?? 1) !== 1) continue
      const transB = (intAttr(n, 'transB') ?? 0) !== 0
      const N = transB ? w.dims[0] : w.dims[1]
      let bias: string | undefined
      if (c) {
        const ct = inits.get(c)
        if ((floatAttr(n, 'beta') ?? 1) !== 1 || !isFloat(ct) || ct.dims?.length !== 1) continue
        if (ct.dims[0] !== N) continue
        bias = c
      }
      const layout = transB ? 'nk' : 'kn'
      const src = { key: `${b}:${layout}`, base: b, matrix: matrix(w, layout), bias }
      const flat = flattened(n, x, N)
      if (flat) for (const r of flat.reshapes) removed.add(r)
      linear(n, flat?.x ?? x, src, 'gemm', flat?.output)
    } else if (n.op_type === 'MatMulNBits' && domain === MS && to === 'q8') {
      const bias = n.input?.[5] || undefined
      const src: WeightSource = {
        key: `${b}:nbits`,
        base: b.replace(/_Q\d$/, ''),
        matrix: () => {
          const { rows, n: N, k: K } = dequantizeMatMulNBits(n, (t) => inits.get(t))
          return { values: rows, layout: 'nk' as const, n: N, k: K }
        },
        bias,
      }
      linear(n, x, src, 'matMulNBits')
    } else if (n.op_type === 'Gather' && !domain) {
      const table = inits.get(n.input![0])
      const ids = n.input![1]
      const rank = declaredRank(graph, ids)
      if (!isFloat(table) || table.dims?.length !== 2 || (intAttr(n, 'axis') ?? 0) !== 0) continue
      if (!graphInputs.has(ids) || ids === LOGITS_TO_KEEP || rank === undefined) continue
      if (table.dims[1] !== options.hiddenSize) continue
      const m = quantized({
        key: `${table.name}:nk`,
        base: table.name!,
        matrix: matrix(table, 'nk'),
      })
      const nodes =
        formatOf(table.name!) === 'q4'
          ? q4EmbeddingNodes(model, n, ids, rank, m, name, added)
          : embeddingNodes(model, n, ids, rank, m, name, added)
      replaced.set(n, nodes)
      stats.embeddings++
    }
  }

  let nodes = (graph.node ?? []).flatMap((n) => (removed.has(n) ? [] : (replaced.get(n) ?? [n])))
  // what only the removed nodes read (a flattened Gemm's Shape and Concat) goes too
  const live = ancestors(indexGraph({ ...graph, node: nodes }), [...graphOutputs] as string[])
  nodes = nodes.filter((n) => live.has(n))
  let out: ModelProto = {
    ...model,
    opset_import: (model.opset_import ?? []).some((o) => o.domain === MS)
      ? model.opset_import
      : [...(model.opset_import ?? []), opset(MS, 1)],
    graph: { ...graph, node: nodes, initializer: [...(graph.initializer ?? []), ...added] },
  }
  out = pruneInitializers(out).model
  stats.bytesAfter = bytesOf(out.graph!)
  return { model: out, stats }
}

/**
 * The initializer the lm_head multiplies with: the MatMul or Gemm that computes `logits`, seen
 * through Reshapes (a flattened Gemm head); undefined when there is none.
 */
function lmHeadWeight(graph: GraphProto): string | undefined {
  const { producer } = indexGraph(graph)
  for (let n = producer.get('logits'); n; n = producer.get(n.input![0])) {
    if (n.domain) return undefined
    if (n.op_type === 'MatMul' || n.op_type === 'Gemm') return n.input![1]
    if (n.op_type !== 'Reshape') return undefined
  }
  return undefined
}

/**
 * The generator's q8 embedding (qwen2-graph.ts): rows of the [H, V] uint8 matrix the lm_head
 * multiplies with, dequantized with the per-token scale and zero point. Output: the Gather's.
 */
function embeddingNodes(
  model: ModelProto,
  gather: NodeProto,
  ids: string,
  rank: number,
  m: QuantizedMatrix,
  name: (base: string) => string,
  added: TensorProto[],
): NodeProto[] {
  const scope = gather.name || '/embed'
  const v = (base: string) => name(`${scope}/${base}`)
  const i64 = (values: number[]) => {
    const t = initializer(v('axes'), BigInt64Array.from(values, BigInt), [values.length])
    added.push(t)
    return t.name!
  }
  const [cols, tr, q, zpG, zp, sc, zpU, scU, centered] = [
    'Gather_cols',
    'Transpose',
    'Cast',
    'Gather_zp',
    'Cast_zp',
    'Gather_scale',
    'Unsqueeze_zp',
    'Unsqueeze_scale',
    'Sub',
  ].map((s) => v(`${s}_output_0`))
  const perm = [...Array.from({ length: rank }, (_, i) => i + 1), 0]
  const op = (type: string, inputs: string[], out: string, attrs = {}) =>
    node(type, inputs, [out], attrs, { name: v(type) })
  return [
    op('Gather', [m.weight, ids], cols, { axis: 1 }), // [H, ...ids] uint8
    op('Transpose', [cols], tr, { perm }), // [...ids, H]
    op('Cast', [tr], q, { to: DataType.FLOAT }),
    op('Gather', [m.zeroPoint, ids], zpG),
    op('Cast', [zpG], zp, { to: DataType.FLOAT }), // [...ids]
    op('Gather', [m.scale, ids], sc), // [...ids]
    unsqueezeNode(model, zp, [-1], zpU, v('Unsqueeze'), i64),
    op('Sub', [q, zpU], centered),
    unsqueezeNode(model, sc, [-1], scU, v('Unsqueeze'), i64),
    op('Mul', [centered, scU], gather.output![0]),
  ]
}

/**
 * The generator's q4 embedding (qwen2-graph.ts): rows of the [V, blocks, 16] 4-bit matrix the
 * tied lm_head multiplies with, unpacked (low nibble first) and dequantized per block, cut to H.
 * Output: the Gather's. Token ids of rank 2 ([batch, sequence]), as every Qwen export has.
 */
function q4EmbeddingNodes(
  model: ModelProto,
  gather: NodeProto,
  ids: string,
  rank: number,
  m: QuantizedMatrix,
  name: (base: string) => string,
  added: TensorProto[],
): NodeProto[] {
  if (rank !== 2) throw new Error(`embedding ${gather.name}: token ids of rank ${rank}, not 2`)
  const scope = gather.name || '/embed'
  const nodes: NodeProto[] = []
  const constant = (data: BigInt64Array | Float32Array, dims: number[]) => {
    const t = initializer(name(`${scope}/const`), data, dims)
    added.push(t)
    return t.name!
  }
  const i64 = (values: number[]) => constant(BigInt64Array.from(values, BigInt), [values.length])
  const op = (
    type: string,
    inputs: string[],
    attrs = {},
    out = name(`${scope}/${type}_output_0`),
  ) => {
    nodes.push(node(type, inputs, [out], attrs, { name: name(`${scope}/${type}`) }))
    return out
  }
  const unsqueeze = (x: string) => {
    const out = name(`${scope}/Unsqueeze_output_0`)
    nodes.push(unsqueezeNode(model, x, [-1], out, name(`${scope}/Unsqueeze`), i64))
    return out
  }
  const sixteen = constant(Float32Array.of(16), [])
  /** uint8 bytes [b, s, ...lead, m] → float nibbles [b, s, ...lead, 2m] (low nibble first). */
  const unpack = (bytes: string, lead: number[]) => {
    const f = op('Cast', [bytes], { to: DataType.FLOAT })
    const hi = op('Floor', [op('Div', [f, sixteen])])
    const lo = op('Sub', [f, op('Mul', [hi, sixteen])])
    const pair = op('Concat', [unsqueeze(lo), unsqueeze(hi)], { axis: -1 })
    return op('Reshape', [pair, i64([0, 0, ...lead, -1])])
  }
  const blocks = Math.ceil(m.k / Q4_BLOCK_SIZE)
  const codes = unpack(op('Gather', [m.weight, ids], { axis: 0 }), [blocks]) // [b, s, blocks, 32]
  let zp = unpack(op('Gather', [m.zeroPoint, ids], { axis: 0 }), []) // [b, s, 2 ceil(blocks / 2)]
  if (blocks % 2 === 1) zp = op('Slice', [zp, i64([0]), i64([blocks]), i64([2])])
  const scales = op('Gather', [m.scale, ids], { axis: 0 }) // [b, s, blocks]
  const values = op('Mul', [op('Sub', [codes, unsqueeze(zp)]), unsqueeze(scales)])
  const out = gather.output![0]
  const width = blocks * Q4_BLOCK_SIZE
  const flat = op('Reshape', [values, i64([0, 0, width])], {}, width === m.k ? out : undefined)
  if (width !== m.k) op('Slice', [flat, i64([0]), i64([m.k]), i64([2])], {}, out)
  return nodes
}

/**
 * The fp32 graph of a model: MatMulNBits → MatMul with the dequantized weights ([K, N] fp32,
 * plus an Add for a bias input). Everything else is kept. The model must be fp32 already.
 */
export function dequantizeToFloat(model: ModelProto): { model: ModelProto; nodes: number } {
  const graph = model.graph
  if (!graph) throw new Error('the model has no graph')
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]))
  const name = uniqueNamer(graph)
  const added: TensorProto[] = []
  const byWeight = new Map<string, string>()
  let count = 0
  const nodes = (graph.node ?? []).flatMap((n) => {
    if (n.op_type !== 'MatMulNBits' || n.domain !== MS) return [n]
    count++
    const b = n.input![1]
    let w = byWeight.get(b)
    if (!w) {
      const { rows, n: N, k: K } = dequantizeMatMulNBits(n, (t) => inits.get(t))
      w = name(`${b.replace(/_Q\d$/, '')}_fp32`)
      added.push(initializer(w, rows, [N, K]))
      byWeight.set(b, w)
    }
    // x @ rows^T; ORT folds the Transpose of the constant when it creates the session (faster
    // than transposing hundreds of MB here)
    const wT = name(`${w}_transposed`)
    const transposeW = node('Transpose', [w], [wT], { perm: [1, 0] }, { name: name(`${wT}/op`) })
    const bias = n.input?.[5]
    if (!bias)
      return [transposeW, node('MatMul', [n.input![0], wT], [n.output![0]], {}, { name: n.name })]
    const y = name(`${n.output![0]}_nobias`)
    return [
      transposeW,
      node('MatMul', [n.input![0], wT], [y], {}, { name: n.name }),
      node('Add', [y, bias], [n.output![0]], {}, { name: name(`${n.name ?? y}/bias`) }),
    ]
  })
  const out = pruneInitializers({
    ...model,
    graph: { ...graph, node: nodes, initializer: [...(graph.initializer ?? []), ...added] },
  }).model
  return { model: out, nodes: count }
}

function bytesOf(graph: GraphProto): number {
  return (graph.initializer ?? []).reduce(
    (n, t) => n + (t.data_type === DataType.STRING ? 0 : tensorByteLength(t)),
    0,
  )
}
