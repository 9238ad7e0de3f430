/**
 * The chat page (GET /) in headless Chromium, three ways:
 * - against the real Node server (`tsx src/adapters/node/main.ts`, the bundled synthetic
 *   model): a Chinese message gets a 正面/负面 badge and a reply that grows frame by frame;
 *   Stop ends the generation on the server; an English message goes out with the conversation
 *   so far; a second server, with an API key, makes the page ask for it. The model has random
 *   weights, so the tests check labels, counts, growth and what went over the wire, never what
 *   the text says. Screenshot: artifacts/chat-page.png.
 * - against a scripted server (scripted-server.ts): split characters, errors, Esc.
 * - served by wrangler dev (the runtime matrix's `workers.start()`: `npm run dev:worker` on a
 *   snapshot of the sources, local R2 in a temp dir): one reply, streamed from the Worker.
 *   wrangler dev is slow to start (a first run uploads the package), so it starts with the file
 *   and only the last block waits for it.
 */
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { createParser } from 'eventsource-parser'
import type { Browser, Page } from 'playwright-core'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { API_KEY as WORKER_API_KEY, MODEL_ID, ROOT, workers } from '../runtimes/runtimes.ts'
import { freePort, sleep, startServer, type ServerProcess } from '../runtimes/servers.ts'
import {
  badgeLabel,
  collectPageErrors,
  distinctGlyphs,
  replyFrames,
  lastReplyText,
  launchChromium,
} from './browser.ts'
import {
  doneFrame,
  frame,
  json,
  openStream,
  quickReply,
  SCRIPTED_MODEL,
  startScriptedServer,
  type ScriptedServer,
} from './scripted-server.ts'

const API_KEY = 'page-test-key-7d41'
const SCREENSHOT = join(ROOT, 'artifacts', 'chat-page.png')

let browser: Browser
let wrangler: Promise<ServerProcess> | undefined
const pages: Page[] = []
const servers: ServerProcess[] = []

async function startNode(name: string, apiKey: string): Promise<ServerProcess> {
  const port = await freePort()
  return startServer({
    name,
    command: join(ROOT, 'node_modules', '.bin', 'tsx'),
    args: ['src/adapters/node/main.ts'],
    cwd: ROOT,
    env: {
      PORT: String(port),
      HOST: '127.0.0.1',
      MODEL: MODEL_ID,
      API_KEY: apiKey, // '' = none, whatever the test runner's environment says
      CORS_ORIGINS: '',
      // room for a reply long enough to be stopped mid-stream (~100 tokens/s here)
      CONTEXT_LENGTH: '8192',
      MAX_TOKENS_CEILING: '8192',
      MAX_TOKENS_DEFAULT: '',
    },
    port,
    readyTimeoutMs: 60_000,
  })
}

async function health(base: string) {
  const res = await fetch(`${base}/health`)
  expect(res.status).toBe(200)
  return (await res.json()) as { active: number; queued: number; synthetic: boolean }
}

async function newPage(): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 960, height: 900 }, locale: 'en-US' })
  pages.push(page)
  return page
}

/** Settles every start, keeps what started (so afterAll stops it), throws the first failure. */
async function startAll<T extends unknown[]>(starts: {
  [K in keyof T]: Promise<T[K]>
}): Promise<T> {
  const settled = await Promise.allSettled(starts)
  for (const s of settled) {
    if (s.status === 'fulfilled' && isServer(s.value)) servers.push(s.value)
  }
  for (const s of settled) if (s.status === 'rejected') throw s.reason
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as T
}

function isServer(value: unknown): value is ServerProcess {
  return typeof value === 'object' && value !== null && 'pid' in value && 'stop' in value
}

beforeAll(async () => {
  wrangler = workers.start()
  wrangler.then((s) => servers.push(s)).catch(() => {}) // reported by the block that awaits it
  browser = await launchChromium()
}, 30_000)

afterAll(async () => {
  await browser?.close()
  await wrangler?.catch(() => {}) // a start still running: let it finish, then stop it
  await Promise.all(servers.map((s) => s.stop()))
})

afterEach(async ({ task }) => {
  if (task.result?.state === 'fail') {
    for (const s of servers) console.error(`--- ${s.name} ---\n${s.logs().slice(-4000)}`)
  }
  while (pages.length) await pages.pop()!.close()
})

