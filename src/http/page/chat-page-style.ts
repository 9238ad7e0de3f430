/**
 * The chat page's stylesheet, inlined into the page (no external assets). Kept as its own
 * string so the Content-Security-Policy can allow exactly it by hash (see chat-page.ts).
 *
 * Fonts: system fonts only. The CJK families come before the generic fallback, and
 * `:lang(zh)` puts them first, so Han characters get Chinese glyph forms where a Chinese font
 * exists (PingFang / Microsoft YaHei / Noto Sans CJK / WenQuanYi on Linux).
 */
export const CHAT_PAGE_STYLE = String.raw`
:root {
  --cjk: 'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', 'Noto Sans CJK SC',
    'Noto Sans SC', 'Source Han Sans SC', 'WenQuanYi Micro Hei', 'WenQuanYi Zen Hei';
  --sans: system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', 'Helvetica Neue', Arial,
    var(--cjk), sans-serif;
  --bg: #f6f7f9; --panel: #fff; --text: #1b1f24; --muted: #5b6470; --line: #d8dde3;
  --accent: #2456d6; --accent-text: #fff; --user: #e6eeff; --bot: #fff;
  --focus: #f0a500; --warn-bg: #fff4d6; --warn-line: #e0b000; --error-bg: #fde8e8;
  --error-line: #d33; --pos: #12703a; --pos-bg: #dcf5e5; --neg: #a1182a; --neg-bg: #fbe0e3;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14171b; --panel: #1d2126; --text: #e7eaee; --muted: #9aa4af; --line: #333a42;
    --accent: #6d95ff; --accent-text: #0b1020; --user: #223255; --bot: #1d2126;
    --warn-bg: #3a3010; --warn-line: #b48a00; --error-bg: #3d1c1c; --error-line: #ff6b6b;
    --pos: #7fe0a4; --pos-bg: #173826; --neg: #ff9aa7; --neg-bg: #45191f;
  }
}
* { box-sizing: border-box; }
html, body { height: 100%; margin: 0; }
body {
  background: var(--bg); color: var(--text); font: 16px/1.5 var(--sans);
  display: flex; flex-direction: column; max-width: 52rem; margin: 0 auto; padding: 0 1rem;
}
:lang(zh) { font-family: var(--cjk), var(--sans); }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.visually-hidden {
  position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%);
  white-space: nowrap;
}
header {
  display: flex; align-items: baseline; gap: 0.75rem; flex-wrap: wrap; padding: 0.75rem 0 0.5rem;
}
h1 { font-size: 1.25rem; margin: 0; }
#model-status { color: var(--muted); font-size: 0.9rem; }
#model-status code { font-size: 0.85rem; }
.banner, .notice {
  border: 1px solid; border-left-width: 6px; border-radius: 6px; padding: 0.5rem 0.75rem;
  margin: 0 0 0.5rem;
}
.banner { background: var(--warn-bg); border-color: var(--warn-line); }
.banner p { margin: 0; }
.notice { background: var(--error-bg); border-color: var(--error-line); display: flex;
  flex-wrap: wrap; align-items: center; gap: 0.5rem 1rem; }
.notice p { margin: 0; flex: 1 1 16rem; }
[hidden] { display: none !important; }
#log {
  flex: 1 1 auto; overflow-y: auto; list-style: none; margin: 0; padding: 0.5rem 0;
  display: flex; flex-direction: column; gap: 0.75rem; min-height: 8rem;
}
#log:empty::before {
  content: 'Say something to start. 你好！'; color: var(--muted); margin: auto; text-align: center;
}
.turn { max-width: 85%; padding: 0.5rem 0.75rem; border-radius: 10px; border: 1px solid var(--line); }
.turn.user { align-self: flex-end; background: var(--user); border-bottom-right-radius: 2px; }
.turn.assistant { align-self: flex-start; background: var(--bot); border-bottom-left-radius: 2px; }
.turn .who { font-size: 0.75rem; color: var(--muted); display: flex; gap: 0.5rem;
  align-items: center; margin-bottom: 0.125rem; }
.turn .text { white-space: pre-wrap; overflow-wrap: anywhere; }
.turn .meta { font-size: 0.75rem; color: var(--muted); margin-top: 0.25rem; }
.turn.assistant[aria-busy='true'] .text::after {
  content: '▍'; color: var(--accent); animation: blink 1s steps(2) infinite;
}
.turn.failed { border-color: var(--error-line); }
@keyframes blink { 50% { opacity: 0; } }
@media (prefers-reduced-motion: reduce) { .turn .text::after { animation: none; } }
.badge {
  display: inline-block; border-radius: 999px; padding: 0 0.5rem; font-size: 0.75rem;
  font-weight: 600; border: 1px solid var(--line); color: var(--muted); background: var(--panel);
}
.badge.positive { color: var(--pos); background: var(--pos-bg); border-color: var(--pos); }
.badge.negative { color: var(--neg); background: var(--neg-bg); border-color: var(--neg); }
form { margin: 0; }
#composer { display: flex; gap: 0.5rem; align-items: flex-end; padding: 0.5rem 0; }
#input {
  flex: 1; resize: vertical; min-height: 2.75rem; max-height: 40vh; font: inherit;
  padding: 0.5rem 0.625rem; border: 1px solid var(--line); border-radius: 8px;
  background: var(--panel); color: var(--text);
}
button {
  font: inherit; border-radius: 8px; border: 1px solid var(--accent); padding: 0.45rem 1rem;
  background: var(--accent); color: var(--accent-text); cursor: pointer;
}
button.secondary { background: transparent; color: var(--accent); }
button:disabled { opacity: 0.45; cursor: not-allowed; }
.hint { color: var(--muted); font-size: 0.8rem; margin: 0 0 0.5rem; }
details { border-top: 1px solid var(--line); padding: 0.5rem 0 0.75rem; }
summary { cursor: pointer; color: var(--muted); }
.settings { display: flex; flex-wrap: wrap; gap: 0.75rem 1.5rem; align-items: center;
  margin-top: 0.5rem; }
.settings label { display: flex; gap: 0.5rem; align-items: center; }
.settings input[type='number'] { width: 6rem; font: inherit; padding: 0.2rem 0.4rem; }
#auth { display: flex; flex-wrap: wrap; gap: 0.5rem; align-items: center; flex-basis: 100%; }
#auth input[type='password'] { font: inherit; padding: 0.3rem 0.5rem; min-width: 14rem; }
`
