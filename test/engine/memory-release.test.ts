/**
 * Memory the engine gives back as soon as it is done with it instead of at the next collection
 * (core/free-buffer.ts), and memory it does not take in the first place. V8 collects
 * ArrayBuffers only once tens of MB of them are garbage, and those MB are in the process's RSS
 * until then: measured on Deno serving a 0.5B q4 package, they were the difference between the
 * load's and the chats' peak RSS and the memory the model needs.
 *
 * Node 20 has no ArrayBuffer.prototype.transfer (freeBuffer then leaves buffers to the
 * collector): the tests install one that detaches like it, so a freed buffer is seen empty.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { preparePackage } from '../../scripts/prepare-model.ts'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import { openPackage } from '../../src/engine/package/loader.ts'
import { generateTokens, type StepModel } from '../../src/engine/serve/generate.ts'
import type { StepResult } from '../../src/engine/forward.ts'
import type { KvCache } from '../../src/engine/kv/kv-cache.ts'
import { streamKernelModel } from '../../src/engine/wasm/kernel-loader.ts'
import { KvArena } from '../../src/engine/wasm/kv-arena.ts'
import { decoderTensorBytes, type DecoderTensorRef, type Manifest } from '../../src/format/index.ts'
import { ensureModel } from '../helpers/models.ts'
import { makeFakePackage, memorySource } from './package/fake-package.ts'

const freed: number[] = []
vi.mock('../../src/core/free-buffer.ts', async (original) => {
  const real = await original<typeof import('../../src/core/free-buffer.ts')>()
  return {
    freeBuffer: (buffer: ArrayBufferLike) => {
      freed.push(buffer.byteLength)
      real.freeBuffer(buffer)
    },
  }
})

beforeAll(() => {
  if (typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === 'function') return
  Object.defineProperty(ArrayBuffer.prototype, 'transfer', {
    configurable: true,
    writable: true,
    value(this: ArrayBuffer, length = this.byteLength) {
      const out = new ArrayBuffer(length)
      new Uint8Array(out).set(new Uint8Array(this, 0, Math.min(length, this.byteLength)))
      structuredClone(this, { transfer: [this] }) // detaches this
      return out
    },
  })
})

// the q4 packers: whether a matrix went into a buffer of its own or straight into place
const packedOwn: number[] = []
const packedInto: Array<{ bytes: number; into: number }> = []
vi.mock('../../src/format/q4-b32.ts', async (original) => {
  const real = await original<typeof import('../../src/format/q4-b32.ts')>()
  return {
    ...real,
    packMatMulNBits: (...args: Parameters<typeof real.packMatMulNBits>) => {
      const m = real.packMatMulNBits(...args)
      packedOwn.push(m.data.byteLength)
      return m
    },
    packMatMulNBitsInto: (...args: Parameters<typeof real.packMatMulNBitsInto>) => {
      const bytes = real.packMatMulNBitsInto(...args)
      packedInto.push({ bytes, into: args[1].byteLength })
      return bytes
    },
  }
})

const sum = (a: number[]) => a.reduce((n, x) => n + x, 0)

/** Byte sizes of the decoder tensors in external data that cross a shard boundary. */
function spanningTensorBytes(manifest: Manifest): number[] {
  const shards = manifest.stages[0].externalData[0].shards.map((s) => s.bytes)
  const ends = shards.map((_, i) => sum(shards.slice(0, i + 1)))
  const out: number[] = []
  const visit = (node: unknown): void => {
    if (!node || typeof node !== 'object') return
    const ref = node as Partial<DecoderTensorRef>
    if (ref.file === 0 && typeof ref.offset === 'number' && ref.dims && ref.type) {
      const bytes = decoderTensorBytes(ref as DecoderTensorRef)
      const start = ref.offset
      if (ends.some((e) => start < e && e < start + bytes)) out.push(bytes)
      return
    }
    for (const v of Object.values(node)) visit(v)
  }
  visit(manifest.decoder)
  return out
}

describe('the package loader', () => {
  it('gives its shard buffers back when the stream ends', async () => {
    const pkg = makeFakePackage('fake', 200_000, 8192)
    const handle = await openPackage(memorySource(pkg.objects), pkg.id, { concurrency: 3 })
    const buffers = new Set<ArrayBufferLike>()
    await handle.stream(async (_, __, bytes) => {
      buffers.add(bytes.buffer)
      await new Promise((resolve) => setTimeout(resolve, 1))
    })
    expect(buffers.size).toBe(3)
    expect([...buffers].map((b) => b.byteLength)).toEqual([0, 0, 0])
  })

  it("reads as many files at once as the source asks, unless told (a folder's: 1)", async () => {
    const pkg = makeFakePackage('fake', 200_000, 8192)
    const one = Object.assign(memorySource(pkg.objects), { parallelReads: 1 })
    await (await openPackage(one, pkg.id)).stream(() => {})
    expect(one.maxInFlight).toBe(1)
    const told = Object.assign(memorySource(pkg.objects), { parallelReads: 1 })
    await (await openPackage(told, pkg.id, { concurrency: 3 })).stream(() => {})
    expect(told.maxInFlight).toBe(3)
    const plain = memorySource(pkg.objects)
    await (await openPackage(plain, pkg.id)).stream(() => {})
    expect(plain.maxInFlight).toBe(4)
    expect(fsSource('.').parallelReads).toBe(1)
  })
})

