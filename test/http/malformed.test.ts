/**
 * Bad input of every kind: each answered with a JSON error, the right status and code, a
 * message naming the problem, and without the engine being asked to do anything.
 */
import { describe, expect, it } from 'vitest'
import { FakeEngine } from './fake-engine.ts'
import { makeApp, post } from './helpers.ts'

const user = [{ role: 'user', content: 'hi' }]
const long = (n: number) => Array.from({ length: n }, (_, i) => `s${i}`)

interface Case {
  name: string
  path: string
  body: unknown
  status: number
  code: string
  /** The message must match (usually: it names the field). */
  message: RegExp
  headers?: Record<string, string>
}

const cases: Case[] = [
  {
    name: 'not JSON',
    path: '/v1/chat',
    body: '{"messages": [',
    status: 400,
    code: 'bad_request',
    message: /not valid JSON/,
  },
  {
    name: 'empty body',
    path: '/v1/chat',
    body: '',
    status: 400,
    code: 'bad_request',
    message: /empty/,
  },
  {
    name: 'invalid UTF-8',
    path: '/v1/chat',
    body: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]),
    status: 400,
    code: 'bad_request',
    message: /UTF-8/,
  },
  {
    name: 'truncated UTF-8 sequence',
    path: '/v1/sentiment',
    body: new Uint8Array([
      ...new TextEncoder().encode('{"text":"'),
      0xe4,
      0xbd,
      ...new TextEncoder().encode('"}'),
    ]),
    status: 400,
    code: 'bad_request',
    message: /UTF-8/,
  },
  {
    name: 'JSON array body',
    path: '/v1/chat',
    body: '[]',
    status: 400,
    code: 'bad_request',
    message: /JSON object/,
  },
  {
    name: 'JSON string body',
    path: '/v1/sentiment',
    body: '"text"',
    status: 400,
    code: 'bad_request',
    message: /JSON object/,
  },
  {
    name: 'missing messages',
    path: '/v1/chat',
    body: {},
    status: 400,
    code: 'bad_request',
    message: /messages/,
  },
  {
    name: 'messages not an array',
    path: '/v1/chat',
    body: { messages: 'hi' },
    status: 400,
    code: 'bad_request',
    message: /messages must be an array/,
  },
  {
    name: 'empty messages',
    path: '/v1/chat',
    body: { messages: [] },
    status: 400,
    code: 'bad_request',
    message: /messages must not be empty/,
  },
  {
    name: 'message not an object',
    path: '/v1/chat',
    body: { messages: ['hi'] },
    status: 400,
    code: 'bad_request',
    message: /messages\[0\]/,
  },
  {
    name: 'unknown role',
    path: '/v1/chat',
    body: { messages: [{ role: 'wizard', content: 'hi' }] },
    status: 400,
    code: 'bad_request',
    message: /messages\[0\]\.role.*wizard/,
  },
  {
    name: 'tool role on the OpenAI route',
    path: '/v1/chat/completions',
    body: { messages: [{ role: 'tool', content: 'x' }] },
    status: 400,
    code: 'bad_request',
    message: /role/,
  },
  {
    name: 'content not a string',
    path: '/v1/chat',
    body: { messages: [{ role: 'user', content: 42 }] },
    status: 400,
    code: 'bad_request',
    message: /messages\[0\]\.content/,
  },
  {
    name: 'only blank content',
    path: '/v1/chat',
    body: { messages: [{ role: 'user', content: '  ' }] },
    status: 400,
    code: 'bad_request',
    message: /some text/,
  },
  {
    name: 'image content part',
    path: '/v1/chat/completions',
    body: {
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }],
    },
    status: 400,
    code: 'bad_request',
    message: /type: 'text'/,
  },
  {
    name: 'temperature too high',
    path: '/v1/chat',
    body: { messages: user, temperature: 5 },
    status: 400,
    code: 'bad_request',
    message: /temperature.*\[0, 2\]/,
  },
  {
    name: 'temperature a string',
    path: '/v1/chat',
    body: { messages: user, temperature: '0.7' },
    status: 400,
    code: 'bad_request',
    message: /temperature/,
  },
  {
    name: 'top_p zero',
    path: '/v1/chat',
    body: { messages: user, top_p: 0 },
    status: 400,
    code: 'bad_request',
    message: /top_p.*\(0, 1\]/,
  },
  {
    name: 'top_p above 1',
    path: '/v1/chat/completions',
    body: { messages: user, top_p: 1.5 },
    status: 400,
    code: 'bad_request',
    message: /top_p/,
  },
  {
    name: 'negative top_k',
    path: '/v1/chat',
    body: { messages: user, top_k: -1 },
    status: 400,
    code: 'bad_request',
    message: /top_k/,
  },
  {
    name: 'repetition_penalty zero',
    path: '/v1/chat',
    body: { messages: user, repetition_penalty: 0 },
    status: 400,
    code: 'bad_request',
    message: /repetition_penalty/,
  },
  {
    name: 'negative max_tokens',
    path: '/v1/chat',
    body: { messages: user, max_tokens: -5 },
    status: 400,
    code: 'bad_request',
    message: /max_tokens/,
  },
  {
    name: 'fractional max_tokens',
    path: '/v1/chat',
    body: { messages: user, max_tokens: 2.5 },
    status: 400,
    code: 'bad_request',
    message: /max_tokens must be an integer/,
  },
  {
    name: 'max_tokens over the ceiling',
    path: '/v1/chat',
    body: { messages: user, max_tokens: 1_000_000 },
    status: 400,
    code: 'bad_request',
    message: /max_tokens.*2048/,
  },
  {
    name: 'max_completion_tokens over the ceiling',
    path: '/v1/chat/completions',
    body: { messages: user, max_completion_tokens: 5000 },
    status: 400,
    code: 'bad_request',
    message: /max_completion_tokens/,
  },
  {
    name: 'fractional seed',
    path: '/v1/chat',
    body: { messages: user, seed: 1.5 },
    status: 400,
    code: 'bad_request',
    message: /seed/,
  },
  {
    name: 'stream not a boolean',
    path: '/v1/chat',
    body: { messages: user, stream: 'yes' },
    status: 400,
    code: 'bad_request',
    message: /stream must be true or false/,
  },
  {
    name: 'stop a number',
    path: '/v1/chat',
    body: { messages: user, stop: 7 },
    status: 400,
    code: 'bad_request',
    message: /stop/,
  },
  {
    name: 'huge stop list',
    path: '/v1/chat',
    body: { messages: user, stop: long(1000) },
    status: 400,
    code: 'bad_request',
    message: /stop may hold at most 8/,
  },
  {
    name: 'empty stop string',
    path: '/v1/chat',
    body: { messages: user, stop: [''] },
    status: 400,
    code: 'bad_request',
    message: /stop/,
  },
  {
    name: 'n of 3',
    path: '/v1/chat/completions',
    body: { messages: user, n: 3 },
    status: 400,
    code: 'bad_request',
    message: /n must be 1/,
  },
  {
    name: 'tools',
    path: '/v1/chat/completions',
    body: { messages: user, tools: [{ type: 'function' }] },
    status: 400,
    code: 'bad_request',
    message: /tools/,
  },
  {
    name: 'stream_options not an object',
    path: '/v1/chat/completions',
    body: { messages: user, stream: true, stream_options: true },
    status: 400,
    code: 'bad_request',
    message: /stream_options/,
  },
  {
    name: 'sentiment without text',
    path: '/v1/sentiment',
    body: {},
    status: 400,
    code: 'bad_request',
    message: /text is required/,
  },
  {
    name: 'sentiment empty text',
    path: '/v1/sentiment',
    body: { text: '' },
    status: 400,
    code: 'bad_request',
    message: /text must not be empty/,
  },
  {
    name: 'sentiment text a number',
    path: '/v1/sentiment',
    body: { text: 5 },
    status: 400,
    code: 'bad_request',
    message: /text must be a string/,
  },
  {
    name: 'sentiment text and texts',
    path: '/v1/sentiment',
    body: { text: 'a', texts: ['b'] },
    status: 400,
    code: 'bad_request',
    message: /not both/,
  },
  {
    name: 'sentiment texts empty',
    path: '/v1/sentiment',
    body: { texts: [] },
    status: 400,
    code: 'bad_request',
    message: /texts must not be empty/,
  },
  {
    name: 'sentiment too many texts',
    path: '/v1/sentiment',
    body: { texts: long(33) },
    status: 400,
    code: 'bad_request',
    message: /at most 32/,
  },
  {
    name: 'sentiment a blank text in texts',
    path: '/v1/sentiment',
    body: { texts: ['ok', ' '] },
    status: 400,
    code: 'bad_request',
    message: /texts\[1\]/,
  },
  {
    name: 'one label',
    path: '/v1/sentiment',
    body: { text: 'a', labels: ['only'] },
    status: 400,
    code: 'invalid_labels',
    message: /2 to 32/,
  },
  {
    name: 'duplicate labels',
    path: '/v1/sentiment',
    body: { text: 'a', labels: ['x', 'x'] },
    status: 400,
    code: 'invalid_labels',
    message: /twice/,
  },
  {
    name: 'labels not strings',
    path: '/v1/sentiment',
    body: { text: 'a', labels: [1, 2] },
    status: 400,
    code: 'bad_request',
    message: /labels/,
  },
  {
    name: 'analyze without text',
    path: '/analyze',
    body: { txt: 'hi' },
    status: 400,
    code: 'bad_request',
    message: /text/,
  },
  {
    name: 'analyze bad temperature',
    path: '/analyze',
    body: { text: 'hi', temperature: -1 },
    status: 400,
    code: 'bad_request',
    message: /temperature/,
  },
]

