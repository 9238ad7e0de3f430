/**
 * A package streamed into the kernels (kernel-loader.ts): shard by shard into place, the same
 * model as one read whole, while holding only a window of the shards.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { isAppError } from '../../../src/core/errors.ts'
import { loadModel } from '../../../src/engine/load-model.ts'
import { loadPackage, openPackage } from '../../../src/engine/package/loader.ts'
import { streamKernelModel, type StreamStats } from '../../../src/engine/wasm/kernel-loader.ts'
import { KernelModel } from '../../../src/engine/wasm/kernel-model.ts'
import {
  decoderLayerTensors,
  decoderTensorBytes,
  type DecoderTensorRef,
} from '../../../src/format/index.ts'
import { ensureModel } from '../../helpers/models.ts'

const PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]

describe('streaming a package into the kernels (tiny q8 with 8 layers, 8 KiB shards)', () => {
  let work: string

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8', { overrides: { numLayers: 8 } })
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-stream-'))
    await preparePackage({
      folder: hf,
      id: 'tiny',
      out: work,
      shardBytes: 8192,
      quiet: true,
      verify: false,
    })
  })

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('gives the model read whole, bit for bit, holding a few shards at a time', async () => {
    const whole = await KernelModel.load(await loadPackage(fsSource(work), 'tiny'))
    const handle = await openPackage(fsSource(work), 'tiny')
    const data = handle.stage.externalData[0]
    // the precondition: many shards, and layers that span them
    expect(data.shards.length).toBeGreaterThan(8)
    const stats: StreamStats = { peakHeldBytes: 0 }
    const streamed = await streamKernelModel(handle, stats)
    const a = await whole.forward(PROMPT, whole.emptyCache(), 2)
    const b = await streamed.forward(PROMPT, streamed.emptyCache(), 2)
    expect(b.logits.length).toBe(2 * whole.shape.vocabSize)
    expect(Buffer.compare(Buffer.from(a.logits.buffer), Buffer.from(b.logits.buffer))).toBe(0)
    // a window, not the files: at most the widest layer's bytes, the shards in flight (4 at a
    // time) on either side of it, and the small decoder file
    const entry = handle.manifest.decoder!
    const span = (refs: DecoderTensorRef[]) => {
      const ext = refs.filter((r) => r.file !== 'decoder')
      const end = Math.max(...ext.map((r) => r.offset + decoderTensorBytes(r)))
      return end - Math.min(...ext.map((r) => r.offset))
    }
    const widest = Math.max(...entry.layers.map((l) => span(decoderLayerTensors(l))))
    const bound = widest + 2 * 4 * 8192 + (entry.file?.bytes ?? 0)
    const all = data.bytes + (entry.file?.bytes ?? 0)
    console.log(
      `streamed load held at most ${stats.peakHeldBytes} bytes of ${all} ` +
        `(widest layer ${widest}, bound ${bound})`,
    )
    expect(stats.peakHeldBytes).toBeGreaterThan(0)
    expect(stats.peakHeldBytes).toBeLessThanOrEqual(bound)
    await expect(handle.load()).rejects.toThrow(/read once/)
  })

  it('is what loadModel does with a handle, unless prompts or everything run in the graph', async () => {
    const streamed = await loadModel(await openPackage(fsSource(work), 'tiny'))
    expect(streamed).toBeInstanceOf(KernelModel)
    const graph = await loadModel(await openPackage(fsSource(work), 'tiny'), { prefill: 'graph' })
    expect(graph).not.toBeInstanceOf(KernelModel)
    expect(graph.paths).toEqual({ prefill: 'graph', decode: 'decoder' })
    await graph.release()
  })

  it('names a corrupted shard and loads once it is repaired', async () => {
    const handle = await openPackage(fsSource(work), 'tiny')
    const shard = handle.stage.externalData[0].shards[3]
    const path = join(work, 'tiny', shard.path)
    const good = await readFile(path)
    const bad = Buffer.from(good)
    bad[10] ^= 1
    await writeFile(path, bad)
    try {
      const err = await streamKernelModel(handle).catch((e: unknown) => e)
      expect(isAppError(err) && err.code).toBe('model_invalid')
      expect(String((err as Error).message)).toContain(shard.path)
    } finally {
      await writeFile(path, good)
    }
    const again = await streamKernelModel(await openPackage(fsSource(work), 'tiny'))
    expect(again.decoder.complete).toBe(true)
  })
})
