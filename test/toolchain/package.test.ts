/**
 * Prepare a synthetic Qwen2 export, then load the package from a folder and over HTTP: same
 * bytes, same logits as the export itself, and clear errors for a broken package.
 */
import { cp, mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as ort from 'onnxruntime-web'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import { isAppError } from '../../src/core/errors.ts'
import type { Manifest } from '../../src/format/index.ts'
import { memoizeLoad } from '../../src/core/memoize-load.ts'
import { loadPackage, type LoadedModelPackage } from '../../src/engine/package/loader.ts'
import { httpSource } from '../../src/engine/package/sources/http-source.ts'
import type { ModelSource } from '../../src/engine/package/sources/model-source.ts'
import {
  DataType,
  decodeModel,
  encodeModel,
  getExternalData,
  initializer,
  initializers,
  irVersionForOpset,
  node,
  opset,
  tensorRawData,
  valueInfo,
} from '../../scripts/lib/onnx/index.ts'
import { pickOnnxFile, preparePackage } from '../../scripts/prepare-model.ts'
import { ensureModel } from '../helpers/models.ts'
import { startFileServer, type FileServer } from '../helpers/file-server.ts'

ort.env.wasm.numThreads = 1
const ID = 'tiny-q8'
const SHARD = 1024 * 1024
const fast = { retryDelayMs: 1 }

let hf: string
let work: string
let shards: string
let manifest: Manifest
let server: FileServer

beforeAll(async () => {
  hf = await ensureModel('tiny', 'q8')
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-package-'))
  shards = join(work, 'model-shards')
  ;({ manifest } = await preparePackage({
    folder: hf,
    id: ID,
    out: shards,
    shardBytes: SHARD,
    quiet: true,
    // the graph keeps its lm_head: these tests compare the package's logits with the export's
    // (packages with a head file: split-head.test.ts)
    head: 'graph',
  }))
  server = await startFileServer(shards)
})

afterAll(async () => {
  await server?.close()
  if (work) await rm(work, { recursive: true, force: true })
})

/** A copy of the package in a folder of its own, for tests that break it. */
async function copyPackage(name: string): Promise<string> {
  const root = join(work, name)
  await cp(join(shards, ID), join(root, ID), { recursive: true })
  return root
}

function counting(source: ModelSource) {
  const reads = new Map<string, number>()
  const count = (key: string) => reads.set(key, (reads.get(key) ?? 0) + 1)
  const wrapped: ModelSource = {
    describe: () => source.describe(),
    get: (key) => (count(key), source.get(key)),
    stream: (key) => (count(key), source.stream!(key)),
  }
  return { source: wrapped, reads }
}

async function failure(promise: Promise<unknown>) {
  const err = await promise.then(
    () => new Error('expected a failure'),
    (e: unknown) => e,
  )
  if (!isAppError(err)) throw err
  return err
}

/** One prefill of 5 tokens with an empty KV cache; feeds built from the session's inputs. */
async function logits(session: ort.InferenceSession): Promise<Float32Array> {
  const ids = [9707n, 11n, 1879n, 0n, 151643n]
  const n = ids.length
  const config = manifest.config
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads
  const feeds: Record<string, ort.Tensor> = {}
  for (const name of session.inputNames) {
    if (name === 'input_ids') feeds[name] = new ort.Tensor('int64', BigInt64Array.from(ids), [1, n])
    else if (name === 'attention_mask')
      feeds[name] = new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n])
    else if (name === 'position_ids')
      feeds[name] = new ort.Tensor(
        'int64',
        BigInt64Array.from(ids, (_, i) => BigInt(i)),
        [1, n],
      )
    else if (name === 'num_logits_to_keep')
      feeds[name] = new ort.Tensor('int64', BigInt64Array.from([BigInt(n)]), [])
    else if (name.startsWith('past_key_values.')) {
      const meta = session.inputMetadata.find((m) => m.name === name)
      const fp16 = meta?.isTensor && meta.type === 'float16'
      const dims = [1, config.num_key_value_heads, 0, headDim]
      feeds[name] = fp16
        ? new ort.Tensor('float16', new Uint16Array(0), dims)
        : new ort.Tensor('float32', new Float32Array(0), dims)
    } else throw new Error(`unexpected input ${name}`)
  }
  const out = await session.run(feeds)
  return out.logits.data as Float32Array
}

