import { describe, expect, it } from 'vitest'
import { AppError } from '../../src/core/errors.ts'
import { DEFAULT_SCRIPT, DEFAULT_TEXT, FakeEngine } from './fake-engine.ts'
import { makeApp, post, readSSE } from './helpers.ts'

describe('POST /analyze', () => {
  it('answers the sentiment (正面/负面 for Chinese) and the reply', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    const res = await post(app, '/analyze', { text: '今天心情很好' })
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({
      sentiment: {
        label: '正面',
        score: 0.9,
        scores: { 正面: 0.9, 负面: expect.closeTo(0.1, 10) },
      },
      reply: DEFAULT_TEXT,
      finish_reason: 'stop',
      usage: { prompt_tokens: 10, completion_tokens: 6, total_tokens: 16 },
    })
    expect(engine.chatCalls[0].messages).toEqual([{ role: 'user', content: '今天心情很好' }])
    expect(engine.active).toBe(0)
  })

  it('passes labels and worked examples to the classification, not to the reply', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    const examples = [{ text: 'so good', label: 'up' }]
    const res = await post(app, '/analyze', { text: 'great', labels: ['up', 'down'], examples })
    expect(res.status).toBe(200)
    expect(engine.classifyCalls[0].options).toMatchObject({ labels: ['up', 'down'], examples })
    expect(engine.chatCalls[0].messages).toEqual([{ role: 'user', content: 'great' }])
  })

  it('streams with ?stream=1: the sentiment event first, then deltas, then done', async () => {
    const { app } = makeApp()
    const res = await post(app, '/analyze?stream=1', { text: '太糟糕了', max_tokens: 4 })
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const events = await readSSE(res)
    expect(events.map((e) => e.event)).toEqual([
      'sentiment',
      'delta',
      'delta',
      'delta',
      'delta',
      'done',
    ])
    expect(JSON.parse(events[0].data)).toMatchObject({ label: '负面' })
    expect(events.slice(1, 5).map((e) => JSON.parse(e.data).text)).toEqual(
      DEFAULT_SCRIPT.slice(0, 4),
    )
    expect(JSON.parse(events[5].data).finish_reason).toBe('length')
  })

  it('classifies before queueing the reply, so a classification error is plain JSON', async () => {
    const engine = new FakeEngine({
      classifyError: new AppError('invalid_labels', 'label "x" must be 1 to 16 tokens long'),
    })
    const res = await post(makeApp(engine).app, '/analyze?stream=1', {
      text: 'hi',
      labels: ['x', 'y'],
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toEqual({
      error: { code: 'invalid_labels', message: 'label "x" must be 1 to 16 tokens long' },
    })
    expect(engine.chatCalls).toHaveLength(0)
  })

  it('rejects a bad stream query', async () => {
    const res = await post(makeApp().app, '/analyze?stream=maybe', { text: 'hi' })
    expect(res.status).toBe(400)
    expect((await res.json()).error.message).toMatch(/stream/)
  })
})
