/**
 * A q4 export that writes a tied model's embedding as its own float table, as onnx-community's
 * `model_q4.onnx` files do (MatMul4BitsQuantizer rounds the lm_head MatMul to MatMulNBits and
 * leaves the embedding's Gather in float32): the generator's `embeddingTable` layout, against
 * the generator's tied layout of the same weights (the embedding Gathers the lm_head's own
 * 4-bit rows). Prepared, the table is dropped and the embedding read from the head rows, so
 * both layouts give the same head, the same weights and the same decoder map, and the engine
 * runs the whole model in its kernels. The q4f16 file of the same export (every float tensor,
 * type and Cast in float16, as the float16 pass after the 4-bit one leaves it) is widened to
 * float32 first, exactly, and then prepared the same way.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Qwen2Config } from '../../src/format/index.ts'
import { convertFloatType, floatToHalf, halfToFloat } from '../../scripts/lib/graph-rewrite.ts'
import {
  DataType,
  decodeModel,
  encodeModel,
  type ModelProto,
} from '../../scripts/lib/onnx/index.ts'
import {
  splitHead,
  TIED_TABLE_TOLERANCE,
  type SplitHeadResult,
} from '../../scripts/lib/split-head.ts'
import { preparePackage } from '../../scripts/prepare-model.ts'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import { QwenEngine } from '../../src/engine/engine.ts'
import { loadPackage } from '../../src/engine/package/loader.ts'
import type { ChatRun } from '../../src/engine/types.ts'
import { copyModelFolderMeta, ensureModel } from '../helpers/models.ts'

const TABLE = 'model.embed_tokens.weight'

let work: string
let tiedDir: string
let tableDir: string
let config: Qwen2Config
let tied: ModelProto
let table: ModelProto

beforeAll(async () => {
  tiedDir = await ensureModel('tiny', 'q4')
  tableDir = await ensureModel('tiny', 'q4', { embeddingTable: true })
  config = JSON.parse(await readFile(join(tableDir, 'config.json'), 'utf8'))
  tied = decodeModel(await readFile(join(tiedDir, 'onnx', 'model_q4.onnx')))
  table = decodeModel(await readFile(join(tableDir, 'onnx', 'model_q4.onnx')))
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-q4-table-'))
}, 120_000)

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

function applied(r: SplitHeadResult) {
  if (!r.applied) throw new Error(`not applied: ${r.reason}`)
  return r
}

const initializer = (m: ModelProto, name: string) =>
  m.graph!.initializer!.find((t) => t.name === name)

/** `m` with the rows of its embedding table in reverse order: another matrix, same spread. */
function reversedTable(m: ModelProto): ModelProto {
  const t = initializer(m, TABLE)!
  const [V, H] = t.dims!.map(Number)
  const raw = t.raw_data!
  const rows = new Uint8Array(raw.byteLength)
  const rowBytes = H * 4
  for (let v = 0; v < V; v++)
    rows.set(raw.subarray(v * rowBytes, (v + 1) * rowBytes), (V - 1 - v) * rowBytes)
  const copy = { ...t, raw_data: rows }
  const initializers = m.graph!.initializer!.map((x) => (x === t ? copy : x))
  return { ...m, graph: { ...m.graph!, initializer: initializers } }
}

async function greedyText(run: ChatRun): Promise<string> {
  let text = ''
  for await (const e of run.events) if (e.type === 'text') text += e.text
  return text
}

