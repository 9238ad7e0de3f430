import { mkdtemp, readFile, rm, truncate, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Miniflare } from 'miniflare'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MAX_OBJECT_BYTES, type Manifest } from '../../src/format/index.ts'
import { r2Source, type R2BucketLike } from '../../src/adapters/workers/r2-source.ts'
import { loadPackage } from '../../src/engine/package/loader.ts'
import {
  planUpload,
  runWrangler,
  tooLargeMessage,
  uploadPackage,
  type UploadObject,
} from '../../scripts/upload-model.ts'
import { makeFakePackage, sha256 } from '../engine/package/fake-package.ts'

const obj = (key: string, bytes: number, sha = 'a'.repeat(64)): UploadObject => ({
  key,
  file: `/x/${key}`,
  bytes,
  sha256: sha,
})

describe('planUpload', () => {
  it('skips objects whose sha256 was already put, unless forced', () => {
    const objects = [obj('m/a', 10, 'a'.repeat(64)), obj('m/b', 10, 'b'.repeat(64))]
    const state = { 'm/a': 'a'.repeat(64), 'm/b': 'c'.repeat(64) }
    const plan = planUpload(objects, state)
    expect(plan.skip.map((o) => o.key)).toEqual(['m/a'])
    expect(plan.upload.map((o) => o.key)).toEqual(['m/b'])
    expect(planUpload(objects, state, { force: true }).upload).toHaveLength(2)
  })

  it('refuses objects over 300 MiB and says what to do', () => {
    const plan = planUpload([obj('m/ok', MAX_OBJECT_BYTES), obj('m/big', MAX_OBJECT_BYTES + 1)], {})
    expect(plan.tooLarge.map((o) => o.key)).toEqual(['m/big'])
    expect(tooLargeMessage(plan.tooLarge)).toMatch(
      /exceed wrangler's single-put limit of 300\.0 MiB:\n {2}m\/big: 300\.0 MiB\n.*--shard-mb/s,
    )
  })
})

/** Writes a fake package into `dir/<id>/` (the loader-test fixture, as files). */
async function writePackage(dir: string, dataBytes = 50_000) {
  const pkg = makeFakePackage('fake', dataBytes, 16_384)
  for (const [key, bytes] of pkg.objects) {
    await mkdir(join(dir, key, '..'), { recursive: true })
    await writeFile(join(dir, key), bytes)
  }
  return pkg
}