describe('chat page on the Node server', () => {
  let open: ServerProcess // no API key
  let keyed: ServerProcess // API_KEY set

  beforeAll(async () => {
    ;[open, keyed] = await startAll<[ServerProcess, ServerProcess]>([
      startNode('node (open)', ''),
      startNode('node (API_KEY)', API_KEY),
    ])
  }, 90_000)

  afterAll(async () => {
    await Promise.all([open?.stop(), keyed?.stop()]) // free the CPU for what follows
  })

  it('streams a Chinese reply with a badge, stops it, then sends an English message with the history', async () => {
    const page = await newPage()
    await recordChatBodies(page)
    const pageErrors = collectPageErrors(page)
    const home = await page.goto(`${open.base}/`)
    expect(home?.headers()['content-type']).toMatch(/^text\/html/)
    expect(home?.headers()['content-security-policy']).toContain("default-src 'none'")

    // the synthetic model is announced plainly
    const banner = page.locator('#synthetic-banner')
    await banner.waitFor({ state: 'visible', timeout: 10_000 })
    expect(await banner.innerText()).toMatch(/random weights/i)
    expect(await banner.innerText()).toContain(MODEL_ID)
    expect(await page.locator('#model-status').innerText()).toContain(MODEL_ID)

    // settings: a reply long enough to stop mid-stream; temperature by keyboard (0.7 → 0.8)
    await page.locator('summary').click()
    await page.locator('#max-tokens').fill('4000')
    await page.locator('#temperature').focus()
    await page.keyboard.press('ArrowRight')
    expect(await page.locator('#temperature-value').innerText()).toBe('0.8')

    // a Chinese message, sent with Enter
    const zh = '这部电影太好看了，我非常喜欢！'
    await page.locator('#input').fill(zh)
    const chatRequest = page.waitForRequest((r) => r.url().endsWith('/v1/chat'))
    await page.locator('#input').press('Enter')
    const sent = (await chatRequest).postDataJSON()
    expect(sent).toEqual({
      messages: [{ role: 'user', content: zh }],
      temperature: 0.8,
      max_tokens: 4000,
      stream: true,
    })
    expect(await page.locator('#input').inputValue()).toBe('')
    expect(await page.locator('.turn.user .text').last().getAttribute('lang')).toBe('zh')
    expect(['正面', '负面']).toContain(await badgeLabel(page))

    // the reply grows frame after frame, while the server counts one active generation
    await page.waitForFunction(
      () => (document.querySelector('.turn.assistant .text')?.textContent ?? '') !== '',
      null,
      { timeout: 20_000 },
    ) // the first delta: the prompt is read (and the badge computed) first
    const { grew, frames, appends } = await replyFrames(page, 1_000)
    expect(grew).toBeGreaterThanOrEqual(3)
    // one append a frame at most, whatever the token rate: the page lays the reply out once a
    // frame, not once a token (measured: about as many appends as frames that grew)
    expect(appends).toBeLessThanOrEqual(frames + 1)
    expect((await health(open.base)).active).toBe(1)
    expect(await page.locator('.turn.assistant').last().getAttribute('aria-busy')).toBe('true')

    // Stop: the fetch is aborted, the server stops generating
    await page.locator('#stop').click()
    const stoppedAt = Date.now()
    while ((await health(open.base)).active !== 0) {
      expect(Date.now() - stoppedAt, 'generation still active after Stop').toBeLessThan(5_000)
      await sleep(100)
    }
    const afterStop = await lastReplyText(page)
    expect(afterStop.length).toBeGreaterThan(0)
    await sleep(500)
    expect(await lastReplyText(page)).toBe(afterStop) // nothing more arrives
    const stoppedTurn = page.locator('.turn.assistant').last()
    expect(await stoppedTurn.locator('.meta').innerText()).toBe('Stopped.')
    expect(await stoppedTurn.getAttribute('aria-busy')).toBe('false')
    expect(await page.locator('#stop').isDisabled()).toBe(true)

    // an English message (Shift+Enter is a new line, not a send), with the history so far
    await page.locator('#max-tokens').fill('24')
    const input = page.locator('#input')
    await input.fill('I really enjoyed this film.')
    await input.press('Shift+Enter')
    await input.pressSequentially('Thank you!')
    expect(await page.locator('.turn.user').count()).toBe(1)
    const en = 'I really enjoyed this film.\nThank you!'
    expect(await input.inputValue()).toBe(en)
    const enRequest = page.waitForRequest((r) => r.url().endsWith('/v1/chat'))
    await input.press('Enter')
    expect((await enRequest).postDataJSON().messages).toEqual([
      { role: 'user', content: zh },
      { role: 'assistant', content: afterStop },
      { role: 'user', content: en },
    ])
    expect(['positive', 'negative']).toContain(await badgeLabel(page))
    const done = page.locator('.turn.assistant').last().locator('.meta')
    await done.waitFor({ timeout: 30_000 })
    const tokens = Number(/^(\d+) tokens/.exec(await done.innerText())?.[1])
    expect(tokens).toBeGreaterThan(0)
    expect(tokens).toBeLessThanOrEqual(24)

    // what the page shows is exactly what the server streamed, character for character
    const streamed = deltasOf(await lastChatBody(page))
    expect(streamed.length).toBeGreaterThan(0)
    expect(await page.locator('.turn.assistant .text').last().textContent()).toBe(streamed)
    expect(await page.locator('#notice').isHidden()).toBe(true)
    expect(pageErrors()).toEqual([])

    // the Chinese is drawn in real glyphs (without a CJK font both are the same empty box)
    expect(await distinctGlyphs(page, '.turn.user .text[lang="zh"]', ['正', '负'])).toBe(2)
    await mkdir(join(ROOT, 'artifacts'), { recursive: true })
    await page.screenshot({ path: SCREENSHOT, fullPage: true })
  })

  it('asks for the API key on 401, then sends with it as a Bearer token', async () => {
    const page = await newPage()
    collectPageErrors(page) // the 401s are logged by Chromium on purpose; not checked
    await page.goto(`${keyed.base}/`) // the page itself is public
    await page.locator('#synthetic-banner').waitFor({ state: 'visible', timeout: 10_000 })
    expect(await page.locator('#auth').isHidden()).toBe(true)
    await page.locator('summary').click()
    await page.locator('#max-tokens').fill('16') // short replies: this test is about the key

    await page.locator('#input').fill('你好')
    await page.locator('#send').click()
    const key = page.locator('#api-key')
    await key.waitFor({ state: 'visible', timeout: 10_000 })
    expect(await page.locator('#notice-text').innerText()).toMatch(/needs an API key/)
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('api-key') // focus moved
    await expect.poll(() => page.locator('.turn.user .badge').innerText()).toBe('sentiment —')

    // a wrong key is refused, readably
    await key.fill('wrong-key')
    await key.press('Enter')
    await page.locator('#notice-text').filter({ hasText: 'refused the API key' }).waitFor()

    // the right one: the failed message goes out again, with the key
    const chatRequest = page.waitForRequest(
      (r) => r.url().endsWith('/v1/chat') && r.headers().authorization === `Bearer ${API_KEY}`,
    )
    await key.fill(API_KEY)
    await key.press('Enter')
    await chatRequest
    expect(['正面', '负面']).toContain(await badgeLabel(page))
    await page.locator('.turn.assistant .meta').waitFor({ timeout: 30_000 })
    expect((await lastReplyText(page)).length).toBeGreaterThan(0)
    expect(await page.locator('#notice').isHidden()).toBe(true)
    expect(await page.evaluate(() => sessionStorage.getItem('qwen-edge.api-key'))).toBe(API_KEY)
    expect(await page.evaluate(() => localStorage.getItem('qwen-edge.api-key'))).toBeNull()

    // the next message needs no key prompt
    await page.locator('#input').fill('Great, thanks.')
    await page.locator('#input').press('Enter')
    await page.locator('.turn.assistant .meta').nth(1).waitFor({ timeout: 30_000 })
    expect(await page.locator('#auth').isHidden()).toBe(true)
  })
})