describe('a q4 export with its embedding as a float table', () => {
  it('is the layout exporters write: a Gather of float32 [V, H], the lm_head on initializers of its own', () => {
    const t = initializer(table, TABLE)
    expect(t?.data_type).toBe(DataType.FLOAT)
    expect(t?.dims?.map(Number)).toEqual([config.vocab_size, config.hidden_size])
    expect(initializer(table, 'lm_head.weight_Q4')).toBeDefined()
    expect(initializer(tied, TABLE)).toBeUndefined() // the tied layout has no table
    expect(config.tie_word_embeddings).toBe(true)
  })

  it('holds the fp32 export’s embedding and the tied q4 export’s lm_head, the same seed’s weights', async () => {
    const fp32 = decodeModel(
      await readFile(join(await ensureModel('tiny', 'fp32'), 'onnx', 'model.onnx')),
    )
    const bytes = (m: ModelProto, name: string) => Buffer.from(initializer(m, name)!.raw_data!)
    expect(bytes(table, TABLE).equals(bytes(fp32, TABLE))).toBe(true)
    for (const part of ['_Q4', '_scales', '_zp'])
      expect(bytes(table, `lm_head.weight${part}`).equals(bytes(tied, `${TABLE}${part}`))).toBe(
        true,
      )
  })

  it('splits into the tied layout’s very head, the embedding read from its rows, the table dropped', () => {
    const r = applied(splitHead(table, config))
    const t = applied(splitHead(tied, config))
    expect(r.head.embedding).toBe(true)
    expect(r.embeddingTable).toMatchObject({ name: TABLE, dropped: true })
    // a 4-bit rounding of the same matrix: measured 0.064, never 0 (the table is not rounded)
    expect(r.embeddingTable!.relativeError).toBeGreaterThan(0.01)
    expect(r.embeddingTable!.relativeError).toBeLessThan(TIED_TABLE_TOLERANCE)
    expect(r.removedInitializers).toContain(TABLE)
    expect(r.model.graph!.input!.map((v) => v.name)).toContain('inputs_embeds')
    expect(r.head.format).toBe('q4s-b32')
    expect(Buffer.from(r.head.bytes).equals(Buffer.from(t.head.bytes))).toBe(true)
  })

  it('keeps the table, saying why, when the config does not tie, the table is another matrix, or on request', () => {
    const untied = applied(splitHead(table, { ...config, tie_word_embeddings: false }))
    expect(untied.head.embedding).toBe(false)
    expect(untied.embeddingTable).toMatchObject({ dropped: false })
    expect(untied.embeddingTable!.reason).toMatch(/tie_word_embeddings/)
    expect(untied.removedInitializers).not.toContain(TABLE)

    const other = applied(splitHead(reversedTable(table), config))
    expect(other.head.embedding).toBe(false)
    expect(other.embeddingTable!.reason).toMatch(/not the head's matrix/)
    expect(other.embeddingTable!.relativeError).toBeGreaterThan(1)

    const kept = applied(splitHead(table, config, { embedding: 'graph' }))
    expect(kept.head.embedding).toBe(false)
    expect(kept.embeddingTable!.reason).toBe('--embedding graph')
  })

  it('prepares to the same head, weights and decoder map as the tied layout; the check measures the rounding', async () => {
    const a = await preparePackage({ folder: tableDir, id: 'table', out: work, quiet: true })
    const b = await preparePackage({
      folder: tiedDir,
      id: 'tied',
      out: work,
      quiet: true,
      verify: false,
    })
    expect(a.manifest.decoder).toBeDefined()
    expect(a.manifest.head?.embedding).toBe(true)
    expect(a.manifest.head).toEqual(b.manifest.head)
    expect(a.manifest.decoder).toEqual(b.manifest.decoder)
    const shards = (m: typeof a.manifest) =>
      m.stages[0].externalData.map((d) => d.shards.map((s) => s.sha256))
    expect(shards(a.manifest)).toEqual(shards(b.manifest))
    // the split graph itself is exact: fed the table's rows, its KV cache is the export's
    const check = a.report!.head!
    expect(check.presentMaxAbsError).toBe(0)
    // fed the head's rows, as the engine will be, it moves: that is the rounding, measured
    const tiedRun = check.tiedEmbedding!
    expect(tiedRun.embeddingMaxAbsError).toBeGreaterThan(0)
    expect(tiedRun.embeddingMaxAbsError).toBeLessThan(0.2 * tiedRun.embeddingMaxAbs)
    expect(tiedRun.maxAbsError).toBeGreaterThan(0)
    // the 4-bit rows move the logits (the tiny model, same seed, one thread: deterministic);
    // with the generator's symmetric blocks its top-1 holds (the asymmetric ones flipped one
    // step's, which the check reported as false)
    expect(tiedRun.maxAbsError).toBeLessThan(0.2 * check.referenceMaxAbs!)
    expect(tiedRun.top1Agrees).toBe(true)
    expect(check.top1Agrees).toBe(true)
  })

  it('runs in the engine’s kernels, prompts and steps, with the tied layout’s greedy tokens', async () => {
    const open = async (id: string) =>
      QwenEngine.create(await loadPackage(fsSource(work), id), { contextLength: 256 })
    const a = await open('table')
    const b = await open('tied')
    expect(a.model.paths).toEqual({ prefill: 'decoder', decode: 'decoder' })
    const messages = [{ role: 'user' as const, content: 'Name three rivers.' }]
    const options = { maxNewTokens: 12, temperature: 0 }
    const text = await greedyText(await a.chat(messages, options))
    expect(text.length).toBeGreaterThan(0)
    expect(text).toBe(await greedyText(await b.chat(messages, options)))
  })
})

describe('a q4f16 export (the same, every float in float16)', () => {
  let half: string

  beforeAll(async () => {
    half = join(work, 'tiny-q4f16-hf')
    await copyModelFolderMeta(tableDir, half)
    const converted = convertFloatType(table, DataType.FLOAT16)
    expect(converted.stats.tensors).toBeGreaterThan(10)
    await writeFile(join(half, 'onnx', 'model_q4f16.onnx'), encodeModel(converted.model))
  })

  it('is widened exactly and prepared into the kernels: 4-bit codes as exported, float16 scales', async () => {
    const r = await preparePackage({ folder: half, id: 'q4f16', out: work, quiet: true })
    expect(r.report!.widened!.fp16Tensors).toBeGreaterThan(10)
    expect(r.manifest.head).toMatchObject({ format: 'q4s-b32', embedding: true })
    expect(r.manifest.decoder).toBeDefined()
    expect(r.report!.decoder).toMatchObject({ applied: true, passed: true })
    expect(r.report!.head!.presentMaxAbsError).toBe(0)
    expect(r.report!.logits!.top1Agrees).toBe(true)

    // against the q4 package: the same codes, each scale its float16 rounding
    const head = async (id: string) => {
      const m = (await loadPackage(fsSource(work), id)).manifest
      const file = m.head!.file
      const parts = await Promise.all(file.shards.map((s) => readFile(join(work, id, s.path))))
      return Buffer.concat(parts)
    }
    const ours = await head('q4f16')
    const q4 = await head('table')
    expect(ours.length).toBe(q4.length)
    let scales = 0
    let rounded = 0
    // both in the symmetric layout (zero points all 8): groups of 80 bytes, none stored
    expect(ours.length % 80).toBe(0)
    for (let g = 0; g < ours.length; g += 80) {
      expect(ours.subarray(g, g + 64).equals(q4.subarray(g, g + 64))).toBe(true)
      for (let b = 0; b < 4; b++) {
        const want = halfToFloat(floatToHalf(q4.readFloatLE(g + 64 + 4 * b)))
        const got = ours.readFloatLE(g + 64 + 4 * b)
        if (got !== want) throw new Error(`scale at ${g + 64 + 4 * b}: ${got}, want ${want}`)
        if (got !== q4.readFloatLE(g + 64 + 4 * b)) rounded++
        if (got !== 0) scales++ // blocks past the row's end are padding: scale 0
      }
    }
    expect(rounded).toBeGreaterThan(0.99 * scales) // float16 scales, not the q4 file's

    const engine = await QwenEngine.create(await loadPackage(fsSource(work), 'q4f16'), {
      contextLength: 256,
    })
    expect(engine.model.paths).toEqual({ prefill: 'decoder', decode: 'decoder' })
    const text = await greedyText(
      await engine.chat([{ role: 'user', content: 'Hi' }], { maxNewTokens: 4, temperature: 0 }),
    )
    expect(text.length).toBeGreaterThan(0)
  })
})
