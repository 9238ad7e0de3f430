/**
 * The HTTP API over real sockets on Node (`npm start`), Deno (`npm run start:deno`) and
 * Workers (`wrangler dev` on the local R2): one suite, three runtimes (issue 4, "Acceptance").
 * The bundled model has random weights, so the tests check shapes, codes, counts, label
 * membership and sums, and that a seed repeats itself; never what the text says.
 */
import OpenAI from 'openai'
import { expect, it } from 'vitest'
import { WRITE_STALL_MS } from '../../src/adapters/workers/client-lifetime.ts'
import { loopedTilesPay } from '../../src/engine/wasm/kernel.ts'
import {
  eventReader,
  health,
  json,
  post,
  readEvents,
  request,
  waitForHealth,
  type Health,
  type Target,
} from './client.ts'
import { ERROR_CASES } from './error-cases.ts'
import { describeMatrix } from './matrix.ts'
import { API_KEY, CONTEXT_LENGTH, CORS_ORIGIN, MODEL_ID, RUNTIMES } from './runtimes.ts'

const FINISH = ['stop', 'length']
/**
 * How soon a generation must stop after its client left. Node and Deno take one decode step;
 * under wrangler dev a disconnect may reach the Worker only as a stalled write.
 */
const STOP_WITHIN_MS = WRITE_STALL_MS + 3_000
const messages = [{ role: 'user' as const, content: 'Say something.' }]
/** A reply a client leaves: long enough to take many seconds, well within the context. */
const LONG_REPLY = CONTEXT_LENGTH - 2_000

