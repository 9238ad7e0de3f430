/**
 * Headless Chromium for the page tests: Debian's `chromium` (installed by .ci/run with apt)
 * driven by playwright-core. Nothing is downloaded: playwright's own browser builds are never
 * used. Plus the few page helpers the tests share.
 */
import { existsSync } from 'node:fs'
import { chromium, type Browser, type Page } from 'playwright-core'
import { expect } from 'vitest'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `No Chromium at ${CHROMIUM}: install it (apt-get install chromium, as .ci/run does) ` +
        'or point CHROMIUM_PATH at one',
    )
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}

/**
 * Fails the test on anything the page logs as an error (a CSP violation, an exception), except
 * failed requests the test provoked on purpose (`allowed` matches their console text).
 */
export function collectPageErrors(page: Page, allowed: RegExp[] = []): () => string[] {
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`))
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    if (allowed.some((re) => re.test(msg.text()))) return
    errors.push(`console.error: ${msg.text()}`)
  })
  return () => errors
}

/** The text of the newest reply bubble. */
export async function lastReplyText(page: Page): Promise<string> {
  return page.locator('.turn.assistant .text').last().innerText()
}

/**
 * Samples the newest reply's length once per animation frame for `ms` and returns how many
 * frames saw it grow (streaming shows several; a reply rendered at once shows at most one).
 */
export async function framesWithGrowth(page: Page, ms: number): Promise<number> {
  return page.evaluate(
    (ms) =>
      new Promise<number>((resolve) => {
        const replies = document.querySelectorAll('.turn.assistant .text')
        const reply = replies[replies.length - 1]
        let last = reply?.textContent?.length ?? 0
        let grew = 0
        const started = performance.now()
        const frame = () => {
          const now = reply?.textContent?.length ?? 0
          if (now > last) grew++
          last = now
          if (performance.now() - started < ms) requestAnimationFrame(frame)
          else resolve(grew)
        }
        requestAnimationFrame(frame)
      }),
    ms,
  )
}

/** Waits until the newest user message's badge has a label, and returns it. */
export async function badgeLabel(page: Page, timeoutMs = 20_000): Promise<string> {
  const badge = page.locator('.turn.user').last().locator('.badge[data-label]')
  await badge.waitFor({ timeout: timeoutMs })
  const label = await badge.getAttribute('data-label')
  const text = await badge.innerText()
  expect(text).toMatch(/^\S+ \d{1,3}%$/) // "正面 87%"
  return label ?? ''
}
