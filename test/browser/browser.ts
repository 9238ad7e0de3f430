/**
 * Headless Chromium for the page tests: the build inside the npm package @sparticuz/chromium,
 * driven by playwright-core, so `npm ci` is all a machine needs (playwright's own browser
 * downloads are never used). The Chinese text gets a CJK font from the npm package
 * @embedpdf/fonts-sc (Noto Sans Hans, OFL) through a fontconfig file of our own. Plus the few
 * page helpers the tests share.
 */
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { chromium, type Browser, type Page } from 'playwright-core'
import { expect } from 'vitest'

// Direct devDependencies, so always right under the project's node_modules.
const NODE_MODULES = fileURLToPath(new URL('../../node_modules/', import.meta.url))
const SPARTICUZ = join(NODE_MODULES, '@sparticuz', 'chromium')
export const CJK_FONTS = join(NODE_MODULES, '@embedpdf', 'fonts-sc', 'fonts')

/**
 * The project's flags, not the package's `args`: those suit AWS Lambda (--single-process,
 * --disable-web-security, --allow-running-insecure-content...), and the page should meet the
 * browser its users have. The networking flags matter: without them Chromium keeps trying
 * Google's hosts, and this machine's closed network refuses each try.
 */
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

/**
 * The package's executablePath() unpacks into os.tmpdir() and reuses any `chromium` already
 * there, whatever version left it, and two first runs at once would write the same files. So
 * it unpacks in a child process into a fresh directory, renamed to one named for the version.
 */
async function unpackedChromium(): Promise<string> {
  const { version } = JSON.parse(readFileSync(join(SPARTICUZ, 'package.json'), 'utf8'))
  const dir = join(tmpdir(), `qwen-edge-chromium-${version}`)
  const exe = join(dir, 'chromium')
  if (existsSync(exe)) return exe
  const staging = await mkdtemp(`${dir}-unpacking-`)
  try {
    const unpack = `require(${JSON.stringify(SPARTICUZ)}).executablePath().then(console.log)`
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', unpack], {
      env: { ...process.env, TMPDIR: staging },
      timeout: 120_000,
    })
    if (stdout.trim() !== join(staging, 'chromium')) {
      throw new Error(`@sparticuz/chromium unpacked to ${stdout.trim()}, not into ${staging}`)
    }
    await rename(staging, dir).catch((err) => {
      if (!existsSync(exe)) throw err // else another process got there first
    })
  } finally {
    await rm(staging, { recursive: true, force: true })
  }
  return exe
}

/** CHROMIUM_PATH (any Chromium) overrides the packaged one. */
export async function launchChromium(): Promise<Browser> {
  const executablePath = process.env.CHROMIUM_PATH || (await unpackedChromium())
  if (!existsSync(executablePath)) throw new Error(`CHROMIUM_PATH: no file ${executablePath}`)
  // The machine's own fonts (if any) plus the CJK font; the cache is ours, not /var/cache.
  const fontconfig = await mkdtemp(join(tmpdir(), 'qwen-edge-fontconfig-'))
  await writeFile(
    join(fontconfig, 'fonts.conf'),
    `<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <cachedir>${join(fontconfig, 'cache')}</cachedir>
  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>
  <dir>${CJK_FONTS}</dir>
</fontconfig>
`,
  )
  const browser = await chromium.launch({
    executablePath,
    args: ARGS,
    env: { ...process.env, FONTCONFIG_FILE: join(fontconfig, 'fonts.conf') },
  })
  browser.on('disconnected', () => void rm(fontconfig, { recursive: true, force: true }))
  return browser
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
 * Over `ms`, in the newest reply: animation frames, frames in which its text grew (streaming
 * shows several; a reply rendered at once at most one), and changes made to its text
 * (appends), counted by a MutationObserver.
 */
export async function replyFrames(
  page: Page,
  ms: number,
): Promise<{ frames: number; grew: number; appends: number }> {
  return page.evaluate(
    (ms) =>
      new Promise<{ frames: number; grew: number; appends: number }>((resolve) => {
        const replies = document.querySelectorAll('.turn.assistant .text')
        const reply = replies[replies.length - 1]
        let appends = 0
        const observer = new MutationObserver((records) => (appends += records.length))
        if (reply) observer.observe(reply, { characterData: true, childList: true, subtree: true })
        let last = reply?.textContent?.length ?? 0
        let grew = 0
        let frames = 0
        const started = performance.now()
        const frame = () => {
          frames++
          const now = reply?.textContent?.length ?? 0
          if (now > last) grew++
          last = now
          if (performance.now() - started < ms) requestAnimationFrame(frame)
          else {
            observer.disconnect()
            resolve({ frames, grew, appends })
          }
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

/**
 * How many different pictures the element's font draws for these characters. Without a font
 * that has them, every one is the same missing-glyph box.
 */
export async function distinctGlyphs(page: Page, selector: string, chars: string[]) {
  return page.locator(selector).evaluate((el, chars) => {
    const { fontSize, fontFamily } = getComputedStyle(el)
    const canvas = document.createElement('canvas')
    canvas.width = canvas.height = 64
    const ctx = canvas.getContext('2d')!
    ctx.font = `${fontSize} ${fontFamily}`
    const pictures = chars.map((c) => {
      ctx.clearRect(0, 0, 64, 64)
      ctx.fillText(c, 8, 40)
      return canvas.toDataURL()
    })
    return new Set(pictures).size
  }, chars)
}
