/**
 * A client that leaves stops its generation: the engine's signal aborts and the generation's
 * place is given back, whether the client cancels the response body, aborts its request, or
 * drops the TCP connection of a real server.
 */
import { createParser } from 'eventsource-parser'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { FakeEngine } from './fake-engine.ts'
import { makeApp, post, readSSE, readSSEUntil, startServer } from './helpers.ts'

const user = [{ role: 'user', content: 'tell me a long story' }]

describe('client disconnect', () => {
  it.each([
    ['/v1/chat', { messages: user }, 'delta'],
    ['/v1/chat/completions', { messages: user, stream: true }, undefined],
    ['/analyze?stream=1', { text: 'hi' }, 'delta'],
  ])(
    '%s: cancelling the body aborts the engine signal and frees the place',
    async (path, body, event) => {
      const engine = new FakeEngine({ hangAfter: 2 })
      const { app } = makeApp(engine)
      const res = await post(app, path, body)
      const seen = await readSSEUntil(
        res,
        (e) => e.event === event && !e.data.includes('"role"'),
        20,
      )
      expect(seen.length).toBeGreaterThan(0)
      await vi.waitFor(() => expect(engine.lastSignal?.aborted).toBe(true))
      await vi.waitFor(() => expect(engine.active).toBe(0))
    },
  )

  it('stops a generation that ignores its signal by closing the iterator', async () => {
    const log = vi.spyOn(console, 'error')
    const engine = new FakeEngine({ endless: true, ignoreSignal: true, delayMs: 1 })
    const { app } = makeApp(engine)
    const res = await post(app, '/v1/chat', { messages: user, max_tokens: 2048 })
    await readSSEUntil(res, (_, all) => all.length >= 3)
    await vi.waitFor(() => expect(engine.active).toBe(0))
    expect(engine.iteratorsClosed).toBe(1)
    const emitted = engine.deltasEmitted
    await new Promise((r) => setTimeout(r, 30))
    expect(engine.deltasEmitted).toBe(emitted) // nothing is generated for nobody
    expect(engine.lastSignal?.aborted).toBe(true)
    expect(log).not.toHaveBeenCalled() // a client leaving is normal, not an error
    log.mockRestore()
  })

  it('a client that leaves before the first frame still frees the place', async () => {
    const engine = new FakeEngine({ endless: true, ignoreSignal: true, delayMs: 1 })
    const { app } = makeApp(engine)
    const res = await post(app, '/analyze?stream=1', { text: 'hi', max_tokens: 2048 })
    await res.body!.cancel()
    await vi.waitFor(() => expect(engine.active).toBe(0))
    expect(engine.lastSignal?.aborted).toBe(true)
  })

  it('aborting the request signal aborts the engine signal (streamed)', async () => {
    const engine = new FakeEngine({ hangAfter: 1 })
    const { app } = makeApp(engine)
    const controller = new AbortController()
    const res = await post(app, '/v1/chat', { messages: user }, {}, { signal: controller.signal })
    expect(engine.lastSignal?.aborted).toBe(false)
    controller.abort()
    expect(engine.lastSignal?.aborted).toBe(true)
    const events = await readSSE(res) // the stream itself still ends cleanly
    expect(JSON.parse(events.at(-1)!.data).finish_reason).toBe('cancelled')
    expect(engine.active).toBe(0)
  })

  it('aborting the request signal aborts the engine signal (not streamed)', async () => {
    const engine = new FakeEngine({ hangAfter: 1 })
    const { app } = makeApp(engine)
    const controller = new AbortController()
    const pending = post(
      app,
      '/v1/chat/completions',
      { messages: user },
      {},
      { signal: controller.signal },
    )
    await vi.waitFor(() => expect(engine.chatCalls).toHaveLength(1))
    controller.abort()
    await pending.catch(() => undefined)
    await vi.waitFor(() => expect(engine.active).toBe(0))
    expect(engine.lastSignal?.aborted).toBe(true)
  })

  it('does not abort a generation that finished normally', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    await readSSE(await post(app, '/v1/chat', { messages: user }))
    expect(engine.lastSignal?.aborted).toBe(false)
  })
})

describe('client disconnect over a real socket', () => {
  let server: Awaited<ReturnType<typeof startServer>>
  let base: string
  const engine = new FakeEngine({ endless: true, delayMs: 5 })

  beforeAll(async () => {
    server = await startServer(makeApp(engine).app)
    base = server.base
  })
  afterAll(() => server.close())

  async function activeCount(): Promise<number> {
    return (await (await fetch(`${base}/health`)).json()).active
  }

  it('stops generating when the client aborts, as /health shows', async () => {
    const controller = new AbortController()
    const res = await fetch(`${base}/v1/chat`, {
      method: 'POST',
      body: JSON.stringify({ messages: user, max_tokens: 2048 }),
      signal: controller.signal,
    })
    let deltas = 0
    const parser = createParser({ onEvent: (e) => void (e.event === 'delta' && deltas++) })
    const reader = res.body!.getReader()
    const decoder = new TextDecoder()
    while (deltas < 3) parser.feed(decoder.decode((await reader.read()).value, { stream: true }))
    expect(await activeCount()).toBe(1)
    controller.abort()
    await vi.waitFor(async () => expect(await activeCount()).toBe(0), { timeout: 3000 })
    expect(engine.lastSignal?.aborted).toBe(true)
  })

  it('runs concurrent streams to completion', async () => {
    const finite = new FakeEngine({ delayMs: 2, maxActive: 8 })
    const other = await startServer(makeApp(finite).app)
    try {
      const results = await Promise.all(
        Array.from({ length: 6 }, async (_, i) => {
          const res = await fetch(`${other.base}/v1/chat`, {
            method: 'POST',
            body: JSON.stringify({ messages: [{ role: 'user', content: `n${i}` }] }),
          })
          return readSSE(res)
        }),
      )
      for (const events of results) {
        expect(events.filter((e) => e.event === 'delta')).toHaveLength(6)
        expect(events.at(-1)?.event).toBe('done')
      }
      expect(finite.active).toBe(0)
      expect(finite.chatCalls).toHaveLength(6)
    } finally {
      await other.close()
    }
  })
})