describe('chat page on a scripted server', () => {
  let scripted: ScriptedServer
  let page: Page
  let pageErrors: () => string[]

  beforeAll(async () => {
    scripted = await startScriptedServer()
  })

  afterAll(async () => {
    await scripted?.close()
  })

  beforeEach(async () => {
    scripted.chatBodies.length = 0
    page = await newPage()
    pageErrors = collectPageErrors(page, [/Failed to load resource: the server responded/])
    await page.goto(`${scripted.base}/`)
    await page.locator('#model-status').filter({ hasText: 'ready' }).waitFor({ timeout: 10_000 })
  })

  afterEach(() => {
    expect(pageErrors()).toEqual([])
  })

  async function send(text: string): Promise<void> {
    await page.locator('#input').fill(text)
    await page.locator('#input').press('Enter')
  }

  it('decodes characters and CRLF line endings split across network chunks', async () => {
    const text = '你好，世界！😀 ok'
    const wire = Buffer.from(
      frame('delta', { text: text.slice(0, 3) }, '\r\n') +
        ': a comment line\r\n\r\n' +
        frame('delta', { text: text.slice(3) }, '\r\n') +
        doneFrame,
    )
    // cut inside 你 (3 bytes), inside 😀 (4 bytes) and between a \r and its \n
    const cuts = [wire.indexOf(Buffer.from('你')) + 1, wire.indexOf(Buffer.from('😀')) + 2]
    cuts.push(wire.indexOf('\r\n') + 1, wire.length)
    cuts.sort((a, b) => a - b)
    scripted.chat = async (_req, res) => {
      openStream(res)
      let from = 0
      for (const to of cuts) {
        res.write(wire.subarray(from, to))
        from = to
        await sleep(60) // separate network reads
      }
      res.end()
    }
    await send('split me')
    await page.locator('.turn.assistant .meta').waitFor({ timeout: 10_000 })
    expect(await page.locator('.turn.assistant .text').textContent()).toBe(text)
    expect(await page.locator('.turn.assistant .text').getAttribute('lang')).toBe('zh')
    expect(await page.locator('#synthetic-banner').isHidden()).toBe(true) // real weights
    expect(await page.locator('#model-status').innerText()).toContain(SCRIPTED_MODEL)
    expect(await page.locator('.turn.user .badge').innerText()).toBe('positive 90%')
  })

  it('explains 429 and 503, and Retry sends the same conversation again', async () => {
    scripted.chat = (_req, res) =>
      json(
        res,
        429,
        { error: { code: 'queue_full', message: 'The server is busy' } },
        { 'Retry-After': '3' },
      )
    await send('hello')
    const notice = page.locator('#notice-text')
    await notice.filter({ hasText: 'busy' }).waitFor({ timeout: 10_000 })
    expect(await notice.innerText()).toContain('Try again in 3 s')
    expect(await page.locator('.turn.assistant').count()).toBe(0)

    scripted.chat = (_req, res) =>
      json(
        res,
        503,
        { error: { code: 'model_loading', message: 'Loading' } },
        { 'Retry-After': '5' },
      )
    await page.locator('#retry').click()
    await notice.filter({ hasText: 'still loading' }).waitFor({ timeout: 10_000 })
    expect(await notice.innerText()).toContain('Try again in 5 s')

    scripted.chat = quickReply('Hi there.')
    await page.locator('#retry').click()
    await page.locator('.turn.assistant .meta').waitFor({ timeout: 10_000 })
    expect(await lastReplyText(page)).toBe('Hi there.')
    expect(await page.locator('#notice').isHidden()).toBe(true)
    const once = [{ role: 'user', content: 'hello' }]
    expect(scripted.chatBodies.map((b) => b.messages)).toEqual([once, once, once])
    expect(await page.locator('.turn.user').count()).toBe(1)
  })

  it('shows an error event that arrives mid-stream', async () => {
    scripted.chat = (_req, res) => {
      openStream(res)
      res.end(
        frame('delta', { text: 'Partial' }) +
          frame('error', { error: { code: 'internal', message: 'The engine fell over' } }),
      )
    }
    await send('hello')
    await page.locator('#notice-text').filter({ hasText: 'The engine fell over' }).waitFor()
    const turn = page.locator('.turn.assistant')
    expect(await turn.locator('.text').innerText()).toBe('Partial')
    expect(await turn.locator('.meta').innerText()).toBe('Interrupted.')
    expect(await turn.getAttribute('class')).toContain('failed')
  })

  it('Esc stops a reply: the request is closed on the server', async () => {
    let closed: number | undefined
    scripted.chat = async (_req, res) => {
      openStream(res)
      res.on('close', () => (closed = Date.now()))
      while (closed === undefined) {
        res.write(frame('delta', { text: 'word ' }))
        await sleep(30)
      }
    }
    await send('talk forever')
    await page.waitForFunction(
      () => (document.querySelector('.turn.assistant .text')?.textContent ?? '').length > 20,
    )
    expect(await page.locator('#stop').isEnabled()).toBe(true)
    const pressed = Date.now()
    await page.keyboard.press('Escape')
    while (closed === undefined) {
      expect(Date.now() - pressed, 'request still open after Esc').toBeLessThan(3_000)
      await sleep(20)
    }
    await page.locator('.turn.assistant .meta').filter({ hasText: 'Stopped.' }).waitFor()
    expect(await page.locator('#notice').isHidden()).toBe(true)
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('input')
  })
})

