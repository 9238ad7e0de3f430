/**
 * A q4 export (MatMulNBits) prepared as is: the lm_head and its tied embedding split into
 * 'q4-b32' rows without changing a value (or requantized to 'q8-rows' on request), the decoder's
 * MatMulNBits operands mapped as 'nbits' entries, and the decoder check run on them. The
 * generator's tiny q4 graph; the values are compared with synth-weights' dequantized weights,
 * which are what that graph computes with.
 */
import { readFile, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  decoderSymmetric,
  packMatMulNBits,
  type NBitsMatrixData,
  type NBitsMatrixRef,
  type Qwen2Config,
} from '../../src/format/index.ts'
import { checkDecoder } from '../../scripts/lib/decoder-check.ts'
import { findDecoder, mapDecoder, type DecoderNames } from '../../scripts/lib/decoder-map.ts'
import { resolveDims } from '../../scripts/lib/model-presets.ts'
import {
  DataType,
  decodeModel,
  tensorRawData,
  type ModelProto,
  type NodeProto,
} from '../../scripts/lib/onnx/index.ts'
import { floatValues } from '../../scripts/lib/quantize.ts'
import {
  headEmbedding,
  headLogits,
  splitHead,
  type SplitHeadResult,
} from '../../scripts/lib/split-head.ts'
import { synthesizeWeights } from '../../scripts/lib/synth-weights.ts'
import { preparePackage } from '../../scripts/prepare-model.ts'
import { ensureModel } from '../helpers/models.ts'

// a mapped scale prepare's check sees multiplied by 1.5 (one layer's up_proj, first rows):
// what a wrong mapping of an nbits operand looks like to the check
const corruption = vi.hoisted(() => ({ on: false }))
vi.mock('../../scripts/lib/decoder-map.ts', async (importOriginal) => {
  const mod = await importOriginal<typeof import('../../scripts/lib/decoder-map.ts')>()
  return {
    ...mod,
    decoderWeightsOf: (...args: Parameters<typeof mod.decoderWeightsOf>) => {
      const w = mod.decoderWeightsOf(...args)
      if (corruption.on) {
        const up = w.layers[1].up as NBitsMatrixData
        const scales = Float32Array.from(up.tensors.scales as Float32Array)
        for (let i = 0; i < 8; i++) scales[i] *= 1.5
        up.tensors = { ...up.tensors, scales }
      }
      return w
    },
  }
})

const PROMPT = [0, 17, 151935, 1234, 5, 2999, 42, 7]

let work: string
let hf: string
let config: Qwen2Config
let model: ModelProto

beforeAll(async () => {
  hf = await ensureModel('tiny', 'q4')
  config = JSON.parse(await readFile(join(hf, 'config.json'), 'utf8'))
  model = decodeModel(await readFile(join(hf, 'onnx', 'model_q4.onnx')))
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-q4-prepare-'))
})

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

function applied(r: SplitHeadResult) {
  if (!r.applied) throw new Error(`not applied: ${r.reason}`)
  return r
}

const init = (m: ModelProto, name: string) => {
  const t = m.graph!.initializer!.find((x) => x.name === name)
  if (!t) throw new Error(`no initializer ${name}`)
  return t
}

/** `m` with byte 0 of initializer `name` set to `byte` (a copy of that tensor; the rest shared). */
function withByte0(m: ModelProto, name: string, byte: number): ModelProto {
  const initializer = m.graph!.initializer!.map((t) => {
    if (t.name !== name) return t
    const raw = new Uint8Array(tensorRawData(t)) // a copy (a Buffer's slice() is a view)
    raw[0] = byte
    return { ...t, raw_data: raw }
  })
  return { ...m, graph: { ...m.graph!, initializer } }
}

/** `model` with the node named `name` changed by `edit` (a copy; the rest shared). */
function editNode(m: ModelProto, name: string, edit: (n: NodeProto) => NodeProto): ModelProto {
  let hit = false
  const node = m.graph!.node!.map((n) => {
    if (n.name !== name) return n
    hit = true
    return edit(structuredClone(n))
  })
  if (!hit) throw new Error(`no node ${name}`)
  return { ...m, graph: { ...m.graph!, node } }
}

const setAttr = (n: NodeProto, name: string, i: number) => {
  n.attribute!.find((a) => a.name === name)!.i = i
  return n
}

const LM_HEAD = '/lm_head/MatMulNBits'

