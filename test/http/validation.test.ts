/** The pure pieces: body parsers, body reading, config, error shapes, load tracking. */
import { describe, expect, it } from 'vitest'
import { AppError } from '../../src/core/errors.ts'
import { readConfigFromEnv, resolveConfig } from '../../src/http/config.ts'
import { errorHeaders, openAIErrorBody, toAppError } from '../../src/http/error-response.ts'
import { parseChatBody, parseOpenAIChatBody, readStop } from '../../src/http/parse-chat-body.ts'
import { parseAnalyzeBody, parseSentimentBody } from '../../src/http/parse-sentiment-body.ts'
import { readJsonBody } from '../../src/http/read-json-body.ts'
import { trackEngineLoad } from '../../src/http/track-engine-load.ts'
import { FakeEngine } from './fake-engine.ts'

const limits = { maxTokensCeiling: 100, maxTokensDefault: undefined }
const user = [{ role: 'user', content: 'hi' }]

function badRequestOf(fn: () => unknown): AppError {
  try {
    fn()
  } catch (err) {
    if (err instanceof AppError) return err
    throw err
  }
  throw new Error('expected an AppError')
}

describe('parseChatBody', () => {
  it('returns typed messages and engine options, streaming by default', () => {
    expect(
      parseChatBody(
        { messages: user, max_tokens: 10, top_p: 1, top_k: 0, seed: -3, stop: ['a', 'a', 'b'] },
        limits,
      ),
    ).toEqual({
      messages: [{ role: 'user', content: 'hi' }],
      options: { maxNewTokens: 10, topP: 1, topK: 0, seed: -3, stop: ['a', 'b'] },
      stream: true,
    })
  })

  it('treats null like an absent field', () => {
    const { options } = parseChatBody({ messages: user, temperature: null, stop: null }, limits)
    expect(options).toEqual({})
  })

  it('names the field and sets param', () => {
    const e = badRequestOf(() => parseChatBody({ messages: user, top_k: 1.5 }, limits))
    expect(e).toMatchObject({ code: 'bad_request', details: { param: 'top_k' } })
    expect(e.message).toMatch(/^top_k must be an integer/)
  })

  it('accepts max_tokens at the ceiling and not above', () => {
    expect(parseChatBody({ messages: user, max_tokens: 100 }, limits).options.maxNewTokens).toBe(
      100,
    )
    expect(
      badRequestOf(() => parseChatBody({ messages: user, max_tokens: 101 }, limits)).message,
    ).toBe('max_tokens must be an integer in [1, 100], got 101')
  })

  it('refuses roles the template does not know, and OpenAI-only roles', () => {
    expect(() =>
      parseChatBody({ messages: [{ role: 'developer', content: 'x' }] }, limits),
    ).toThrow(/role/)
    expect(() =>
      parseChatBody({ messages: [{ role: 'system', content: 'x' }] }, limits),
    ).not.toThrow()
  })

  it('refuses NaN-like numbers that JSON cannot carry but a caller might', () => {
    expect(() => parseChatBody({ messages: user, temperature: Number.NaN }, limits)).toThrow(
      /temperature/,
    )
    expect(() => parseChatBody({ messages: user, temperature: Infinity }, limits)).toThrow(
      /temperature/,
    )
  })
})

describe('parseOpenAIChatBody', () => {
  it('does not stream by default, and reads include_usage', () => {
    expect(parseOpenAIChatBody({ messages: user }, limits)).toMatchObject({
      stream: false,
      includeUsage: false,
    })
    expect(
      parseOpenAIChatBody(
        { messages: user, stream: true, stream_options: { include_usage: true } },
        limits,
      ),
    ).toMatchObject({ stream: true, includeUsage: true })
  })

  it('prefers max_completion_tokens over max_tokens', () => {
    const body = { messages: user, max_tokens: 50, max_completion_tokens: 5 }
    expect(parseOpenAIChatBody(body, limits).options.maxNewTokens).toBe(5)
  })
})

describe('parseSentimentBody / parseAnalyzeBody', () => {
  it('tells a single text from a batch', () => {
    expect(parseSentimentBody({ text: '好' })).toEqual({ kind: 'single', text: '好' })
    expect(parseSentimentBody({ texts: ['a', 'b'], labels: ['x', 'y'] })).toEqual({
      kind: 'batch',
      texts: ['a', 'b'],
      labels: ['x', 'y'],
    })
  })

  it('reads worked examples: {text, label} objects, [] kept as "none"', () => {
    const examples = [{ text: 'great', label: 'x', extra: 1 }]
    expect(parseSentimentBody({ text: 'a', labels: ['x', 'y'], examples })).toEqual({
      kind: 'single',
      text: 'a',
      labels: ['x', 'y'],
      examples: [{ text: 'great', label: 'x' }],
    })
    expect(parseSentimentBody({ text: 'a', examples: [] })).toEqual({
      kind: 'single',
      text: 'a',
      examples: [],
    })
    expect(parseSentimentBody({ text: 'a', examples: null })).toEqual({ kind: 'single', text: 'a' })
    expect(parseAnalyzeBody({ text: 'a', examples: [{ text: 'b', label: 'c' }] }, limits)).toEqual({
      text: 'a',
      examples: [{ text: 'b', label: 'c' }],
      options: {},
    })
    for (const examples of [
      'great',
      [['great', 'x']],
      [{ text: 'great' }],
      [{ text: '', label: 'x' }],
      [{ text: 3, label: 'x' }],
      [{ text: 'a', label: 7 }],
      Array(17).fill({ text: 'a', label: 'x' }),
    ]) {
      expect(() => parseSentimentBody({ text: 'a', examples })).toThrow(
        expect.objectContaining({ code: 'bad_request', details: { param: expect.any(String) } }),
      )
    }
  })

  it('parses analyze with sampling options', () => {
    expect(parseAnalyzeBody({ text: 'hi', temperature: 0 }, limits)).toEqual({
      text: 'hi',
      options: { temperature: 0 },
    })
  })
})

