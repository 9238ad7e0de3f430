import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { AppError } from '../../src/core/errors.ts'
import { DEFAULT_SCRIPT, DEFAULT_TEXT, FakeEngine } from './fake-engine.ts'
import { makeApp, post, readSSE, startServer } from './helpers.ts'

const hello = { model: 'anything', messages: [{ role: 'user', content: '你好' }] }

describe('POST /v1/chat/completions, streamed', () => {
  it('sends chat.completion.chunk frames, the finish reason, then data: [DONE]', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/chat/completions', { ...hello, stream: true })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
    expect(res.headers.get('x-accel-buffering')).toBe('no')
    const events = await readSSE(res)
    expect(events.at(-1)!.data).toBe('[DONE]')
    expect(events.every((e) => e.event === undefined)).toBe(true) // OpenAI frames are unnamed
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data))
    const ids = new Set(chunks.map((c) => c.id))
    expect(ids.size).toBe(1)
    expect([...ids][0]).toMatch(/^chatcmpl-/)
    for (const c of chunks) {
      expect(c).toMatchObject({ object: 'chat.completion.chunk', model: 'fake/qwen-test' })
      expect(Number.isInteger(c.created)).toBe(true)
      expect(c).not.toHaveProperty('usage')
    }
    expect(chunks[0].choices[0]).toEqual({
      index: 0,
      delta: { role: 'assistant', content: '' },
      logprobs: null,
      finish_reason: null,
    })
    const content = chunks.slice(1, -1).map((c) => c.choices[0].delta.content)
    expect(content).toEqual(DEFAULT_SCRIPT)
    expect(chunks.at(-1).choices[0]).toEqual({
      index: 0,
      delta: {},
      logprobs: null,
      finish_reason: 'stop',
    })
  })

  it('adds usage: null to each chunk and a final usage chunk with include_usage', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/chat/completions', {
      ...hello,
      stream: true,
      max_tokens: 2,
      stream_options: { include_usage: true },
    })
    const events = await readSSE(res)
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data))
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true)
    expect(chunks.at(-2).choices[0].finish_reason).toBe('length')
    expect(chunks.at(-1)).toMatchObject({
      choices: [],
      usage: { prompt_tokens: 6, completion_tokens: 2, total_tokens: 8 },
    })
    expect(events.at(-1)!.data).toBe('[DONE]')
  })

  it('sends an OpenAI error frame (and no [DONE]) when the engine fails mid-stream', async () => {
    const log = vi.spyOn(console, 'error').mockImplementation(() => {})
    const { app } = makeApp(new FakeEngine({ failAfter: 1 }))
    const events = await readSSE(
      await post(app, '/v1/chat/completions', { ...hello, stream: true }),
    )
    expect(JSON.parse(events.at(-1)!.data)).toEqual({
      error: {
        message: 'Internal server error',
        type: 'server_error',
        param: null,
        code: 'internal',
      },
    })
    expect(events.some((e) => e.data === '[DONE]')).toBe(false)
    expect(log).toHaveBeenCalled()
    log.mockRestore()
  })
})

describe('POST /v1/chat/completions, not streamed', () => {
  it('answers one chat.completion (stream defaults to false, as in OpenAI)', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/chat/completions', hello)
    expect(res.status).toBe(200)
    const body = await res.json()
    expect(body).toMatchObject({
      object: 'chat.completion',
      model: 'fake/qwen-test',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: DEFAULT_TEXT },
          finish_reason: 'stop',
        },
      ],
      usage: { prompt_tokens: 6, completion_tokens: 6, total_tokens: 12 },
    })
    expect(body.id).toMatch(/^chatcmpl-/)
  })

  it('accepts max_completion_tokens, developer messages and text parts; ignores unknown fields', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    const res = await post(app, '/v1/chat/completions', {
      model: 'gpt-4o',
      user: 'u1',
      presence_penalty: 0.5,
      n: 1,
      stop: null,
      max_completion_tokens: 3,
      messages: [
        { role: 'developer', content: 'Be brief.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: '你' },
            { type: 'text', text: '好' },
          ],
        },
      ],
    })
    expect(res.status).toBe(200)
    expect((await res.json()).choices[0].finish_reason).toBe('length')
    expect(engine.chatCalls[0].messages).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: '你好' },
    ])
    expect(engine.chatCalls[0].options.maxNewTokens).toBe(3)
  })

  it('answers errors in OpenAI shape with param', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/chat/completions', { ...hello, n: 2 })
    expect(res.status).toBe(400)
    expect(await res.json()).toEqual({
      error: {
        message: expect.stringContaining('n must be 1'),
        type: 'invalid_request_error',
        param: 'n',
        code: 'bad_request',
      },
    })
  })

  it('answers 429 in OpenAI shape with Retry-After', async () => {
    const engine = new FakeEngine({
      chatError: new AppError('queue_full', 'busy', { details: { retryAfterSeconds: 7 } }),
    })
    const res = await post(makeApp(engine).app, '/v1/chat/completions', hello)
    expect(res.status).toBe(429)
    expect(res.headers.get('retry-after')).toBe('7')
    expect((await res.json()).error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full' })
  })
})

