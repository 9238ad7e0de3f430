import { describe, expect, it } from 'vitest'
import { FakeEngine } from './fake-engine.ts'
import { makeApp, post } from './helpers.ts'

describe('POST /v1/sentiment', () => {
  it('classifies one text with the default labels for its language', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/sentiment', { text: '这家餐厅的菜很好吃，服务也好' })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/application\/json/)
    expect(await res.json()).toEqual({
      label: '正面',
      score: 0.9,
      scores: { 正面: 0.9, 负面: expect.closeTo(0.1, 10) },
    })
  })

  it('classifies English text as positive/negative', async () => {
    const { app } = makeApp()
    const res = await post(app, '/v1/sentiment', { text: 'The service was slow and cold.' })
    expect(await res.json()).toMatchObject({ label: 'negative', score: 0.8 })
  })

  it('passes caller labels and the client signal to the engine', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    const res = await post(app, '/v1/sentiment', {
      text: 'I love it',
      labels: ['joy', 'anger', 'fear'],
    })
    expect(await res.json()).toMatchObject({ label: 'joy', scores: { joy: 0.9 } })
    expect(engine.classifyCalls[0].options.labels).toEqual(['joy', 'anger', 'fear'])
    expect(engine.classifyCalls[0].options.signal).toBeInstanceOf(AbortSignal)
  })

  it('passes worked examples to the engine, for every text of a batch', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    const examples = [
      { text: 'We won!', label: 'joy' },
      { text: 'Late again.', label: 'anger' },
    ]
    const res = await post(app, '/v1/sentiment', {
      texts: ['a', 'b'],
      labels: ['joy', 'anger'],
      examples,
    })
    expect(res.status).toBe(200)
    expect(engine.classifyCalls.map((c) => c.options.examples)).toEqual([examples, examples])
    const bad = await post(app, '/v1/sentiment', { text: 'a', examples: [{ text: 'b' }] })
    expect(bad.status).toBe(400)
    expect((await bad.json()).error).toMatchObject({ code: 'bad_request' })
  })

  it('classifies a batch in order', async () => {
    const engine = new FakeEngine()
    const { app } = makeApp(engine)
    const res = await post(app, '/v1/sentiment', { texts: ['great film', '太差了', 'awful'] })
    const body = await res.json()
    expect(body.results.map((r: { label: string }) => r.label)).toEqual([
      'positive',
      '负面',
      'negative',
    ])
    expect(engine.classifyCalls.map((c) => c.text)).toEqual(['great film', '太差了', 'awful'])
  })

  it('answers only the documented fields', async () => {
    const engine = new FakeEngine()
    engine.classify = async () =>
      ({ label: 'a', score: 1, scores: { a: 1, b: 0 }, internalLogits: [1, 2] }) as never
    const { app } = makeApp(engine)
    const res = await post(app, '/v1/sentiment', { text: 'x' })
    expect(Object.keys(await res.json()).sort()).toEqual(['label', 'score', 'scores'])
  })
})
