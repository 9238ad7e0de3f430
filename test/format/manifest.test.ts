import { describe, expect, it } from 'vitest'
import { isAppError } from '../../src/core/errors.ts'
import {
  DEFAULT_SHARD_BYTES,
  MAX_OBJECT_BYTES,
  headLayout,
  headStride,
  isSafeRelativePath,
  listFiles,
  parseManifest,
  shardName,
  shardRanges,
  type Manifest,
} from '../../src/format/index.ts'
import { makeFakePackage } from '../engine/package/fake-package.ts'

/** A valid manifest (as JSON) to break one field at a time. */
function valid(): Record<string, any> {
  return JSON.parse(JSON.stringify(makeFakePackage().manifest))
}

function reason(json: unknown): string {
  try {
    parseManifest(json)
  } catch (err) {
    if (isAppError(err) && err.code === 'model_invalid')
      return err.message.replace('Invalid model manifest: ', '')
    throw err
  }
  throw new Error('expected parseManifest to throw')
}

describe('parseManifest', () => {
  it('accepts what the writer produces and keeps extra config keys', () => {
    const json = valid()
    json.config.torch_dtype = 'float32'
    json.config.qwen_edge_synthetic = { seed: 1, format: 'q8', preset: 'tiny', note: 'random' }
    json.synthetic = true
    const m = parseManifest(json)
    expect(m.synthetic).toBe(true)
    expect(m.config.torch_dtype).toBe('float32')
    expect(listFiles(m).map((f) => f.path)).toEqual([
      'tokenizer.json',
      'tokenizer_config.json',
      'model.onnx',
      ...m.stages[0].externalData[0].shards.map((s) => s.path),
    ])
  })

  it('rejects what is not an object', () => {
    for (const json of ['x', null, [], 1]) expect(reason(json)).toBe('manifest must be an object')
  })

  it('derives `synthetic` from the config and rejects a contradiction', () => {
    const json = valid()
    delete json.synthetic
    expect(parseManifest(json).synthetic).toBe(false)
    json.synthetic = true
    expect(reason(json)).toBe('synthetic is true but config says false')
  })

  it.each([
    [
      'an unknown version',
      (m: any) => (m.version = 2),
      'unsupported format version 2 (this build reads version 1)',
    ],
    [
      'a missing version',
      (m: any) => delete m.version,
      'unsupported format version undefined (this build reads version 1)',
    ],
    ['a bad id', (m: any) => (m.id = '../etc'), 'id "../etc" is not a valid package id'],
    [
      'a path leaving the package',
      (m: any) => (m.stages[0].graph.path = '../x.onnx'),
      'stages[0].graph.path "../x.onnx" is not a safe relative path',
    ],
    [
      'an absolute path',
      (m: any) => (m.tokenizer.json.path = '/etc/passwd'),
      'tokenizer.json.path "/etc/passwd" is not a safe relative path',
    ],
    [
      'a bad hash',
      (m: any) => (m.stages[0].graph.sha256 = 'ABC'),
      'stages[0].graph.sha256 must be 64 lowercase hex digits',
    ],
    [
      'a negative size',
      (m: any) => (m.stages[0].externalData[0].shards[0].bytes = -1),
      'stages[0].externalData[0].shards[0].bytes must be a non-negative integer',
    ],
    [
      'shards that do not add up',
      (m: any) => (m.stages[0].externalData[0].bytes += 1),
      /^stages\[0\]\.externalData\[0\]: shards add up to \d+ bytes, not \d+$/,
    ],
    [
      'a wrong total',
      (m: any) => (m.totalBytes += 1),
      /^totalBytes is \d+ but the files add up to \d+$/,
    ],
    ['no stages', (m: any) => (m.stages = []), 'stages is empty'],
    [
      'an unknown stage io',
      (m: any) => (m.stages[0].io = 'ids->text'),
      'stages[0].io "ids->text" is not one of ids->logits, ids->hidden, embeds->hidden, hidden->hidden, hidden->logits',
    ],
    [
      'layers that miss the end',
      (m: any) => (m.stages[0].layers = [0, 1]),
      'stages cover layers [0, 1) but the model has 2',
    ],
    [
      'a config without hidden_size',
      (m: any) => delete m.config.hidden_size,
      'config.hidden_size must be a non-negative integer',
    ],
    [
      'heads not a multiple of kv heads',
      (m: any) => (m.config.num_key_value_heads = 3),
      'config.num_attention_heads is not a multiple of num_key_value_heads',
    ],
    [
      'a file listed twice',
      (m: any) => (m.stages[0].graph.path = 'tokenizer.json'),
      'file tokenizer.json is listed twice',
    ],
  ])('rejects %s', (_name, edit, expected) => {
    const json = valid()
    edit(json)
    if (typeof expected === 'string') expect(reason(json)).toBe(expected)
    else expect(reason(json)).toMatch(expected)
  })

  it('describes a model split by layer ranges', () => {
    const json = valid() as Manifest & Record<string, any>
    const [stage] = json.stages
    const second = JSON.parse(JSON.stringify(stage))
    for (const f of [second.graph, ...second.externalData[0].shards]) f.path = `stage-1/${f.path}`
    json.stages = [
      { ...stage, io: 'ids->hidden', layers: [0, 1] },
      { ...second, io: 'hidden->logits', layers: [1, 2] },
    ]
    json.totalBytes += second.graph.bytes + second.externalData[0].bytes
    expect(parseManifest(json).stages.map((s) => [s.io, s.layers])).toEqual([
      ['ids->hidden', [0, 1]],
      ['hidden->logits', [1, 2]],
    ])
    json.stages[1].io = 'hidden->hidden'
    expect(reason(json)).toBe('stages[1].io hidden->hidden: only the last stage returns logits')
    json.stages[1].io = 'hidden->logits'
    json.stages[1].layers = [2, 3]
    expect(reason(json)).toBe('stages[1].layers starts at 2, expected 1')
  })
})