describe('uploadPackage', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qwen-edge-upload-'))
  })
  afterAll(() => rm(dir, { recursive: true, force: true }))

  it('puts every file with manifest.json last, then skips what is already there', async () => {
    const shards = join(dir, 'shards-a')
    const persist = join(dir, 'persist-a')
    const pkg = await writePackage(shards)
    const calls: string[][] = []
    const run = async (args: string[]) => void calls.push(args)
    const opts = {
      id: 'fake',
      mode: 'local' as const,
      dir: shards,
      persistTo: persist,
      quiet: true,
      runWrangler: run,
    }

    const first = await uploadPackage(opts)
    expect(first.uploaded).toHaveLength(pkg.objects.size)
    expect(first.uploaded.at(-1)).toBe('fake/manifest.json')
    expect(calls[0]).toEqual([
      'r2', 'object', 'put', 'qwen-edge-models/fake/tokenizer.json', '--file', join(shards, 'fake', 'tokenizer.json'),
      '--local', '--content-type', 'application/json', '--persist-to', persist,
    ]) // prettier-ignore
    expect(first.stateFile).toBe(join(persist, 'qwen-edge-uploads-qwen-edge-models.json'))

    calls.length = 0
    const second = await uploadPackage(opts)
    expect([second.uploaded, calls]).toEqual([[], []])
    expect(second.skipped).toHaveLength(pkg.objects.size)

    // A changed shard (and so a changed manifest) goes up again; the rest stays.
    const manifest = JSON.parse(
      await readFile(join(shards, 'fake', 'manifest.json'), 'utf8'),
    ) as Manifest
    const shard = manifest.stages[0].externalData[0].shards[1]
    const bytes = new Uint8Array(shard.bytes).fill(7)
    shard.sha256 = sha256(bytes)
    await writeFile(join(shards, 'fake', shard.path), bytes)
    await writeFile(join(shards, 'fake', 'manifest.json'), JSON.stringify(manifest))
    const third = await uploadPackage(opts)
    expect(third.uploaded).toEqual([`fake/${shard.path}`, 'fake/manifest.json'])

    // Another bucket has its own state.
    const other = await uploadPackage({ ...opts, bucket: 'elsewhere' })
    expect(other.uploaded).toHaveLength(pkg.objects.size)
    expect(calls.at(-1)?.[3]).toBe('elsewhere/fake/manifest.json')
  })

  it('runs puts in parallel for --remote, and the manifest only after all of them finished', async () => {
    const shards = join(dir, 'shards-parallel')
    const pkg = await writePackage(shards, 100_000) // 7 shards
    const events: string[] = []
    let running = 0
    let most = 0
    const run = async (args: string[]) => {
      most = Math.max(most, ++running)
      events.push(`start ${args[3]}`)
      await new Promise((r) => setTimeout(r, 5))
      events.push(`end ${args[3]}`)
      running--
    }
    const stateFile = join(dir, 'remote-state.json')
    const opts = { id: 'fake', dir: shards, quiet: true, stateFile, runWrangler: run }
    const result = await uploadPackage({ ...opts, mode: 'remote', concurrency: 3 })
    expect(result.uploaded).toHaveLength(pkg.objects.size)
    expect(most).toBe(3)
    expect(events.slice(-2)).toEqual([
      'start qwen-edge-models/fake/manifest.json',
      'end qwen-edge-models/fake/manifest.json',
    ])
    const state = JSON.parse(await readFile(stateFile, 'utf8'))
    expect(Object.keys(state)).toHaveLength(pkg.objects.size)
  })

  it('refuses a package with an object over 300 MiB before putting anything', async () => {
    const shards = join(dir, 'shards-big')
    await writePackage(shards)
    const path = join(shards, 'fake', 'manifest.json')
    const manifest = JSON.parse(await readFile(path, 'utf8')) as Manifest
    const ext = manifest.stages[0].externalData[0]
    const big = ext.shards[0]
    const size = MAX_OBJECT_BYTES + 1024 * 1024
    manifest.totalBytes += size - big.bytes
    ext.bytes += size - big.bytes
    big.bytes = size
    await writeFile(path, JSON.stringify(manifest))
    await truncate(join(shards, 'fake', big.path), size) // sparse: no 300 MiB written
    let called = false
    const err = await uploadPackage({
      id: 'fake',
      mode: 'remote',
      dir: shards,
      quiet: true,
      stateFile: join(dir, 'big-state.json'),
      runWrangler: async () => void (called = true),
    }).catch((e: Error) => e)
    expect(called).toBe(false)
    expect((err as Error).message).toMatch(
      /^Refusing to upload: 1 object\(s\) exceed .*fake\/model\.onnx_data\.000: 301\.0 MiB/s,
    )
  })

  it('uploads into local R2 with the real wrangler, and the R2 source loads it back', async () => {
    const shards = join(dir, 'shards-real')
    const persist = join(dir, 'persist-real')
    const pkg = await writePackage(shards, 10_000) // 5 objects: each wrangler run takes ~2.5 s
    const result = await uploadPackage({
      id: 'fake',
      mode: 'local',
      dir: shards,
      persistTo: persist,
      quiet: true,
    })
    expect(result.uploaded).toHaveLength(pkg.objects.size)

    const mf = new Miniflare({
      modules: true,
      script: 'export default { fetch() { return new Response(null, { status: 404 }) } }',
      r2Buckets: { MODELS: 'qwen-edge-models' },
      r2Persist: join(persist, 'v3', 'r2'),
    })
    try {
      const bucket = (await mf.getR2Bucket('MODELS')) as unknown as R2BucketLike
      const loaded = await loadPackage(r2Source(bucket, { name: 'qwen-edge-models' }), 'fake')
      expect(Buffer.from(loaded.externalData[0].data).equals(Buffer.from(pkg.data))).toBe(true)
      expect(Buffer.from(loaded.graph).equals(Buffer.from(pkg.graph))).toBe(true)
      const missing = await loadPackage(
        r2Source(bucket, { name: 'qwen-edge-models' }),
        'nope',
      ).catch((e: Error) => e)
      expect((missing as Error).message).toBe(
        'Model package nope not found: no nope/manifest.json in R2 bucket qwen-edge-models',
      )
    } finally {
      await mf.dispose()
    }
  }, 60_000)

  it('reports wrangler failures with its output', async () => {
    const args = ['r2', 'object', 'put', 'no-key-here', '--local', '--persist-to', join(dir, 'x')]
    const err = await runWrangler(args).catch((e: Error) => e)
    expect((err as Error).message).toMatch(
      /^wrangler r2 object put no-key-here failed \(exit \d+\):\n/,
    )
  }, 30_000)
})
