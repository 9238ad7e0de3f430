/** Size limits, queue and context limits, load failures, and errors nobody planned for. */
import { describe, expect, it, vi } from 'vitest'
import { createApp } from '../../src/app.ts'
import { AppError } from '../../src/core/errors.ts'
import { FakeEngine } from './fake-engine.ts'
import { makeApp, post, readSSE } from './helpers.ts'

const user = [{ role: 'user', content: 'hi' }]

function chunkedBody(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder()
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(encoder.encode(c))
      controller.close()
    },
  })
}

describe('413 payload too large', () => {
  const { app, engine } = makeApp(new FakeEngine(), { maxBodyBytes: 1000 })

  it('refuses a declared Content-Length over the limit before reading', async () => {
    const res = await app.request('/v1/sentiment', {
      method: 'POST',
      headers: { 'content-length': '5000000' },
      body: '{}',
    })
    expect(res.status).toBe(413)
    expect(await res.json()).toEqual({
      error: { code: 'payload_too_large', message: 'Request body is larger than 1000 bytes' },
    })
  })

  it('refuses a chunked body (no Content-Length) that grows over the limit', async () => {
    const body = chunkedBody(['{"text": "', 'x'.repeat(600), 'y'.repeat(600), '"}'])
    const req = new Request('http://localhost/v1/sentiment', {
      method: 'POST',
      body,
      duplex: 'half',
    } as RequestInit)
    expect(req.headers.get('content-length')).toBeNull()
    const res = await app.request(req)
    expect(res.status).toBe(413)
    expect((await res.json()).error.code).toBe('payload_too_large')
  })

  it('refuses a body larger than its (lying) Content-Length says', async () => {
    const res = await app.request('/v1/sentiment', {
      method: 'POST',
      headers: { 'content-length': '20' },
      body: JSON.stringify({ text: 'z'.repeat(2000) }),
    })
    expect(res.status).toBe(413)
  })

  it('accepts a body at the limit, counted in bytes not characters', async () => {
    // exactly 1000 bytes (catches an off-by-one either way), mostly 3-byte characters
    const text = '好'.repeat(329) + 'ab'
    const bytes = (t: string) => new TextEncoder().encode(JSON.stringify({ text: t })).byteLength
    expect(bytes(text)).toBe(1000)
    expect(JSON.stringify({ text }).length).toBeLessThan(400)
    const ok = await post(app, '/v1/sentiment', { text })
    expect(ok.status).toBe(200)
    expect(bytes(text + 'c')).toBe(1001)
    const over = await post(app, '/v1/sentiment', { text: text + 'c' })
    expect(over.status).toBe(413)
    expect(engine.classifyCalls).toHaveLength(1)
  })
})

describe('engine refusals', () => {
  it('429 with Retry-After when the queue is full, and the next request after a slot frees', async () => {
    const engine = new FakeEngine({ maxActive: 1, hangAfter: 1 })
    const { app } = makeApp(engine)
    const controller = new AbortController()
    const first = await post(app, '/v1/chat', { messages: user }, {}, { signal: controller.signal })
    expect(first.status).toBe(200)
    const second = await post(app, '/v1/chat', { messages: user })
    expect(second.status).toBe(429)
    expect(second.headers.get('retry-after')).toBe('3')
    expect(await second.json()).toEqual({
      error: { code: 'queue_full', message: 'The server is busy: too many generations are queued' },
    })
    controller.abort()
    await first.body!.cancel()
    await vi.waitFor(() => expect(engine.active).toBe(0))
    const third = await post(app, '/v1/chat', { messages: user, stream: false, max_tokens: 1 })
    expect(third.status).toBe(200)
  })

  it('a default Retry-After when the engine names none', async () => {
    const engine = new FakeEngine({ chatError: new AppError('queue_full', 'busy') })
    const res = await post(makeApp(engine).app, '/analyze', { text: 'hi' })
    expect(res.status).toBe(429)
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0)
  })

  it('400 context_length_exceeded with the counts, as JSON even when streaming was asked', async () => {
    const engine = new FakeEngine({ contextLength: 50 })
    const res = await post(makeApp(engine).app, '/v1/chat', {
      messages: [{ role: 'user', content: 'x'.repeat(40) }],
      max_tokens: 20,
      stream: true,
    })
    expect(res.status).toBe(400)
    expect(res.headers.get('content-type')).toMatch(/^application\/json/)
    const { error } = await res.json()
    expect(error.code).toBe('context_length_exceeded')
    expect(error.message).toContain('44 tokens')
    expect(error.message).toContain('max_tokens is 20')
    expect(error.message).toContain('context of 50')
  })
})

describe('model loading', () => {
  it('503 with Retry-After when the load fails, then success on the next call', async () => {
    let attempts = 0
    const engine = new FakeEngine()
    const app = createApp({
      getEngine: async () => {
        if (++attempts === 1) throw new AppError('model_unavailable', 'Model failed to load')
        return engine
      },
    })
    const failed = await post(app, '/v1/chat', { messages: user })
    expect(failed.status).toBe(503)
    expect(failed.headers.get('retry-after')).toBe('10')
    expect(failed.headers.get('content-type')).toMatch(/^application\/json/)
    expect(await failed.json()).toEqual({
      error: { code: 'model_unavailable', message: 'Model failed to load' },
    })
    const ok = await post(app, '/v1/chat', { messages: user })
    expect(ok.status).toBe(200)
    expect((await readSSE(ok)).at(-1)?.event).toBe('done')
  })

  it('503 model_loading from the OpenAI route in OpenAI shape', async () => {
    const app = createApp({
      getEngine: async () => {
        throw new AppError('model_loading', 'The model is loading', {
          details: { retryAfterSeconds: 4 },
        })
      },
    })
    const res = await post(app, '/v1/chat/completions', { messages: user, stream: true })
    expect(res.status).toBe(503)
    expect(res.headers.get('retry-after')).toBe('4')
    expect(await res.json()).toEqual({
      error: {
        message: 'The model is loading',
        type: 'server_error',
        param: null,
        code: 'model_loading',
      },
    })
  })

  it('hides a load failure that is not an AppError behind model_unavailable, and logs it', async () => {
    const log = vi.spyOn(console, 'error').mockImplementation(() => {})
    const app = createApp({
      getEngine: async () => {
        throw new Error('ENOENT: /secret/path/model.onnx')
      },
    })
    const res = await post(app, '/v1/sentiment', { text: 'hi' })
    expect(res.status).toBe(503)
    const text = await res.text()
    expect(text).not.toContain('secret')
    expect(JSON.parse(text).error.code).toBe('model_unavailable')
    expect(log).toHaveBeenCalled()
    log.mockRestore()
  })
})

describe('unplanned errors', () => {
  it('become a generic, logged 500 without details', async () => {
    const log = vi.spyOn(console, 'error').mockImplementation(() => {})
    const engine = new FakeEngine({
      classifyError: new TypeError('x is undefined at /srv/app.js:1'),
    })
    const res = await post(makeApp(engine).app, '/v1/sentiment', { text: 'hi' })
    expect(res.status).toBe(500)
    expect(await res.json()).toEqual({
      error: { code: 'internal', message: 'Internal server error' },
    })
    expect(log).toHaveBeenCalledTimes(1)
    log.mockRestore()
  })
})
