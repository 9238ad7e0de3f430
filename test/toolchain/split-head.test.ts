/**
 * The head split (scripts/lib/split-head.ts, `model:prepare --head wasm`): the lm_head, and a
 * tied embedding, move out of a q8 graph into head.q8. The original and the split graph run in
 * onnxruntime-node on the same tokens with a KV cache; the logits are recomputed here from the
 * head file's bytes with this file's own reading of the layout.
 */
import { readFile, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as ort from 'onnxruntime-node'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  listFiles,
  parseManifest,
  quantizeLikeDynamicQuantizeLinear,
  type Qwen2Config,
} from '../../src/format/index.ts'
import {
  DataType,
  decodeModel,
  encodeModel,
  tensorRawData,
  valueInfo,
} from '../../scripts/lib/onnx/index.ts'
import type { ModelProto, NodeProto, TensorProto } from '../../scripts/lib/onnx/index.ts'
import { CHECK_TOKENS } from '../../scripts/lib/logit-check.ts'
import {
  checkSplitHead,
  headEmbedding,
  headLogits,
  splitHead,
  type HeadRows,
  type SplitHeadResult,
} from '../../scripts/lib/split-head.ts'
import { REPORT_FILE, preparePackage } from '../../scripts/prepare-model.ts'
import { sha256 } from '../engine/package/fake-package.ts'
import { ensureModel } from '../helpers/models.ts'
import { argmax } from '../helpers/numeric.ts'

// tiny with a small vocabulary (fast) and a hidden size that is not a multiple of 32, so rows
// are padded (48 → stride 64); 3001 x 65 bytes is not a multiple of 4, so the scales are too
const V = 3001
const H = 48
const STRIDE = 64
const TIED = { vocabSize: V, hiddenSize: H }
const UNTIED = { ...TIED, tieWordEmbeddings: false }
const PROMPT = [0, 17, V - 1, 1234, 5, 2999, 42, 7]

interface Loaded {
  dir: string
  config: Qwen2Config
  model: ModelProto
}

async function load(dir: string): Promise<Loaded> {
  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))
  const file =
    (await readFile(join(dir, 'onnx', 'model_quantized.onnx')).catch(() => null)) ??
    (await readFile(join(dir, 'onnx', 'model.onnx')))
  return { dir, config, model: decodeModel(file) }
}

let work: string
let tied: Loaded
let untied: Loaded

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-split-head-'))
  tied = await load(await ensureModel('tiny', 'q8', { overrides: TIED }))
  untied = await load(await ensureModel('tiny', 'q8', { overrides: UNTIED }))
})

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

function applied(r: SplitHeadResult) {
  if (!r.applied) throw new Error(`not applied: ${r.reason}`)
  return r
}

function init(model: ModelProto, name: string): TensorProto {
  const t = model.graph!.initializer!.find((x) => x.name === name)
  if (!t) throw new Error(`no initializer ${name}`)
  return t
}

const u8 = (t: TensorProto) => tensorRawData(t)
const f32 = (t: TensorProto) => new Float32Array(new Uint8Array(tensorRawData(t)).buffer)

// ---------------------------------------------------------------- running the graphs

type Past = Record<string, ort.Tensor>

async function open(model: ModelProto): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(encodeModel(model), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    logSeverityLevel: 3,
  })
}

function emptyPast(config: Qwen2Config): Past {
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads
  const past: Past = {}
  for (let i = 0; i < config.num_hidden_layers; i++)
    for (const kind of ['key', 'value'])
      past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
        1,
        config.num_key_value_heads,
        0,
        headDim,
      ])
  return past
}

/** One step on `ids` with the last position's output only (num_logits_to_keep 1). */
async function step(
  session: ort.InferenceSession,
  ids: number[],
  past: Past,
  embeds?: Float32Array,
): Promise<{ out: ort.InferenceSession.OnnxValueMapType; past: Past }> {
  const p = past['past_key_values.0.key'].dims[2]
  const n = ids.length
  const feeds: Past = {
    ...past,
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(p + n).fill(1n), [1, p + n]),
    position_ids: new ort.Tensor(
      'int64',
      BigInt64Array.from(ids, (_, i) => BigInt(p + i)),
      [1, n],
    ),
    num_logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(1n), []),
  }
  if (embeds) feeds.inputs_embeds = new ort.Tensor('float32', embeds, [1, n, embeds.length / n])
  expect(Object.keys(feeds).sort()).toEqual([...session.inputNames].sort())
  const out = await session.run(feeds)
  const next: Past = {}
  for (const name of session.outputNames)
    if (name.startsWith('present.')) next[name.replace('present.', 'past_key_values.')] = out[name]
  return { out, past: next }
}