describeMatrix(
  'HTTP API',
  RUNTIMES,
  (t) => {
    const openai = () =>
      new OpenAI({ baseURL: `${t.base}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 30_000 })

    it('GET / and GET /health are public and describe the server', async () => {
      const home = await request(t, '/', { auth: false })
      expect(home.status).toBe(200)
      expect(await json(home)).toMatchObject({ name: 'qwen-edge', routes: expect.any(Array) })
      const h = await health(t)
      expect(h).toMatchObject({ status: 'ok', model: MODEL_ID, synthetic: true })
      expect(h.load_ms).toBeGreaterThan(0)
      expect([h.active, h.queued]).toEqual([0, 0])
    })

    it('GET /v1/models lists the model in OpenAI shape', async () => {
      const res = await request(t, '/v1/models')
      expect(res.status).toBe(200)
      const body = await json(res)
      expect(body).toMatchObject({ object: 'list', data: [{ id: MODEL_ID, object: 'model' }] })
      expect(body.data).toHaveLength(1)
      const list = await openai().models.list()
      expect(list.data.map((m) => m.id)).toEqual([MODEL_ID])
    })

    it('POST /v1/sentiment: one label of the default pair, scores summing to 1', async () => {
      const en = await json(await post(t, '/v1/sentiment', { text: 'I love this phone.' }))
      expectClassification(en, ['positive', 'negative'])
      const zh = await json(await post(t, '/v1/sentiment', { text: '这部电影太好看了' }))
      expectClassification(zh, ['正面', '负面'])
    })

    it('POST /v1/sentiment: batches and caller-given labels', async () => {
      const labels = ['joy', 'anger', 'fear']
      const res = await post(t, '/v1/sentiment', { texts: ['a', 'b c', '好'], labels })
      expect(res.status).toBe(200)
      const { results } = await json(res)
      expect(results).toHaveLength(3)
      for (const r of results) expectClassification(r, labels)
    })

    it('POST /v1/sentiment: worked examples change the prompt, and so the scores', async () => {
      const labels = ['joy', 'anger']
      const examples = [
        { text: 'We won the final!', label: 'joy' },
        { text: 'Late again, and nobody called.', label: 'anger' },
      ]
      const text = '终于放假了'
      const shown = await json(await post(t, '/v1/sentiment', { text, labels, examples }))
      const again = await json(await post(t, '/v1/sentiment', { text, labels, examples }))
      const none = await json(await post(t, '/v1/sentiment', { text, labels }))
      expectClassification(shown, labels)
      expect(again.scores).toEqual(shown.scores)
      expect(Math.abs(shown.scores.joy - none.scores.joy)).toBeGreaterThan(1e-4)
    })

    it('POST /v1/chat streams deltas, then done with finish_reason and usage', async () => {
      const res = await post(t, '/v1/chat', { messages, max_tokens: 12, seed: 7 })
      expect(res.status).toBe(200)
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
      const events = await readEvents(res)
      const deltas = events.slice(0, -1)
      const done = events.at(-1)!
      expect(deltas.every((e) => e.event === 'delta')).toBe(true)
      expect(done.event).toBe('done')
      const end = JSON.parse(done.data)
      const text = deltas.map((e) => JSON.parse(e.data).text as string)
      // some text came (else streamed = non-streamed below holds for two empty replies)
      expect(deltas.length).toBeGreaterThan(0)
      expectUsage(end.usage, 12, end.finish_reason, text.join(''))
      expect(deltas.length).toBeLessThanOrEqual(end.usage.completion_tokens)
      expect(text.every((s) => typeof s === 'string' && s !== '')).toBe(true)

      // stream: false gives the same reply for the same seed, as one JSON
      const whole = await json(
        await post(t, '/v1/chat', { messages, max_tokens: 12, seed: 7, stream: false }),
      )
      expect(whole).toMatchObject({
        model: MODEL_ID,
        message: { role: 'assistant', content: text.join('') },
        finish_reason: end.finish_reason,
        usage: end.usage,
      })
    })

    it('concurrent unseeded streams share batched runs; turn 2 reuses the kept KV', async () => {
      const chat = [{ role: 'user', content: '讲一个关于长城的小故事。' }]
      const before = (await health(t)).decode
      // long enough that the two overlap: the tiny model decodes 24 tokens in a few ms, and on a
      // loaded machine the second request can come in after such a first one has ended
      const body = { messages: chat, max_tokens: 96, temperature: 0 }
      const streams = await Promise.all([post(t, '/v1/chat', body), post(t, '/v1/chat', body)])
      const replies = await Promise.all(
        streams.map(async (res) => {
          const events = await readEvents(res)
          expect(events.at(-1)?.event).toBe('done')
          return events
            .slice(0, -1)
            .map((e) => JSON.parse(e.data).text)
            .join('')
        }),
      )
      const after = (await health(t)).decode
      expect(after.largest_batch).toBe(2) // MAX_ACTIVE=2
      expect(after.path).toBe('decoder') // the bundled package's own decoder ran the steps
      // its kernel build: relaxed SIMD (Deno and workerd by default, Node from 22, and Node 20
      // because `npm start` turns its flag on), on AVX-VNNI's dot product where the CPU and V8
      // have it, else with the looped q4 tiles in Node's V8 before 13 (`npm start` runs the
      // Node that runs this test)
      const looped = t.runtime === 'node' && loopedTilesPay(process.versions.v8)
      expect(after.kernels).toMatch(looped ? /^relaxed\+(vnni|looped)$/ : /^relaxed(\+vnni)?$/)
      expect(after.runs - before.runs).toBeLessThan(after.steps - before.steps)
      for (const r of replies) expect(r.length).toBeGreaterThan(0)

      const turn2 = await json(
        await post(t, '/v1/chat/completions', {
          messages: [
            ...chat,
            { role: 'assistant', content: replies[0] },
            { role: 'user', content: 'Shorter, please.' },
          ],
          max_tokens: 4,
        }),
      )
      expect(turn2.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(16)
      expect(turn2.usage.prompt_tokens_details.cached_tokens).toBeLessThan(
        turn2.usage.prompt_tokens,
      )
    })

    it('POST /v1/chat/completions with the openai client, streamed and not', async () => {
      const client = openai()
      const params = { model: MODEL_ID, messages: [{ role: 'user' as const, content: 'Hi!' }] }
      const completion = await client.chat.completions.create({
        ...params,
        max_tokens: 10,
        seed: 3,
      })
      expect(completion).toMatchObject({ object: 'chat.completion', model: MODEL_ID })
      expect(completion.id).toMatch(/^chatcmpl-/)
      expect(completion.choices).toHaveLength(1)
      const choice = completion.choices[0]
      expect(choice.message.role).toBe('assistant')
      expect(typeof choice.message.content).toBe('string')
      expectUsage(completion.usage, 10, choice.finish_reason, choice.message.content!)

      const stream = await client.chat.completions.create({
        ...params,
        max_tokens: 10,
        seed: 3,
        stream: true,
        stream_options: { include_usage: true },
      })
      const chunks = []
      for await (const chunk of stream) chunks.push(chunk)
      expect(new Set(chunks.map((c) => c.id)).size).toBe(1)
      expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true)
      expect(chunks[0].choices[0].delta.role).toBe('assistant')
      const finishes = chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason))
      expect(finishes.filter((f) => f !== null)).toEqual([choice.finish_reason])
      const usageChunk = chunks.at(-1)!
      expect(usageChunk.choices).toEqual([])
      expect(usageChunk.usage).toEqual(completion.usage)
      const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')
      expect(content).not.toBe('') // else two empty replies would pass as the same one
      expect(content).toBe(choice.message.content) // same seed, same reply
    })

    it('POST /v1/chat/completions returns logprobs and top_logprobs to the openai client', async () => {
      const body = {
        model: MODEL_ID,
        messages,
        max_tokens: 6,
        temperature: 0,
        seed: 11,
        logprobs: true,
        top_logprobs: 3,
      }
      const whole = await openai().chat.completions.create(body)
      const content = whole.choices[0].message.content ?? ''
      const entries = whole.choices[0].logprobs?.content ?? []
      expect(content.length).toBeGreaterThan(0) // precondition: a reply with text
      expect(entries.length).toBeGreaterThan(0)
      expect(entries.length).toBeLessThanOrEqual(whole.usage!.completion_tokens)
      for (const e of entries) {
        expect(e.top_logprobs).toHaveLength(3)
        expect(e.bytes).toEqual(e.top_logprobs[0].bytes) // greedy: the most likely token
        expect(e.logprob).toBeLessThanOrEqual(0)
        expect(e.top_logprobs[1].logprob).toBeLessThanOrEqual(e.top_logprobs[0].logprob)
      }
      expect(Buffer.from(entries.flatMap((e) => e.bytes ?? [])).toString()).toBe(content)

      const stream = await openai().chat.completions.create({ ...body, stream: true })
      const streamed = []
      for await (const chunk of stream)
        streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []))
      expect(streamed).toEqual(entries) // same seed, same prompt: the same numbers
    })

    it('POST /v1/chat/completions streams raw SSE ending in data: [DONE]', async () => {
      const res = await post(t, '/v1/chat/completions', {
        model: MODEL_ID,
        messages,
        max_tokens: 4,
        stream: true,
      })
      expect(res.status).toBe(200)
      const events = await readEvents(res)
      expect(events.at(-1)!.data).toBe('[DONE]')
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data))
      expect(chunks.every((c) => c.object === 'chat.completion.chunk' && !('usage' in c))).toBe(
        true,
      )
      expect(FINISH).toContain(chunks.at(-1).choices[0].finish_reason)
      const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')
      expect(content).not.toBe('')
    })

    it('the openai client raises typed errors: 400 with code and param, 401', async () => {
      const bad = openai().chat.completions.create({ model: MODEL_ID, messages: [] })
      await expect(bad).rejects.toMatchObject({
        status: 400,
        code: 'bad_request',
        param: 'messages',
      })
      const wrongKey = new OpenAI({ baseURL: `${t.base}/v1`, apiKey: 'nope', maxRetries: 0 })
      await expect(wrongKey.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError)
    })

    it('POST /analyze: sentiment (正面/负面) and a reply; ?stream=1 as SSE', async () => {
      const text = '今天的天气真不错'
      const res = await post(t, '/analyze', { text, max_tokens: 8, seed: 5 })
      expect(res.status).toBe(200)
      const body = await json(res)
      expectClassification(body.sentiment, ['正面', '负面'])
      expect(typeof body.reply).toBe('string')
      expectUsage(body.usage, 8, body.finish_reason, body.reply)

      const streamed = await readEvents(
        await post(t, '/analyze?stream=1', { text, max_tokens: 8, seed: 5 }),
      )
      expect(streamed[0].event).toBe('sentiment')
      expect(JSON.parse(streamed[0].data)).toEqual(body.sentiment)
      expect(streamed.at(-1)!.event).toBe('done')
      const deltas = streamed.slice(1, -1)
      expect(deltas.length).toBeGreaterThan(0)
      expect(deltas.every((e) => e.event === 'delta')).toBe(true)
      expect(deltas.map((e) => JSON.parse(e.data).text).join('')).toBe(body.reply)
      expect(JSON.parse(streamed.at(-1)!.data)).toEqual({
        finish_reason: body.finish_reason,
        usage: body.usage,
      })
    })

    it('auth: all routes but / and /health need the bearer key (else 401 JSON)', async () => {
      const routes: [string, unknown][] = [
        ['/v1/models', undefined],
        ['/v1/sentiment', { text: 'hi' }],
        ['/v1/chat', { messages, max_tokens: 1 }],
        ['/v1/chat/completions', { messages, max_tokens: 1 }],
        ['/analyze', { text: 'hi', max_tokens: 1 }],
      ]
      const keys = [undefined, 'Bearer wrong-key', `Basic ${API_KEY}`, `Bearer ${API_KEY}x`]
      for (const [path, body] of routes) {
        for (const key of keys) {
          const headers = key === undefined ? undefined : { authorization: key }
          const res = await request(t, path, { body, auth: false, headers })
          expect(res.status, `${path} with ${key}`).toBe(401)
          expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/)
          expect((await json(res)).error.code).toBe('unauthorized')
        }
      }
      for (const path of ['/', '/health']) {
        expect((await request(t, path, { auth: false })).status).toBe(200)
      }
    })

    it('CORS: preflight and responses for the configured origin only', async () => {
      const preflight = (origin: string) =>
        request(t, '/v1/chat', {
          method: 'OPTIONS',
          auth: false,
          headers: {
            origin,
            'access-control-request-method': 'POST',
            'access-control-request-headers': 'authorization, content-type',
          },
        })
      const ok = await preflight(CORS_ORIGIN)
      expect(ok.status).toBe(204)
      expect(ok.headers.get('access-control-allow-origin')).toBe(CORS_ORIGIN)
      expect(ok.headers.get('access-control-allow-headers')?.toLowerCase()).toContain(
        'authorization',
      )
      const other = await preflight('https://evil.example')
      expect(other.headers.get('access-control-allow-origin')).toBeNull()
      const res = await request(t, '/v1/models', { headers: { origin: CORS_ORIGIN } })
      expect(res.headers.get('access-control-allow-origin')).toBe(CORS_ORIGIN)
      expect(res.headers.get('access-control-expose-headers')).toMatch(/retry-after/i)
    })

    it(`${ERROR_CASES.length} malformed requests: JSON errors, server still healthy`, async () => {
      const failures: string[] = []
      for (const c of ERROR_CASES) {
        const body = typeof c.body === 'function' ? c.body() : c.body
        let res: Response
        try {
          res = await post(t, c.path, body, { headers: c.headers })
        } catch (err) {
          failures.push(`${c.name}: request failed: ${(err as Error).message}`)
          continue
        }
        const text = await res.text()
        const problems: string[] = []
        if (res.status !== c.status) problems.push(`status ${res.status}, want ${c.status}`)
        if (!res.headers.get('content-type')?.startsWith('application/json')) {
          problems.push(`content-type ${res.headers.get('content-type')}`)
        }
        let error: any
        try {
          error = JSON.parse(text).error
        } catch {
          problems.push('body is not JSON')
        }
        if (error?.code !== c.code) problems.push(`code ${error?.code}, want ${c.code}`)
        if (typeof error?.message !== 'string' || error.message === '') problems.push('no message')
        if (c.openai && (typeof error?.type !== 'string' || !('param' in error))) {
          problems.push('not in OpenAI error shape (type, param)')
        }
        if (c.code === 'context_length_exceeded' && !/\d/.test(error?.message ?? '')) {
          problems.push('message gives no counts')
        }
        if (problems.length)
          failures.push(`${c.name}: ${problems.join('; ')}: ${text.slice(0, 200)}`)
      }
      expect(failures, failures.join('\n')).toEqual([])
      expect(ERROR_CASES.length).toBeGreaterThanOrEqual(25)

      const h = await health(t)
      expect(h).toMatchObject({ status: 'ok', active: 0, queued: 0 })
      expect((await post(t, '/v1/sentiment', { text: 'still here?' })).status).toBe(200)
    })

    it('a streaming client that disconnects stops its generation', async () => {
      await expectStopsOnDisconnect(t, '/v1/chat', { messages, max_tokens: LONG_REPLY, seed: 11 })
    })

    it('an openai client that stops reading a stream stops its generation', async () => {
      const ac = new AbortController()
      const before = (await health(t)).decode.steps
      const stream = await openai().chat.completions.create(
        { model: MODEL_ID, messages, max_tokens: LONG_REPLY, seed: 12, stream: true },
        { signal: ac.signal },
      )
      let chunks = 0
      for await (const chunk of stream) {
        expect(chunk.choices[0]?.finish_reason ?? null).toBeNull() // must not end by itself
        if (++chunks === 4) {
          expect((await health(t)).active).toBe(1) // live when left
          break // leaving the loop aborts the request
        }
      }
      await waitForHealth(t, (h) => h.active === 0, STOP_WITHIN_MS, 'generation stopped')
      await expectStoppedEarly(t, before, LONG_REPLY)
    })

    // Local workerd (wrangler dev, miniflare) never aborts request.signal for a response that is
    // still pending when its client leaves, and no write can fail before there is a body: the
    // Worker cannot know. There the reply runs to its end, and what is checked is that its place
    // is given back then (client-lifetime.ts keeps the request alive until it is).
    const sees = t.runtime !== 'workers'
    const leaves = 'a non-streamed request whose client leaves'
    const outcome = sees ? 'stops its generation' : 'frees its place when done (no abort locally)'
    it(`${leaves} ${outcome}`, async () => {
      const ac = new AbortController()
      const before = (await health(t)).decode.steps
      const maxTokens = sees ? LONG_REPLY : 200
      const pending = post(
        t,
        '/v1/chat',
        { messages, max_tokens: maxTokens, seed: 13, stream: false },
        { signal: ac.signal },
      ).catch((err: Error) => err)
      // left while decoding, not before the first step
      const decoding = (h: Health) => h.active === 1 && h.decode.steps > before
      await waitForHealth(t, decoding, 10_000, 'generation decoding')
      ac.abort()
      expect(await pending).toBeInstanceOf(Error)
      await waitForHealth(t, (h) => h.active === 0, sees ? 5_000 : 30_000, 'generation ended')
      if (sees) await expectStoppedEarly(t, before, maxTokens)
    })

    it('4 concurrent streams all complete; a 5th is refused with 429 and Retry-After', async () => {
      // The servers run with MAX_ACTIVE=2, MAX_QUEUED=2.
      const bodies = [0, 1, 2, 3].map((i) => ({
        messages: [{ role: 'user', content: `Stream number ${i}` }],
        max_tokens: 96,
        seed: 100 + i,
      }))
      const responses = await Promise.all(bodies.map((b) => post(t, '/v1/chat', b)))
      expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200])
      const reading = responses.map((r) => readEvents(r))
      // the two running reserve their prompts + 96 positions of KV each; the queued ones nothing
      const reserved = (h: Health) => (h.kv_reserved_tokens ?? 0) > 2 * 96
      const twoAndTwo = (h: Health) => h.active === 2 && h.queued === 2 && reserved(h)
      await waitForHealth(t, twoAndTwo, 10_000, 'two + two queued, their KV reserved')

      const refused = await post(t, '/v1/chat', { messages, max_tokens: 4 })
      expect(refused.status).toBe(429)
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
      expect((await json(refused)).error.code).toBe('queue_full')
      const refusedOpenAI = await post(t, '/v1/chat/completions', { messages, max_tokens: 4 })
      expect(refusedOpenAI.status).toBe(429)
      expect((await json(refusedOpenAI)).error).toMatchObject({
        code: 'queue_full',
        type: 'rate_limit_error',
      })
      // classification is not a generation: it still gets through, between decode steps
      expect((await post(t, '/v1/sentiment', { text: 'busy?' })).status).toBe(200)

      for (const events of await Promise.all(reading)) {
        const done = events.at(-1)
        expect(done?.event, `a stream ended with ${JSON.stringify(done)}`).toBe('done')
        const end = JSON.parse(done!.data)
        const text = events
          .slice(0, -1)
          .map((e) => JSON.parse(e.data).text)
          .join('')
        expectUsage(end.usage, 96, end.finish_reason, text)
      }
      expect(await health(t)).toMatchObject({ active: 0, queued: 0, kv_reserved_tokens: 0 })
    })
  },
  { early: ['workers'] },
)

/**
 * Opens a long stream, reads a few deltas, disconnects, and watches /health `active` fall to
 * 0. The rest of the reply would have taken far longer than that (estimated from the decode
 * rate seen), so the generation was stopped, not finished.
 */
async function expectStopsOnDisconnect(
  t: Target,
  path: string,
  body: Record<string, unknown> & { max_tokens: number },
) {
  const ac = new AbortController()
  const before = (await health(t)).decode.steps
  const res = await post(t, path, body, { signal: ac.signal })
  expect(res.status).toBe(200)
  const events = eventReader(res)
  // the decode rate from 40 deltas, not 8: deltas may arrive a few at once (wrangler dev's
  // proxy), and a rate from 8 once made the rest of a reply look shorter than the stop took
  const seen = 40
  const times: number[] = []
  while (times.length < seen) {
    const e = await events.next()
    if (!e || e.event !== 'delta') throw new Error(`stream ended early: ${JSON.stringify(e)}`)
    times.push(Date.now())
  }
  expect((await health(t)).active).toBe(1)
  const msPerDelta = (times[seen - 1] - times[1]) / (seen - 2)
  ac.abort()
  void events.cancel()
  const stopMs = await waitForHealth(t, (h) => h.active === 0, STOP_WITHIN_MS, 'generation stopped')
  const restMs = msPerDelta * (body.max_tokens - seen)
  expect(restMs, `stopped in ${stopMs} ms; the rest would take ~${restMs} ms`).toBeGreaterThan(
    2 * stopMs,
  )
  await expectStoppedEarly(t, before, body.max_tokens)
}

/**
 * The only generation since `before` (a /health decode step count) stopped long before its
 * `maxTokens`, counted in decode steps: however fast the machine, a generation that was not
 * stopped runs to its end (or to /health's wait running out), never to less than half of it.
 */
async function expectStoppedEarly(t: Target, before: number, maxTokens: number) {
  const { decode, active, queued } = await health(t)
  expect([active, queued]).toEqual([0, 0])
  const steps = decode.steps - before
  expect(steps, 'decode steps of the left generation').toBeGreaterThan(0)
  expect(steps, 'decode steps of the left generation').toBeLessThan(maxTokens / 2)
}

function expectClassification(r: any, labels: string[]) {
  expect(Object.keys(r.scores).sort()).toEqual([...labels].sort())
  expect(labels).toContain(r.label)
  const values = Object.values(r.scores) as number[]
  expect(values.every((v) => v >= 0 && v <= 1)).toBe(true)
  expect(values.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6)
  expect(r.score).toBe(r.scores[r.label])
  expect(r.score).toBe(Math.max(...values))
}

/**
 * A reply's usage, and `text` the reply it counts: every reply here asks for a few tokens, and
 * the seeds and prompts used give some text, so tokens counted with no text (or text with no
 * tokens) is a server that lost what it generated.
 */
function expectUsage(usage: any, maxTokens: number, finishReason: unknown, text: string) {
  expect(FINISH).toContain(finishReason)
  expect(usage.prompt_tokens).toBeGreaterThan(0)
  expect(text).not.toBe('')
  expect(usage.completion_tokens).toBeGreaterThan(0)
  expect(usage.completion_tokens).toBeLessThanOrEqual(maxTokens)
  expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens)
  if (finishReason === 'length') expect(usage.completion_tokens).toBe(maxTokens)
}
