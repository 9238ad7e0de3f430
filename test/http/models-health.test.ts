import { describe, expect, it } from 'vitest'
import { createApp } from '../../src/app.ts'
import { AppError } from '../../src/core/errors.ts'
import type { Engine } from '../../src/engine/types.ts'
import { FakeEngine } from './fake-engine.ts'
import { makeApp } from './helpers.ts'

describe('GET /v1/models', () => {
  it('lists the one model in OpenAI shape', async () => {
    const res = await makeApp().app.request('/v1/models')
    expect(res.status).toBe(200)
    const body = await res.json()
    expect(body).toEqual({
      object: 'list',
      data: [
        {
          id: 'fake/qwen-test',
          object: 'model',
          created: expect.any(Number),
          owned_by: 'qwen-edge',
        },
      ],
    })
  })

  it('prefers the configured id, and retrieves by id', async () => {
    const { app } = makeApp(new FakeEngine(), { modelId: 'Qwen/Qwen2.5-0.5B-Instruct' })
    expect((await (await app.request('/v1/models')).json()).data[0].id).toBe(
      'Qwen/Qwen2.5-0.5B-Instruct',
    )
    const one = await app.request('/v1/models/Qwen/Qwen2.5-0.5B-Instruct')
    expect(one.status).toBe(200)
    expect((await one.json()).id).toBe('Qwen/Qwen2.5-0.5B-Instruct')
    const other = await app.request('/v1/models/gpt-4')
    expect(other.status).toBe(404)
    expect((await other.json()).error).toMatchObject({
      code: 'not_found',
      type: 'invalid_request_error',
    })
  })
})