// ---------------------------------------------------------------- reading the head file here

/** The head file as this test reads the layout: int8 rows, int8 zero points, f32 scales. */
function readHead(head: HeadRows) {
  const { vocab, stride, bytes } = head
  const zpAt = vocab * stride
  const scaleAt = Math.ceil((zpAt + vocab) / 4) * 4
  expect(bytes.byteLength).toBe(scaleAt + 4 * vocab)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return {
    weight: (v: number, k: number) => view.getInt8(v * stride + k),
    zeroPoint: (v: number) => view.getInt8(zpAt + v),
    scale: (v: number) => view.getFloat32(scaleAt + 4 * v, true),
    zpAt,
    scaleAt,
  }
}

/** hidden [H] x head rows, float64 accumulation: logits [V] and Σ_k |w[v][k]| per row. */
function logitsFromRows(head: HeadRows, hidden: Float32Array) {
  const r = readHead(head)
  const logits = new Float64Array(head.vocab)
  const absRow = new Float64Array(head.vocab)
  for (let v = 0; v < head.vocab; v++) {
    let acc = 0
    let abs = 0
    for (let k = 0; k < head.hidden; k++) {
      const w = (r.weight(v, k) - r.zeroPoint(v)) * r.scale(v)
      acc += w * hidden[k]
      abs += Math.abs(w)
    }
    logits[v] = acc
    absRow[v] = abs
  }
  return { logits, absRow }
}

/**
 * DynamicQuantizeMatMul quantizes its activations to uint8 with one scale for the tensor:
 * s = (max(A, 0) - min(A, 0)) / 255, each value off by at most s (s / 2 from rounding, up to s
 * where the zero point's rounding saturates). So the graph's logit v can differ from the exact
 * product by at most s · Σ_k |w[v][k]|, plus float32 rounding.
 */
function activationStep(hidden: Float32Array): number {
  let min = 0
  let max = 0
  for (const x of hidden) {
    min = Math.min(min, x)
    max = Math.max(max, x)
  }
  return (max - min) / 255
}

/**
 * The graph's lm_head as onnxruntime computes it: A quantized to uint8 like
 * DynamicQuantizeLinear (float32 scale, zero point and rounding half to even), an exact integer
 * dot product with the head row, times scale_A · scale_v in float32.
 */
function logitsLikeDqmm(head: HeadRows, hidden: Float32Array): Float64Array {
  const r = readHead(head)
  const f = Math.fround
  const { centered: qA, scale: sA } = quantizeLikeDynamicQuantizeLinear(hidden)
  const out = new Float64Array(head.vocab)
  for (let v = 0; v < head.vocab; v++) {
    let acc = 0
    for (let k = 0; k < head.hidden; k++) acc += qA[k] * (r.weight(v, k) - r.zeroPoint(v))
    out[v] = f(acc * f(sA * r.scale(v)))
  }
  return out
}

/**
 * The original and the split graph on PROMPT and then `decode` greedy steps on the KV cache:
 * (a) logits from hidden_states x head rows within the activation-quantization bound of the
 * graph's, same top-1, and equal to the graph's once A is quantized as the graph does; (b) every
 * present.* output equal to 1e-6.
 */
