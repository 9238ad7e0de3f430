/**
 * A staged package on `npm run dev:worker` (wrangler dev, local R2), over real HTTP: each stage
 * in a Worker of its own behind the stage host, and every request a request of its own to
 * workerd. The in-workerd suite (test/workers/staged-suite.ts) calls the Worker's handler from
 * one test, so all its requests share one context there; here each request has its own, as in
 * production, where a call's answer goes only to the request that made it. Seen before the fix:
 * the release a finished reply sends its stages was answered to a request already over, and
 * every later request waited behind it for ever. The host runs with KV_FORMAT=q8, which each
 * stage's Worker gets from it: the layer stages report their KV cache in q8.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { preparePackage } from '../../scripts/prepare-model.ts'
import { ensureModel } from '../helpers/models.ts'
import { health, json, post, type Target } from './client.ts'
import { RUNTIMES, workers } from './runtimes.ts'
import type { ServerProcess } from './servers.ts'

const ID = 'tiny-staged-http'
let packages: string
let server: ServerProcess
const target = (): Target => server

describe.runIf(RUNTIMES.includes(workers))('a staged package on wrangler dev, over HTTP', () => {
  beforeAll(async () => {
    packages = await mkdtemp(join(tmpdir(), 'qwen-edge-staged-http-'))
    await preparePackage({
      folder: await ensureModel('tiny', 'q8', { overrides: { numLayers: 4 } }),
      id: ID,
      out: packages,
      shardBytes: 256 * 1024,
      quiet: true,
      verify: false,
      stageBudgetBytes: 22 * 1024 * 1024,
      stageContext: 8192,
    })
    // the stages' Workers get the KV cache in q8 from the host (its KV_FORMAT)
    server = await workers.start({ KV_FORMAT: 'q8' }, { id: ID, dir: packages })
  }, 300_000)

  afterAll(async () => {
    await server?.stop()
    if (packages) await rm(packages, { recursive: true, force: true })
  })

  it('answers request after request, each stage in an isolate of its own', async () => {
    const h = await health(target())
    const stages = (
      h as unknown as {
        stages: Array<{ isolate: string; status: string; layers?: number[]; kv_format?: string }>
      }
    ).stages
    expect(stages.length).toBeGreaterThanOrEqual(4) // the precondition: a staged package
    expect(new Set(stages.map((s) => s.isolate)).size).toBe(stages.length)
    const layerStages = stages.filter((s) => s.layers)
    expect(layerStages.length).toBeGreaterThan(0)
    expect(layerStages.map((s) => s.kv_format)).toEqual(layerStages.map(() => 'q8'))
    const quick = { signal: AbortSignal.timeout(20_000) }
    // each of these waits for the releases the one before sent to the stages
    for (const text of ['The food was cold.', '这部电影太好看了！', 'Great service.']) {
      const res = await post(target(), '/v1/sentiment', { text }, quick)
      expect(res.status, server.logs()).toBe(200)
      expect((await json(res)).label).toMatch(/\S/)
    }
    const chat = await post(
      target(),
      '/v1/chat/completions',
      { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, temperature: 0 },
      { signal: AbortSignal.timeout(20_000) },
    )
    expect(chat.status).toBe(200)
    expect((await json(chat)).choices[0].message.content.length).toBeGreaterThan(0)
    const again = await post(target(), '/v1/sentiment', { text: 'Fine.' }, quick)
    expect(again.status).toBe(200)
    const after = await health(target())
    expect(after.active).toBe(0)
  })
})
