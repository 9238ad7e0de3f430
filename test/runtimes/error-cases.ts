/**
 * The malformed-request table (issue 4, "Errors"): each request, the status and the stable
 * error code it must get. The server runs with CONTEXT_LENGTH and MAX_TOKENS_CEILING both
 * CONTEXT_LENGTH (runtimes.ts) and the default 256 KiB body limit.
 */
import { chunkedBody, invalidUtf8Json } from './client.ts'
import { CONTEXT_LENGTH } from './runtimes.ts'

export interface ErrorCase {
  name: string
  path: string
  /** The body, or a function making it (a stream can be sent only once). */
  body: unknown
  headers?: Record<string, string>
  status: number
  code: string
  /** The OpenAI-compatible route answers in OpenAI's error shape. */
  openai?: boolean
}

const user = (content: unknown) => [{ role: 'user', content }]
const chat = (extra: Record<string, unknown>) => ({ messages: user('hello'), ...extra })
/** About 6 tokens a repeat, so 1.2x the context on its own (177 KB, under the body limit). */
const longText = 'lorem ipsum dolor sit amet '.repeat(Math.ceil(CONTEXT_LENGTH / 5))
/** With the prompt's own tokens, over the context; alone, within the ceiling. */
const nearCeiling = CONTEXT_LENGTH - 2
const bigText = 'a'.repeat(300 * 1024) // over the 256 KiB body limit

