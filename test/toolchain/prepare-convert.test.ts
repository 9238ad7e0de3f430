/**
 * `model:prepare` transforms: the last-position logits rewrite and `--format q8` from fp32,
 * fp16 and q4 exports. Each prepared package is checked in onnxruntime-web (the runtime we
 * ship) against the export it came from, and through the engine's own loader.
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import { loadHfFolder } from '../../src/adapters/node/hf-folder.ts'
import { QwenEngine } from '../../src/engine/engine.ts'
import { loadPackage } from '../../src/engine/package/loader.ts'
import { ort } from '../../src/engine/graph/ort.ts'
import type { ChatRun } from '../../src/engine/types.ts'
import { convertFloatType } from '../../scripts/lib/graph-rewrite.ts'
import { CHECK_TOKENS } from '../../scripts/lib/logit-check.ts'
import {
  DataType,
  decodeModel,
  encodeModel,
  initializers,
  tensorRawData,
  type ModelProto,
} from '../../scripts/lib/onnx/index.ts'
import {
  REPORT_FILE,
  preparePackage,
  type PrepareOptions,
  type PrepareResult,
} from '../../scripts/prepare-model.ts'
import { copyModelFolderMeta, ensureModel } from '../helpers/models.ts'
import { argmax } from '../helpers/numeric.ts'

const V = 151936 // the tiny preset keeps Qwen's vocabulary
let work: string

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-prepare-convert-'))
})

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

/** The graph keeps its lm_head unless asked (head split: split-head.test.ts and below). */
async function prepare(folder: string, id: string, options: Partial<PrepareOptions> = {}) {
  return preparePackage({
    folder,
    id,
    out: join(work, 'shards'),
    shardBytes: 1024 * 1024,
    quiet: true,
    logitsRewrite: true,
    head: 'graph',
    ...options,
  })
}

async function packageSession(id: string) {
  const pkg = await loadPackage(fsSource(join(work, 'shards')), id)
  return ort.InferenceSession.create(pkg.graph, {
    externalData: pkg.externalData,
    logSeverityLevel: 3,
  })
}

async function exportSession(folder: string, file: string) {
  return ort.InferenceSession.create(await readFile(join(folder, file)), { logSeverityLevel: 3 })
}

/** One prefill of `tokens` with an empty cache: logits [n or keep, V] flattened (keep 0: all). */
async function run(session: ort.InferenceSession, tokens = CHECK_TOKENS, keep?: number) {
  const n = tokens.length
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, n]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]),
    position_ids: new ort.Tensor(
      'int64',
      BigInt64Array.from(tokens, (_, i) => BigInt(i)),
      [1, n],
    ),
  }
  if (keep !== undefined || session.inputNames.includes('num_logits_to_keep'))
    feeds.num_logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(BigInt(keep ?? 0)), [])
  for (const name of session.inputNames.filter((i) => i.startsWith('past_key_values.'))) {
    const meta = session.inputMetadata.find((m) => m.name === name)
    const fp16 = meta?.isTensor && meta.type === 'float16'
    const dims = [1, 2, 0, 16] // tiny: 2 kv heads, head_dim 16
    feeds[name] = fp16
      ? new ort.Tensor('float16', new Uint16Array(0), dims)
      : new ort.Tensor('float32', new Float32Array(0), dims)
  }
  const out = (await session.run(feeds)).logits
  return { data: out.data as Float32Array, dims: out.dims }
}

const lastRows = (logits: Float32Array, rows: number) => logits.subarray(logits.length - rows * V)

function errors(reference: Float32Array, other: Float32Array) {
  expect(other.length).toBe(reference.length)
  let max = 0
  let sum = 0
  let scale = 0
  for (let i = 0; i < reference.length; i++) {
    const d = Math.abs(reference[i] - other[i])
    max = Math.max(max, d)
    sum += d
    scale = Math.max(scale, Math.abs(reference[i]))
  }
  return { max, mean: sum / reference.length, scale }
}

