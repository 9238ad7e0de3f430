/**
 * The decoder map (scripts/lib/decoder-map.ts, `model:prepare --decoder wasm`): the tensors of
 * every decoder layer of a split q8 graph, found by structure, checked against onnxruntime by
 * lib/decoder-check.ts, recorded in the manifest and loaded as views. The generator's graph
 * names its initializers after the checkpoint (model.layers.0.self_attn.k_proj.weight_quantized),
 * which is what every mapping here is held against; the Optimum-like variants rename them.
 */
import { readFileSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { isAppError } from '../../src/core/errors.ts'
import {
  DECODER_FILE,
  listFiles,
  parseManifest,
  type Qwen2Config,
  type Manifest,
} from '../../src/format/index.ts'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import {
  quantizeBlocksQ4,
  resolveDecoderWeights,
  type DqmmMatrixData,
  type DqmmMatrixRef,
  type NBitsMatrixData,
} from '../../src/format/index.ts'
import { loadPackage } from '../../src/engine/package/loader.ts'
import { DECODER_TOLERANCE, checkDecoder } from '../../scripts/lib/decoder-check.ts'
import {
  findDecoder,
  mapDecoder,
  type DecoderMatrixNames,
  type DecoderNames,
} from '../../scripts/lib/decoder-map.ts'
import { indexGraph, pruneInitializers } from '../../scripts/lib/graph-rewrite.ts'
import {
  DataType,
  decodeModel,
  encodeModel,
  float,
  initializer,
  initializers,
  isExternal,
  node,
  setExternalData,
  setRawData,
  tensorRawData,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from '../../scripts/lib/onnx/index.ts'
import { floatValues } from '../../scripts/lib/quantize.ts'
import { splitHead, type HeadRows } from '../../scripts/lib/split-head.ts'
import { transpose } from '../../scripts/lib/synth-weights.ts'
import { REPORT_FILE, preparePackage, type PrepareReport } from '../../scripts/prepare-model.ts'
import { ensureModel } from '../helpers/models.ts'

interface Export {
  dir: string
  config: Qwen2Config
  /** The export's graph, data inline. */
  model: ModelProto
}

async function readExport(dir: string, file = 'onnx/model_quantized.onnx'): Promise<Export> {
  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))
  const model = decodeModel(await readFile(join(dir, file)))
  const files = new Map<string, Uint8Array>()
  for (const t of initializers(model)) {
    if (!isExternal(t)) continue
    const bytes = tensorRawData(t, (loc) => {
      if (!files.has(loc)) files.set(loc, readFileSync(join(dir, dirname(file), loc)))
      return files.get(loc)!
    })
    setRawData(t, bytes)
  }
  return { dir, config, model }
}

interface Split {
  model: ModelProto
  head: HeadRows
  config: Qwen2Config
}

function split(e: Pick<Export, 'model' | 'config'>): Split {
  const r = splitHead(e.model, e.config)
  if (!r.applied) throw new Error(`head split not applied: ${r.reason}`)
  return { model: r.model, head: r.head, config: e.config }
}

function found(s: Pick<Split, 'model' | 'config'>): DecoderNames {
  const r = findDecoder(s.model, s.config)
  if (!r.applied) throw new Error(`decoder not found: ${r.reason}`)
  return r.names
}

/** What the generator calls each tensor of layer i (q8 names). */
function generatorNames(i: number, bias: boolean) {
  const p = `model.layers.${i}`
  const matrix = (hf: string, withBias = false) => ({
    weight: `${hf}.weight_quantized`,
    scale: `${hf}.weight_scale`,
    zeroPoint: `${hf}.weight_zero_point`,
    ...(withBias && { bias: `${hf}.bias` }),
  })
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    q: matrix(`${p}.self_attn.q_proj`, bias),
    k: matrix(`${p}.self_attn.k_proj`, bias),
    v: matrix(`${p}.self_attn.v_proj`, bias),
    o: matrix(`${p}.self_attn.o_proj`),
    postNorm: `${p}.post_attention_layernorm.weight`,
    gate: matrix(`${p}.mlp.gate_proj`),
    up: matrix(`${p}.mlp.up_proj`),
    down: matrix(`${p}.mlp.down_proj`),
  }
}

const MATRICES = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const

