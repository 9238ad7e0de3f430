/**
 * The chat page's script, inlined into the page: plain browser JavaScript, no build step. Kept
 * as its own string so the Content-Security-Policy can allow exactly it by hash. It is a
 * String.raw template: it must not contain a backtick or a dollar sign followed by a brace (the
 * unit test in test/http/home-page.test.ts parses it).
 *
 * What it does:
 * - GET /health on load (and again while the model loads): model id, and a banner when the
 *   model is the synthetic random-weight one.
 * - Each message: POST /v1/sentiment (badge on the user's message) and POST /v1/chat with the
 *   whole conversation, in parallel. The reply is read from the SSE body with a streaming
 *   TextDecoder and a small SSE parser, and appended as it arrives.
 * - Stop (button or Esc) aborts the chat fetch; the server sees the client leave and stops.
 * - Errors become one readable notice; a 401 shows the API key field (the key is kept in
 *   sessionStorage, or localStorage when "remember" is ticked, and sent as a Bearer token).
 */
export const CHAT_PAGE_SCRIPT = String.raw`
(() => {
  'use strict'
  const $ = (id) => document.getElementById(id)
  const ui = {
    log: $('log'), composer: $('composer'), input: $('input'), send: $('send'), stop: $('stop'),
    temperature: $('temperature'), temperatureValue: $('temperature-value'),
    maxTokens: $('max-tokens'), clear: $('clear'), forgetKey: $('forget-key'),
    status: $('status'), model: $('model-status'), banner: $('synthetic-banner'),
    bannerModel: $('synthetic-model'), notice: $('notice'), noticeText: $('notice-text'),
    retry: $('retry'), auth: $('auth'), key: $('api-key'), remember: $('api-key-remember'),
  }
  const KEY_ITEM = 'qwen-edge.api-key'
  const SETTINGS_ITEM = 'qwen-edge.settings'
  const HAN = /[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]/
  const POSITIVE = ['positive', '正面']
  const NEGATIVE = ['negative', '负面']

  /** The conversation as sent to the server: [{role, content}]. */
  const history = []
  /** The reply being streamed: {controller, turn}; null when idle. */
  let streaming = null
  /** Runs the failed request again (after a retry click or a new API key). */
  let retryAction = null
  /** Bumped by "clear": a reply that ends after it belongs to no conversation. */
  let epoch = 0

  // ---- storage (may be unavailable: private windows, disabled storage) ----
  function storageGet(storage, name) {
    try { return storage.getItem(name) } catch { return null }
  }
  function storageSet(storage, name, value) {
    try {
      if (value === null) storage.removeItem(name)
      else storage.setItem(name, value)
    } catch {}
  }
  function apiKey() {
    return storageGet(sessionStorage, KEY_ITEM) || storageGet(localStorage, KEY_ITEM) || ''
  }
  function saveApiKey(key, remember) {
    storageSet(sessionStorage, KEY_ITEM, key || null)
    storageSet(localStorage, KEY_ITEM, remember && key ? key : null)
    ui.forgetKey.hidden = !key
  }

  // ---- settings ----
  function loadSettings() {
    try {
      const saved = JSON.parse(storageGet(localStorage, SETTINGS_ITEM) || '{}')
      if (typeof saved.temperature === 'number') ui.temperature.value = String(saved.temperature)
      if (typeof saved.maxTokens === 'number') ui.maxTokens.value = String(saved.maxTokens)
    } catch {}
    showTemperature()
  }
  function saveSettings() {
    const s = { temperature: temperature(), maxTokens: maxTokens() }
    storageSet(localStorage, SETTINGS_ITEM, JSON.stringify(s))
  }
  function temperature() {
    const t = Number(ui.temperature.value)
    return Number.isFinite(t) ? t : 0.7
  }
  function maxTokens() {
    const n = Math.round(Number(ui.maxTokens.value))
    return Number.isFinite(n) && n >= 1 ? n : 256
  }
  function showTemperature() {
    ui.temperatureValue.textContent = temperature().toFixed(1)
  }

  // ---- HTTP ----
  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message)
      this.status = status
      this.code = code
      this.retryAfter = retryAfter
    }
  }

  async function post(path, body, signal) {
    const headers = { 'content-type': 'application/json' }
    const key = apiKey()
    if (key) headers.authorization = 'Bearer ' + key
    let res
    try {
      res = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body), signal })
    } catch (err) {
      if (signal && signal.aborted) throw err
      throw new ApiError(0, 'network', 'The server cannot be reached.')
    }
    if (!res.ok) throw await responseError(res)
    return res
  }

  async function responseError(res) {
    let code = 'http_' + res.status
    let message = res.statusText || 'The request failed.'
    try {
      const body = await res.json()
      if (body && body.error) {
        code = String(body.error.code || code)
        message = String(body.error.message || message)
      }
    } catch {}
    const after = Number(res.headers.get('retry-after'))
    return new ApiError(res.status, code, message, after > 0 ? after : undefined)
  }

  /**
   * Server-sent events, parsed line by line (LF, CRLF or CR endings): calls onEvent(name, data)
   * for each complete event. A CR at the end of a chunk waits for the next chunk, which may
   * start with its LF.
   */
  function createEventParser(onEvent) {
    let buffer = ''
    let name = ''
    let data = []
    function line(text) {
      if (text === '') {
        if (data.length > 0) onEvent(name || 'message', data.join('\n'))
        name = ''
        data = []
        return
      }
      if (text[0] === ':') return
      const colon = text.indexOf(':')
      const field = colon < 0 ? text : text.slice(0, colon)
      let value = colon < 0 ? '' : text.slice(colon + 1)
      if (value[0] === ' ') value = value.slice(1)
      if (field === 'event') name = value
      else if (field === 'data') data.push(value)
    }
    return (chunk) => {
      buffer += chunk
      let start = 0
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i]
        if (c !== '\n' && c !== '\r') continue
        if (c === '\r' && i === buffer.length - 1) break
        line(buffer.slice(start, i))
        if (c === '\r' && buffer[i + 1] === '\n') i++
        start = i + 1
      }
      buffer = buffer.slice(start)
    }
  }

  /**
   * Reads an SSE response body to its end. The bytes are decoded by one streaming TextDecoder,
   * so a character whose bytes arrive in two chunks is decoded whole, never as U+FFFD.
   */
  async function readEvents(body, onEvent) {
    const reader = body.getReader()
    const decoder = new TextDecoder('utf-8')
    const feed = createEventParser(onEvent)
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      feed(decoder.decode(value, { stream: true }))
    }
    feed(decoder.decode())
  }

  // ---- rendering ----
  function langOf(text) {
    return HAN.test(text) ? 'zh' : 'en'
  }

  function addTurn(role, text) {
    const li = document.createElement('li')
    li.className = 'turn ' + role
    const who = document.createElement('div')
    who.className = 'who'
    const name = document.createElement('span')
    name.textContent = role === 'user' ? 'You' : 'Model'
    who.append(name)
    const body = document.createElement('div')
    body.className = 'text'
    const node = document.createTextNode(text)
    body.append(node)
    if (text) body.lang = langOf(text)
    li.append(who, body)
    const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 48
    ui.log.append(li)
    if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight
    return { li, who, body, node, role, text }
  }

  function addMeta(turn, text) {
    let meta = turn.li.querySelector('.meta')
    if (!meta) {
      meta = document.createElement('div')
      meta.className = 'meta'
      turn.li.append(meta)
    }
    meta.textContent = text
  }

  // Deltas arrive faster than frames (hundreds a second from a small model): each is kept at
  // once, and shown with the others of its frame in one append, so the page lays the growing
  // reply out once a frame instead of once a token (reading scrollHeight forces a layout).
  function appendText(turn, text) {
    turn.text += text
    turn.pending = (turn.pending || '') + text
    if (!turn.frame) turn.frame = requestAnimationFrame(() => flushText(turn))
  }

  function flushText(turn) {
    if (turn.frame) cancelAnimationFrame(turn.frame)
    turn.frame = 0
    if (!turn.pending) return
    const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 48
    turn.node.appendData(turn.pending)
    turn.pending = ''
    if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight
  }

  function setStatus(text) {
    ui.status.textContent = text
  }

  // ---- notices ----
  function describeError(err) {
    const wait = err.retryAfter ? ' Try again in ' + err.retryAfter + ' s.' : ' Try again shortly.'
    switch (err.code) {
      case 'unauthorized':
        return apiKey()
          ? 'The server refused the API key. Enter the right key below.'
          : 'This server needs an API key. Enter it below.'
      case 'queue_full':
        return 'The server is busy: too many requests are waiting.' + wait
      case 'model_loading':
        return 'The model is still loading.' + wait
      case 'model_unavailable':
      case 'model_invalid':
        return 'The model is not available (' + err.message + ').' + wait
      case 'context_length_exceeded':
        return 'The conversation is too long for the model: clear it or lower max tokens.'
      case 'network':
        return 'The server cannot be reached. Check that it is running, then retry.'
      default:
        return err.message || 'Something went wrong.'
    }
  }

  function showError(err, retry) {
    retryAction = retry || null
    ui.noticeText.textContent = describeError(err)
    ui.notice.dataset.code = err.code || ''
    ui.retry.hidden = !retry || err.code === 'unauthorized'
    ui.notice.hidden = false
    if (err.code === 'unauthorized') {
      ui.auth.hidden = false
      ui.key.focus()
    }
  }

  function clearError() {
    ui.notice.hidden = true
    ui.noticeText.textContent = ''
    ui.auth.hidden = true
    retryAction = null
  }

  // ---- sentiment ----
  async function classify(turn) {
    let badge = turn.badge
    if (!badge) {
      badge = document.createElement('span')
      turn.who.append(badge)
      turn.badge = badge
    }
    badge.className = 'badge'
    badge.textContent = '…'
    badge.removeAttribute('data-label')
    badge.setAttribute('aria-label', 'Sentiment: analysing')
    try {
      const res = await post('/v1/sentiment', { text: turn.text })
      const r = await res.json()
      const pct = Math.round(r.score * 100) + '%'
      const tone = POSITIVE.includes(r.label)
        ? ' positive'
        : NEGATIVE.includes(r.label)
          ? ' negative'
          : ''
      badge.className = 'badge' + tone
      badge.lang = langOf(r.label)
      badge.textContent = r.label + ' ' + pct
      badge.dataset.label = r.label
      badge.dataset.score = String(r.score)
      badge.setAttribute('aria-label', 'Sentiment: ' + r.label + ', ' + pct + ' confidence')
      badge.title = Object.keys(r.scores || {})
        .map((label) => label + ' ' + Math.round(r.scores[label] * 100) + '%')
        .join(' · ')
      turn.classified = true
    } catch (err) {
      badge.textContent = 'sentiment —'
      badge.setAttribute('aria-label', 'Sentiment: unavailable')
      badge.title = err instanceof ApiError ? describeError(err) : String(err)
      turn.classified = false
    }
  }

  // ---- chat ----
  function setStreaming(on) {
    ui.send.disabled = on
    ui.stop.disabled = !on
  }

  async function reply(userTurn) {
    const started = epoch
    const controller = new AbortController()
    const turn = addTurn('assistant', '')
    turn.li.setAttribute('aria-busy', 'true')
    streaming = { controller, turn }
    setStreaming(true)
    setStatus('The model is replying…')
    let end = null
    let failure = null
    try {
      const res = await post(
        '/v1/chat',
        {
          messages: history.slice(),
          temperature: temperature(),
          max_tokens: maxTokens(),
          stream: true,
        },
        controller.signal,
      )
      await readEvents(res.body, (name, data) => {
        const payload = JSON.parse(data)
        if (name === 'delta') appendText(turn, payload.text)
        else if (name === 'done') end = payload
        else if (name === 'error') {
          failure = new ApiError(500, payload.error.code, payload.error.message)
        }
      })
      if (!end && !failure) {
        failure = new ApiError(0, 'network', 'The reply was cut off.')
      }
    } catch (err) {
      if (!controller.signal.aborted) {
        failure = err instanceof ApiError ? err : new ApiError(0, 'network', String(err))
      }
    } finally {
      flushText(turn)
      streaming = null
      setStreaming(false)
      turn.li.setAttribute('aria-busy', 'false')
    }
    if (started !== epoch) return
    if (turn.text) turn.body.lang = langOf(turn.text)

    if (end) {
      history.push({ role: 'assistant', content: turn.text })
      const tokens = end.usage ? end.usage.completion_tokens + ' tokens' : ''
      const why = end.finish_reason === 'length' ? ' · stopped at max tokens' : ''
      addMeta(turn, tokens + why)
      setStatus('Reply finished.')
    } else if (!failure) {
      // stopped by the user: keep what arrived, as part of the conversation
      if (turn.text) history.push({ role: 'assistant', content: turn.text })
      else turn.li.remove()
      if (turn.text) addMeta(turn, 'Stopped.')
      setStatus('Reply stopped.')
    } else {
      turn.li.classList.add('failed')
      if (!turn.text) turn.li.remove()
      else addMeta(turn, 'Interrupted.')
      setStatus('The reply failed.')
      showError(failure, () => {
        if (turn.li.isConnected) turn.li.remove()
        run(userTurn)
      })
    }
    const focused = document.activeElement
    if (!focused || focused === document.body || focused === ui.stop) ui.input.focus()
  }

  /** Sentiment and chat for a user turn, in parallel. */
  function run(userTurn) {
    clearError()
    if (!userTurn.classified) classify(userTurn)
    reply(userTurn)
  }

  function send() {
    const text = ui.input.value
    if (streaming || text.trim() === '') return
    ui.input.value = ''
    const turn = addTurn('user', text)
    history.push({ role: 'user', content: text })
    run(turn)
  }

  function stop() {
    if (streaming) streaming.controller.abort()
  }

  // ---- health ----
  let healthTimer = 0
  async function checkHealth() {
    clearTimeout(healthTimer)
    let next = 0
    try {
      const res = await fetch('/health', { cache: 'no-store' })
      const h = await res.json()
      if (res.ok) {
        ui.model.textContent = ''
        const code = document.createElement('code')
        code.textContent = h.model
        ui.model.append('Model ', code, h.synthetic ? ' (synthetic)' : '', ' · ready')
        ui.banner.hidden = !h.synthetic
        ui.bannerModel.textContent = h.model
      } else {
        const after = Number(res.headers.get('retry-after')) || 5
        ui.model.textContent =
          h.status === 'failed'
            ? 'The model failed to load' + (h.error ? ': ' + h.error : '') + '. Retrying…'
            : 'The model is loading…'
        next = after * 1000
      }
    } catch {
      ui.model.textContent = 'The server cannot be reached. Retrying…'
      next = 5000
    }
    if (next) healthTimer = setTimeout(checkHealth, next)
  }

  // ---- wiring ----
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault()
    send()
  })
  ui.input.addEventListener('keydown', (e) => {
    // Enter sends; Shift+Enter is a new line; Enter that ends an IME composition is not a send
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault()
      send()
    }
  })
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && streaming) {
      e.preventDefault()
      stop()
    }
  })
  ui.stop.addEventListener('click', stop)
  ui.retry.addEventListener('click', () => {
    const again = retryAction
    clearError()
    if (again) again()
  })
  ui.auth.addEventListener('submit', (e) => {
    e.preventDefault()
    const key = ui.key.value.trim()
    if (!key) return
    saveApiKey(key, ui.remember.checked)
    ui.key.value = ''
    const again = retryAction
    clearError()
    if (again) again()
    else ui.input.focus()
  })
  ui.forgetKey.addEventListener('click', () => saveApiKey('', false))
  ui.temperature.addEventListener('input', () => {
    showTemperature()
    saveSettings()
  })
  ui.maxTokens.addEventListener('change', saveSettings)
  ui.clear.addEventListener('click', () => {
    epoch++
    stop()
    history.length = 0
    ui.log.textContent = ''
    clearError()
    setStatus('Conversation cleared.')
    ui.input.focus()
  })

  ui.forgetKey.hidden = !apiKey()
  loadSettings()
  setStreaming(false)
  checkHealth()
})()
`
