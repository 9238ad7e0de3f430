/**
 * A real server on the q4 package, as a user starts it (`npm start` / `npm run start:deno`):
 * through its load and four concurrent 128-token chats over HTTP, the peak resident memory of
 * the server process (the node or deno binary, not npm's wrapper), from /proc: VmHWM at the
 * end, and VmRSS sampled every 100 ms to say whether the peak came in the load or the chats.
 * The `long` scenario sends four chats with prompts of about 1,360 tokens instead, as the
 * defaults serve them and with the KV cache bounded (SERVE_SCENARIOS). After the four (and after
 * the memory is read), one chat alone: a single stream's decode rate.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { freePort, startServer, type ServerProcess } from '../../test/runtimes/servers.ts'
import type { BenchPlan, ServeResult } from './types.ts'

const COMMANDS = { node: 'npm start', deno: 'npm run start:deno' } as const
const CHATS = 4
const TOKENS = 128

/** A long prompt: about 1,360 tokens with the chat template (the tokenizer of the bench). */
const LONG_NOTES =
  'Please summarise the following notes carefully. ' +
  Array.from({ length: 120 }, (_, i) => `Note ${i}: the shipment arrived late again.`).join(' ')

/** What the chats are, and the server variables they run under. */
export const SERVE_SCENARIOS = {
  short: { long: false, env: {} },
  long: { long: true, env: {} },
  'long-bounded': { long: true, env: { MAX_KV_TOKENS: '1536', KV_REUSE_TOKENS: '0' } },
  'long-q8kv': { long: true, env: { KV_FORMAT: 'q8' } },
} as const
export type ServeScenario = keyof typeof SERVE_SCENARIOS

/** kB fields of /proc/<pid>/status, in bytes (undefined once the process is gone). */
function status(pid: number): Record<string, number> | undefined {
  try {
    const out: Record<string, number> = {}
    for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
      const m = /^(Vm\w+):\s+(\d+) kB/.exec(line)
      if (m) out[m[1]] = Number(m[2]) * 1024
    }
    return out
  } catch {
    return undefined
  }
}

/** Every process below `root` (npm → sh → the runtime, or tsx's child node). */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>()
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      children.set(ppid, [...(children.get(ppid) ?? []), Number(d)])
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = []
  for (let queue = [root]; queue.length;) {
    const kids = children.get(queue.pop()!) ?? []
    out.push(...kids)
    queue.push(...kids)
  }
  return out
}

/** The server: of the processes below npm, the one holding the most memory. */
function serverPid(root: number): number | undefined {
  let best: [number, number] | undefined
  for (const pid of descendants(root)) {
    const rss = status(pid)?.VmRSS ?? 0
    if (!best || rss > best[1]) best = [pid, rss]
  }
  return best?.[0]
}

/**
 * Reads an SSE chat to its end; returns the usage its `done` event reports, and when its first
 * delta and its `done` event arrived (ms, performance.now()).
 */
async function chat(
  base: string,
  content: string,
): Promise<{ completion_tokens: number; prompt_tokens: number; firstMs: number; doneMs: number }> {
  const res = await fetch(`${base}/v1/chat`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      messages: [{ role: 'user', content }],
      max_tokens: TOKENS,
      temperature: 0,
      repetition_penalty: 1,
    }),
  })
  if (res.status !== 200 || !res.body)
    throw new Error(`chat: HTTP ${res.status} ${await res.text()}`)
  let text = ''
  let firstMs: number | undefined
  const decoder = new TextDecoder()
  const reader = res.body.getReader()
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    text += decoder.decode(r.value, { stream: true })
    if (firstMs === undefined && text.includes('event: delta\n')) firstMs = performance.now()
  }
  const doneMs = performance.now()
  const done = /event: done\ndata: (.*)\n/.exec(text)
  if (!done) throw new Error(`chat: no done event in ${text.slice(-300)}`)
  return { ...JSON.parse(done[1]).usage, firstMs: firstMs ?? doneMs, doneMs }
}