describe('splitHead on a q4 graph', () => {
  it('writes the lm_head as exported: q4-b32 rows of its MatMulNBits tensors (zero points all 8: the symmetric layout), the embedding', () => {
    const r = applied(splitHead(model, config))
    expect(r.lmHead).toBe(`MatMulNBits ${LM_HEAD}`)
    expect(r.exact).toBeUndefined()
    // the synthetic export's zero points are all 8 (as quantizers write symmetric blocks)
    expect(r.head).toMatchObject({ format: 'q4s-b32', vocab: 151936, hidden: 64, stride: 80 })
    expect(r.head.embedding).toBe(true)
    const names = r.model.graph!.input!.map((v) => v.name)
    expect(names).toContain('inputs_embeds')
    expect(r.model.graph!.output!.map((v) => v.name)).toContain('hidden_states')
    // nothing of the 4-bit table is left in the graph
    for (const suffix of ['_Q4', '_scales', '_zp'])
      expect(r.removedInitializers).toContain(`model.embed_tokens.weight${suffix}`)
    const w = (s: string) => init(model, `model.embed_tokens.weight${s}`)
    const t = {
      n: 151936,
      k: 64,
      bits: 4,
      blockSize: 32,
      b: tensorRawData(w('_Q4')),
      scales: floatValues(w('_scales')),
      zeroPoints: tensorRawData(w('_zp')),
    }
    expect(
      Buffer.compare(Buffer.from(r.head.bytes), Buffer.from(packMatMulNBits(t, true).data)),
    ).toBe(0)
    // one zero point other than 8 (token 0's block 0): the layout with zero points, as exported
    const zp = 'model.embed_tokens.weight_zp'
    const other = applied(splitHead(withByte0(model, zp, 0x87), config))
    expect(other.head).toMatchObject({ format: 'q4-b32', stride: 84 })
    const wantZp = packMatMulNBits({
      ...t,
      zeroPoints: tensorRawData(init(withByte0(model, zp, 0x87), zp)),
    })
    expect(Buffer.compare(Buffer.from(other.head.bytes), Buffer.from(wantZp.data))).toBe(0)
    expect(headEmbedding(other.head, [0])[0]).not.toBe(headEmbedding(r.head, [0])[0])
  })

  it('its rows are the dequantized weights the graph computes with, bit for bit', () => {
    const r = applied(splitHead(model, config))
    const dims = resolveDims('tiny')
    const embed = synthesizeWeights(dims, 0, 'q4').get('model.embed_tokens.weight')!
    const H = 64
    const rows = headEmbedding(r.head, PROMPT)
    for (const [i, t] of PROMPT.entries())
      expect(Array.from(rows.subarray(i * H, (i + 1) * H))).toEqual(
        Array.from(embed.subarray(t * H, (t + 1) * H)),
      )
    // logits: a plain dot product with those rows
    const x = Float32Array.from({ length: H }, (_, k) => Math.sin(k + 1))
    const logits = headLogits(r.head, x)
    for (const v of [0, 17, 151935]) {
      let d = 0
      for (let k = 0; k < H; k++) d += embed[v * H + k] * x[k]
      expect(logits[v]).toBeCloseTo(d, 5)
    }
  })

  it("format 'q8' requantizes the 4-bit rows per row; the exact rows come along for the check", () => {
    const r = applied(splitHead(model, config, { format: 'q8' }))
    expect(r.head).toMatchObject({ format: 'q8-rows', stride: 64, embedding: true })
    expect(r.exact?.format).toBe('q4s-b32')
    const a = headEmbedding(r.exact!, PROMPT)
    const b = headEmbedding(r.head, PROMPT)
    let diff = 0
    let range = 0
    for (let i = 0; i < a.length; i++) {
      diff = Math.max(diff, Math.abs(a[i] - b[i]))
      range = Math.max(range, Math.abs(a[i]))
    }
    // one uint8 step of each row's range at most (half a step by rounding)
    expect(diff).toBeGreaterThan(0)
    expect(diff).toBeLessThan(range / 255)
  })

  it('refuses, with the reason, what the kernels cannot run as exported', () => {
    const reason = (m: ModelProto) => {
      const r = splitHead(m, config)
      if (r.applied) throw new Error('expected a reason')
      return r.reason
    }
    expect(reason(editNode(model, LM_HEAD, (n) => setAttr(n, 'bits', 8)))).toMatch(
      /8-bit weights \(the kernels take 4\)/,
    )
    expect(reason(editNode(model, LM_HEAD, (n) => setAttr(n, 'block_size', 16)))).toMatch(
      /block_size 16 is not a multiple of 32/,
    )
    expect(
      reason(editNode(model, LM_HEAD, (n) => ({ ...n, input: [...n.input!, 'input_ids'] }))),
    ).toMatch(/g_idx/)
    const f16: ModelProto = structuredClone({
      ...model,
      graph: { ...model.graph!, initializer: [], node: [] },
    })
    f16.graph!.output!.find((v) => v.name === 'logits')!.type!.tensor_type!.elem_type =
      DataType.FLOAT16
    const half = { ...model, graph: { ...model.graph!, output: f16.graph!.output } }
    expect(reason(half)).toMatch(/logits are float16, not float32: .* widens a q4f16 export/)
  })
})