async function compareOverSteps(original: ModelProto, config: Qwen2Config, decode = 3) {
  const split = applied(splitHead(original, config))
  const a = await open(original)
  const b = await open(split.model)
  let pastA = emptyPast(config)
  let pastB = emptyPast(config)
  let ids = PROMPT
  let worstRatio = 0
  let maxPresentDiff = 0
  for (let s = 0; s <= decode; s++) {
    const embeds = split.head.embedding ? headEmbedding(split.head, ids) : undefined
    const ra = await step(a, ids, pastA)
    const rb = await step(b, ids, pastB, embeds)
    expect(rb.out.logits).toBeUndefined()
    const graphLogits = ra.out.logits.data as Float32Array
    const hidden = rb.out.hidden_states.data as Float32Array
    expect(ra.out.logits.dims).toEqual([1, 1, V])
    expect(rb.out.hidden_states.dims).toEqual([1, 1, H])
    const { logits, absRow } = logitsFromRows(split.head, hidden)
    const sA = activationStep(hidden)
    for (let v = 0; v < V; v++) {
      const bound = sA * absRow[v] + 1e-5 * (1 + Math.abs(logits[v]))
      const d = Math.abs(graphLogits[v] - logits[v])
      expect(d, `step ${s}, logit ${v}`).toBeLessThanOrEqual(bound)
      worstRatio = Math.max(worstRatio, d / bound)
    }
    expect(argmax(logits)).toBe(argmax(graphLogits))
    // and with A quantized as the graph's DynamicQuantizeMatMul does, the same numbers (0 on
    // onnxruntime-node 1.30 x64; the tolerance only allows for float32 rounding)
    const like = logitsLikeDqmm(split.head, hidden)
    for (let v = 0; v < V; v++)
      expect(Math.abs(graphLogits[v] - like[v]), `step ${s}, logit ${v}`).toBeLessThanOrEqual(
        1e-6 * (1 + Math.abs(like[v])),
      )
    // the script's own reference implementation agrees with this file's reading of the layout
    const ours = headLogits(split.head, hidden)
    for (let v = 0; v < V; v++) expect(Math.abs(ours[v] - logits[v])).toBeLessThan(1e-5)

    expect(Object.keys(rb.past).sort()).toEqual(Object.keys(ra.past).sort())
    for (const [name, t] of Object.entries(ra.past)) {
      const x = t.data as Float32Array
      const y = rb.past[name].data as Float32Array
      expect(y.length).toBe(x.length)
      for (let i = 0; i < x.length; i++)
        maxPresentDiff = Math.max(maxPresentDiff, Math.abs(x[i] - y[i]))
    }
    pastA = ra.past
    pastB = rb.past
    ids = [argmax(graphLogits)]
  }
  expect(maxPresentDiff).toBeLessThanOrEqual(1e-6)
  expect(worstRatio).toBeGreaterThan(0) // the graph's activation quantization is visible
  return { split, worstRatio, maxPresentDiff }
}

/** (c) Every byte of the head file against the graph's [H, V] uint8 matrix, zp and scale. */
function expectLayout(head: HeadRows, model: ModelProto, weight: string) {
  const B = u8(init(model, `${weight}_quantized`)) // [H, V]
  const zp = u8(init(model, `${weight}_zero_point`))
  const scale = f32(init(model, `${weight}_scale`))
  const r = readHead(head)
  expect([r.zpAt, r.scaleAt]).toEqual([V * STRIDE, V * STRIDE + V + 3]) // 195065 → 195068
  const bytes = head.bytes
  let wrong = 0
  let padding = 0
  for (let v = 0; v < V; v++) {
    for (let k = 0; k < H; k++) if (r.weight(v, k) !== B[k * V + v] - 128) wrong++
    for (let k = H; k < STRIDE; k++) padding |= bytes[v * STRIDE + k]
    if (r.zeroPoint(v) !== zp[v] - 128) wrong++
    if (!Object.is(r.scale(v), scale[v])) wrong++
  }
  for (let i = r.zpAt + V; i < r.scaleAt; i++) padding |= bytes[i]
  expect(wrong).toBe(0)
  expect(padding).toBe(0)
  // (row - zp') is the graph's (B - zp) exactly
  expect(r.weight(5, 3) - r.zeroPoint(5)).toBe(B[3 * V + 5] - zp[5])
}

// ---------------------------------------------------------------- tests