export async function measureServe(
  runtime: 'node' | 'deno',
  plan: BenchPlan,
  log: (line: string) => void,
  scenario: ServeScenario = 'short',
): Promise<ServeResult> {
  const { long, env } = SERVE_SCENARIOS[scenario]
  if (!plan.q4) throw new Error('the plan has no q4 package')
  const port = await freePort()
  let pid: number | undefined
  let phase: 'load' | 'chats' = 'load'
  const sampled = { load: 0, chats: 0 }
  // the server is the process holding the most memory below this one (npm → the runtime)
  const sampler = setInterval(() => {
    const p = pid ?? serverPid(process.pid)
    const rss = p ? (status(p)?.VmRSS ?? 0) : 0
    sampled[phase] = Math.max(sampled[phase], rss)
  }, 100)
  let server: ServerProcess | undefined
  try {
    const started = performance.now()
    log(`${COMMANDS[runtime]}: loading ${plan.q4.packageDir}…`)
    server = await startServer({
      name: COMMANDS[runtime],
      command: 'npm',
      args: ['run', '--silent', runtime === 'node' ? 'start' : 'start:deno'],
      cwd: process.cwd(),
      env: {
        MODEL: resolve(plan.q4.packageDir),
        PORT: String(port),
        HOST: '127.0.0.1',
        NO_COLOR: '1',
        DENO_NO_UPDATE_CHECK: '1',
        ...env,
      },
      port,
      readyTimeoutMs: 10 * 60_000,
    })
    const base = server.base
    const loadMs = performance.now() - started
    pid = serverPid(server.pid)
    if (!pid) throw new Error('no server process found')
    const rssAfterLoad = status(pid)!.VmRSS
    phase = 'chats'
    log(`${CHATS} concurrent ${TOKENS}-token chats${long ? ' with long prompts' : ''}…`)
    const chatsStart = performance.now()
    const endedS: number[] = []
    const usages = await Promise.all(
      Array.from({ length: CHATS }, async (_, i) => {
        const u = await chat(
          base,
          long
            ? `${i + 1}: ${LONG_NOTES}`
            : `Question ${i + 1}: tell me a long story about the number ${i + 7}.`,
        )
        endedS.push(Math.round((performance.now() - chatsStart) / 100) / 10)
        return u
      }),
    )
    const health = (await (await fetch(`${base}/health`)).json()) as Record<string, unknown>
    const s = status(pid)!
    // then one chat alone: the decode rate of a single stream, between its first delta and its end
    const alone = await chat(base, 'Tell me a long story about a lighthouse.')
    return {
      runtime,
      scenario,
      command: `${Object.entries(env)
        .map(([k, v]) => `${k}=${v} `)
        .join('')}MODEL=<q4 package> ${COMMANDS[runtime]}`,
      packageId: plan.q4.packageDir.split('/').pop()!,
      peakRssBytes: s.VmHWM,
      rssAfterLoadBytes: rssAfterLoad,
      rssAfterChatsBytes: s.VmRSS,
      sampledPeakLoadBytes: sampled.load,
      sampledPeakChatsBytes: sampled.chats,
      loadMs: Math.round(loadMs),
      chats: CHATS,
      tokensPerChat: usages.map((u) => u.completion_tokens),
      promptTokens: usages.map((u) => u.prompt_tokens),
      chatsEndedS: endedS,
      health: (health.memory as Record<string, unknown>) ?? {},
      kernels: (health.decode as { kernels?: string } | undefined)?.kernels,
      aloneDecodeTokS:
        alone.completion_tokens > 1 && alone.doneMs > alone.firstMs
          ? Math.round(((alone.completion_tokens - 1) / (alone.doneMs - alone.firstMs)) * 1e4) / 10
          : undefined,
    }
  } finally {
    clearInterval(sampler)
    await server?.stop()
  }
}