describe('chat page on wrangler dev', () => {
  let worker: ServerProcess

  beforeAll(async () => {
    worker = await wrangler!
  }, 240_000)

  it('serves the page, which streams a reply from the Worker', async () => {
    const res = await fetch(`${worker.base}/`, { headers: { accept: 'text/html' } })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/html/)
    expect(res.headers.get('content-security-policy')).toMatch(/script-src 'sha256-/)
    expect(await res.text()).toContain('<ol id="log" role="log" aria-live="polite"')

    const page = await newPage()
    const errors = collectPageErrors(page)
    // this server has an API key: put it where the page's key field would
    await page.addInitScript(
      (key) => sessionStorage.setItem('qwen-edge.api-key', key),
      WORKER_API_KEY,
    )
    await page.goto(`${worker.base}/`)
    await page.locator('#synthetic-banner').waitFor({ state: 'visible', timeout: 20_000 })
    expect(await page.locator('#synthetic-model').innerText()).toBe(MODEL_ID)
    await page.locator('summary').click()
    await page.locator('#max-tokens').fill('16')
    await page.locator('#input').fill('今天天气很好')
    await page.locator('#input').press('Enter')
    expect(['正面', '负面']).toContain(await badgeLabel(page, 60_000))
    await page.locator('.turn.assistant .meta').waitFor({ timeout: 60_000 })
    expect(await page.locator('.turn.assistant .meta').innerText()).toMatch(/^\d+ tokens/)
    expect((await lastReplyText(page)).length).toBeGreaterThan(0)
    expect(await page.locator('#notice').isHidden()).toBe(true)
    expect(errors()).toEqual([])
  })
})