describe('splitHead on a tied q8 model', () => {
  it('turns logits into hidden_states and the embedding into inputs_embeds', () => {
    const r = applied(splitHead(tied.model, tied.config))
    expect(r).toMatchObject({
      lmHead: 'DynamicQuantizeMatMul /lm_head/DynamicQuantizeMatMul',
      hiddenTensor: '/keep/Slice_output_0',
      embeddingTensor: '/embed/Mul_output_0',
      embeddingNodes: 10, // 3 Gathers, Transpose, 2 Casts, 2 Unsqueezes, Sub, Mul
      head: { vocab: V, hidden: H, stride: STRIDE, embedding: true },
    })
    expect(r.removedInitializers).toEqual(
      expect.arrayContaining([
        'model.embed_tokens.weight_quantized',
        'model.embed_tokens.weight_scale',
        'model.embed_tokens.weight_zero_point',
      ]),
    )
    const before = tied.model.graph!
    const graph = r.model.graph!
    const dim = (d: { dim_param?: string; dim_value?: number }) => d.dim_param ?? d.dim_value
    const dims = (name: string, list = graph.input!) =>
      list.find((v) => v.name === name)?.type?.tensor_type?.shape?.dim?.map(dim)
    expect(graph.input!.map((v) => v.name).slice(0, 2)).toEqual(['input_ids', 'inputs_embeds'])
    expect(dims('inputs_embeds')).toEqual(['batch_size', 'sequence_length', H])
    expect(graph.output!.map((v) => v.name)).toEqual([
      'hidden_states',
      ...before.output!.slice(1).map((v) => v.name),
    ])
    expect(graph.output![0].type?.tensor_type?.elem_type).toBe(DataType.FLOAT)
    expect(dims('hidden_states', graph.output!)).toEqual(['batch_size', 'logits_length', H])
    expect(graph.node!.length).toBe(before.node!.length - 11)
    expect(graph.node!.some((n) => n.op_type === 'Gather' && n.input![1] === 'input_ids')).toBe(
      false,
    )
    // the mask still reads input_ids; the first layer reads inputs_embeds
    expect(graph.node!.some((n) => n.input!.includes('input_ids'))).toBe(true)
    expect(graph.node!.filter((n) => n.input!.includes('inputs_embeds')).length).toBe(3)
    // the model given is left alone
    expect(tied.model.graph!.output![0].name).toBe('logits')
    expect(tied.model.graph!.node!.length).toBe(before.node!.length)
  })

  it('(c) writes the head rows, zero points and scales of the graph’s matrix, padding zero', () => {
    const { head } = applied(splitHead(tied.model, tied.config))
    expectLayout(head, tied.model, 'model.embed_tokens.weight')
  })

  it('(b) looks up the graph’s own embedding, bit for bit', async () => {
    const { head } = applied(splitHead(tied.model, tied.config))
    // the original graph, with its embedding as an extra output
    const probe: ModelProto = {
      ...tied.model,
      graph: {
        ...tied.model.graph!,
        output: [
          ...tied.model.graph!.output!,
          valueInfo('/embed/Mul_output_0', DataType.FLOAT, ['batch_size', 'sequence_length', H]),
        ],
      },
    }
    const ids = Array.from({ length: 64 }, (_, i) => (i * 97 + (i === 63 ? V - 1 : 0)) % V)
    const session = await open(probe)
    const { out } = await step(session, ids, emptyPast(tied.config))
    const graphEmbedding = out['/embed/Mul_output_0'].data as Float32Array
    const mine = headEmbedding(head, ids)
    expect(graphEmbedding.length).toBe(ids.length * H)
    expect(Buffer.from(mine.buffer).equals(Buffer.from(graphEmbedding.buffer))).toBe(true)
  })

  it('(a, b) same logits within the activation quantization, same KV cache over 4 steps', async () => {
    const { worstRatio } = await compareOverSteps(tied.model, tied.config)
    expect(worstRatio).toBeLessThanOrEqual(1)
  })
})

describe('checkSplitHead (what model:prepare refuses to write)', () => {
  it('agrees with a correct split, and sees a KV difference when one embedding row is off', async () => {
    const r = applied(splitHead(tied.model, tied.config))
    const good = await checkSplitHead(tied.model, r.model, r.head, tied.config)
    expect(good.presentMaxAbsError).toBe(0)
    expect(good.top1Agrees).toBe(true)
    // shift the zero point of the prompt's first token by one: its embedding moves by `scale`
    const bytes = r.head.bytes.slice()
    const t = CHECK_TOKENS[0] % V
    bytes[V * STRIDE + t] = (bytes[V * STRIDE + t] + 1) & 0xff
    const bad = await checkSplitHead(tied.model, r.model, { ...r.head, bytes }, tied.config)
    expect(bad.presentMaxAbsError).toBeGreaterThan(1e-5)
  })
})