describe('the decoder map of a q4 graph', () => {
  let split: ReturnType<typeof applied>
  let names: DecoderNames

  beforeAll(() => {
    split = applied(splitHead(model, config))
    const r = findDecoder(split.model, config)
    if (!r.applied) throw new Error(r.reason)
    names = r.names
  })

  it('finds every MatMulNBits operand by structure, biases and norms; zero points all 8 left out', () => {
    const l = names.layers[1]
    const p = 'model.layers.1'
    expect(l.k).toMatchObject({
      kind: 'nbits',
      weight: `${p}.self_attn.k_proj.weight_Q4`,
      scale: `${p}.self_attn.k_proj.weight_scales`,
      bias: `${p}.self_attn.k_proj.bias`,
      k: 64,
      n: 32,
      blockSize: 32,
    })
    // the export's zero points are all 8: the map leaves them out (the symmetric layout)
    expect(l.k.zeroPoint).toBeUndefined()
    const zp = `${p}.self_attn.k_proj.weight_zp`
    expect(init(split.model, zp)).toBeDefined()
    // one other than 8: kept, for that matrix alone
    const other = findDecoder(withByte0(split.model, zp, 0x87), config)
    if (!other.applied) throw new Error(other.reason)
    expect(other.names.layers[1].k.zeroPoint).toBe(zp)
    expect(other.names.layers[1].v.zeroPoint).toBeUndefined()
    expect(l.gate.weight).toBe(`${p}.mlp.gate_proj.weight_Q4`)
    expect(l.up.weight).toBe(`${p}.mlp.up_proj.weight_Q4`)
    expect(l.down).toMatchObject({ k: 176, n: 64 })
    expect(l.inputNorm).toBe(`${p}.input_layernorm.weight`)
    expect(names.finalNorm).toBe('model.norm.weight')
    const m = mapDecoder(split.model, config, { externalData: [], names })
    if (!m.applied) throw new Error(m.reason)
    expect(m.entry.format).toBe('nbits')
    const down = m.entry.layers[0].down as NBitsMatrixRef
    // 176 inputs: 6 blocks of 32
    expect(down).toMatchObject({ kind: 'nbits', bits: 4, k: 176, n: 64, blockSize: 32 })
    expect(down.weight).toMatchObject({ dims: [64, 6, 16], type: 'uint8' })
    expect(down.scale).toMatchObject({ dims: [64, 6], type: 'float32' })
    expect(down.zeroPoint).toBeUndefined()
    expect(decoderSymmetric(m.entry)).toBe(true)
    // a kept zero point: 3 bytes per row, and the map is not symmetric
    const kept = mapDecoder(
      withByte0(split.model, `model.layers.0.mlp.down_proj.weight_zp`, 0x87),
      config,
      {
        externalData: [],
      },
    )
    if (!kept.applied) throw new Error(kept.reason)
    const keptDown = kept.entry.layers[0].down as NBitsMatrixRef
    expect(keptDown.zeroPoint).toMatchObject({ dims: [64, 3], type: 'uint8' })
    expect(decoderSymmetric(kept.entry)).toBe(false)
  })

  it('refuses other bit widths, g_idx and blocks of 16, with the reason', () => {
    const reason = (m: ModelProto) => {
      const r = findDecoder(m, config)
      if (r.applied) throw new Error('expected a reason')
      return r.reason
    }
    const up = '/model/layers.0/mlp/up_proj/MatMulNBits'
    expect(reason(editNode(split.model, up, (n) => setAttr(n, 'bits', 2)))).toMatch(
      /^layer 0 up_proj \(MatMulNBits .*\): 2-bit weights/,
    )
    expect(reason(editNode(split.model, up, (n) => setAttr(n, 'block_size', 16)))).toMatch(
      /block_size 16 is not a multiple of 32/,
    )
    expect(
      reason(
        editNode(split.model, up, (n) => ({
          ...n,
          input: [...n.input!, 'model.layers.0.mlp.up_proj.weight_zp'],
        })),
      ),
    ).toMatch(/g_idx/)
  })

  it('checks the mapped 4-bit layers against the graph, and sees a wrong scale', async () => {
    const check = await checkDecoder(split.model, names, config, split.head)
    expect(check.passed).toBe(true)
    // measured 5.9e-7: float activations both sides (onnxruntime's default accuracy level)
    expect(check.maxError).toBeLessThan(1e-5)
    // layer 0's gate mapped to layer 1's scales (same shape): what the check exists to catch
    const wrong = structuredClone(names)
    wrong.layers[0].gate.scale = names.layers[1].gate.scale
    const bad = await checkDecoder(split.model, wrong, config, split.head)
    // measured 0.064 of the range (the tolerance is 0.03)
    expect(bad.passed).toBe(false)
    expect(bad.mlpError).toBeGreaterThan(0.05)
    expect(bad.worst).toMatch(/^mlp of layer 0/)
  })
})

describe('model:prepare of a q4 export', () => {
  it('leaves the decoder map out when its check fails (a corrupted scale), head still split', async () => {
    corruption.on = true
    try {
      const r = await preparePackage({ folder: hf, id: 'corrupt', out: work, quiet: true })
      expect(r.manifest.head?.format).toBe('q4s-b32')
      expect(r.manifest.decoder).toBeUndefined()
      expect(r.report!.decoder).toMatchObject({ applied: false, passed: false })
      expect(r.report!.decoder!.reason).toMatch(
        /differs from the graph by .* at mlp of layer 1, .* \(allowed 0\.03\)/,
      )
    } finally {
      corruption.on = false
    }
  })
})