describe('malformed requests', () => {
  it('has a good number of cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(25)
  })

  const engine = new FakeEngine()
  const { app } = makeApp(engine)

  it.each(cases)(
    '$name → $status $code',
    async ({ path, body, status, code, message, headers }) => {
      const res = await post(app, path, body, headers)
      expect(res.status).toBe(status)
      expect(res.headers.get('content-type')).toMatch(/^application\/json/)
      const json = await res.json()
      if (path === '/v1/chat/completions') {
        expect(json.error).toMatchObject({ type: 'invalid_request_error', code })
        expect(json.error.message).toMatch(message)
      } else {
        expect(Object.keys(json)).toEqual(['error'])
        expect(Object.keys(json.error).sort()).toEqual(['code', 'message'])
        expect(json.error.code).toBe(code)
        expect(json.error.message).toMatch(message)
      }
    },
  )

  it('never reached the engine, and the app still answers', async () => {
    expect(engine.chatCalls).toHaveLength(0)
    expect(engine.classifyCalls).toHaveLength(0)
    const res = await post(app, '/v1/chat', { messages: user, stream: false })
    expect(res.status).toBe(200)
  })

  it('answers unknown routes with a JSON 404', async () => {
    const res = await app.request('/v2/chat', { method: 'POST' })
    expect(res.status).toBe(404)
    expect((await res.json()).error.code).toBe('not_found')
    const wrongMethod = await app.request('/v1/chat')
    expect(wrongMethod.status).toBe(404)
  })
})