describe('splitHead on an untied q8 model', () => {
  it('(d) splits the lm_head only: the embedding stays in the graph', async () => {
    const { split } = await compareOverSteps(untied.model, untied.config)
    expect(split.head.embedding).toBe(false)
    expect(split.embeddingNodes).toBe(0)
    expect(split.embeddingTensor).toBeUndefined()
    const graph = split.model.graph!
    expect(graph.input!.some((v) => v.name === 'inputs_embeds')).toBe(false)
    const names = new Set(graph.initializer!.map((t) => t.name))
    expect(names.has('model.embed_tokens.weight_quantized')).toBe(true)
    expect(split.removedInitializers.sort()).toEqual([
      'lm_head.weight_quantized',
      'lm_head.weight_scale',
      'lm_head.weight_zero_point',
    ])
    expectLayout(split.head, untied.model, 'lm_head.weight')
  })
})

describe('splitHead leaves other graphs alone, with a reason', () => {
  const edit = (model: ModelProto, change: (nodes: NodeProto[]) => NodeProto[]): ModelProto => ({
    ...model,
    graph: { ...model.graph!, node: change(model.graph!.node!.map((n) => ({ ...n }))) },
  })

  it('(e) an fp32 graph', async () => {
    const fp32 = await load(await ensureModel('tiny', 'fp32'))
    const r = splitHead(fp32.model, fp32.config)
    expect(r.applied).toBe(false)
    if (r.applied) return
    expect(r.reason).toBe(
      'logits comes from Reshape /lm_head/Reshape_1, not a com.microsoft DynamicQuantizeMatMul ' +
        '(the q8 form: --format q8) or MatMulNBits (a q4 export)',
    )
    expect(r.model).toBe(fp32.model)
  })

  it('a head with a bias, a weight read elsewhere, an embedding that leaks, a wrong config', () => {
    const reason = (m: ModelProto, config = tied.config) => {
      const r = splitHead(m, config)
      return r.applied ? 'applied' : r.reason
    }
    const withBias = edit(tied.model, (nodes) =>
      nodes.map((n) =>
        n.output![0] === 'logits' ? { ...n, input: [...n.input!, 'model.norm.weight'] } : n,
      ),
    )
    expect(reason(withBias)).toBe(
      'the lm_head DynamicQuantizeMatMul /lm_head/DynamicQuantizeMatMul has a bias',
    )

    const sharedScale = edit(tied.model, (nodes) => [
      ...nodes,
      { op_type: 'Identity', input: ['model.embed_tokens.weight_scale'], output: ['x'], name: 'x' },
    ])
    expect(reason(sharedScale)).toBe(
      'model.embed_tokens.weight_scale is also read by Identity x, not only by the lm_head and ' +
        'an embedding',
    )

    // a value inside the embedding subgraph is also read by the first layer
    const leaky = edit(tied.model, (nodes) =>
      nodes.map((n) =>
        n.name === '/model/layers.0/Add'
          ? { ...n, input: [n.input![0], '/embed/Cast_output_0'] }
          : n,
      ),
    )
    expect(reason(leaky)).toMatch(/^the embedding subgraph has an unexpected node|^no single/)

    expect(reason(tied.model, { ...tied.config, vocab_size: V + 1 })).toBe(
      `the lm_head weight model.embed_tokens.weight_quantized is uint8 [${H}, ${V}], ` +
        `not uint8 [${H}, ${V + 1}]`,
    )
  })
})