async function sessionFor(pkg: LoadedModelPackage) {
  return ort.InferenceSession.create(pkg.graph, {
    externalData: pkg.externalData,
    logSeverityLevel: 3,
  })
}

describe('prepare', () => {
  it('writes a manifest that lists every file of the folder, with fixed-size shards', async () => {
    const files = (await readdir(join(shards, ID))).sort()
    const stage = manifest.stages[0]
    const ext = stage.externalData[0]
    expect(files).toEqual(
      [
        'manifest.json',
        'tokenizer.json',
        'tokenizer_config.json',
        stage.graph.path,
        ...ext.shards.map((s) => s.path),
      ].sort(),
    )
    expect(manifest).toMatchObject({ version: 1, id: ID, synthetic: true, shardBytes: SHARD })
    expect(stage).toMatchObject({
      io: 'ids->logits',
      layers: [0, manifest.config.num_hidden_layers],
    })
    expect(ext.shards.length).toBe(Math.ceil(ext.bytes / SHARD))
    expect(ext.shards.slice(0, -1).every((s) => s.bytes === SHARD)).toBe(true)
    expect(ext.shards.length).toBeGreaterThan(2)
    expect(stage.graph.bytes).toBeLessThan(200_000) // weights are out of the graph
  })

  it('moves every initializer of 1 KiB or more to one data file, 64-byte aligned (4 KiB when large)', async () => {
    const stage = manifest.stages[0]
    const model = decodeModel(await readFile(join(shards, ID, stage.graph.path)))
    let external = 0
    for (const t of initializers(model)) {
      const ext = getExternalData(t)
      if (!ext) {
        expect(tensorRawData(t).byteLength).toBeLessThan(1024)
        continue
      }
      external++
      expect(ext.location).toBe(stage.externalData[0].location)
      expect(ext.offset % (ext.length > 1024 * 1024 ? 4096 : 64)).toBe(0)
      expect(ext.offset + ext.length).toBeLessThanOrEqual(stage.externalData[0].bytes)
    }
    expect(external).toBeGreaterThan(4)
  })

  it('is deterministic: preparing again gives the same files', async () => {
    const again = join(work, 'again')
    const second = await preparePackage({
      folder: hf,
      id: ID,
      out: again,
      shardBytes: SHARD,
      quiet: true,
      head: 'graph',
    })
    expect(second.manifest).toEqual(manifest)
    const a = await readFile(join(shards, ID, 'manifest.json'))
    const b = await readFile(join(again, ID, 'manifest.json'))
    expect(a.equals(b)).toBe(true)
  })

  it('aligns odd-sized initializers and leaves the logits unchanged', async () => {
    // A one-layer stand-in with the decoder signature and tensor sizes that are not multiples
    // of 64 bytes: 257 x 5 floats, 5 x 257 floats, 1030 bytes, and a 3-float tensor that stays.
    const folder = join(work, 'odd-hf')
    await mkdir(join(folder, 'onnx'), { recursive: true })
    const [V, H] = [257, 5]
    const f32 = (n: number, k: number) =>
      Float32Array.from({ length: n }, (_, i) => Math.sin(i * k))
    const model = {
      ir_version: irVersionForOpset(17),
      opset_import: [opset('', 17)],
      graph: {
        name: 'odd',
        initializer: [
          initializer('odd_bytes', new Uint8Array(1030).fill(3), [1030]),
          initializer('emb', f32(V * H, 0.3), [V, H]),
          initializer('small', f32(3, 1), [3]),
          initializer('w', f32(H * V, 0.7), [H, V]),
        ],
        node: [
          node('Gather', ['emb', 'input_ids'], ['h']),
          node('MatMul', ['h', 'w'], ['logits']),
          node('Identity', ['past_key_values.0.key'], ['present.0.key']),
          node('Identity', ['past_key_values.0.value'], ['present.0.value']),
        ],
        input: [
          valueInfo('input_ids', DataType.INT64, [1, 's']),
          valueInfo('attention_mask', DataType.INT64, [1, 't']),
          valueInfo('past_key_values.0.key', DataType.FLOAT, [1, 1, 'p', 4]),
          valueInfo('past_key_values.0.value', DataType.FLOAT, [1, 1, 'p', 4]),
        ],
        output: [
          valueInfo('logits', DataType.FLOAT, [1, 's', V]),
          valueInfo('present.0.key', DataType.FLOAT, [1, 1, 'p', 4]),
          valueInfo('present.0.value', DataType.FLOAT, [1, 1, 'p', 4]),
        ],
      },
    }
    const config = { ...manifest.config, vocab_size: V, hidden_size: H, num_hidden_layers: 1 }
    delete config.qwen_edge_synthetic
    await writeFile(join(folder, 'onnx', 'model.onnx'), encodeModel(model))
    await writeFile(join(folder, 'config.json'), JSON.stringify(config))
    await cp(join(hf, 'tokenizer.json'), join(folder, 'tokenizer.json'))
    await cp(join(hf, 'tokenizer_config.json'), join(folder, 'tokenizer_config.json'))

    const out = join(work, 'odd')
    const { manifest: m } = await preparePackage({
      folder,
      id: 'odd',
      out,
      shardBytes: 4096,
      quiet: true,
    })
    expect(m.synthetic).toBe(false)
    expect(m.generationConfig).toEqual({})
    const graph = decodeModel(await readFile(join(out, 'odd', 'model.onnx')))
    const refs = Object.fromEntries(
      [...initializers(graph)].map((t) => [t.name, getExternalData(t)]),
    )
    expect(refs.small).toBeUndefined()
    expect(refs).toMatchObject({
      odd_bytes: { offset: 0, length: 1030 },
      emb: { offset: 1088, length: V * H * 4 }, // 1030 → next multiple of 64
      w: { offset: 6272, length: H * V * 4 }, // 1088 + 5140 = 6228 → 6272
    })

    const pkg = await loadPackage(fsSource(out), 'odd')
    const ids = new ort.Tensor('int64', BigInt64Array.from([3n, 256n, 0n]), [1, 3])
    const feeds = {
      input_ids: ids,
      attention_mask: new ort.Tensor('int64', BigInt64Array.from([1n, 1n, 1n]), [1, 3]),
      'past_key_values.0.key': new ort.Tensor('float32', new Float32Array(0), [1, 1, 0, 4]),
      'past_key_values.0.value': new ort.Tensor('float32', new Float32Array(0), [1, 1, 0, 4]),
    }
    const opts = { logSeverityLevel: 3 as const }
    const original = await ort.InferenceSession.create(join(folder, 'onnx', 'model.onnx'), opts)
    const prepared = await ort.InferenceSession.create(pkg.graph, {
      ...opts,
      externalData: pkg.externalData,
    })
    const a = (await original.run(feeds)).logits.data as Float32Array
    const b = (await prepared.run(feeds)).logits.data as Float32Array
    expect(a.length).toBe(3 * V)
    expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true)
  })

  it('accepts an export whose weights are already in a separate data file', async () => {
    const ext = await ensureModel('tiny', 'fp32', { externalData: true })
    const out = join(work, 'from-ext')
    const { manifest: m } = await preparePackage({ folder: ext, id: 'ext', out, quiet: true })
    expect(m.source!.onnxFile).toBe('onnx/model.onnx')
    const pkg = await loadPackage(fsSource(out), 'ext')
    const data = await readFile(join(ext, 'onnx', 'model.onnx_data'))
    const original = await ort.InferenceSession.create(join(ext, 'onnx', 'model.onnx'), {
      externalData: [{ path: 'model.onnx_data', data }],
      logSeverityLevel: 3,
    })
    const expected = await logits(original)
    expect(
      Buffer.from((await logits(await sessionFor(pkg))).buffer).equals(
        Buffer.from(expected.buffer),
      ),
    ).toBe(true)
  })

  it('picks the ONNX file and rejects folders without the decoder signature', async () => {
    const onnx = await pickOnnxFile(hf)
    expect(onnx).toMatch(/^onnx\/.*\.onnx$/)
    const broken = join(work, 'broken-hf')
    await cp(hf, broken, { recursive: true })
    const config = JSON.parse(await readFile(join(broken, 'config.json'), 'utf8'))
    config.num_hidden_layers += 1
    await writeFile(join(broken, 'config.json'), JSON.stringify(config))
    const layer = config.num_hidden_layers - 1
    await expect(
      preparePackage({ folder: broken, id: 'x', out: join(work, 'x'), quiet: true }),
    ).rejects.toThrow(
      `${onnx} does not have the decoder-with-past signature (missing input past_key_values.${layer}.key`,
    )
    await rm(join(broken, 'tokenizer.json'))
    await expect(
      preparePackage({ folder: broken, id: 'x', out: join(work, 'x'), quiet: true }),
    ).rejects.toThrow(/is not a Hugging Face model folder: no tokenizer\.json$/)
  })
})