describe('the kernels (tiny q4, 8 KiB shards)', () => {
  let work: string
  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q4')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-memory-'))
    await preparePackage({ folder: hf, id: 'q4', out: work, shardBytes: 8192, quiet: true })
  })
  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('pack the 4-bit matrices straight into kernel memory (no buffer of their own), and free the tensors joined across shards once written', async () => {
    packedOwn.length = 0
    packedInto.length = 0
    freed.length = 0
    const model = await streamKernelModel(await openPackage(fsSource(work), 'q4'))
    // every matrix part packed once, into the whole kernel memory (at least the packed layers'
    // size), and together they are most of the layers' bytes (the rest: norms, biases, padding)
    expect(packedOwn).toEqual([])
    const weightBytes = model.decoder.weightBytes
    expect(packedInto.length).toBeGreaterThan(0)
    expect(packedInto.every((p) => p.into >= weightBytes)).toBe(true)
    const bytes = sum(packedInto.map((p) => p.bytes))
    expect(bytes).toBeGreaterThan(0.9 * weightBytes)
    expect(bytes).toBeLessThanOrEqual(weightBytes)
    // the tensors that span two 8 KiB shards were joined into copies of their own: each such
    // copy freed once written (the manifest tells which tensors span shards)
    const spanning = spanningTensorBytes(
      JSON.parse(await readFile(join(work, 'q4', 'manifest.json'), 'utf8')),
    )
    expect(spanning.length).toBeGreaterThan(0)
    const left = [...freed]
    for (const bytes of spanning) {
      const i = left.indexOf(bytes)
      expect(i, `a joined copy of ${bytes} bytes freed`).toBeGreaterThanOrEqual(0)
      left.splice(i, 1)
    }
  })

  it('give each row of a decode step logits of its own, which the caller may free', async () => {
    const model = await streamKernelModel(await openPackage(fsSource(work), 'q4'))
    const a = await model.forward([1, 2, 3], model.emptyCache())
    const b = await model.forward([4, 5], model.emptyCache())
    const rows = await model.decode([7, 8], [a.cache, b.cache])
    expect(rows[0].logits.buffer).not.toBe(rows[1].logits.buffer)
    const second = rows[1].logits.slice()
    model.releaseLogits(rows[0].logits)
    expect(rows[0].logits.length).toBe(0)
    expect(rows[1].logits).toEqual(second)
  })

  it('take a new sequence its whole room at once: no move to a larger block midway', async () => {
    const model = await streamKernelModel(await openPackage(fsSource(work), 'q4'))
    const grow = vi.spyOn(KvArena.prototype, 'grow')
    const released: Float32Array[] = []
    const counting: StepModel = {
      emptyCache: () => model.emptyCache(),
      forward: (ids, cache, keep) => model.forward(ids, cache, keep),
      releaseCache: (cache) => model.releaseCache(cache),
      releaseLogits: (logits) => {
        released.push(logits)
        model.releaseLogits(logits)
      },
    }
    const ids: number[] = []
    const gen = generateTokens(counting, (task) => task(), [1, 2, 3, 4, 5], {
      maxNewTokens: 200,
      sampling: { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 },
      rng: () => 0,
      eosIds: new Set<number>(),
      prefillChunk: 64,
    })
    for await (const id of gen) ids.push(id)
    expect(ids).toHaveLength(200)
    expect(grow).not.toHaveBeenCalled()
    grow.mockRestore()
    // every step's logits, the last included, went back once read
    expect(released).toHaveLength(200)
    expect(released.every((l) => l.length === 0)).toBe(true)
  })
})

describe('generateTokens', () => {
  it("hands each step's logits back once it has drawn from them, and the last at the end", async () => {
    const made: Float32Array[] = []
    const released: Float32Array[] = []
    const model: StepModel = {
      emptyCache: () => ({ length: 0, tensors: {} }),
      async forward(ids: readonly number[], cache: KvCache): Promise<StepResult> {
        const logits = new Float32Array(8)
        logits[made.length % 8] = 1
        made.push(logits)
        return { logits, rows: 1, cache: { length: cache.length + ids.length, tensors: {} } }
      },
      releaseLogits: (logits) => released.push(logits),
    }
    const gen = generateTokens(model, (task) => task(), [1, 2], {
      maxNewTokens: 5,
      sampling: { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 },
      rng: () => 0,
      eosIds: new Set<number>(),
      prefillChunk: 4,
    })
    for await (const _ of gen) expect(released).toEqual(made.slice(0, -1))
    expect(released).toEqual(made)
  })
})