describe('preparePackage with the head split', () => {
  const SHARD = 64 * 1024

  it('(f) writes head.q8 shards listed in a manifest that reads back, io embeds->hidden', async () => {
    const out = join(work, 'shards')
    const result = await preparePackage({
      folder: tied.dir,
      id: 'tied',
      out,
      shardBytes: SHARD,
      quiet: true,
    })
    const { manifest, report, dir } = result
    const expectedBytes = Math.ceil((V * STRIDE + V) / 4) * 4 + 4 * V
    expect(manifest.head).toMatchObject({
      format: 'q8-rows',
      vocab: V,
      hidden: H,
      stride: STRIDE,
      embedding: true,
      file: { location: 'head.q8', bytes: expectedBytes },
    })
    const shards = manifest.head!.file.shards
    expect(shards.map((s) => s.path)).toEqual([
      'head.q8.000',
      'head.q8.001',
      'head.q8.002',
      'head.q8.003',
    ])
    expect(shards.slice(0, -1).every((s) => s.bytes === SHARD)).toBe(true)
    expect(manifest.stages[0].io).toBe('embeds->hidden')

    // every listed file exists with its size and sha256; the head file is splitHead's bytes
    const json = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'))
    expect(parseManifest(json)).toEqual(manifest)
    let total = 0
    for (const f of listFiles(manifest)) {
      const bytes = await readFile(join(dir, f.path))
      expect([bytes.byteLength, sha256(bytes)], f.path).toEqual([f.bytes, f.sha256])
      total += f.bytes
    }
    expect(total).toBe(manifest.totalBytes)
    expect(listFiles(manifest).slice(-4)).toEqual(shards)
    const file = Buffer.concat(await Promise.all(shards.map((s) => readFile(join(dir, s.path)))))
    const { head } = applied(splitHead(tied.model, tied.config))
    expect(file.equals(Buffer.from(head.bytes))).toBe(true)

    // the packaged graph: split, and its data no longer holds the [H, V] matrix
    const graph = decodeModel(await readFile(join(dir, manifest.stages[0].graph.path))).graph!
    expect(graph.input!.some((v) => v.name === 'inputs_embeds')).toBe(true)
    expect(graph.output![0].name).toBe('hidden_states')
    expect(graph.initializer!.some((t) => t.name!.startsWith('model.embed_tokens'))).toBe(false)
    const plain = await preparePackage({
      folder: tied.dir,
      id: 'tied-graph',
      out,
      shardBytes: SHARD,
      quiet: true,
      head: 'graph',
    })
    const dataBytes = (m: typeof manifest) => m.stages[0].externalData[0].bytes
    expect(dataBytes(plain.manifest) - dataBytes(manifest)).toBeGreaterThan(H * V)

    expect(report!.head).toMatchObject({
      applied: true,
      vocab: V,
      hidden: H,
      stride: STRIDE,
      embedding: true,
      bytes: expectedBytes,
      steps: 3,
      top1Agrees: true,
      presentMaxAbsError: 0,
    })
    expect(report!.head!.maxAbsError).toBeGreaterThan(0)
    expect(report!.head!.maxAbsError).toBeLessThan(0.02 * report!.head!.referenceMaxAbs!)
    expect(JSON.parse(await readFile(join(dir, REPORT_FILE), 'utf8'))).toEqual(report)
  })

  it('(f) --head graph keeps the old layout; untied → ids->hidden; fp32 → not applied', async () => {
    const out = join(work, 'shards-2')
    const plain = await preparePackage({
      folder: tied.dir,
      id: 'plain',
      out,
      shardBytes: SHARD,
      quiet: true,
      head: 'graph',
    })
    expect(plain.manifest.head).toBeUndefined()
    expect(plain.manifest.stages[0].io).toBe('ids->logits')
    expect(plain.report).toBeUndefined()
    expect(listFiles(plain.manifest).some((f) => f.path.startsWith('head.q8'))).toBe(false)
    const graph = decodeModel(await readFile(join(plain.dir, 'model_quantized.onnx'))).graph!
    expect(graph.output![0].name).toBe('logits')

    const u = await preparePackage({ folder: untied.dir, id: 'untied', out, quiet: true })
    expect(u.manifest.stages[0].io).toBe('ids->hidden')
    expect(u.manifest.head).toMatchObject({ embedding: false, vocab: V, hidden: H })
    expect(u.report!.head).toMatchObject({ applied: true, top1Agrees: true, presentMaxAbsError: 0 })

    const fp32 = await preparePackage({
      folder: await ensureModel('tiny', 'fp32'),
      id: 'fp32',
      out,
      quiet: true,
    })
    expect(fp32.manifest.head).toBeUndefined()
    expect(fp32.manifest.stages[0].io).toBe('ids->logits')
    expect(fp32.report!.head).toEqual({
      applied: false,
      reason: expect.stringMatching(/^logits comes from Reshape/),
    })
  })
})
