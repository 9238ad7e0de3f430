import { describe, expect, it, vi } from 'vitest'
import { DEFAULT_SCRIPT, DEFAULT_TEXT, FakeEngine } from './fake-engine.ts'
import { makeApp, post, readSSE } from './helpers.ts'

const hello = { messages: [{ role: 'user', content: '你好' }] }

describe('POST /v1/chat, streamed (the default)', () => {
  it('sends one delta event per text delta, then done with finish_reason and usage', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/chat', hello)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
    expect(res.headers.get('cache-control')).toBe('no-cache')
    expect(res.headers.get('x-accel-buffering')).toBe('no')
    const events = await readSSE(res)
    const deltas = events.filter((e) => e.event === 'delta').map((e) => JSON.parse(e.data).text)
    expect(deltas).toEqual(DEFAULT_SCRIPT)
    expect(deltas.join('')).toBe(DEFAULT_TEXT) // 你好，世界 reassembled across deltas
    expect(events.at(-1)).toMatchObject({ event: 'done' })
    expect(JSON.parse(events.at(-1)!.data)).toEqual({
      finish_reason: 'stop',
      usage: { prompt_tokens: 6, completion_tokens: 6, total_tokens: 12 },
    })
    expect(events.map((e) => e.event)).toEqual([...DEFAULT_SCRIPT.map(() => 'delta'), 'done'])
  })

  it('says length when max_tokens cuts the reply', async () => {
    const { app } = makeApp()
    const events = await readSSE(await post(app, '/v1/chat', { ...hello, max_tokens: 2 }))
    expect(events.filter((e) => e.event === 'delta')).toHaveLength(2)
    expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('length')
  })

  it('maps the sampling fields to the engine options', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    await readSSE(
      await post(app, '/v1/chat', {
        ...hello,
        max_tokens: 7,
        temperature: 0,
        top_p: 0.5,
        top_k: 3,
        repetition_penalty: 1.2,
        seed: 42,
        stop: '\n\n',
      }),
    )
    const { options } = engine.chatCalls[0]
    expect(options).toMatchObject({
      maxNewTokens: 7,
      temperature: 0,
      topP: 0.5,
      topK: 3,
      repetitionPenalty: 1.2,
      seed: 42,
      stop: ['\n\n'],
    })
    expect(options.signal).toBeInstanceOf(AbortSignal)
  })

  it('uses the configured max_tokens default, and leaves it to the engine when unset', async () => {
    const a = new FakeEngine()
    await readSSE(await post(makeApp(a, { maxTokensDefault: 99 }).app, '/v1/chat', hello))
    expect(a.chatCalls[0].options.maxNewTokens).toBe(99)
    const b = new FakeEngine()
    await readSSE(await post(makeApp(b).app, '/v1/chat', hello))
    expect(b.chatCalls[0].options).not.toHaveProperty('maxNewTokens')
  })

  it('sends an error event when the engine fails after the stream opened, without details', async () => {
    const log = vi.spyOn(console, 'error').mockImplementation(() => {})
    const engine = new FakeEngine({ failAfter: 2 })
    const { app } = makeApp(engine)
    const res = await post(app, '/v1/chat', hello)
    expect(res.status).toBe(200)
    const events = await readSSE(res)
    expect(events.map((e) => e.event)).toEqual(['delta', 'delta', 'error'])
    expect(JSON.parse(events[2].data)).toEqual({
      error: { code: 'internal', message: 'Internal server error' },
    })
    expect(engine.active).toBe(0)
    expect(engine.lastSignal?.aborted).toBe(true) // whatever still runs for it is told to stop
    expect(String(log.mock.calls[0])).toContain('secret detail') // logged, not sent
    log.mockRestore()
  })

  it('releases the engine place when the reply ends', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    await readSSE(await post(app, '/v1/chat', hello))
    expect(engine.active).toBe(0)
  })
})

describe('POST /v1/chat, stream: false', () => {
  it('answers one JSON with the whole reply', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/chat', { ...hello, stream: false })
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({
      model: 'fake/qwen-test',
      message: { role: 'assistant', content: DEFAULT_TEXT },
      finish_reason: 'stop',
      usage: { prompt_tokens: 6, completion_tokens: 6, total_tokens: 12 },
    })
  })

  it('reports length and the configured model id', async () => {
    const { app } = makeApp(new FakeEngine(), { modelId: 'qwen2.5-0.5b' })
    const res = await post(app, '/v1/chat', { ...hello, stream: false, max_tokens: 3 })
    const body = await res.json()
    expect(body).toMatchObject({ model: 'qwen2.5-0.5b', finish_reason: 'length' })
    expect(body.message.content).toBe(DEFAULT_SCRIPT.slice(0, 3).join(''))
  })

  it('turns an engine crash into a generic 500 JSON error', async () => {
    const log = vi.spyOn(console, 'error').mockImplementation(() => {})
    const engine = new FakeEngine({ failAfter: 1 })
    const res = await post(makeApp(engine).app, '/v1/chat', { ...hello, stream: false })
    expect(res.status).toBe(500)
    expect(await res.json()).toEqual({
      error: { code: 'internal', message: 'Internal server error' },
    })
    expect(engine.active).toBe(0)
    expect(log).toHaveBeenCalledTimes(1)
    log.mockRestore()
  })
})