/**
 * `valid()` with a head file: the fake config's 64 x 16 → stride 32, 64 * 32 + 64 = 2112 bytes
 * of rows and zero points, 256 of scales; two shards. Tied (embeds->hidden) unless told.
 */
function withHead(embedding = true): Record<string, any> {
  const json = valid()
  const shard = (path: string, bytes: number) => ({ path, bytes, sha256: 'a'.repeat(64) })
  json.head = {
    format: 'q8-rows',
    vocab: 64,
    hidden: 16,
    stride: 32,
    embedding,
    file: {
      location: 'head.q8',
      bytes: 2368,
      shards: [shard('head.q8.000', 2048), shard('head.q8.001', 320)],
    },
  }
  json.stages[0].io = embedding ? 'embeds->hidden' : 'ids->hidden'
  json.totalBytes += 2368
  return json
}

describe('parseManifest with a head', () => {
  it('accepts a head file and lists its shards after the stages', () => {
    const m = parseManifest(withHead())
    expect(m.head).toEqual(withHead().head)
    expect(m.stages[0].io).toBe('embeds->hidden')
    expect(
      listFiles(m)
        .slice(-2)
        .map((f) => f.path),
    ).toEqual(['head.q8.000', 'head.q8.001'])
    expect(listFiles(m).reduce((n, f) => n + f.bytes, 0)).toBe(m.totalBytes)
    const untied = parseManifest(withHead(false))
    expect([untied.head!.embedding, untied.stages[0].io]).toEqual([false, 'ids->hidden'])
  })

  it('sizes the file from vocab and stride', () => {
    expect(headStride(16)).toBe(32)
    expect(headStride(32)).toBe(32)
    expect(headStride(896)).toBe(896)
    expect(headStride(900)).toBe(928)
    expect(headLayout(64, 32)).toEqual({ rows: 0, zeroPoints: 2048, scales: 2112, bytes: 2368 })
    // 3001 x 65 = 195065: the scales start on the next multiple of 4
    expect(headLayout(3001, 64)).toEqual({
      rows: 0,
      zeroPoints: 192064,
      scales: 195068,
      bytes: 195068 + 4 * 3001,
    })
    expect(headLayout(151936, 896).bytes).toBe(151936 * 897 + 4 * 151936)
  })

  it.each([
    [
      'an unknown format',
      (m: any) => (m.head.format = 'q4-rows'),
      'head.format "q4-rows" is not one of q8-rows, q4-b32, q4s-b32',
    ],
    ['no vocab', (m: any) => delete m.head.vocab, 'head.vocab must be a non-negative integer'],
    ['a zero vocab', (m: any) => (m.head.vocab = 0), 'head.vocab must be positive'],
    [
      'a vocab that is not the config’s',
      (m: any) => (m.head.vocab = 65),
      'head.vocab is 65 but config.vocab_size is 64',
    ],
    [
      'a fractional hidden',
      (m: any) => (m.head.hidden = 1.5),
      'head.hidden must be a non-negative integer',
    ],
    [
      'a hidden that is not the config’s',
      (m: any) => (m.head.hidden = 32),
      'head.hidden is 32 but config.hidden_size is 16',
    ],
    [
      'a q4-b32 head whose stride is not 21 bytes a block',
      (m: any) => (m.head.format = 'q4-b32'),
      'head.stride 32: a q4-b32 row of 16 inputs has 84 bytes',
    ],
    [
      'a q4s-b32 head whose stride is not 20 bytes a block',
      (m: any) => {
        m.head.format = 'q4s-b32'
        m.head.stride = 84
      },
      'head.stride 84: a q4s-b32 row of 16 inputs has 80 bytes',
    ],
    [
      'a stride that is not a multiple of 32',
      (m: any) => (m.head.stride = 48),
      'head.stride 48 must be a multiple of 32 and at least hidden (16)',
    ],
    [
      'a stride shorter than a row',
      (m: any) => {
        m.config.hidden_size = m.head.hidden = 40
      },
      'head.stride 32 must be a multiple of 32 and at least hidden (40)',
    ],
    [
      'a negative stride',
      (m: any) => (m.head.stride = -32),
      'head.stride must be a non-negative integer',
    ],
    [
      'a string embedding',
      (m: any) => (m.head.embedding = 'yes'),
      'head.embedding must be a boolean',
    ],
    ['no embedding flag', (m: any) => delete m.head.embedding, 'head.embedding must be a boolean'],
    ['no file', (m: any) => delete m.head.file, 'head.file must be an object'],
    [
      'a file of the wrong size',
      (m: any) => {
        m.head.file.bytes += 4
        m.head.file.shards[1].bytes += 4
        m.totalBytes += 4
      },
      'head.file.bytes is 2372, a q8-rows head of 64 x 32 has 2368',
    ],
    [
      'a stride that does not fit the file',
      (m: any) => (m.head.stride = 64),
      'head.file.bytes is 2368, a q8-rows head of 64 x 64 has 4416',
    ],
    [
      'shards that do not add up',
      (m: any) => (m.head.file.shards[1].bytes -= 1),
      'head.file: shards add up to 2367 bytes, not 2368',
    ],
    [
      'a location leaving the package',
      (m: any) => (m.head.file.location = '../head.q8'),
      'head.file.location "../head.q8" is not a safe relative path',
    ],
    [
      'a bad shard hash',
      (m: any) => (m.head.file.shards[0].sha256 = 'x'),
      'head.file.shards[0].sha256 must be 64 lowercase hex digits',
    ],
    [
      'a total without the head',
      (m: any) => (m.totalBytes -= 2368),
      /^totalBytes is \d+ but the files add up to \d+$/,
    ],
    [
      'a head shard named like another file',
      (m: any) => (m.head.file.shards[0].path = 'tokenizer.json'),
      'file tokenizer.json is listed twice',
    ],
    [
      'a tied head with a graph that takes ids',
      (m: any) => (m.stages[0].io = 'ids->hidden'),
      'stages[0].io ids->hidden: the first stage takes embeds (head.embedding is true)',
    ],
    [
      'an untied head with a graph that takes embeds',
      (m: any) => (m.head.embedding = false),
      'stages[0].io embeds->hidden: takes embeds, but the package has no head holding the embedding',
    ],
    [
      'a head with a graph that returns logits',
      (m: any) => (m.stages[0].io = 'ids->logits'),
      'stages[0].io ids->logits: the first stage takes embeds (head.embedding is true)',
    ],
    [
      'an untied head with a graph that returns logits',
      (m: any) => {
        m.head.embedding = false
        m.stages[0].io = 'ids->logits'
      },
      'stages[0].io ids->logits: with a head every stage returns hidden (the head computes logits)',
    ],
    [
      'a graph ending in hidden without a head',
      (m: any) => {
        m.totalBytes -= 2368
        delete m.head
        m.stages[0].io = 'ids->hidden'
      },
      'stages[0].io ids->hidden: only the last stage returns logits',
    ],
    [
      'a graph taking embeds without a head',
      (m: any) => {
        m.totalBytes -= 2368
        delete m.head
      },
      'stages[0].io embeds->hidden: takes embeds, but the package has no head holding the embedding',
    ],
  ])('rejects %s', (_name, edit, expected) => {
    const json = withHead()
    edit(json)
    if (typeof expected === 'string') expect(reason(json)).toBe(expected)
    else expect(reason(json)).toMatch(expected)
  })

  it('describes a model split by layer ranges with a head', () => {
    const json = withHead()
    const [stage] = json.stages
    const second = JSON.parse(JSON.stringify(stage))
    for (const f of [second.graph, ...second.externalData[0].shards]) f.path = `stage-1/${f.path}`
    json.stages = [
      { ...stage, layers: [0, 1] },
      { ...second, io: 'hidden->hidden', layers: [1, 2] },
    ]
    json.totalBytes += second.graph.bytes + second.externalData[0].bytes
    expect(parseManifest(json).stages.map((s) => s.io)).toEqual([
      'embeds->hidden',
      'hidden->hidden',
    ])
    json.stages[1].io = 'hidden->logits'
    expect(reason(json)).toBe(
      'stages[1].io hidden->logits: with a head every stage returns hidden (the head computes logits)',
    )
    json.stages[1].io = 'embeds->hidden'
    expect(reason(json)).toBe('stages[1].io embeds->hidden: only the first stage takes embeds')
  })
})

