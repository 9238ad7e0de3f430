/** Building the app around a fake engine, sending JSON, and reading SSE with a real parser. */
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { serve, type ServerType } from '@hono/node-server'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import type { AppConfig } from '../../src/app.ts'
import { createApp } from '../../src/app.ts'
import { FakeEngine } from './fake-engine.ts'

export function makeApp(engine = new FakeEngine(), config: Partial<AppConfig> = {}) {
  return { app: createApp({ getEngine: async () => engine, config }), engine }
}

export function post(
  app: { request: (path: string, init: RequestInit) => Response | Promise<Response> },
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  init: RequestInit = {},
): Promise<Response> {
  return Promise.resolve(
    app.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body:
        typeof body === 'string'
          ? body
          : body instanceof Uint8Array
            ? new Blob([new Uint8Array(body)])
            : JSON.stringify(body),
      ...init,
    }),
  )
}

/** Every SSE message of a response body, parsed by eventsource-parser. */
export async function readSSE(res: Response): Promise<EventSourceMessage[]> {
  const events: EventSourceMessage[] = []
  const parser = createParser({ onEvent: (e) => events.push(e) })
  const decoder = new TextDecoder()
  const reader = res.body!.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    parser.feed(decoder.decode(value, { stream: true }))
  }
  return events
}

/**
 * Reads SSE messages until `stop` says so, waits `settleMs` (so the server is no longer in the
 * middle of a write), then cancels the body: the client leaves.
 */
export async function readSSEUntil(
  res: Response,
  stop: (e: EventSourceMessage, all: EventSourceMessage[]) => boolean,
  settleMs = 0,
): Promise<EventSourceMessage[]> {
  const events: EventSourceMessage[] = []
  let done = false
  const parser = createParser({
    onEvent: (e) => {
      events.push(e)
      if (!done && stop(e, events)) done = true
    },
  })
  const decoder = new TextDecoder()
  const reader = res.body!.getReader()
  while (!done) {
    const r = await reader.read()
    if (r.done) break
    parser.feed(decoder.decode(r.value, { stream: true }))
  }
  if (settleMs > 0) await new Promise((resolve) => setTimeout(resolve, settleMs))
  await reader.cancel()
  return events
}

/** Resolves when `check` passes, or fails after `ms`. */
export async function eventually(check: () => boolean, ms = 2000): Promise<void> {
  const until = Date.now() + ms
  while (!check()) {
    if (Date.now() > until) throw new Error(`condition not met within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/** Serves `app` on a real socket (127.0.0.1, a free port); `close` also drops open connections. */
export async function startServer(app: {
  fetch: (request: Request) => Response | Promise<Response>
}): Promise<{ base: string; close: () => Promise<void> }> {
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s))
  })
  const { port } = server.address() as AddressInfo
  return {
    base: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        ;(server as Server).closeAllConnections()
      }),
  }
}
