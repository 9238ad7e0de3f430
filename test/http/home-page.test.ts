/**
 * `GET /`: the chat page for browsers (Accept ranks text/html first), the JSON service info for
 * everyone else; the page's CSP allows exactly its inline script and style. The page's
 * behaviour is tested in a real browser: test/browser/.
 */
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { prefersHtml } from '../../src/http/home.ts'
import { CHAT_PAGE_SCRIPT } from '../../src/http/page/chat-page-script.ts'
import { CHAT_PAGE_STYLE } from '../../src/http/page/chat-page-style.ts'
import { makeApp } from './helpers.ts'

/** What Chromium sends when it navigates to a page. */
const BROWSER_ACCEPT =
  'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest('base64')

describe('GET /', () => {
  it('serves the chat page to a browser, with a CSP naming its inline script and style', async () => {
    const res = await makeApp().app.request('/', { headers: { accept: BROWSER_ACCEPT } })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('text/html; charset=UTF-8')
    expect(res.headers.get('vary')).toBe('Accept')
    expect(res.headers.get('x-content-type-options')).toBe('nosniff')
    const html = await res.text()
    expect(html).toMatch(/^<!doctype html>\n<html lang="en">/)

    const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1])
    const styles = [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1])
    expect(scripts).toEqual([CHAT_PAGE_SCRIPT])
    expect(styles).toEqual([CHAT_PAGE_STYLE])
    expect(html).not.toMatch(/<script [^>]*src=|<link [^>]*stylesheet|https?:\/\//) // no assets
    expect(html).not.toMatch(/ style="/) // inline style attributes would need 'unsafe-inline'

    const csp = res.headers.get('content-security-policy') ?? ''
    const directives = Object.fromEntries(
      csp.split(';').map((d) => {
        const [name, ...values] = d.trim().split(/\s+/)
        return [name, values.join(' ')]
      }),
    )
    expect(directives).toEqual({
      'default-src': "'none'",
      'script-src': `'sha256-${sha256(CHAT_PAGE_SCRIPT)}'`,
      'style-src': `'sha256-${sha256(CHAT_PAGE_STYLE)}'`,
      'connect-src': "'self'",
      'img-src': 'data:',
      'base-uri': "'none'",
      'form-action': "'none'",
      'frame-ancestors': "'none'",
    })
  })

  it('inlines a script that parses and holds no template-literal syntax', () => {
    expect(() => new Function(CHAT_PAGE_SCRIPT)).not.toThrow()
    expect(CHAT_PAGE_SCRIPT).not.toMatch(/`|\$\{|<\/script/i)
    expect(CHAT_PAGE_STYLE).not.toMatch(/`|\$\{|<\/style/i)
  })

  it('bounds the max tokens field by the server ceiling and starts at its default', async () => {
    const html = async (config: object) =>
      (
        await makeApp(undefined, config).app.request('/', { headers: { accept: 'text/html' } })
      ).text()
    expect(await html({ maxTokensCeiling: 1000, maxTokensDefault: 300 })).toContain(
      '<input id="max-tokens" type="number" min="1" max="1000" step="1" value="300">',
    )
    expect(await html({ maxTokensCeiling: 100 })).toContain('max="100" step="1" value="100"')
    expect(await html({})).toContain('max="2048" step="1" value="256"')
  })

  it('keeps the JSON service info for API clients', async () => {
    for (const accept of [
      undefined,
      '*/*',
      'application/json',
      'application/json, text/html;q=0.5',
    ]) {
      const res = await makeApp().app.request('/', { headers: accept ? { accept } : {} })
      expect(res.status, String(accept)).toBe(200)
      expect(res.headers.get('content-type')).toMatch(/^application\/json/)
      expect(res.headers.get('vary')).toBe('Accept')
      const body = await res.json()
      expect(body).toMatchObject({ name: 'qwen-edge', model: null })
      expect(body.routes).toContain('POST /v1/chat')
    }
  })

  it('serves the page without an API key when one is configured (its API calls need it)', async () => {
    const { app } = makeApp(undefined, { apiKey: 'secret' })
    const page = await app.request('/', { headers: { accept: BROWSER_ACCEPT } })
    expect(page.status).toBe(200)
    expect(await page.text()).toContain('id="api-key"')
    const head = await app.request('/', { method: 'HEAD', headers: { accept: BROWSER_ACCEPT } })
    expect(head.status).toBe(200)
    expect(head.headers.get('content-type')).toMatch(/^text\/html/)
    const chat = await app.request('/v1/chat', { method: 'POST', body: '{}' })
    expect(chat.status).toBe(401)
  })
})

describe('prefersHtml', () => {
  it.each([
    [BROWSER_ACCEPT, true],
    ['text/html', true],
    ['text/*', true],
    ['TEXT/HTML; q=0.9, */*; q=0.1', true],
    [undefined, false],
    ['', false],
    ['*/*', false],
    ['application/json', false],
    ['application/json, text/html', false], // a tie is JSON
    ['text/html;q=0, */*', false],
    ['text/html;q=0.4, application/json;q=0.5', false],
    ['text/html;q=0.6, application/*;q=0.5', true],
    ['text/html;q=bogus', false],
  ])('%j → %s', (accept, expected) => {
    expect(prefersHtml(accept)).toBe(expected)
  })
})
