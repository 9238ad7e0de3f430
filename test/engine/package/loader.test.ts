import { describe, expect, it } from 'vitest'
import { isAppError } from '../../../src/core/errors.ts'
import { memoizeLoad } from '../../../src/core/memoize-load.ts'
import { loadPackage, openPackage, type LoadProgress } from '../../../src/engine/package/loader.ts'
import { SourceError } from '../../../src/engine/package/sources/model-source.ts'
import { makeFakePackage, memorySource } from './fake-package.ts'

const fast = { retryDelayMs: 1 }

async function loadError(promise: Promise<unknown>) {
  const err = await promise.then(
    () => {
      throw new Error('expected the load to fail')
    },
    (e: unknown) => e,
  )
  if (!isAppError(err)) throw err
  return err
}

describe('loadPackage', () => {
  it('assembles the shards into one buffer, byte for byte, and parses the JSON files', async () => {
    const pkg = makeFakePackage()
    for (const streaming of [true, false]) {
      const loaded = await loadPackage(memorySource(pkg.objects, { streaming }), pkg.id)
      expect(loaded.externalData).toHaveLength(1)
      expect(loaded.externalData[0].path).toBe('model.onnx_data')
      expect(Buffer.from(loaded.externalData[0].data).equals(Buffer.from(pkg.data))).toBe(true)
      expect(Buffer.from(loaded.graph).equals(Buffer.from(pkg.graph))).toBe(true)
      expect(loaded.tokenizerConfig).toEqual({ chat_template: '{{ messages }}' })
      expect(loaded.config.hidden_size).toBe(16)
      expect(loaded.generationConfig).toEqual({ eos_token_id: 2 })
      expect(loaded.stage.layers).toEqual([0, 2])
    }
  })

  it('reports progress up to the total', async () => {
    const pkg = makeFakePackage()
    const seen: LoadProgress[] = []
    await loadPackage(memorySource(pkg.objects), pkg.id, { onProgress: (p) => seen.push(p) })
    const last = seen.at(-1)!
    expect(last.loadedBytes).toBe(pkg.manifest.totalBytes)
    expect(last.totalBytes).toBe(pkg.manifest.totalBytes)
    expect(last.filesDone).toBe(last.filesTotal)
    expect(seen.length).toBeGreaterThan(last.filesTotal) // chunk updates, not only per file
  })

  it('keeps at most `concurrency` reads in flight', async () => {
    const pkg = makeFakePackage('fake', 200_000, 8192)
    const src = memorySource(pkg.objects)
    await loadPackage(src, pkg.id, { concurrency: 3 })
    expect(src.maxInFlight).toBe(3)
  })

  it('streams the shards through one reused buffer per read in flight', async () => {
    // a fresh buffer per shard (16 MiB in real packages) is garbage the runtime's allocator
    // keeps after the collector frees it: the load would leave the process hundreds of MB larger
    const pkg = makeFakePackage('fake', 200_000, 8192)
    const handle = await openPackage(memorySource(pkg.objects), pkg.id, { concurrency: 3 })
    const copy = new Uint8Array(pkg.data.byteLength)
    const buffers = new Set<ArrayBufferLike>()
    let shards = 0
    await handle.stream(async (file, offset, bytes) => {
      expect(file).toEqual({ kind: 'external', index: 0 })
      buffers.add(bytes.buffer)
      shards++
      await new Promise((resolve) => setTimeout(resolve, 1)) // the others read meanwhile
      copy.set(bytes, offset)
    })
    expect(shards).toBe(pkg.manifest.stages[0].externalData[0].shards.length)
    expect(shards).toBeGreaterThan(20)
    expect(buffers.size).toBeLessThanOrEqual(3)
    expect(Buffer.from(copy).equals(Buffer.from(pkg.data))).toBe(true)
  })

  it('streams byte streams straight into its buffers, and checks them as well', async () => {
    // a chunk allocated per read (64 KiB from a Deno file) is garbage the allocator keeps
    const pkg = makeFakePackage('fake', 200_000, 8192)
    const src = memorySource(pkg.objects, { bytes: true, chunk: 3000 })
    const handle = await openPackage(src, pkg.id, { concurrency: 3 })
    const copy = new Uint8Array(pkg.data.byteLength)
    await handle.stream((_, offset, bytes) => copy.set(bytes, offset))
    expect(Buffer.from(copy).equals(Buffer.from(pkg.data))).toBe(true)
    expect(src.intoReader).toBe(pkg.data.byteLength)

    const key = `${pkg.id}/model.onnx_data.003`
    pkg.objects.get(key)![100] ^= 0xff
    const broken = await openPackage(memorySource(pkg.objects, { bytes: true }), pkg.id)
    const err = await loadError(broken.stream(() => {}))
    expect(err.message).toMatch(/Checksum mismatch in fake\/model\.onnx_data\.003 \(memory\)/)
    pkg.objects.get(key)![100] ^= 0xff
    pkg.objects.set(key, new Uint8Array([...pkg.objects.get(key)!, 1]))
    const long = await openPackage(
      memorySource(pkg.objects, { bytes: true, size: () => undefined }),
      pkg.id,
    )
    expect((await loadError(long.stream(() => {}))).message).toMatch(/is too long: at least/)
  })

  it('names the shard whose checksum does not match, and does not retry it', async () => {
    const pkg = makeFakePackage()
    const key = `${pkg.id}/model.onnx_data.003`
    pkg.objects.get(key)![100] ^= 0xff
    const src = memorySource(pkg.objects)
    const err = await loadError(loadPackage(src, pkg.id, fast))
    expect(err.code).toBe('model_invalid')
    expect(err.message).toMatch(/Checksum mismatch in fake\/model\.onnx_data\.003 \(memory\)/)
    expect(src.reads.get(key)).toBe(1)
  })

  it('reports a missing shard', async () => {
    const pkg = makeFakePackage()
    pkg.objects.delete(`${pkg.id}/model.onnx_data.002`)
    const err = await loadError(loadPackage(memorySource(pkg.objects), pkg.id, fast))
    expect([err.code, err.message]).toEqual([
      'model_invalid',
      'Missing file fake/model.onnx_data.002 (memory)',
    ])
  })

  it('reports a truncated shard, whether or not the store tells the size up front', async () => {
    const pkg = makeFakePackage()
    const key = `${pkg.id}/model.onnx_data.001`
    pkg.objects.set(key, pkg.objects.get(key)!.slice(0, 1000))
    const expected =
      /^File fake\/model\.onnx_data\.001 \(memory\) is truncated: 1000 bytes, manifest says 16384$/
    for (const src of [
      memorySource(pkg.objects),
      memorySource(pkg.objects, { size: () => undefined }),
      memorySource(pkg.objects, { streaming: false }),
    ]) {
      const err = await loadError(loadPackage(src, pkg.id, fast))
      expect(err.code).toBe('model_invalid')
      expect(err.message).toMatch(expected)
    }
  })

  it('reports a shard longer than the manifest says', async () => {
    const pkg = makeFakePackage()
    const key = `${pkg.id}/model.onnx_data.001`
    pkg.objects.set(key, new Uint8Array(20_000))
    const err = await loadError(
      loadPackage(memorySource(pkg.objects, { size: () => undefined }), pkg.id),
    )
    expect(err.message).toMatch(
      /model\.onnx_data\.001 \(memory\) is too long: at least \d+ bytes, manifest says 16384/,
    )
  })

  it('rejects a package without manifest, an unknown version and a manifest for another id', async () => {
    const pkg = makeFakePackage()
    const none = await loadError(loadPackage(memorySource(pkg.objects), 'other'))
    expect([none.code, none.message]).toEqual([
      'model_invalid',
      'Model package other not found: no other/manifest.json in memory',
    ])

    const v2 = new TextEncoder().encode(JSON.stringify({ ...pkg.manifest, version: 2 }))
    pkg.objects.set('fake/manifest.json', v2)
    const version = await loadError(loadPackage(memorySource(pkg.objects), pkg.id))
    expect(version.message).toBe(
      'Invalid model manifest: unsupported format version 2 (this build reads version 1)',
    )

    pkg.objects.set('copy/manifest.json', new TextEncoder().encode(JSON.stringify(pkg.manifest)))
    const copied = await loadError(loadPackage(memorySource(pkg.objects), 'copy'))
    expect(copied.message).toBe('copy/manifest.json describes package fake, not copy')
    // named by its location (a renamed folder), the same copy is served under its own id
    for (const [key, bytes] of [...pkg.objects]) {
      if (key.startsWith('fake/') && !key.endsWith('/manifest.json')) {
        pkg.objects.set(key.replace('fake/', 'copy/'), bytes)
      }
    }
    const byPath = await loadPackage(memorySource(pkg.objects), 'copy', { anyId: true })
    expect(byPath.id).toBe('fake')

    pkg.objects.set('fake/manifest.json', new TextEncoder().encode('{"version":1,'))
    const broken = await loadError(loadPackage(memorySource(pkg.objects), pkg.id))
    expect(broken.message).toBe('fake/manifest.json is not valid JSON')
  })

  it('retries transient failures with backoff, then succeeds', async () => {
    const pkg = makeFakePackage()
    const src = memorySource(pkg.objects, {
      before: (key, attempt) => {
        if (attempt <= 2) throw new Error(`connection reset reading ${key}`)
      },
    })
    const loaded = await loadPackage(src, pkg.id, fast)
    expect(Buffer.from(loaded.externalData[0].data).equals(Buffer.from(pkg.data))).toBe(true)
    for (const [, n] of src.reads) expect(n).toBe(3)
  })

  it('retries a stream that breaks in the middle and counts its bytes once', async () => {
    const pkg = makeFakePackage()
    const key = `${pkg.id}/model.onnx_data.004`
    const src = memorySource(pkg.objects, { chunk: 1000 })
    const stream = src.stream!.bind(src)
    src.stream = async (k) => {
      const obj = await stream(k)
      if (k !== key || src.reads.get(k) !== 1 || !obj) return obj
      const reader = obj.body.getReader()
      let n = 0
      const body = new ReadableStream<Uint8Array>({
        async pull(c) {
          if ((n += 1) > 5) return c.error(new TypeError('terminated'))
          const { value } = await reader.read()
          c.enqueue(value!)
        },
      })
      return { size: obj.size, body }
    }
    const seen: LoadProgress[] = []
    const loaded = await loadPackage(src, pkg.id, { ...fast, onProgress: (p) => seen.push(p) })
    expect(src.reads.get(key)).toBe(2)
    expect(Buffer.from(loaded.externalData[0].data).equals(Buffer.from(pkg.data))).toBe(true)
    expect(seen.at(-1)!.loadedBytes).toBe(pkg.manifest.totalBytes)
    expect(Math.max(...seen.map((p) => p.loadedBytes))).toBe(pkg.manifest.totalBytes)
  })

  it('gives up after the retries with model_unavailable naming the file and the source', async () => {
    const pkg = makeFakePackage()
    const src = memorySource(pkg.objects, {
      before: (key) => {
        if (key.endsWith('.002')) throw new Error('socket hang up')
      },
    })
    const err = await loadError(loadPackage(src, pkg.id, { ...fast, retries: 2 }))
    expect(err.code).toBe('model_unavailable')
    expect(err.message).toBe(
      'Could not read fake/model.onnx_data.002 from memory (3 attempts): socket hang up',
    )
    expect(src.reads.get('fake/model.onnx_data.002')).toBe(3)
  })

  it('does not retry a permanent source error', async () => {
    const pkg = makeFakePackage()
    const src = memorySource(pkg.objects, {
      before: (key) => {
        if (key.endsWith('tokenizer.json')) throw new SourceError('403 Forbidden', false)
      },
    })
    const err = await loadError(loadPackage(src, pkg.id, fast))
    expect([err.code, err.message]).toEqual([
      'model_unavailable',
      'Could not read fake/tokenizer.json from memory: 403 Forbidden',
    ])
    expect(src.reads.get('fake/tokenizer.json')).toBe(1)
  })

  it('stops when the caller aborts', async () => {
    const pkg = makeFakePackage()
    const ac = new AbortController()
    const src = memorySource(pkg.objects, {
      before: (key) => void (key.endsWith('.001') && ac.abort(new Error('stop'))),
    })
    await expect(loadPackage(src, pkg.id, { signal: ac.signal, concurrency: 1 })).rejects.toThrow(
      'stop',
    )
    expect(src.reads.has('fake/model.onnx_data.005')).toBe(false)
  })
})

