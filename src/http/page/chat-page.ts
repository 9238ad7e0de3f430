/**
 * The page served at `GET /` to browsers: a chat that streams replies from `POST /v1/chat` and
 * puts a sentiment badge from `POST /v1/sentiment` on each message. One HTML string with its
 * style and script inline: no framework, no build step, no external assets, nothing that
 * depends on the runtime, so Node, Deno and Workers serve the same bytes.
 *
 * The Content-Security-Policy allows exactly the inline script and style (by their SHA-256),
 * requests to this origin only, and nothing else.
 */
import { CHAT_PAGE_SCRIPT } from './chat-page-script.ts'
import { CHAT_PAGE_STYLE } from './chat-page-style.ts'

export interface ChatPageSettings {
  /** The largest max_tokens the server accepts (the field's upper bound). */
  maxTokensCeiling: number
  /** The field's starting value. */
  maxTokensDefault: number
}

/** What the max tokens field starts at when the server sets no default. */
export const PAGE_MAX_TOKENS_DEFAULT = 256

export function renderChatPage(s: ChatPageSettings): string {
  const ceiling = Math.max(1, Math.floor(s.maxTokensCeiling))
  const start = Math.min(ceiling, Math.max(1, Math.floor(s.maxTokensDefault)))
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>qwen-edge chat</title>
<link rel="icon" href="data:,">
<style>${CHAT_PAGE_STYLE}</style>
</head>
<body>
<header>
  <h1>qwen-edge</h1>
  <span id="model-status">Checking the model…</span>
</header>
<div id="synthetic-banner" class="banner" hidden>
  <p><strong>Synthetic model, random weights.</strong> The loaded model
  (<code id="synthetic-model"></code>) was generated with random weights for testing: its
  replies and sentiment labels are noise, not language or judgement.</p>
  <p lang="zh">当前模型是随机权重的合成测试模型：它的回复和情感标签都没有意义。</p>
</div>
<div id="notice" class="notice" role="alert" hidden>
  <p id="notice-text"></p>
  <button type="button" id="retry" class="secondary">Retry</button>
  <form id="auth" hidden>
    <label for="api-key">API key</label>
    <input id="api-key" type="password" autocomplete="off" spellcheck="false">
    <label><input id="api-key-remember" type="checkbox"> Remember on this device</label>
    <button type="submit">Use key</button>
  </form>
</div>
<ol id="log" role="log" aria-live="polite" aria-label="Conversation"></ol>
<div id="status" class="visually-hidden" role="status"></div>
<form id="composer">
  <label for="input" class="visually-hidden">Message</label>
  <textarea id="input" rows="2" placeholder="Message · 消息" aria-describedby="keys"></textarea>
  <button type="submit" id="send">Send</button>
  <button type="button" id="stop" class="secondary" aria-keyshortcuts="Escape">Stop</button>
</form>
<p id="keys" class="hint">Enter sends · Shift+Enter adds a line · Esc stops the reply</p>
<details>
  <summary>Settings</summary>
  <div class="settings">
    <label>Temperature
      <input id="temperature" type="range" min="0" max="2" step="0.1" value="0.7">
      <output id="temperature-value" for="temperature">0.7</output>
    </label>
    <label>Max tokens
      <input id="max-tokens" type="number" min="1" max="${ceiling}" step="1" value="${start}">
    </label>
    <button type="button" id="clear" class="secondary">Clear conversation</button>
    <button type="button" id="forget-key" class="secondary" hidden>Forget API key</button>
  </div>
</details>
<script>${CHAT_PAGE_SCRIPT}</script>
</body>
</html>
`
}

let policy: Promise<string> | undefined

/** The page's Content-Security-Policy (hashes computed once, with Web Crypto). */
export function chatPageCsp(): Promise<string> {
  policy ??= Promise.all([sha256Base64(CHAT_PAGE_SCRIPT), sha256Base64(CHAT_PAGE_STYLE)]).then(
    ([script, style]) =>
      [
        "default-src 'none'",
        `script-src 'sha256-${script}'`,
        `style-src 'sha256-${style}'`,
        "connect-src 'self'",
        'img-src data:',
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
      ].join('; '),
  )
  return policy
}

async function sha256Base64(text: string): Promise<string> {
  const digest = new Uint8Array(
    await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)),
  )
  let binary = ''
  for (const byte of digest) binary += String.fromCharCode(byte)
  return btoa(binary)
}