async function preparedGraph(result: PrepareResult): Promise<ModelProto> {
  return decodeModel(await readFile(join(result.dir, result.manifest.stages[0].graph.path)))
}

function opTypes(model: ModelProto): Set<string> {
  return new Set((model.graph?.node ?? []).map((n) => n.op_type!))
}

/**
 * The q8 contract: DynamicQuantizeMatMul with uint8 [K, N] weights, no MatMulNBits, no
 * matmul left with constant float weights, nothing fp16.
 */
function expectQ8Form(model: ModelProto) {
  const graph = model.graph!
  const inits = new Map(graph.initializer!.map((t) => [t.name, t]))
  const dqmm = graph.node!.filter((n) => n.op_type === 'DynamicQuantizeMatMul')
  expect(dqmm.length).toBeGreaterThan(10)
  for (const n of dqmm) {
    expect(n.domain).toBe('com.microsoft')
    expect(inits.get(n.input![1])?.data_type).toBe(DataType.UINT8)
    expect(inits.get(n.input![3])?.data_type).toBe(DataType.UINT8)
  }
  expect(opTypes(model).has('MatMulNBits')).toBe(false)
  expect(opTypes(model).has('Gemm')).toBe(false)
  for (const n of graph.node!.filter((x) => x.op_type === 'MatMul'))
    expect(inits.has(n.input![1])).toBe(false) // only activation x activation (attention)
  expect([...initializers(model)].some((t) => t.data_type === DataType.FLOAT16)).toBe(false)
  for (const v of [...graph.input!, ...graph.output!])
    expect(v.type?.tensor_type?.elem_type).not.toBe(DataType.FLOAT16)
}

/** The report's numbers exist and are what 8-bit weights should give on this model. */
function expectQ8Report(result: PrepareResult) {
  const logits = result.report!.logits!
  expect(logits.tokens).toEqual(CHECK_TOKENS)
  expect(logits.referenceMaxAbs).toBeGreaterThan(1)
  expect(logits.maxAbsError).toBeGreaterThan(0)
  expect(logits.maxAbsError).toBeLessThan(0.08 * logits.referenceMaxAbs)
  expect(logits.meanAbsError).toBeLessThan(0.015 * logits.referenceMaxAbs)
  expect(logits.top1Agrees).toBe(true)
}

describe('logits rewrite', () => {
  let hf: string
  let result: PrepareResult

  beforeAll(async () => {
    hf = await ensureModel('tiny', 'fp32', { logitsToKeep: false })
    result = await prepare(hf, 'tiny-rewrite')
  })

  it('adds num_logits_to_keep and slices the hidden states before the lm_head', async () => {
    expect(result.report!.logitsRewrite).toEqual({
      applied: true,
      lmHead: '/lm_head/Gemm',
      hidden: '/model/norm/Mul_output_0',
    })
    const graph = (await preparedGraph(result)).graph!
    const keep = graph.input!.find((v) => v.name === 'num_logits_to_keep')
    expect(keep?.type?.tensor_type).toEqual({ elem_type: DataType.INT64, shape: { dim: [] } })
    expect(graph.node!.some((n) => n.op_type === 'Slice' && n.name === '/keep/Slice')).toBe(true)
    // the report sits next to the manifest and is not part of the package
    const files = await readdir(result.dir)
    expect(files).toContain(REPORT_FILE)
    expect(JSON.stringify(result.manifest)).not.toContain(REPORT_FILE)
    expect(JSON.parse(await readFile(join(result.dir, REPORT_FILE), 'utf8'))).toEqual(result.report)
  })

  it('gives the original logits for the last 1 and 3 positions, and all of them with 0', async () => {
    const original = await run(await exportSession(hf, 'onnx/model.onnx'))
    const prepared = await packageSession('tiny-rewrite')
    expect(prepared.inputNames).toContain('num_logits_to_keep')
    expect(original.dims).toEqual([1, 16, V])
    for (const keep of [1, 3, 0]) {
      const rows = keep || 16
      const got = await run(prepared, CHECK_TOKENS, keep)
      expect(got.dims).toEqual([1, rows, V])
      expect(errors(lastRows(original.data, rows), got.data).max).toBeLessThan(1e-5)
    }
    expect(result.report!.logits).toMatchObject({ top1Agrees: true, reference: 'the input graph' })
    expect(result.report!.logits!.maxAbsError).toBeLessThan(1e-5)
  })

  it('leaves an export that already has the input alone, and runs only when asked', async () => {
    const hasKeep = await ensureModel('tiny', 'fp32')
    const r = await prepare(hasKeep, 'tiny-has-keep')
    expect(r.report!.logitsRewrite).toEqual({
      applied: false,
      reason: 'the graph already has num_logits_to_keep',
    })
    expect(r.report!.logits).toBeUndefined() // nothing changed: nothing to check
    const plain = await prepare(hf, 'tiny-plain', { logitsRewrite: false })
    expect(plain.report).toBeUndefined()
    expect(await readdir(plain.dir)).not.toContain(REPORT_FILE)
    const graph = (await preparedGraph(plain)).graph!
    expect(graph.input!.some((v) => v.name === 'num_logits_to_keep')).toBe(false)
  })
})

