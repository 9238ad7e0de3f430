/**
 * A scripted server for the page tests: the real page (GET / from the app, with its headers and
 * CSP), but /health, /v1/sentiment and /v1/chat answered by hand, so a test can do what the real
 * server never does: split characters and CRLF line endings across network writes, fail with
 * 429 / 503 / a mid-stream error, stream until the client leaves, report a real-weight model.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { getRequestListener } from '@hono/node-server'
import { createApp } from '../../src/app.ts'
import { FakeEngine } from '../http/fake-engine.ts'

export type ChatHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void> | void

export interface ScriptedServer {
  base: string
  /** What POST /v1/chat does next. */
  chat: ChatHandler
  /** Every /v1/chat request body, in order. */
  chatBodies: { messages: unknown[] }[]
  close(): Promise<void>
}

/** What /health says: a ready model with real weights (no synthetic banner). */
export const SCRIPTED_MODEL = 'scripted/real-weights'

export async function startScriptedServer(): Promise<ScriptedServer> {
  const serveApp = getRequestListener(createApp({ getEngine: async () => new FakeEngine() }).fetch)
  const server = createServer((req, res) => void route(req, res))
  const scripted: ScriptedServer = {
    base: '',
    chat: (_req, res) => json(res, 500, { error: { code: 'internal', message: 'no script' } }),
    chatBodies: [],
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = req.url ?? '/'
    if (req.method === 'GET' && path === '/health') {
      const health = { status: 'ok', model: SCRIPTED_MODEL, synthetic: false, load_ms: 1 }
      return json(res, 200, { ...health, active: 0, queued: 0 })
    }
    if (req.method === 'POST' && (path === '/v1/chat' || path === '/v1/sentiment')) {
      let raw = ''
      for await (const chunk of req) raw += chunk
      if (path === '/v1/sentiment') {
        const scores = { positive: 0.9, negative: 0.1 }
        return json(res, 200, { label: 'positive', score: 0.9, scores })
      }
      scripted.chatBodies.push(JSON.parse(raw) as { messages: unknown[] })
      return scripted.chat(req, res)
    }
    return serveApp(req, res)
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  scripted.base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return scripted
}

export function json(res: ServerResponse, status: number, body: unknown, headers = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers })
  res.end(JSON.stringify(body))
}

export function openStream(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  res.flushHeaders()
}

/** One SSE frame as /v1/chat writes it (`eol` '\r\n' for CRLF line endings). */
export const frame = (event: string, data: unknown, eol = '\n') =>
  `event: ${event}${eol}data: ${JSON.stringify(data)}${eol}${eol}`

export const doneFrame = frame('done', {
  finish_reason: 'stop',
  usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
})

/** Answers with one quick reply. */
export const quickReply =
  (text: string): ChatHandler =>
  (_req, res) => {
    openStream(res)
    res.end(frame('delta', { text }) + doneFrame)
  }