describe('GET /health', () => {
  it('is 200 when ready, with model id, load time and scheduler counts', async () => {
    const engine = new FakeEngine()
    engine.queued = 2
    const { app } = makeApp(engine)
    await app.request('/v1/models') // loads the engine
    const res = await app.request('/health')
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({
      status: 'ok',
      model: 'fake/qwen-test',
      synthetic: true,
      load_ms: 42,
      active: 0,
      queued: 2,
    })
  })

  it('reports the queued tokens and what the isolate holds in memory', async () => {
    const engine = new FakeEngine()
    engine.stats = () => ({
      active: 1,
      queued: 3,
      queuedTokens: 120,
      memory: {
        wasmBytes: 5_000_000,
        kvSequences: 2,
        kvBytes: 1_572_864,
        turnCacheTokens: 64,
        turnCacheResident: 1,
      },
    })
    const app = createApp({
      getEngine: async () => engine,
      memory: () => ({ rssBytes: 300_000_000, heapUsedBytes: 40_000_000 }),
    })
    await app.request('/v1/models')
    const body = await (await app.request('/health')).json()
    expect(body).toMatchObject({ active: 1, queued: 3, queued_tokens: 120 })
    expect(body.memory).toEqual({
      wasm_bytes: 5_000_000,
      js_heap_bytes: 40_000_000,
      rss_bytes: 300_000_000,
      kv_sequences: 2,
      kv_bytes: 1_572_864,
      turn_cache_tokens: 64,
      turn_cache_resident: 1,
    })
  })

  it('probes stages only for a staged model, and only 1-100 round trips', async () => {
    const { app } = makeApp()
    await app.request('/v1/models') // loads the engine
    expect((await app.request('/health')).status).toBe(200) // the precondition: ready
    for (const q of ['2', '0', '101', 'x']) {
      const res = await app.request(`/health?probe=${q}`)
      expect(res.status).toBe(400)
      expect((await res.json()).error.code).toBe('bad_request')
    }
    const staged = new FakeEngine()
    let asked = 0
    Object.assign(staged, {
      probeStages: async (rounds: number) => {
        asked = rounds
        return [0.25, 1.5]
      },
      stats: () => ({
        ...new FakeEngine().stats(),
        stages: [
          { layers: [0, 2], status: 'ready', residentBytes: 10 },
          { rows: [0, 5], status: 'ready', residentBytes: 20 },
        ],
      }),
    })
    const stagedApp = makeApp(staged).app
    await stagedApp.request('/v1/models')
    const res = await stagedApp.request('/health?probe=3')
    expect(res.status).toBe(200)
    expect(asked).toBe(3)
    const body = await res.json()
    expect(body.stages).toEqual([
      { probeMs: 0.25, layers: [0, 2], status: 'ready', residentBytes: 10 },
      { probeMs: 1.5, rows: [0, 5], status: 'ready', residentBytes: 20 },
    ])
  })

  it('counts active generations', async () => {
    const engine = new FakeEngine({ hangAfter: 1 })
    const { app } = makeApp(engine)
    const controller = new AbortController()
    const res = await app.request('/v1/chat', {
      method: 'POST',
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }),
      signal: controller.signal,
    })
    expect((await (await app.request('/health')).json()).active).toBe(1)
    controller.abort()
    await res.body?.cancel()
  })

  it('is 503 while loading, starts an idle load, and 200 once loaded', async () => {
    let finish!: (e: Engine) => void
    let calls = 0
    const loading = new Promise<Engine>((resolve) => (finish = resolve))
    const app = createApp({
      getEngine: () => {
        calls++
        return loading
      },
    })
    const first = await app.request('/health')
    expect(first.status).toBe(503)
    expect(first.headers.get('retry-after')).toBe('5')
    expect(await first.json()).toMatchObject({ status: 'loading' })
    expect(calls).toBe(1) // the probe started the load
    finish(new FakeEngine())
    await loading
    await new Promise((r) => setTimeout(r, 0))
    const ready = await app.request('/health')
    expect(ready.status).toBe(200)
  })

  it('loadAtStart: the load starts with the app, and /health is 200 as soon as it is done', async () => {
    let calls = 0
    const engine = new FakeEngine()
    const make = (loadAtStart: boolean) =>
      createApp({
        getEngine: async () => {
          calls++
          return engine
        },
        loadAtStart,
      })
    const lazy = make(false)
    await new Promise((r) => setTimeout(r, 0))
    expect(calls).toBe(0) // the precondition: without it nothing loads before a request
    expect((await lazy.request('/health')).status).toBe(503) // and the first probe says loading
    calls = 0
    const eager = make(true)
    expect(calls).toBe(1)
    await new Promise((r) => setTimeout(r, 0))
    const res = await eager.request('/health')
    expect(res.status).toBe(200)
    expect(calls).toBe(2) // the load, then the probe's own call for the engine (memoised by the entry)
  })

  it('is 503 with the reason after a failed load, then 200 after a successful retry', async () => {
    let attempt = 0
    const app = createApp({
      getEngine: async () => {
        if (++attempt === 1) throw new AppError('model_unavailable', 'shard 3 failed its checksum')
        return new FakeEngine()
      },
    })
    const failed = await app.request('/v1/models')
    expect(failed.status).toBe(503)
    const health = await app.request('/health')
    expect(health.status).toBe(503)
    expect(await health.json()).toEqual({
      status: 'failed',
      model: null,
      error: 'shard 3 failed its checksum',
    })
    expect((await app.request('/v1/models')).status).toBe(200)
    expect((await app.request('/health')).status).toBe(200)
  })

  it('uses the load state the runtime entry reports', async () => {
    const app = createApp({
      getEngine: async () => new FakeEngine(),
      loadState: () => ({ state: 'failed', error: 'no model at MODEL=./nowhere' }),
    })
    const res = await app.request('/health')
    expect(res.status).toBe(503)
    expect((await res.json()).error).toBe('no model at MODEL=./nowhere')
  })
})

describe('GET /', () => {
  it('describes the service', async () => {
    const res = await makeApp().app.request('/')
    expect(res.status).toBe(200)
    expect((await res.json()).routes).toContain('POST /v1/chat/completions')
  })
})