describe('--format q8', () => {
  it('fp32 → q8: the generator’s own q8 weights, byte for byte, and its logits', async () => {
    const hf = await ensureModel('tiny', 'fp32', { logitsToKeep: false })
    const result = await prepare(hf, 'tiny-fp32-q8', { format: 'q8' })
    expect(result.manifest.stages[0].graph.path).toBe('model_quantized.onnx')
    const model = await preparedGraph(result)
    expectQ8Form(model)
    expect(result.report!.conversion).toMatchObject({
      matMul: 14,
      gemm: 1,
      matMulNBits: 0,
      embeddings: 1,
      biases: 6, // q/k/v biases folded into the DQMM, as the generator writes them
      shared: 1, // tied embedding and lm_head: one [H, V] uint8 matrix
      fp16Tensors: 0,
    })
    expectQ8Report(result)

    // every initializer of the generator's q8 graph exists with the same name and bytes
    const generated = await ensureModel('tiny', 'q8')
    const q8 = decodeModel(await readFile(join(generated, 'onnx/model_quantized.onnx')))
    const pkg = await loadPackage(fsSource(join(work, 'shards')), 'tiny-fp32-q8')
    const data = pkg.externalData[0].data
    const ours = new Map([...initializers(model)].map((t) => [t.name, t]))
    let compared = 0
    for (const t of initializers(q8)) {
      if (!t.name!.endsWith('_quantized') && !t.name!.endsWith('_scale')) continue
      const mine = ours.get(t.name)
      expect(mine, t.name).toBeDefined()
      const bytes = tensorRawData(mine!, () => data)
      expect(Buffer.from(bytes).equals(Buffer.from(tensorRawData(t))), t.name).toBe(true)
      compared++
    }
    expect(compared).toBe(2 * 15) // 14 linears + the embedding

    // and onnxruntime-web computes the same logits as on the generated q8 model
    const reference = await run(await exportSession(hf, 'onnx/model.onnx'))
    // keep 1 on both: DynamicQuantizeMatMul scales the activations over the rows it is given
    const fromGenerator = await run(
      await exportSession(generated, 'onnx/model_quantized.onnx'),
      CHECK_TOKENS,
      1,
    )
    const converted = await run(await packageSession('tiny-fp32-q8'), CHECK_TOKENS, 1)
    expect(errors(fromGenerator.data, converted.data).max).toBeLessThan(1e-5)
    const e = errors(lastRows(reference.data, 1), converted.data)
    expect(e.max).toBeLessThan(0.08 * e.scale)
    expect(argmax(converted.data)).toBe(argmax(lastRows(reference.data, 1)))
  })

  it('fp32 → q4 --q4-scheme symmetric: the generator’s own q4 weights, byte for byte, and its logits', async () => {
    const hf = await ensureModel('tiny', 'fp32', { logitsToKeep: false })
    // plain quantization (AWQ scales the weights first: awq.test.ts); symmetric blocks, as the
    // generator (and onnx-community's q4 files) make them
    const options = { format: 'q4', awq: false, q4Scheme: 'symmetric' } as const
    const result = await prepare(hf, 'tiny-fp32-q4', options)
    expect(result.manifest.stages[0].graph.path).toBe('model_q4.onnx')
    const model = await preparedGraph(result)
    expect(result.report!.conversion).toMatchObject({
      matMul: 14,
      gemm: 1,
      matMulNBits: 0,
      embeddings: 1,
      biases: 0, // MatMulNBits keeps its Add
      shared: 1, // tied embedding and lm_head: one 4-bit matrix
    })
    const nodes = model.graph!.node!
    const weights = new Set([...initializers(model)].map((t) => t.name))
    expect(nodes.filter((n) => n.op_type === 'MatMulNBits').length).toBe(15)
    // the MatMuls left multiply activations (attention), none a weight
    expect(nodes.filter((n) => n.op_type === 'MatMul' && weights.has(n.input![1]))).toEqual([])

    // every 4-bit initializer of the generator's q4 graph exists with the same name and bytes
    const generated = await ensureModel('tiny', 'q4')
    const q4 = decodeModel(await readFile(join(generated, 'onnx/model_q4.onnx')))
    const pkg = await loadPackage(fsSource(join(work, 'shards')), 'tiny-fp32-q4')
    const data = pkg.externalData[0].data
    const ours = new Map([...initializers(model)].map((t) => [t.name, t]))
    let compared = 0
    for (const t of initializers(q4)) {
      if (!/_(Q4|scales|zp)$/.test(t.name!)) continue
      const mine = ours.get(t.name)
      expect(mine, t.name).toBeDefined()
      const bytes = tensorRawData(mine!, () => data)
      expect(Buffer.from(bytes).equals(Buffer.from(tensorRawData(t))), t.name).toBe(true)
      compared++
    }
    expect(compared).toBe(3 * 15) // 14 linears + the tied embedding / lm_head

    // and onnxruntime-web computes the generated q4 model's logits
    const fromGenerator = await run(
      await exportSession(generated, 'onnx/model_q4.onnx'),
      CHECK_TOKENS,
      1,
    )
    const converted = await run(await packageSession('tiny-fp32-q4'), CHECK_TOKENS, 1)
    expect(errors(fromGenerator.data, converted.data).max).toBeLessThan(1e-5)

    // the default scheme is asymmetric: zero points of their own, not all 8
    const zeroPoints = (m: ModelProto, ext: Uint8Array) =>
      [...initializers(m)]
        .filter((t) => /_zp$/.test(t.name!))
        .map((t) => tensorRawData(t, () => ext))
    const asymResult = await prepare(hf, 'tiny-fp32-q4-asym', { format: 'q4', awq: false })
    const asymData = (await loadPackage(fsSource(join(work, 'shards')), 'tiny-fp32-q4-asym'))
      .externalData[0].data
    const asym = zeroPoints(await preparedGraph(asymResult), asymData)
    expect(zeroPoints(model, data).length).toBe(15)
    expect(zeroPoints(model, data).every((z) => z.every((b) => b === 0x88))).toBe(true)
    expect(asym.length).toBe(15)
    expect(asym.some((z) => z.some((b) => b !== 0x88))).toBe(true)
    await expect(
      prepare(hf, 'tiny-fp32-q4-bad', { format: 'q4', q4Scheme: 'q4_0' as 'symmetric' }),
    ).rejects.toThrow(/Unknown q4 scheme "q4_0"/)

    // a q8 export is not rounded a second time
    const q8 = await ensureModel('tiny', 'q8')
    await expect(prepare(q8, 'tiny-q8-q4', { format: 'q4' })).rejects.toThrow(
      /q8 export .* is not converted to q4/,
    )
  })

  it('fp32 → q4 with --head-format q8: 4-bit layers, the head rows in q8 from the fp32 weights', async () => {
    const hf = await ensureModel('tiny', 'fp32')
    const options = { format: 'q4', awq: false, head: 'wasm' } as const
    const q4Head = await prepare(hf, 'tiny-fp32-q4-q4head', options)
    const q8Head = await prepare(hf, 'tiny-fp32-q4-q8head', { ...options, headFormat: 'q8' })
    // asymmetric blocks (the default scheme): the head and the layers keep their zero points
    expect(q4Head.manifest.head?.format).toBe('q4-b32')
    expect(q4Head.report!.decoder).toMatchObject({ applied: true, q4Layout: 'zero-points' })
    expect(q8Head.manifest.head?.format).toBe('q8-rows')
    for (const r of [q4Head, q8Head]) {
      expect(r.manifest.decoder?.format).toBe('nbits') // the layers are 4-bit either way
      expect(r.report!.head).toMatchObject({ applied: true, embedding: true, top1Agrees: true })
    }
    // the layers' bytes are the same: only the head differs
    const graphs = await Promise.all([q4Head, q8Head].map(preparedGraph))
    const nbits = graphs.map(
      (g) => g.graph!.node!.filter((n) => n.op_type === 'MatMulNBits').length,
    )
    expect(nbits).toEqual([14, 14])
    // and rows quantized from fp32 to 8 bits are closer to fp32 than 4-bit rows (a q8 head made
    // from the 4-bit rows would not be)
    const [a, b] = [q4Head, q8Head].map((r) => r.report!.logits!.meanAbsError)
    expect(b).toBeLessThan(a)
  })

  it('q4 (MatMulNBits) → q8: close to the dequantized q4 weights', async () => {
    const hf = await ensureModel('tiny', 'q4')
    const result = await prepare(hf, 'tiny-q4-q8', { format: 'q8' })
    expectQ8Form(await preparedGraph(result))
    expect(result.report!.conversion).toMatchObject({
      matMul: 0,
      matMulNBits: 15,
      dequantizedForReference: 15,
      biases: 6,
      embeddings: 0, // the q4 embedding's Gathers read the packed table and its scales: kept
    })
    expect(result.report!.logits!.reference).toBe(
      'fp32 graph of the input (15 MatMulNBits dequantized)',
    )
    expectQ8Report(result)

    // independent reference: onnxruntime-web's own MatMulNBits kernel on the q4 export
    const q4 = await run(await exportSession(hf, 'onnx/model_q4.onnx'), CHECK_TOKENS, 1)
    const converted = await run(await packageSession('tiny-q4-q8'), CHECK_TOKENS, 1)
    const e = errors(q4.data, converted.data)
    expect(e.max).toBeLessThan(0.08 * e.scale)
    expect(e.mean).toBeLessThan(0.015 * e.scale)
    expect(argmax(converted.data)).toBe(argmax(q4.data))
  })

  it('with the default head: q4 → q8 splits the lm_head off, the q4 embedding stays', async () => {
    const hf = await ensureModel('tiny', 'q4')
    const result = await prepare(hf, 'tiny-q4-q8-head', { format: 'q8', head: 'wasm' })
    expect(result.report!.head).toMatchObject({
      applied: true,
      embedding: false, // the embedding Gathers read the packed q4 table, not the q8 matrix
      vocab: V,
      top1Agrees: true,
      presentMaxAbsError: 0,
    })
    expect(result.manifest.stages[0].io).toBe('ids->hidden')
    expect(result.manifest.head).toMatchObject({ vocab: V, hidden: 64, stride: 64 })
    expectQ8Report(result) // the conversion is checked before the split, on the whole graph

    // our own fp32 graphs compute logits through Reshape(Gemm(Reshape(hidden))): the converted
    // lm_head reads hidden itself, so it is split off too, with the tied embedding
    const fp32 = await prepare(await ensureModel('tiny', 'fp32'), 'tiny-fp32-q8-head', {
      format: 'q8',
      head: 'wasm',
    })
    expect(fp32.report!.head).toMatchObject({ applied: true, embedding: true, top1Agrees: true })
    expect(fp32.manifest.head).toMatchObject({ vocab: V, hidden: 64 })
    const graph = await preparedGraph(fp32)
    expect(opTypes(graph).has('Gemm')).toBe(false)
    // the Reshapes around the Gemm, and the Shape and Concat of the second, went too
    expect(graph.graph!.node!.filter((n) => n.name?.startsWith('/lm_head'))).toEqual([])
  })

  it('fp16 → q8: widened to fp32, then quantized', async () => {
    // An fp16 export: the fp32 graph with every float tensor, constant, Cast and I/O in fp16.
    const fp32 = await ensureModel('tiny', 'fp32', { logitsToKeep: false })
    const hf = join(work, 'tiny-fp16-hf')
    await copyModelFolderMeta(fp32, hf)
    const source = decodeModel(await readFile(join(fp32, 'onnx/model.onnx')))
    const half = convertFloatType(source, DataType.FLOAT16)
    expect(half.stats.tensors).toBeGreaterThan(20)
    await writeFile(join(hf, 'onnx/model_fp16.onnx'), encodeModel(half.model))

    const fp16Session = await exportSession(hf, 'onnx/model_fp16.onnx')
    expect(fp16Session.inputMetadata.find((m) => m.name === 'past_key_values.0.key')).toMatchObject(
      { type: 'float16' },
    )

    const result = await prepare(hf, 'tiny-fp16-q8', { format: 'q8' })
    expectQ8Form(await preparedGraph(result))
    expect(result.report!.conversion!.fp16Tensors).toBe(half.stats.tensors)
    expect(result.report!.logits!.reference).toBe('fp32 graph of the input (fp16 widened)')
    expectQ8Report(result)

    const reference = await run(await exportSession(fp32, 'onnx/model.onnx'))
    const converted = await run(await packageSession('tiny-fp16-q8'), CHECK_TOKENS, 1)
    const e = errors(lastRows(reference.data, 1), converted.data)
    expect(e.max).toBeLessThan(0.08 * e.scale)
    expect(argmax(converted.data)).toBe(argmax(lastRows(reference.data, 1)))
  })
})

describe('the engine on a converted package', () => {
  it('loads through the package loader and generates; same greedy text as the generated q8', async () => {
    const hf = await ensureModel('tiny', 'fp32', { logitsToKeep: false })
    await prepare(hf, 'tiny-engine', { format: 'q8' })
    const pkg = await loadPackage(fsSource(join(work, 'shards')), 'tiny-engine')
    const engine = await QwenEngine.create(pkg, { contextLength: 128 })
    const generated = await QwenEngine.create(await loadHfFolder(await ensureModel('tiny', 'q8')), {
      contextLength: 128,
    })
    const chat = [{ role: 'user' as const, content: 'Hello!' }]
    const options = { temperature: 0, maxNewTokens: 6, repetitionPenalty: 1 }
    const a = await drain(await engine.chat(chat, options))
    const b = await drain(await generated.chat(chat, options))
    expect(a.tokens).toBe(6)
    expect(a.text.length).toBeGreaterThan(0)
    expect(a.text).toBe(b.text)
  })
})

async function drain(run: ChatRun) {
  let text = ''
  let tokens = 0
  for await (const e of run.events) {
    if (e.type === 'text') text += e.text
    if (e.type === 'end') tokens = e.usage.completionTokens
  }
  return { text, tokens }
}