/** The initializer names of a found layer, without node and output (to compare with). */
function tensorNames(names: DecoderNames, i: number, rename: (n: string) => string = (n) => n) {
  const l = names.layers[i]
  const m = (x: DecoderMatrixNames) => ({
    weight: rename(x.weight),
    scale: rename(x.scale),
    ...(x.zeroPoint && { zeroPoint: rename(x.zeroPoint) }),
    ...(x.bias && { bias: rename(x.bias) }),
  })
  return {
    inputNorm: rename(l.inputNorm),
    ...Object.fromEntries(MATRICES.map((k) => [k, m(l[k])])),
    postNorm: rename(l.postNorm),
  }
}

// ---------------------------------------------------------------- an Optimum-like q8 graph

/**
 * The generator's q8 graph as other exporters write it: every weight renamed `onnx::Param_<n>`,
 * q/k/v biases as an Add after the DynamicQuantizeMatMul, and each RMSNorm one
 * SimplifiedLayerNormalization node. Returns the graph and the new name → old name map.
 */
function optimumLike(e: Export): { model: ModelProto; original: Map<string, string> } {
  const graph = e.model.graph!
  const rename = new Map<string, string>()
  const original = new Map<string, string>()
  graph.initializer!.forEach((t, i) => {
    if (t.name!.startsWith('/const/')) return
    rename.set(t.name!, `onnx::Param_${i}`)
    original.set(`onnx::Param_${i}`, t.name!)
  })
  const r = (name: string) => rename.get(name) ?? name
  const nodes: NodeProto[] = []
  const norms = new Map<string, NodeProto>() // scope → its Mul
  for (const n of graph.node!) {
    const m = /^(.*(?:input_layernorm|post_attention_layernorm|\/model\/norm))\/Mul$/.exec(n.name!)
    if (m) norms.set(m[1], n)
  }
  const byOutput = indexGraph(graph).producer
  for (const n of graph.node!) {
    const renamed = { ...n, input: n.input!.map(r) }
    const scope = [...norms.keys()].find((s) => n.name!.startsWith(`${s}/`))
    if (scope) {
      const mul = norms.get(scope)!
      if (n !== mul) continue
      const div = byOutput.get(mul.input![0])!
      const sln = node(
        'SimplifiedLayerNormalization',
        [div.input![0], r(mul.input![1])],
        [mul.output![0]],
        { axis: -1, epsilon: float(e.config.rms_norm_eps) },
        { name: `${scope}/SimplifiedLayerNormalization` },
      )
      nodes.push(sln)
    } else if (n.op_type === 'DynamicQuantizeMatMul' && n.input!.length === 5) {
      const out = n.output![0]
      nodes.push({ ...renamed, input: renamed.input.slice(0, 4), output: [`${out}/nobias`] })
      nodes.push(
        node('Add', [`${out}/nobias`, r(n.input![4])], [out], {}, { name: `${n.name}/Add` }),
      )
    } else nodes.push(renamed)
  }
  const model: ModelProto = {
    ...e.model,
    graph: {
      ...graph,
      node: nodes,
      initializer: graph.initializer!.map((t) => ({ ...t, name: r(t.name!) })),
    },
  }
  return { model: pruneInitializers(model).model, original }
}

// ---------------------------------------------------------------- fixtures

let work: string
let tiny: Export
let mha: Export

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-decoder-map-'))
  tiny = await readExport(await ensureModel('tiny', 'q8'))
  mha = await readExport(await ensureModel('tiny-mha', 'q8'))
})

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