// One case per line, as a table (hence prettier-ignore).
// prettier-ignore
export const ERROR_CASES: ErrorCase[] = [
  // Not JSON, or not an object
  { name: 'sentiment: truncated JSON', path: '/v1/sentiment', body: '{"text":', status: 400, code: 'bad_request' },
  { name: 'sentiment: empty body', path: '/v1/sentiment', body: '', status: 400, code: 'bad_request' },
  { name: 'sentiment: JSON array', path: '/v1/sentiment', body: '[]', status: 400, code: 'bad_request' },
  { name: 'chat: JSON string', path: '/v1/chat', body: '"hello"', status: 400, code: 'bad_request' },
  { name: 'chat: trailing garbage', path: '/v1/chat', body: '{"messages":[]}}', status: 400, code: 'bad_request' },
  // Invalid UTF-8
  { name: 'sentiment: invalid UTF-8', path: '/v1/sentiment', body: invalidUtf8Json('text'), status: 400, code: 'bad_request' },
  { name: 'chat: invalid UTF-8', path: '/v1/chat', body: invalidUtf8Json('messages'), status: 400, code: 'bad_request' },
  { name: 'analyze: invalid UTF-8', path: '/analyze', body: invalidUtf8Json('text'), status: 400, code: 'bad_request' },
  // Wrong types, empty text
  { name: 'sentiment: no text', path: '/v1/sentiment', body: {}, status: 400, code: 'bad_request' },
  { name: 'sentiment: text is a number', path: '/v1/sentiment', body: { text: 42 }, status: 400, code: 'bad_request' },
  { name: 'sentiment: empty text', path: '/v1/sentiment', body: { text: '' }, status: 400, code: 'bad_request' },
  { name: 'sentiment: blank text', path: '/v1/sentiment', body: { text: ' \n\t ' }, status: 400, code: 'bad_request' },
  { name: 'sentiment: texts is a string', path: '/v1/sentiment', body: { texts: 'abc' }, status: 400, code: 'bad_request' },
  { name: 'sentiment: empty texts', path: '/v1/sentiment', body: { texts: [] }, status: 400, code: 'bad_request' },
  { name: 'sentiment: 33 texts', path: '/v1/sentiment', body: { texts: Array(33).fill('ok') }, status: 400, code: 'bad_request' },
  { name: 'sentiment: text and texts', path: '/v1/sentiment', body: { text: 'a', texts: ['b'] }, status: 400, code: 'bad_request' },
  { name: 'sentiment: one label', path: '/v1/sentiment', body: { text: 'a', labels: ['only'] }, status: 400, code: 'invalid_labels' },
  { name: 'sentiment: duplicate labels', path: '/v1/sentiment', body: { text: 'a', labels: ['x', 'x'] }, status: 400, code: 'invalid_labels' },
  { name: 'sentiment: examples not an array', path: '/v1/sentiment', body: { text: 'a', examples: 'b' }, status: 400, code: 'bad_request' },
  { name: 'sentiment: example label not a label', path: '/v1/sentiment', body: { text: 'a', labels: ['x', 'y'], examples: [{ text: 'b', label: 'z' }] }, status: 400, code: 'bad_request' },
  { name: 'sentiment: 17 examples', path: '/v1/sentiment', body: { text: 'a', labels: ['x', 'y'], examples: Array(17).fill({ text: 'b', label: 'x' }) }, status: 400, code: 'bad_request' },
  { name: 'analyze: empty text', path: '/analyze', body: { text: '' }, status: 400, code: 'bad_request' },
  { name: 'analyze: bad stream query', path: '/analyze?stream=maybe', body: { text: 'hi' }, status: 400, code: 'bad_request' },
  // Messages
  { name: 'chat: empty messages', path: '/v1/chat', body: { messages: [] }, status: 400, code: 'bad_request' },
  { name: 'chat: messages is an object', path: '/v1/chat', body: { messages: { role: 'user' } }, status: 400, code: 'bad_request' },
  { name: 'chat: unknown role', path: '/v1/chat', body: { messages: [{ role: 'wizard', content: 'hi' }] }, status: 400, code: 'bad_request' },
  { name: 'chat: content is a number', path: '/v1/chat', body: { messages: user(7) }, status: 400, code: 'bad_request' },
  { name: 'chat: message is null', path: '/v1/chat', body: { messages: [null] }, status: 400, code: 'bad_request' },
  { name: 'chat: only blank content', path: '/v1/chat', body: { messages: user('   ') }, status: 400, code: 'bad_request' },
  // Absurd numbers
  { name: 'chat: max_tokens 0', path: '/v1/chat', body: chat({ max_tokens: 0 }), status: 400, code: 'bad_request' },
  { name: 'chat: max_tokens 1e9', path: '/v1/chat', body: chat({ max_tokens: 1e9 }), status: 400, code: 'bad_request' },
  { name: 'chat: max_tokens above ceiling', path: '/v1/chat', body: chat({ max_tokens: CONTEXT_LENGTH + 1 }), status: 400, code: 'bad_request' },
  { name: 'chat: max_tokens 1.5', path: '/v1/chat', body: chat({ max_tokens: 1.5 }), status: 400, code: 'bad_request' },
  { name: 'chat: temperature -1', path: '/v1/chat', body: chat({ temperature: -1 }), status: 400, code: 'bad_request' },
  { name: 'chat: temperature "hot"', path: '/v1/chat', body: chat({ temperature: 'hot' }), status: 400, code: 'bad_request' },
  { name: 'chat: temperature 1e400 (Infinity)', path: '/v1/chat', body: '{"messages":[{"role":"user","content":"hi"}],"temperature":1e400}', status: 400, code: 'bad_request' },
  { name: 'chat: top_p 0', path: '/v1/chat', body: chat({ top_p: 0 }), status: 400, code: 'bad_request' },
  { name: 'chat: top_k -5', path: '/v1/chat', body: chat({ top_k: -5 }), status: 400, code: 'bad_request' },
  { name: 'chat: repetition_penalty 0', path: '/v1/chat', body: chat({ repetition_penalty: 0 }), status: 400, code: 'bad_request' },
  { name: 'chat: seed 1e300', path: '/v1/chat', body: chat({ seed: 1e300 }), status: 400, code: 'bad_request' },
  { name: 'chat: 9 stop strings', path: '/v1/chat', body: chat({ stop: Array.from({ length: 9 }, (_, i) => `s${i}`) }), status: 400, code: 'bad_request' },
  { name: 'chat: stream "yes"', path: '/v1/chat', body: chat({ stream: 'yes' }), status: 400, code: 'bad_request' },
  // OpenAI-compatible route, OpenAI's error shape
  { name: 'completions: truncated JSON', path: '/v1/chat/completions', body: '{"model":', status: 400, code: 'bad_request', openai: true },
  { name: 'completions: empty messages', path: '/v1/chat/completions', body: { model: 'm', messages: [] }, status: 400, code: 'bad_request', openai: true },
  { name: 'completions: n 2', path: '/v1/chat/completions', body: chat({ n: 2 }), status: 400, code: 'bad_request', openai: true },
  { name: 'completions: stream_options "x"', path: '/v1/chat/completions', body: chat({ stream: true, stream_options: 'x' }), status: 400, code: 'bad_request', openai: true },
  // Too large
  { name: 'sentiment: 300 KiB body', path: '/v1/sentiment', body: { text: bigText }, status: 413, code: 'payload_too_large' },
  { name: 'chat: 300 KiB body', path: '/v1/chat', body: { messages: user(bigText) }, status: 413, code: 'payload_too_large' },
  { name: 'sentiment: 300 KiB chunked body', path: '/v1/sentiment', body: () => chunkedBody(300 * 1024), status: 413, code: 'payload_too_large' },
  // Beyond the context
  { name: 'chat: prompt + max_tokens > context', path: '/v1/chat', body: chat({ max_tokens: nearCeiling }), status: 400, code: 'context_length_exceeded' },
  { name: 'chat: prompt alone > context', path: '/v1/chat', body: { messages: user(longText) }, status: 400, code: 'context_length_exceeded' },
  { name: 'completions: prompt + max_tokens > context', path: '/v1/chat/completions', body: chat({ max_tokens: nearCeiling, stream: true }), status: 400, code: 'context_length_exceeded', openai: true },
  { name: 'analyze: prompt + max_tokens > context', path: '/analyze', body: { text: 'hi', max_tokens: nearCeiling }, status: 400, code: 'context_length_exceeded' },
  { name: 'sentiment: text > context', path: '/v1/sentiment', body: { text: longText }, status: 400, code: 'context_length_exceeded' },
  // Routes that do not exist
  { name: 'unknown route', path: '/v1/nothing-here', body: {}, status: 404, code: 'not_found' },
]
