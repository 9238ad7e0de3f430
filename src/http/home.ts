/**
 * `GET /` (public, like /health): the chat page for browsers, and what this server is and which
 * routes it has, as JSON, for everyone else. Which one is decided by the Accept header: a
 * browser's navigation ranks text/html first; `fetch`, curl and API clients send `*\/*` or
 * application/json and get the JSON, as before the page existed.
 */
import { Hono, type Env } from 'hono'
import { chatPageCsp, PAGE_MAX_TOKENS_DEFAULT, renderChatPage } from './page/chat-page.ts'
import type { RouteDeps } from './route-deps.ts'

export const ROUTES = [
  'GET /',
  'POST /v1/sentiment',
  'POST /v1/chat',
  'POST /v1/chat/completions',
  'POST /analyze',
  'GET /v1/models',
  'GET /health',
] as const

export function homeRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().get('/', async (c) => {
    const config = deps.config(c)
    c.header('Vary', 'Accept')
    if (!prefersHtml(c.req.header('accept'))) {
      return c.json({ name: 'qwen-edge', model: config.modelId ?? null, routes: ROUTES })
    }
    const page = renderChatPage({
      maxTokensCeiling: config.maxTokensCeiling,
      maxTokensDefault: config.maxTokensDefault ?? PAGE_MAX_TOKENS_DEFAULT,
    })
    return c.html(page, 200, {
      'Content-Security-Policy': await chatPageCsp(),
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      'Cache-Control': 'no-cache',
    })
  })
}

/**
 * Whether an Accept header ranks text/html above application/json. Each type takes the quality
 * of its most specific match (`text/html`, then `text/*`, then `*\/*`); a tie is JSON.
 */
export function prefersHtml(accept: string | undefined): boolean {
  if (!accept) return false
  const ranges = accept.split(',').map((part) => {
    const [range = '', ...params] = part.split(';').map((s) => s.trim().toLowerCase())
    const q = params.find((p) => p.startsWith('q='))
    const quality = q === undefined ? 1 : Number(q.slice(2))
    return { range, quality: Number.isFinite(quality) ? quality : 0 }
  })
  const qualityOf = (type: string) => {
    const [major] = type.split('/')
    for (const candidate of [type, `${major}/*`, '*/*']) {
      const match = ranges.find((r) => r.range === candidate)
      if (match) return match.quality
    }
    return 0
  }
  const html = qualityOf('text/html')
  return html > 0 && html > qualityOf('application/json')
}
