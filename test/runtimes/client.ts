/**
 * A small HTTP client for the matrix: authorised requests, JSON, server-sent events read with
 * a real SSE parser (eventsource-parser), and /health polling.
 */
import { EventSourceParserStream } from 'eventsource-parser/stream'
import type { EventSourceMessage } from 'eventsource-parser'
import { API_KEY } from './runtimes.ts'
import { sleep } from './servers.ts'

export const AUTH = { authorization: `Bearer ${API_KEY}` }

export interface Target {
  base: string
}

export interface RequestOptions {
  method?: string
  headers?: Record<string, string>
  /** Sent as is when a string, bytes or a stream; otherwise as JSON. */
  body?: unknown
  auth?: boolean
  signal?: AbortSignal
}

export async function request(t: Target, path: string, o: RequestOptions = {}): Promise<Response> {
  const raw =
    typeof o.body === 'string' || o.body instanceof Uint8Array || o.body instanceof ReadableStream
  const init: RequestInit & { duplex?: 'half' } = {
    method: o.method ?? (o.body === undefined ? 'GET' : 'POST'),
    headers: {
      ...(o.body !== undefined && { 'content-type': 'application/json' }),
      ...(o.auth !== false && AUTH),
      ...o.headers,
    },
    body: o.body === undefined ? undefined : raw ? (o.body as BodyInit) : JSON.stringify(o.body),
    signal: o.signal ?? AbortSignal.timeout(45_000),
  }
  if (o.body instanceof ReadableStream) init.duplex = 'half' // a streamed (chunked) upload
  return fetch(`${t.base}${path}`, init)
}

export const post = (t: Target, path: string, body: unknown, o: RequestOptions = {}) =>
  request(t, path, { ...o, body })

/** Parses a JSON response, saying what came instead when it is not JSON. */
export async function json<T = any>(res: Response): Promise<T> {
  const text = await res.text()
  try {
    return JSON.parse(text) as T
  } catch {
    throw new Error(`expected JSON, got ${res.status} ${res.headers.get('content-type')}: ${text}`)
  }
}

export interface Health {
  status: string
  model: string
  synthetic: boolean
  load_ms: number
  active: number
  queued: number
  /** KV positions the running generations reserved (prompt + max_tokens each). */
  kv_reserved_tokens?: number
  decode: {
    steps: number
    runs: number
    largest_batch: number
    path?: 'decoder' | 'graph'
    kernels?: string
  }
}

export async function health(t: Target): Promise<Health> {
  const res = await request(t, '/health', { auth: false })
  if (res.status !== 200) throw new Error(`/health answered ${res.status}: ${await res.text()}`)
  return json<Health>(res)
}

/** Polls `/health` until `done(health)`; returns how long that took, or throws after `ms`. */
export async function waitForHealth(
  t: Target,
  done: (h: Health) => boolean,
  ms: number,
  what: string,
): Promise<number> {
  const started = Date.now()
  let last: Health | undefined
  while (Date.now() - started < ms) {
    last = await health(t)
    if (done(last)) return Date.now() - started
    await sleep(50)
  }
  throw new Error(`${what}: not within ${ms} ms; last /health: ${JSON.stringify(last)}`)
}

/** The events of an SSE response, one at a time. */
export function eventReader(res: Response) {
  if (!res.body) throw new Error('response has no body')
  const reader = res.body
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream({ onError: 'terminate' }))
    .getReader()
  return {
    async next(): Promise<EventSourceMessage | undefined> {
      const { done, value } = await reader.read()
      return done ? undefined : value
    },
    cancel: () => reader.cancel().catch(() => {}),
  }
}

/** Every event of an SSE response, until the server ends it. */
export async function readEvents(res: Response): Promise<EventSourceMessage[]> {
  const events: EventSourceMessage[] = []
  const reader = eventReader(res)
  for (let e = await reader.next(); e; e = await reader.next()) events.push(e)
  return events
}

/** Invalid UTF-8 inside an otherwise well-formed JSON body: `{"<field>":"\xff\xfe"}`. */
export function invalidUtf8Json(field: string): Uint8Array {
  const enc = new TextEncoder()
  return new Uint8Array([...enc.encode(`{"${field}":"`), 0xff, 0xfe, 0xc3, ...enc.encode('"}')])
}

/** A chunked body (no Content-Length) of `bytes` bytes, so only the streaming check can stop it. */
export function chunkedBody(bytes: number): ReadableStream<Uint8Array> {
  const chunk = new TextEncoder().encode('{"text":"' + 'a'.repeat(16 * 1024 - 10))
  let sent = 0
  return new ReadableStream({
    pull(controller) {
      if (sent >= bytes) return controller.close()
      controller.enqueue(chunk)
      sent += chunk.byteLength
    },
  })
}
