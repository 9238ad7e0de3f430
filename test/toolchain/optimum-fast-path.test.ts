/**
 * The README's fast path for a real model, end to end against the fake Hub: an Optimum-style fp32
 * export (no `num_logits_to_keep`; a tied lm_head as `MatMul` on a transposed copy of the
 * embedding, as torch.onnx writes it) fetched with `--file onnx/model.onnx --format q8`. It must
 * come out with the last-position rewrite, one shared uint8 matrix, and the lm_head and the
 * embedding split off into head.q8; the engine on it must agree with the same conversion whose
 * lm_head stays in the graph.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fetchModel } from '../../scripts/fetch-model.ts'
import { indexGraph, pruneInitializers } from '../../scripts/lib/graph-rewrite.ts'
import { decodeModel, encodeModel, initializer, node } from '../../scripts/lib/onnx/index.ts'
import { floatValues } from '../../scripts/lib/quantize.ts'
import { transpose } from '../../scripts/lib/synth-weights.ts'
import { preparePackage } from '../../scripts/prepare-model.ts'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import { QwenModel } from '../../src/engine/graph/model.ts'
import { loadPackage } from '../../src/engine/package/loader.ts'
import { copyModelFolderMeta, ensureModel } from '../helpers/models.ts'
import { startFileServer } from '../helpers/file-server.ts'

const REPO = 'test-org/Tiny-Qwen-Optimum'
const PREFIX = `/${REPO}/resolve/main/`
const FILE = 'onnx/model.onnx'

let work: string
let hub: string

/** The generator's fp32 graph with its Reshape(Gemm(Reshape)) head redone as Optimum's MatMul. */
async function optimumStyleExport(from: string, to: string): Promise<void> {
  await copyModelFolderMeta(from, to)
  const model = decodeModel(await readFile(join(from, FILE)))
  const graph = model.graph!
  const { producer } = indexGraph(graph)
  const last = producer.get('logits')!
  const gemm = producer.get(last.input![0])!
  const hidden = producer.get(gemm.input![0])!.input![0]
  expect(gemm.op_type).toBe('Gemm')
  const embed = graph.initializer!.find((t) => t.name === gemm.input![1])!
  const [V, H] = embed.dims!.map(Number)
  graph.node = graph.node!.filter((n) => !n.name!.startsWith('/lm_head/'))
  graph.node.push(
    node('MatMul', [hidden, 'onnx::MatMul_4242'], ['logits'], {}, { name: '/lm_head/MatMul' }),
  )
  graph.initializer!.push(
    initializer('onnx::MatMul_4242', transpose(floatValues(embed), V, H), [H, V]),
  )
  const pruned = pruneInitializers(model).model
  await writeFile(join(to, FILE), encodeModel(pruned))
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-optimum-'))
  hub = join(work, 'hub')
  await optimumStyleExport(await ensureModel('tiny', 'fp32', { logitsToKeep: false }), hub)
})
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

describe('model:fetch --file onnx/model.onnx --format q8 (the fast path for real exports)', () => {
  it('rewrites, converts, shares the tied matrix and splits the lm_head and embedding off', async () => {
    const server = await startFileServer(hub, {
      route: (p) => (p.startsWith(PREFIX) ? p.slice(PREFIX.length) : null),
    })
    try {
      const result = await fetchModel({
        repo: REPO,
        file: FILE,
        endpoint: server.url,
        id: 'optimum-q8',
        format: 'q8',
        cacheDir: join(work, 'cache'),
        out: join(work, 'shards'),
        quiet: true,
      })
      const r = result.report!
      expect(r.logitsRewrite?.applied).toBe(true)
      expect(r.conversion).toMatchObject({ matMul: expect.any(Number), embeddings: 1, shared: 1 })
      expect(r.logits?.top1Agrees).toBe(true)
      expect(r.head).toMatchObject({
        applied: true,
        embedding: true,
        top1Agrees: true,
        presentMaxAbsError: 0,
      })
      expect(result.manifest.stages[0].io).toBe('embeds->hidden')
    } finally {
      await server.close()
    }

    // the same conversion with the lm_head kept in the graph: the engine must agree with it
    const plain = await preparePackage({
      folder: join(work, 'cache', REPO, 'main'),
      id: 'optimum-q8-graph',
      file: FILE,
      out: join(work, 'shards'),
      format: 'q8',
      logitsRewrite: true,
      head: 'graph',
      verify: false,
      quiet: true,
    })
    expect(plain.manifest.head).toBeUndefined()
    const source = fsSource(join(work, 'shards'))
    const split = await QwenModel.load(await loadPackage(source, 'optimum-q8'))
    const graph = await QwenModel.load(await loadPackage(source, 'optimum-q8-graph'))
    expect(split.head?.embedding).toBe(true)
    const prompt = [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198, 151644, 77091, 198]
    let a = await split.forward(prompt, split.emptyCache())
    let b = await graph.forward(prompt, graph.emptyCache())
    for (let step = 0; step < 3; step++) {
      const top = (x: Float32Array) => x.reduce((best, v, i) => (v > x[best] ? i : best), 0)
      expect(top(a.logits)).toBe(top(b.logits))
      const ka = a.cache.tensors['past_key_values.0.key'].data as Float32Array
      const kb = b.cache.tensors['past_key_values.0.key'].data as Float32Array
      expect(Array.from(ka)).toEqual(Array.from(kb)) // the embedding from head.q8 is exact
      const next = top(b.logits)
      a = await split.forward([next], a.cache)
      b = await graph.forward([next], b.cache)
    }
    await split.release()
    await graph.release()
  })
})