describe('the official openai client against a real server', () => {
  let server: Awaited<ReturnType<typeof startServer>>
  let client: OpenAI
  const engine = new FakeEngine({ delayMs: 1 })

  beforeAll(async () => {
    server = await startServer(makeApp(engine, { apiKey: 'sk-test-key' }).app)
    client = new OpenAI({
      apiKey: 'sk-test-key',
      baseURL: `${server.base}/v1`,
      maxRetries: 0,
      timeout: 10_000,
    })
  })
  afterAll(() => server.close())

  it('streams with chat.completions.create({ stream: true })', async () => {
    const stream = await client.chat.completions.create({
      model: 'qwen',
      messages: [{ role: 'user', content: '你好' }],
      stream: true,
      stream_options: { include_usage: true },
    })
    let text = ''
    let finish: string | null = null
    let usage
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? ''
      finish = chunk.choices[0]?.finish_reason ?? finish
      usage = chunk.usage ?? usage
    }
    expect(text).toBe(DEFAULT_TEXT)
    expect(finish).toBe('stop')
    expect(usage).toEqual({ prompt_tokens: 6, completion_tokens: 6, total_tokens: 12 })
  })

  it('completes without streaming', async () => {
    const completion = await client.chat.completions.create({
      model: 'qwen',
      messages: [{ role: 'user', content: '你好' }],
      max_tokens: 3,
    })
    expect(completion.choices[0].message.content).toBe(DEFAULT_SCRIPT.slice(0, 3).join(''))
    expect(completion.choices[0].finish_reason).toBe('length')
  })

  it('returns logprobs and top_logprobs, streamed and not', async () => {
    const messages = [{ role: 'user' as const, content: '你好' }]
    const whole = await client.chat.completions.create({
      model: 'qwen',
      messages,
      logprobs: true,
      top_logprobs: 2,
    })
    const content = whole.choices[0].logprobs!.content!
    expect(content.map((e) => e.token)).toEqual(DEFAULT_SCRIPT)
    expect(content[1]).toEqual({
      token: ', ',
      logprob: -0.5,
      bytes: [44, 32],
      top_logprobs: [
        { token: ', ', logprob: -0.5, bytes: [44, 32] },
        { token: 'alt1', logprob: -1.5, bytes: [97, 108, 116, 49] },
      ],
    })
    expect(Buffer.from(content.flatMap((e) => e.bytes!)).toString()).toBe(DEFAULT_TEXT)

    const stream = await client.chat.completions.create({
      model: 'qwen',
      messages,
      stream: true,
      logprobs: true,
    })
    const streamed = []
    for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []))
    expect(streamed.map((e) => e.token)).toEqual(DEFAULT_SCRIPT)
    expect(streamed.every((e) => e.top_logprobs.length === 0)).toBe(true)

    const plain = await client.chat.completions.create({ model: 'qwen', messages, max_tokens: 1 })
    expect(plain.choices[0].logprobs).toBeNull()
    const bad = await client.chat.completions
      .create({ model: 'qwen', messages, top_logprobs: 3 })
      .catch((e: unknown) => e)
    expect(bad).toMatchObject({ status: 400, param: 'top_logprobs' })
    const many = await client.chat.completions
      .create({ model: 'qwen', messages, logprobs: true, top_logprobs: 21 })
      .catch((e: unknown) => e)
    expect(many).toMatchObject({ status: 400, param: 'top_logprobs' })
  })

  it('lists the model', async () => {
    const page = await client.models.list()
    expect(page.data.map((m) => m.id)).toEqual(['fake/qwen-test'])
  })

  it('raises our errors as typed APIErrors', async () => {
    const err = await client.chat.completions
      .create({ model: 'qwen', messages: [{ role: 'user', content: 'hi' }], temperature: 3 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(OpenAI.BadRequestError)
    expect(err).toMatchObject({ status: 400, code: 'bad_request', param: 'temperature' })

    const wrongKey = new OpenAI({ apiKey: 'nope', baseURL: client.baseURL, maxRetries: 0 })
    const denied = await wrongKey.models.list().catch((e: unknown) => e)
    expect(denied).toBeInstanceOf(OpenAI.AuthenticationError)
  })

  it('left the engine with nothing active', () => {
    expect(engine.active).toBe(0)
  })
})