describe('findDecoder', () => {
  it('finds every tensor of the generator graph by structure (tied, GQA, q/k/v biases)', () => {
    const names = found(split(tiny))
    expect(names.layers.length).toBe(tiny.config.num_hidden_layers)
    names.layers.forEach((_, i) => expect(tensorNames(names, i)).toEqual(generatorNames(i, true)))
    expect(names.finalNorm).toBe('model.norm.weight')
    expect(names.embeddings).toBe('inputs_embeds')
    expect(names.layers[0].k.output).toBe(
      '/model/layers.0/attn/k_proj/DynamicQuantizeMatMul_output_0',
    )
  })

  it('finds those of an untied model with plain multi-head attention (q = k = v in shape)', () => {
    const s = split(mha)
    const names = found(s)
    expect(names.layers.length).toBe(3)
    names.layers.forEach((_, i) => expect(tensorNames(names, i)).toEqual(generatorNames(i, true)))
    expect(names.finalNorm).toBe('model.norm.weight')
    // the graph computes its embedding itself: the tensor layer 0 starts from
    expect(names.embeddings).toBe('/embed/Mul_output_0')
  })

  it('finds them under other names, with biases as Adds and SimplifiedLayerNormalization', async () => {
    const { model, original } = optimumLike(tiny)
    const s = split({ model, config: tiny.config })
    expect(s.model.graph!.node!.some((n) => n.op_type === 'SimplifiedLayerNormalization')).toBe(
      true,
    )
    const names = found(s)
    const back = (n: string) => original.get(n) ?? n
    names.layers.forEach((_, i) =>
      expect(tensorNames(names, i, back)).toEqual(generatorNames(i, true)),
    )
    expect(back(names.finalNorm)).toBe('model.norm.weight')
    // the bias Add's output is the projection's result
    expect(names.layers[0].q.output).toBe(
      '/model/layers.0/attn/q_proj/DynamicQuantizeMatMul_output_0',
    )
    const check = await checkDecoder(s.model, names, s.config, s.head)
    expect(check.passed).toBe(true)
    expect(check.maxError).toBeLessThan(1e-5)
  })

  it('says why when the graph is not a split q8 decoder', () => {
    const reason = (model: ModelProto, config = tiny.config) => {
      const r = findDecoder(model, config)
      if (r.applied) throw new Error('expected a reason')
      return r.reason
    }
    expect(reason(tiny.model)).toMatch(/no hidden_states output/)
    const s = split(tiny)
    const half: ModelProto = structuredClone({
      ...s.model,
      graph: { ...s.model.graph!, initializer: [] },
    })
    half.graph!.input!.find(
      (v) => v.name === 'past_key_values.1.value',
    )!.type!.tensor_type!.elem_type = DataType.FLOAT16
    expect(reason(half)).toBe('past_key_values.1.value is float16, not float32')
    // a graph whose k_proj stayed float: present.0.key does not come from one q8 matmul
    const graph = s.model.graph!
    const k = graph.node!.find(
      (n) => n.name === '/model/layers.0/attn/k_proj/DynamicQuantizeMatMul',
    )!
    const fp: ModelProto = {
      ...s.model,
      graph: {
        ...graph,
        node: graph.node!.map((n) =>
          n === k ? node('MatMul', [n.input![0], 'w'], n.output!, {}, { name: 'k' }) : n,
        ),
        initializer: [...graph.initializer!, initializer('w', new Float32Array(64 * 32), [64, 32])],
      },
    }
    expect(reason(fp)).toMatch(
      /^present\.0\.key depends on \d+ DynamicQuantizeMatMul or MatMulNBits nodes/,
    )
  })
})

describe('mapDecoder', () => {
  it('refers to external data where it is, copies inline tensors, zero for no zero point', () => {
    const s = split(tiny)
    const graph = s.model.graph!
    const names = found(s)
    const q0 = names.layers[0].q
    // q_proj of layer 0 in a data file at a made-up offset, and without its zero point
    const initializer = graph.initializer!.map((t) => {
      if (t.name !== q0.weight) return t
      const copy = { ...t }
      setExternalData(copy, { location: 'model.onnx_data', offset: 4096, length: 64 * 64 })
      return copy
    })
    const node = graph.node!.map((n) =>
      n.input![1] === q0.weight ? { ...n, input: [...n.input!.slice(0, 3), '', n.input![4]] } : n,
    )
    const model = { ...s.model, graph: { ...graph, initializer, node } }
    const r = mapDecoder(model, s.config, { externalData: ['other', 'model.onnx_data'] })
    if (!r.applied) throw new Error(r.reason)
    const q = r.entry.layers[0].q as DqmmMatrixRef
    expect(q.weight).toEqual({ file: 1, offset: 4096, dims: [64, 64], type: 'uint8' })
    expect(q.zeroPoint).toMatchObject({ file: 'decoder', dims: [], type: 'uint8' })
    expect(r.bytes[q.zeroPoint.offset]).toBe(0)
    // per layer 7 x (weight, scale, zero point), 3 biases, 2 norms; the final norm; q0's two
    expect([r.external, r.inline]).toEqual([1, 2 * (7 * 3 + 3 + 2) + 1 - 2])
    // every inline tensor is its initializer's bytes, at a 64-byte aligned offset
    const inits = new Map(graph.initializer!.map((t) => [t.name!, t]))
    const k = r.entry.layers[1].k
    for (const [ref, name] of [
      [k.weight, names.layers[1].k.weight],
      [k.bias!, names.layers[1].k.bias!],
      [r.entry.finalNorm, names.finalNorm],
    ] as const) {
      expect(ref.file).toBe('decoder')
      expect(ref.offset % 64).toBe(0)
      const want = tensorRawData(inits.get(name)!)
      expect(Buffer.compare(r.bytes.subarray(ref.offset, ref.offset + want.byteLength), want)).toBe(
        0,
      )
    }
    const w = resolveDecoderWeights(r.entry, [new Uint8Array(0), new Uint8Array(8192)], r.bytes)
    const q0data = w.layers[0].q as DqmmMatrixData
    expect([...q0data.zeroPoint]).toEqual([0])
    expect(q0data.weight.byteOffset).toBe(4096)

    const elsewhere = mapDecoder(model, s.config, { externalData: ['other'] })
    expect(elsewhere).toEqual({
      applied: false,
      reason: `${q0.weight} is in model.onnx_data, not in the package's external data`,
    })
  })
})

