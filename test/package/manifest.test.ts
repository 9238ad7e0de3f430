import { describe, expect, it } from 'vitest'
import { isAppError } from '../../src/core/errors.ts'
import {
  DEFAULT_SHARD_BYTES,
  MAX_OBJECT_BYTES,
  isSafeRelativePath,
  listFiles,
  parseManifest,
  shardName,
  shardRanges,
  type Manifest,
} from '../../src/core/manifest.ts'
import { makeFakePackage } from './fake-package.ts'

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
      'stages[0].io "ids->text" is not one of ids->logits, ids->hidden, hidden->hidden, hidden->logits',
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