/**
 * Keeps a copy of every /v1/chat response body's bytes (the page reads the other branch of a
 * tee), so a test can compare what the page shows with what the server sent. Playwright's own
 * `response.body()` cannot be used: Chromium hands event-stream bodies over as windows-1252 text.
 */
async function recordChatBodies(page: Page): Promise<void> {
  await page.addInitScript(() => {
    const bodies: number[][] = []
    ;(window as unknown as { chatBodies: number[][] }).chatBodies = bodies
    const fetch = window.fetch.bind(window)
    window.fetch = async (input, init) => {
      const res = await fetch(input, init)
      if (!String(input).endsWith('/v1/chat') || !res.body) return res
      const [forPage, copy] = res.body.tee()
      const bytes: number[] = []
      bodies.push(bytes)
      copy
        .pipeTo(new WritableStream({ write: (chunk: Uint8Array) => void bytes.push(...chunk) }))
        .catch(() => {}) // aborted by Stop: the page sees that on its own branch
      return new Response(forPage, {
        status: res.status,
        statusText: res.statusText,
        headers: res.headers,
      })
    }
  })
}

/** The last /v1/chat body recorded by {@link recordChatBodies}, decoded as a whole. */
async function lastChatBody(page: Page): Promise<string> {
  const bytes = await page.evaluate(() => {
    const bodies = (window as unknown as { chatBodies: number[][] }).chatBodies
    return bodies[bodies.length - 1]
  })
  return Buffer.from(bytes).toString('utf8')
}

/** The text deltas of an SSE body, joined. */
function deltasOf(body: string): string {
  let text = ''
  const parser = createParser({
    onEvent: (e) => {
      if (e.event === 'delta') text += (JSON.parse(e.data) as { text: string }).text
    },
  })
  parser.feed(body)
  return text
}