describe('readStop', () => {
  it('takes a string or a list', () => {
    expect(readStop('x')).toEqual(['x'])
    expect(readStop([])).toBeUndefined()
    expect(() => readStop(['x'.repeat(65)])).toThrow(/1 to 64/)
  })
})

describe('readJsonBody', () => {
  const req = (body: BodyInit, headers: Record<string, string> = {}) =>
    new Request('http://x/', { method: 'POST', body, headers })

  it('parses UTF-8 JSON, BOM included', async () => {
    const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...new TextEncoder().encode('{"t":"好"}')])
    expect(await readJsonBody(req(bytes), 100)).toEqual({ t: '好' })
  })

  it('refuses overlong and surrogate UTF-8 encodings', async () => {
    for (const bad of [
      [0xc0, 0xaf], // overlong '/'
      [0xed, 0xa0, 0x80], // a UTF-16 surrogate
    ]) {
      const body = new Uint8Array([0x22, ...bad, 0x22])
      await expect(readJsonBody(req(body), 100)).rejects.toMatchObject({
        code: 'bad_request',
        message: 'Request body is not valid UTF-8',
      })
    }
  })

  it('checks size in bytes, exactly at the limit', async () => {
    expect(await readJsonBody(req('"1234"'), 6)).toBe('1234')
    await expect(readJsonBody(req('"12345"'), 6)).rejects.toMatchObject({
      code: 'payload_too_large',
    })
  })
})

describe('config', () => {
  it('fills defaults and rejects impossible settings', () => {
    expect(resolveConfig({})).toEqual({ maxTokensCeiling: 2048, maxBodyBytes: 262144 })
    expect(() => resolveConfig({ maxTokensDefault: 5000 })).toThrow(/maxTokensDefault/)
    expect(() => resolveConfig({ maxBodyBytes: 0 })).toThrow(/maxBodyBytes/)
  })

  it('reads the environment', () => {
    expect(
      readConfigFromEnv({
        API_KEY: 'k',
        CORS_ORIGINS: 'https://a.example, https://b.example',
        MAX_TOKENS_DEFAULT: '128',
        MAX_TOKENS_CEILING: '',
        MODEL_ID: 'qwen',
      }),
    ).toEqual({
      apiKey: 'k',
      corsOrigins: ['https://a.example', 'https://b.example'],
      // MAX_TOKENS_DEFAULT is the engine's (engineOptionsFromEnv), not the HTTP layer's
      maxTokensCeiling: 2048,
      maxBodyBytes: 262144,
      modelId: 'qwen',
    })
    expect(readConfigFromEnv({ CORS_ORIGINS: '*' }).corsOrigins).toBe('*')
    expect(() => readConfigFromEnv({ MAX_BODY_BYTES: '1e6' })).toThrow(/MAX_BODY_BYTES/)
  })
})

describe('error shapes', () => {
  it('maps statuses to OpenAI types and keeps the param', () => {
    const e = new AppError('bad_request', 'temperature must be ...', {
      details: { param: 'temperature' },
    })
    expect(openAIErrorBody(e)).toEqual({
      error: {
        message: 'temperature must be ...',
        type: 'invalid_request_error',
        param: 'temperature',
        code: 'bad_request',
      },
    })
    expect(openAIErrorBody(new AppError('model_loading', 'x')).error.type).toBe('server_error')
  })

  it('adds Retry-After to 429 and 503 only', () => {
    expect(
      errorHeaders(new AppError('queue_full', 'x', { details: { retryAfterSeconds: 1.2 } })),
    ).toEqual({
      'Retry-After': '2',
    })
    expect(errorHeaders(new AppError('model_unavailable', 'x'))['Retry-After']).toBe('10')
    expect(errorHeaders(new AppError('bad_request', 'x'))).toEqual({})
  })

  it('recognises an AppError from another realm by name and code', () => {
    const foreign = Object.assign(new Error('busy'), {
      name: 'AppError',
      code: 'queue_full',
      status: 429,
    })
    expect(toAppError(foreign)).toBe(foreign)
    expect(toAppError(new Error('boom'))).toMatchObject({
      code: 'internal',
      message: 'Internal server error',
    })
  })
})

describe('trackEngineLoad', () => {
  it('goes idle → loading → failed → loading → ready', async () => {
    let attempt = 0
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const tracked = trackEngineLoad(async () => {
      if (++attempt === 1) throw new AppError('model_unavailable', 'no shards')
      await gate
      return new FakeEngine()
    })
    expect(tracked.loadState()).toEqual({ state: 'idle' })
    await expect(tracked.getEngine({} as never)).rejects.toMatchObject({
      code: 'model_unavailable',
    })
    expect(tracked.loadState()).toEqual({ state: 'failed', error: 'no shards' })
    const second = tracked.getEngine({} as never)
    expect(tracked.loadState()).toEqual({ state: 'loading' })
    release()
    await second
    expect(tracked.loadState()).toEqual({ state: 'ready', loadMs: 42 })
  })

  it('reads model_loading as still loading, not as a failure', async () => {
    const tracked = trackEngineLoad(async () => {
      throw new AppError('model_loading', 'The model is loading')
    })
    await expect(tracked.getEngine({} as never)).rejects.toMatchObject({ code: 'model_loading' })
    expect(tracked.loadState()).toEqual({ state: 'loading' })
  })
})