describe('load', () => {
  it('gives identical bytes from a folder and over HTTP, and the logits of the original export', async () => {
    const fromFolder = await loadPackage(fsSource(shards), ID)
    const fromHttp = await loadPackage(httpSource(server.url), ID)
    expect(Buffer.from(fromHttp.graph).equals(Buffer.from(fromFolder.graph))).toBe(true)
    expect(fromHttp.externalData.map((f) => f.path)).toEqual(
      fromFolder.externalData.map((f) => f.path),
    )
    expect(
      Buffer.from(fromHttp.externalData[0].data).equals(
        Buffer.from(fromFolder.externalData[0].data),
      ),
    ).toBe(true)
    // tokenizer.json arrives as its bytes (a deep toEqual of 11 MB would take minutes)
    expect(fromFolder.tokenizerJson).toBeInstanceOf(Uint8Array)
    expect(
      Buffer.from(fromHttp.tokenizerJson as Uint8Array).equals(
        Buffer.from(fromFolder.tokenizerJson as Uint8Array),
      ),
    ).toBe(true)
    expect(fromFolder.tokenizerConfig).toEqual(
      JSON.parse(await readFile(join(hf, 'tokenizer_config.json'), 'utf8')),
    )

    const original = await ort.InferenceSession.create(join(hf, manifest.source!.onnxFile!), {
      logSeverityLevel: 3,
    })
    const expected = await logits(original)
    const folderLogits = await logits(await sessionFor(fromFolder))
    const httpLogits = await logits(await sessionFor(fromHttp))
    expect(expected.length).toBe(5 * manifest.config.vocab_size)
    expect(expected.some((v) => v !== 0)).toBe(true)
    expect(Buffer.from(folderLogits.buffer).equals(Buffer.from(expected.buffer))).toBe(true)
    expect(Buffer.from(httpLogits.buffer).equals(Buffer.from(expected.buffer))).toBe(true)
  })

  it('names the shard with a flipped byte; after the repair the next request loads', async () => {
    const root = await copyPackage('flipped')
    const shard = manifest.stages[0].externalData[0].shards[1]
    const path = join(root, ID, shard.path)
    const good = await readFile(path)
    const bad = Buffer.from(good)
    bad[12345] ^= 0x40
    await writeFile(path, bad)
    const { source, reads } = counting(fsSource(root))
    const load = memoizeLoad((id) => loadPackage(source, id, fast))
    const err = await failure(load(ID))
    expect(err.code).toBe('model_invalid')
    expect(err.message).toContain(`Checksum mismatch in ${ID}/${shard.path} (folder ${root})`)

    await writeFile(path, good)
    const loaded = await load(ID)
    expect(loaded.externalData[0].data.byteLength).toBe(manifest.stages[0].externalData[0].bytes)
    expect(reads.get(`${ID}/${shard.path}`)).toBe(2)
  })

  it('reports a missing shard, a truncated shard and an unknown manifest version', async () => {
    const root = await copyPackage('broken')
    const [s0, s1] = manifest.stages[0].externalData[0].shards
    await rm(join(root, ID, s0.path))
    await truncate(join(root, ID, s1.path), s1.bytes - 10)
    const missing = await failure(loadPackage(fsSource(root), ID, { ...fast, concurrency: 1 }))
    expect([missing.code, missing.message]).toEqual([
      'model_invalid',
      `Missing file ${ID}/${s0.path} (folder ${root})`,
    ])

    await cp(join(shards, ID, s0.path), join(root, ID, s0.path))
    const broken = await startFileServer(root)
    try {
      for (const source of [fsSource(root), httpSource(broken.url)]) {
        const truncated = await failure(loadPackage(source, ID, fast))
        expect(truncated.code).toBe('model_invalid')
        expect(truncated.message).toBe(
          `File ${ID}/${s1.path} (${source.describe()}) is truncated: ${s1.bytes - 10} bytes, manifest says ${s1.bytes}`,
        )
      }
      const path = join(root, ID, 'manifest.json')
      await writeFile(path, JSON.stringify({ ...manifest, version: 99 }))
      const version = await failure(loadPackage(httpSource(broken.url), ID))
      expect([version.code, version.message]).toEqual([
        'model_invalid',
        'Invalid model manifest: unsupported format version 99 (this build reads version 1)',
      ])
      const none = await failure(loadPackage(httpSource(broken.url), 'absent'))
      expect(none.message).toBe(
        `Model package absent not found: no absent/manifest.json in ${broken.url}`,
      )
    } finally {
      await broken.close()
    }
  })

  it('retries files answered with 503, then loads', async () => {
    const flaky = await startFileServer(shards, {
      fault: (_path, seen) => (seen === 0 ? 503 : 'serve'),
    })
    try {
      const loaded = await loadPackage(httpSource(flaky.url), ID, fast)
      expect(loaded.externalData[0].data.byteLength).toBe(manifest.stages[0].externalData[0].bytes)
      const files = 1 + 3 + manifest.stages[0].externalData[0].shards.length // manifest, tokenizer x2 + graph, shards
      expect(flaky.requests.filter((r) => r.status === 503)).toHaveLength(files)
      expect(flaky.requests.filter((r) => r.status === 200)).toHaveLength(files)
    } finally {
      await flaky.close()
    }
  })

  it('gives up on a 403 at once and on a store that keeps failing after the retries', async () => {
    const denied = await startFileServer(shards, {
      fault: (path) => (path.endsWith('.onnx') ? 403 : 'serve'),
    })
    const down = await startFileServer(shards, {
      fault: (path) => (path.endsWith('.001') ? 502 : 'serve'),
    })
    try {
      const forbidden = await failure(loadPackage(httpSource(denied.url), ID, fast))
      expect(forbidden.code).toBe('model_unavailable')
      expect(forbidden.message).toMatch(
        /^Could not read tiny-q8\/\S+\.onnx from http:\/\/127\.0\.0\.1:\d+: GET \S+ answered 403 Forbidden$/,
      )
      expect(denied.requests.filter((r) => r.status === 403)).toHaveLength(1)

      const unavailable = await failure(
        loadPackage(httpSource(down.url), ID, { ...fast, retries: 2 }),
      )
      expect(unavailable.code).toBe('model_unavailable')
      expect(unavailable.message).toMatch(
        /\.onnx_data\.001 from .* \(3 attempts\): GET .* answered 502 Bad Gateway$/,
      )
    } finally {
      await denied.close()
      await down.close()
    }
  })

  it('twenty concurrent first requests read every file exactly once', async () => {
    const { source, reads } = counting(fsSource(shards))
    const load = memoizeLoad((id) => loadPackage(source, id))
    const all = await Promise.all(Array.from({ length: 20 }, () => load(ID)))
    expect(new Set(all).size).toBe(1)
    const files = 1 + 3 + manifest.stages[0].externalData[0].shards.length
    expect(reads.size).toBe(files)
    expect([...reads.values()].every((n) => n === 1)).toBe(true)
  })
})