describe('memoizeLoad', () => {
  it('turns twenty concurrent first requests into one read per file', async () => {
    const pkg = makeFakePackage()
    const src = memorySource(pkg.objects)
    const load = memoizeLoad((id) => loadPackage(src, id))
    const results = await Promise.all(Array.from({ length: 20 }, () => load(pkg.id)))
    expect(new Set(results).size).toBe(1)
    expect(src.reads.size).toBe(pkg.objects.size)
    for (const [, n] of src.reads) expect(n).toBe(1)
  })

  it('does not keep a failure: after the shard is repaired the next request loads', async () => {
    const pkg = makeFakePackage()
    const key = `${pkg.id}/model.onnx_data.005`
    const good = pkg.objects.get(key)!.slice()
    pkg.objects.get(key)![7] ^= 1
    const src = memorySource(pkg.objects)
    const load = memoizeLoad((id) => loadPackage(src, id))
    const failures = await Promise.allSettled([load(pkg.id), load(pkg.id)])
    expect(failures.map((f) => f.status)).toEqual(['rejected', 'rejected'])
    expect(String((failures[0] as PromiseRejectedResult).reason.message)).toContain(
      'model.onnx_data.005',
    )
    expect(src.reads.get(key)).toBe(1)

    pkg.objects.set(key, good)
    const loaded = await load(pkg.id)
    expect(Buffer.from(loaded.externalData[0].data).equals(Buffer.from(pkg.data))).toBe(true)
    expect(src.reads.get(key)).toBe(2)
    expect(await load(pkg.id)).toBe(loaded)
    expect(src.reads.get(key)).toBe(2)
  })

  it('forgets on request', async () => {
    let calls = 0
    const load = memoizeLoad(async (k) => `${k}${++calls}`)
    expect(await load('a')).toBe('a1')
    expect(await load('a')).toBe('a1')
    load.forget('a')
    expect(await load('a')).toBe('a2')
  })
})
