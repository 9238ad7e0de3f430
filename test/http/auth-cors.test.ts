import { describe, expect, it } from 'vitest'
import { createApp } from '../../src/app.ts'
import { secretsEqual } from '../../src/http/auth.ts'
import { FakeEngine } from './fake-engine.ts'
import { makeApp, post, readSSE } from './helpers.ts'

const KEY = 'sk-qwen-edge-secret'
const chat = { messages: [{ role: 'user', content: 'hi' }], stream: false }

describe('API key', () => {
  const { app, engine } = makeApp(new FakeEngine(), { apiKey: KEY })

  it.each([
    ['POST', '/v1/chat'],
    ['POST', '/v1/sentiment'],
    ['POST', '/analyze'],
    ['POST', '/v1/chat/completions'],
    ['GET', '/v1/models'],
    ['GET', '/no-such-route'],
  ])('%s %s without a key is 401 JSON', async (method, path) => {
    const res = await app.request(path, { method, body: method === 'POST' ? '{}' : undefined })
    expect(res.status).toBe(401)
    expect(res.headers.get('www-authenticate')).toBe('Bearer')
    const body = await res.json()
    expect(body.error.code).toBe('unauthorized')
  })

  it('refuses a wrong key, a key with a different scheme, and a prefix of the key', async () => {
    for (const authorization of [
      'Bearer sk-wrong',
      `Basic ${KEY}`,
      `Bearer ${KEY.slice(0, -1)}`,
      `Bearer ${KEY}x`,
      KEY,
    ]) {
      const res = await post(app, '/v1/chat', chat, { authorization })
      expect(res.status, authorization).toBe(401)
    }
    expect(engine.chatCalls).toHaveLength(0)
  })

  it('accepts the right key (scheme case-insensitive)', async () => {
    expect((await post(app, '/v1/chat', chat, { authorization: `Bearer ${KEY}` })).status).toBe(200)
    expect((await post(app, '/v1/chat', chat, { authorization: `bearer ${KEY}` })).status).toBe(200)
    const stream = await post(
      app,
      '/v1/chat',
      { ...chat, stream: true },
      { authorization: `Bearer ${KEY}` },
    )
    expect((await readSSE(stream)).at(-1)?.event).toBe('done')
  })

  it('leaves GET /health and GET / open', async () => {
    expect((await app.request('/health')).status).not.toBe(401)
    expect((await app.request('/')).status).toBe(200)
  })

  it('answers 401 in OpenAI shape on the OpenAI routes', async () => {
    const res = await post(app, '/v1/chat/completions', chat)
    expect(await res.json()).toEqual({
      error: {
        message: expect.any(String),
        type: 'invalid_request_error',
        param: null,
        code: 'unauthorized',
      },
    })
  })

  it('is not required when no key is configured', async () => {
    expect((await post(makeApp().app, '/v1/chat', chat)).status).toBe(200)
  })

  it('compares secrets exactly', async () => {
    expect(await secretsEqual(KEY, KEY)).toBe(true)
    expect(await secretsEqual(KEY, `${KEY} `)).toBe(false)
    expect(await secretsEqual('', KEY)).toBe(false)
  })
})

describe('CORS', () => {
  it('answers a preflight without a key, naming the allowed origin, methods and headers', async () => {
    const { app } = makeApp(new FakeEngine(), { apiKey: KEY, corsOrigins: ['https://app.example'] })
    const res = await app.request('/v1/chat', {
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    })
    expect(res.status).toBe(204)
    expect(res.headers.get('access-control-allow-origin')).toBe('https://app.example')
    expect(res.headers.get('access-control-allow-methods')).toContain('POST')
    expect(res.headers.get('access-control-allow-headers')?.toLowerCase()).toContain(
      'authorization',
    )
  })

  it('does not allow other origins', async () => {
    const { app } = makeApp(new FakeEngine(), { corsOrigins: ['https://app.example'] })
    const res = await post(app, '/v1/chat', chat, { origin: 'https://evil.example' })
    expect(res.headers.get('access-control-allow-origin')).toBeNull()
  })

  it('puts CORS headers on answers, errors and streams alike', async () => {
    const { app } = makeApp(new FakeEngine(), { apiKey: KEY, corsOrigins: '*' })
    const denied = await post(app, '/v1/chat', chat, { origin: 'https://a.example' })
    expect(denied.status).toBe(401)
    expect(denied.headers.get('access-control-allow-origin')).toBe('*')
    expect(denied.headers.get('access-control-expose-headers')).toContain('Retry-After')
    const streamed = await post(
      app,
      '/v1/chat',
      { ...chat, stream: true },
      { origin: 'https://a.example', authorization: `Bearer ${KEY}` },
    )
    expect(streamed.headers.get('access-control-allow-origin')).toBe('*')
    await readSSE(streamed)
  })

  it('is off unless configured', async () => {
    const res = await post(makeApp().app, '/v1/chat', chat, { origin: 'https://a.example' })
    expect(res.headers.get('access-control-allow-origin')).toBeNull()
  })
})

describe('settings per request (Workers bindings)', () => {
  type Bindings = { API_KEY?: string; CORS_ORIGINS?: string }
  const engine = new FakeEngine()
  const app = createApp<{ Bindings: Bindings }>({
    getEngine: async () => engine,
    config: (c) => ({ apiKey: c.env.API_KEY, corsOrigins: c.env.CORS_ORIGINS?.split(',') }),
  })
  const request = (env: Bindings, headers: Record<string, string> = {}) =>
    app.request(
      '/v1/sentiment',
      { method: 'POST', body: JSON.stringify({ text: 'good' }), headers },
      env,
    )

  it('reads the key and origins from c.env', async () => {
    expect((await request({ API_KEY: 'from-env' })).status).toBe(401)
    expect(
      (await request({ API_KEY: 'from-env' }, { authorization: 'Bearer from-env' })).status,
    ).toBe(200)
    expect((await request({})).status).toBe(200)
    const cors = await request(
      { CORS_ORIGINS: 'https://a.example' },
      { origin: 'https://a.example' },
    )
    expect(cors.headers.get('access-control-allow-origin')).toBe('https://a.example')
  })
})