describe('checkDecoder', () => {
  let s: Split
  let names: DecoderNames
  beforeAll(() => {
    s = split(tiny)
    names = found(s)
  })

  it('agrees with the graph to float rounding (its arithmetic), and about 2% in plain float', async () => {
    const check = await checkDecoder(s.model, names, s.config, s.head)
    expect(check.passed).toBe(true)
    expect(check.maxError).toBeLessThan(1e-5)
    expect(check.float.maxError).toBeGreaterThan(1e-3) // the graph quantizes its activations
    expect(check.float.maxError).toBeLessThan(DECODER_TOLERANCE)
    const untied = split(mha)
    const other = await checkDecoder(untied.model, found(untied), untied.config)
    expect(other.passed).toBe(true)
    expect(other.maxError).toBeLessThan(1e-5)
  })

  it.each([
    ['k and v swapped', (l: DecoderNames['layers'][0]) => ([l.k, l.v] = [l.v, l.k]), 'key'],
    ['gate and up swapped', (l: any) => ([l.gate, l.up] = [l.up, l.gate]), 'mlp'],
    [
      'the two norms swapped',
      (l: any) => ([l.inputNorm, l.postNorm] = [l.postNorm, l.inputNorm]),
      'attention',
    ],
    ['k_proj without its bias', (l: any) => delete l.k.bias, 'key'],
  ] as const)('catches a wrong mapping: %s', async (_, wrong, where) => {
    const bad = structuredClone(names)
    wrong(bad.layers[1])
    const check = await checkDecoder(s.model, bad, s.config, s.head)
    expect(check.passed).toBe(false)
    expect(check.maxError).toBeGreaterThan(0.1)
    expect(check[`${where}Error`]).toBeGreaterThan(0.1)
    expect(check.worst).toMatch(/layer 1,/)
  })

  it('catches another layer’s norm and a wrong final norm', async () => {
    const bad = structuredClone(names)
    bad.layers[0].postNorm = names.layers[1].postNorm
    const a = await checkDecoder(s.model, bad, s.config, s.head)
    expect([a.passed, a.mlpError > 0.1, a.attentionError < 1e-5]).toEqual([false, true, true])
    const final = { ...structuredClone(names), finalNorm: names.layers[1].inputNorm }
    const b = await checkDecoder(s.model, final, s.config, s.head)
    expect([b.passed, b.hiddenError > 0.1, b.worst]).toEqual([
      false,
      true,
      expect.stringMatching(/^hidden_states/),
    ])
  })
})

// ---------------------------------------------------------------- prepare, manifest, loader