describe('naming', () => {
  it('numbers shards with at least three digits, more when needed', () => {
    expect(shardName('model.onnx_data', 0, 31)).toBe('model.onnx_data.000')
    expect(shardName('model.onnx_data', 1234, 2000)).toBe('model.onnx_data.1234')
    expect(shardName('model.onnx_data', 5, 2000)).toBe('model.onnx_data.0005')
  })

  it('cuts a file into fixed-size ranges, the last one shorter', () => {
    expect(shardRanges(10, 4)).toEqual([[0, 4], [4, 4], [8, 2]]) // prettier-ignore
    expect(shardRanges(8, 4)).toEqual([[0, 4], [4, 4]]) // prettier-ignore
    expect(shardRanges(0, 4)).toEqual([])
    expect(() => shardRanges(8, 0)).toThrow(RangeError)
  })

  it('keeps paths inside the package', () => {
    for (const ok of ['model.onnx', 'stage-1/model.onnx_data.000', 'a_b-c.d'])
      expect(isSafeRelativePath(ok)).toBe(true)
    for (const bad of ['', '..', 'a/../b', '/abs', './x', 'a//b', 'a\\b', '.hidden', 'x/'])
      expect(isSafeRelativePath(bad)).toBe(false)
  })

  it('the default shard fits wrangler and a Worker request body', () => {
    expect(DEFAULT_SHARD_BYTES).toBeLessThan(MAX_OBJECT_BYTES)
    expect(DEFAULT_SHARD_BYTES).toBeLessThan(100e6)
  })
})
