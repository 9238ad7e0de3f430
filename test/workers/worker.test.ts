/**
 * The Worker inside workerd, as `wrangler dev` runs it: the model package is read from the R2
 * binding (seeded with the bundled package), onnxruntime-web runs on the precompiled wasm, and
 * the answers equal what the same app computes on Node.
 */
import { exports } from 'cloudflare:workers'
import { EventSourceParserStream, type EventSourceMessage } from 'eventsource-parser/stream'
import { beforeAll, describe, expect, inject, it } from 'vitest'
import { CHAT_BODY, PACKAGE_ID, SENTIMENT_TEXTS } from './fixtures.ts'
import { seedPackage } from './seed.ts'

const worker = exports.default

function post(path: string, body: unknown): Promise<Response> {
  return worker.fetch(`http://worker${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
}

async function readEvents(res: Response): Promise<EventSourceMessage[]> {
  const events: EventSourceMessage[] = []
  const reader = res
    .body!.pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream())
    .getReader()
  for (let r = await reader.read(); !r.done; r = await reader.read()) events.push(r.value)
  return events
}

beforeAll(async () => {
  await seedPackage(PACKAGE_ID)
})

describe('the Worker with the model in local R2', () => {
  it('GET /health says 503 while the model loads from R2, then 200 with the model', async () => {
    const first = await worker.fetch('http://worker/health')
    expect(first.status).toBe(503)
    expect(await first.json()).toMatchObject({ status: 'loading' })

    let res = first
    const deadline = Date.now() + 30_000
    while (res.status !== 200 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100))
      res = await worker.fetch('http://worker/health')
    }
    expect(res.status).toBe(200)
    const body = await res.json()
    expect(body).toMatchObject({ status: 'ok', model: PACKAGE_ID, synthetic: true, active: 0 })
    expect(body.load_ms).toBeGreaterThan(0)
  })

  it('POST /v1/sentiment answers with the label and scores Node computes', async () => {
    const node = inject('nodeReference').sentiment
    for (const [i, text] of SENTIMENT_TEXTS.entries()) {
      const res = await post('/v1/sentiment', { text })
      expect(res.status).toBe(200)
      const answer = await res.json()
      const labels = i === 0 ? ['正面', '负面'] : ['positive', 'negative']
      expect(Object.keys(answer.scores).sort()).toEqual([...labels].sort())
      expect(labels).toContain(answer.label)
      const values = Object.values(answer.scores) as number[]
      expect(values.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12)
      expect(answer.score).toBe(Math.max(...values))
      expect(answer.scores[answer.label]).toBe(answer.score)
      expect(answer).toEqual(node[i]) // same wasm, same graph, same weights: the same bits
    }
  })

  it('POST /v1/chat streams the reply Node gives as server-sent events', async () => {
    const node = inject('nodeReference').chat
    const res = await post('/v1/chat', CHAT_BODY) // stream defaults to true
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const events = await readEvents(res)
    const deltas = events.filter((e) => e.event === 'delta')
    expect(deltas.length).toBeGreaterThan(0)
    expect(events.at(-1)?.event).toBe('done')
    expect(events.filter((e) => e.event !== 'delta').length).toBe(1) // no error event
    const text = deltas.map((e) => JSON.parse(e.data).text as string).join('')
    expect(text).not.toContain('\uFFFD')
    const done = JSON.parse(events.at(-1)!.data)
    expect(done.finish_reason).toBe(node.finish_reason)
    expect(done.usage).toEqual(node.usage)
    expect(text).toBe(node.content)
    expect(node.usage.completion_tokens).toBeLessThanOrEqual(CHAT_BODY.max_tokens)
    // the decode steps ran in the package's own WASM decoder inside workerd
    const health = await (await worker.fetch('http://worker/health')).json()
    expect(health.decode).toMatchObject({ path: 'decoder' })
    expect(health.decode.steps).toBeGreaterThan(0)
  })

  it('answers bad input with a JSON 400 and stays healthy', async () => {
    const res = await post('/v1/sentiment', { text: '' })
    expect(res.status).toBe(400)
    expect(await res.json()).toMatchObject({ error: { code: 'bad_request' } })
    expect((await worker.fetch('http://worker/health')).status).toBe(200)
  })
})