describe('model:prepare --decoder wasm', () => {
  let manifest: Manifest
  let report: PrepareReport
  const out = () => join(work, 'shards')

  beforeAll(async () => {
    ;({ manifest, report } = (await preparePackage({
      folder: tiny.dir,
      id: 'tiny',
      out: out(),
      quiet: true,
    })) as { manifest: Manifest; report: PrepareReport })
  })

  it('records the decoder in the manifest and the check in the report', async () => {
    expect(report.decoder).toMatchObject({ applied: true, layers: 2, passed: true })
    expect(report.decoder!.maxError).toBeLessThan(1e-5)
    const written = JSON.parse(await readFile(join(out(), 'tiny', REPORT_FILE), 'utf8'))
    expect(written.decoder).toEqual(JSON.parse(JSON.stringify(report.decoder)))
    const d = manifest.decoder!
    expect(d.format).toBe('dqmm')
    expect(d.layers.length).toBe(2)
    // big matrices in the graph's own data file, small tensors in decoder.bin
    expect(d.layers[0].q.weight).toMatchObject({ file: 0, dims: [64, 64], type: 'uint8' })
    expect(d.layers[0].k.bias).toMatchObject({ file: 'decoder', dims: [32], type: 'float32' })
    expect(d.file!.location).toBe(DECODER_FILE)
    expect(listFiles(manifest).map((f) => f.path)).toContain('decoder.bin.000')
    expect(report.decoder!.bytes).toBe(d.file!.bytes)
  })

  it('loads: the decoder weights are views of the package bytes equal to the initializers', async () => {
    const pkg = await loadPackage(fsSource(out()), 'tiny')
    const w = pkg.decoder!
    const inits = new Map(tiny.model.graph!.initializer!.map((t) => [t.name!, t]))
    const bytes = (name: string) => tensorRawData(inits.get(name)!)
    const same = (a: ArrayBufferView, name: string) =>
      expect(Buffer.compare(view(a), bytes(name)), name).toBe(0)
    w.layers.forEach((l, i) => {
      const want = generatorNames(i, true)
      same(l.inputNorm, want.inputNorm)
      same(l.postNorm, want.postNorm)
      for (const m of MATRICES) {
        const got = l[m] as DqmmMatrixData
        const n = want[m] as { weight: string; scale: string; zeroPoint: string; bias?: string }
        same(got.weight, n.weight)
        same(got.scale, n.scale)
        same(got.zeroPoint, n.zeroPoint)
        if (n.bias) same(got.bias!, n.bias)
        else expect(got.bias).toBeUndefined()
        expect([got.k, got.n]).toEqual(inits.get(n.weight)!.dims)
        expect(got.signed).toBe(false)
      }
    })
    same(w.finalNorm, 'model.norm.weight')
    // views, not copies: the matrices live in the graph's external data buffer
    expect((w.layers[1].down as DqmmMatrixData).weight.buffer).toBe(pkg.externalData[0].data.buffer)
  })

  it('leaves it out with --decoder graph, and says why without a head split', async () => {
    const a = await preparePackage({
      folder: tiny.dir,
      id: 'no-decoder',
      out: out(),
      decoder: 'graph',
      quiet: true,
    })
    expect(a.manifest.decoder).toBeUndefined()
    expect(a.report!.decoder).toBeUndefined()
    expect(a.manifest.head).toBeDefined()
    const b = await preparePackage({
      folder: tiny.dir,
      id: 'no-head',
      out: out(),
      head: 'graph',
      format: 'q8',
      verify: false,
      quiet: true,
    })
    expect(b.manifest.decoder).toBeUndefined()
    expect(b.report!.decoder).toEqual({
      applied: false,
      reason: 'the lm_head stays in the graph (--head graph)',
    })
  })

  it('refuses a decoder that computes something else than the graph (package still whole)', async () => {
    // the graph's RoPE uses rope_theta 1e6; a config saying 1e4 makes every rotated key wrong
    const folder = join(work, 'wrong-theta')
    await cp(tiny.dir, folder, { recursive: true })
    const config = { ...tiny.config, rope_theta: 10_000 }
    await writeFile(join(folder, 'config.json'), JSON.stringify(config))
    const r = await preparePackage({ folder, id: 'wrong-theta', out: out(), quiet: true })
    expect(r.manifest.decoder).toBeUndefined()
    expect(r.manifest.head).toBeDefined()
    expect(r.report!.decoder).toMatchObject({ applied: false, passed: false })
    expect(r.report!.decoder!.reason).toMatch(/differs from the graph by .* \(allowed 0\.03\)/)
    expect(r.report!.decoder!.keyError).toBeGreaterThan(0.1)
    expect((await loadPackage(fsSource(out()), 'wrong-theta')).decoder).toBeUndefined()
  })

  it.each(['q8', 'q4'] as const)(
    'maps an Optimum-style fp32 export converted to %s: its matrices are the export weights',
    async (format) => {
      // the generator's fp32 graph with other weight names and a MatMul lm_head on a transposed
      // copy of the embedding, as torch.onnx writes it; converted by convertWeights
      const from = await ensureModel('tiny', 'fp32', { logitsToKeep: false })
      const folder = join(work, `optimum-${format}`)
      await mkdir(join(folder, 'onnx'), { recursive: true })
      for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json'])
        await cp(join(from, f), join(folder, f))
      const fp32 = await readExport(from, 'onnx/model.onnx')
      const graph = fp32.model.graph!
      const { producer } = indexGraph(graph)
      const gemm = producer.get(producer.get('logits')!.input![0])!
      const hidden = producer.get(gemm.input![0])!.input![0]
      const embed = graph.initializer!.find((t) => t.name === gemm.input![1])!
      const [V, H] = embed.dims!.map(Number)
      const original = new Map<string, TensorProto>() // new name → the fp32 tensor
      const rename = new Map<string, string>()
      graph.initializer!.forEach((t, i) => {
        if (t.dims?.length === 2 && t !== embed) {
          rename.set(t.name!, `onnx::MatMul_${1000 + i}`)
          original.set(`onnx::MatMul_${1000 + i}`, t)
        } else original.set(t.name!, t)
      })
      const model = pruneInitializers({
        ...fp32.model,
        graph: {
          ...graph,
          node: [
            ...graph
              .node!.filter((n) => !n.name!.startsWith('/lm_head/'))
              .map((n) => ({ ...n, input: n.input!.map((x) => rename.get(x) ?? x) })),
            node(
              'MatMul',
              [hidden, 'onnx::MatMul_4242'],
              ['logits'],
              {},
              { name: '/lm_head/MatMul' },
            ),
          ],
          initializer: [
            ...graph.initializer!.map((t) => ({ ...t, name: rename.get(t.name!) ?? t.name })),
            initializer('onnx::MatMul_4242', transpose(floatValues(embed), V, H), [H, V]),
          ],
        },
      }).model
      await writeFile(join(folder, 'onnx', 'model.onnx'), encodeModel(model))

      const id = `optimum-${format}`
      const r = await preparePackage({
        folder,
        id,
        file: 'onnx/model.onnx',
        out: out(),
        format,
        logitsRewrite: true,
        quiet: true,
        awq: false, // the matrices are compared with the plain quantization of the weights below
      })
      expect(r.report!.head?.applied).toBe(true)
      expect(r.report!.head?.embedding).toBe(true) // the tied embedding found in the converted graph
      expect(r.report!.decoder).toMatchObject({ applied: true, passed: true })
      expect(r.report!.decoder!.maxError).toBeLessThan(1e-5)
      expect(r.manifest.decoder!.format).toBe(format === 'q8' ? 'dqmm' : 'nbits')
      expect(r.manifest.head!.format).toBe(format === 'q8' ? 'q8-rows' : 'q4-b32')

      // each matrix dequantized is the fp32 weight it was made from, within half a step; q4:
      // exactly the blocks quantizeBlocksQ4 makes of it
      const w = (await loadPackage(fsSource(out()), id)).decoder!
      const fp32Name = (i: number, m: string) =>
        `model.layers.${i}.${['q', 'k', 'v', 'o'].includes(m) ? `self_attn.${m}_proj` : `mlp.${m}_proj`}`
      w.layers.forEach((l, i) => {
        for (const m of MATRICES) {
          const want = floatValues(original.get(rename.get(`${fp32Name(i, m)}.weight`)!)!)
          if (format === 'q4') {
            const got = (l[m] as NBitsMatrixData).tensors
            const q = quantizeBlocksQ4(transpose(want, got.k, got.n), got.n, got.k)
            expect(got.blockSize).toBe(32)
            expect(Buffer.from(got.b).equals(Buffer.from(q.packed))).toBe(true)
            expect([...got.scales]).toEqual([...q.scales])
            expect(Buffer.from(got.zeroPoints!).equals(Buffer.from(q.zeroPoints))).toBe(true)
            continue
          }
          const got = l[m] as DqmmMatrixData
          for (let k = 0; k < got.k; k++)
            for (let j = 0; j < got.n; j++) {
              const x = (got.weight[k * got.n + j] - got.zeroPoint[j]) * got.scale[j]
              const d = Math.abs(x - want[k * got.n + j])
              if (!(d <= got.scale[j] / 2 + 1e-6))
                throw new Error(`layer ${i} ${m} [${k}, ${j}]: ${x} vs ${want[k * got.n + j]}`)
            }
          const bias = original.get(`${fp32Name(i, m)}.bias`)
          if (bias) expect([...l[m].bias!]).toEqual([...floatValues(bias)])
          else expect(l[m].bias).toBeUndefined()
        }
        expect([...l.inputNorm]).toEqual([
          ...floatValues(original.get(`model.layers.${i}.input_layernorm.weight`)!),
        ])
        expect([...l.postNorm]).toEqual([
          ...floatValues(original.get(`model.layers.${i}.post_attention_layernorm.weight`)!),
        ])
      })
      expect([...w.finalNorm]).toEqual([...floatValues(original.get('model.norm.weight')!)])
    },
  )

  describe('parseManifest', () => {
    const json = () => JSON.parse(JSON.stringify(manifest)) as Record<string, any>
    const reason = (m: unknown) => {
      try {
        parseManifest(m)
      } catch (err) {
        if (isAppError(err) && err.code === 'model_invalid')
          return err.message.replace('Invalid model manifest: ', '')
        throw err
      }
      throw new Error('expected parseManifest to throw')
    }

    it('reads back what prepare wrote', () => {
      expect(parseManifest(json()).decoder).toEqual(manifest.decoder)
    })

    it.each([
      [
        'an unknown format',
        (m: any) => (m.decoder.format = 'q4'),
        'decoder.format "q4" is not one of dqmm, nbits',
      ],
      ['no head', (m: any) => delete m.head, /^stages\[0\]\.io embeds->hidden: takes embeds/],
      [
        'a layer missing',
        (m: any) => m.decoder.layers.pop(),
        'decoder.layers has 1 entries but the model has 2',
      ],
      [
        'k with q’s shape',
        (m: any) => (m.decoder.layers[1].k.weight.dims = [64, 64]),
        'decoder.layers[1].k.weight.dims [64, 64] are not [64, 32]',
      ],
      [
        'a norm of the wrong size',
        (m: any) => (m.decoder.finalNorm.dims = [32]),
        'decoder.finalNorm.dims [32] are not [64]',
      ],
      [
        'a zero point of another type than its matrix',
        (m: any) => (m.decoder.layers[0].o.zeroPoint.type = 'int8'),
        'decoder.layers[0].o.zeroPoint.type "int8" is not one of uint8',
      ],
      [
        'a float weight',
        (m: any) => (m.decoder.layers[0].up.weight.type = 'float32'),
        'decoder.layers[0].up.weight.type "float32" is not one of int8, uint8',
      ],
      [
        'a tensor past the end of its file',
        (m: any) => (m.decoder.layers[1].down.weight.offset = m.stages[0].externalData[0].bytes),
        /^decoder\.layers\[1\]\.down\.weight: 11264 bytes at offset \d+ run past the end of its file \(\d+ bytes\)$/,
      ],
      [
        'a file index that is not there',
        (m: any) => (m.decoder.layers[0].q.weight.file = 1),
        'decoder.layers[0].q.weight.file 1 is not an index of stages[0].externalData (1 files)',
      ],
      [
        'the decoder file missing',
        (m: any) => {
          m.totalBytes -= m.decoder.file.bytes
          delete m.decoder.file
        },
        /^decoder\.layers\[0\]\.inputNorm\.file is 'decoder' but decoder\.file is absent$/,
      ],
      [
        'decoder shards not counted',
        (m: any) => (m.totalBytes -= m.decoder.file.bytes),
        /^totalBytes is \d+ but the files add up to \d+$/,
      ],
    ])('rejects %s', (_, breakIt, message) => {
      const m = json()
      breakIt(m)
      if (typeof message === 'string') expect(reason(m)).toBe(message)
      else expect(reason(m)).toMatch(message)
    })

    it('rejects a decoder without a head', () => {
      const m = json()
      delete m.head
      m.stages[0].io = 'ids->logits'
      m.totalBytes -= 10483584 // head.q8 of the tiny model
      expect(reason(m)).toBe('decoder needs a head (the decoder layers end in hidden states)')
    })
  })
})

function view(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
}
