/**
 * A package split into stages, served by the real Worker inside workerd: the front (the Hono
 * app) keeps tokenizer, sampling and HTTP; the stages load their own parts of the package from
 * local R2, either each in a Worker of its own behind the package's host object (LOADER, the
 * default) or each in a Durable Object of the STAGES class. Answers equal Node's (the same
 * staged package, its stages in one process) bit for bit; KV is released in the stages when a
 * reply ends; a stage evicted mid-reply is reloaded and the reply goes on unchanged.
 *
 * One suite, run by pipeline-loader.test.ts and pipeline-objects.test.ts: each file gets its own
 * runtime, so its own front (which keeps the first engine it loads).
 */
import { env } from 'cloudflare:workers'
import { EventSourceParserStream, type EventSourceMessage } from 'eventsource-parser/stream'
import { beforeAll, describe, expect, inject, it } from 'vitest'
import { CHAT_BODY, SENTIMENT_TEXTS, STAGED_BUDGET_BYTES, STAGED_PACKAGE } from './fixtures.ts'
import { workerWith } from './handler.ts'
import { seedPackage } from './seed.ts'

export type StageHosting = 'loader' | 'objects'

export function describeStagedWorker(hosting: StageHosting): void {
  const testEnv =
    hosting === 'loader'
      ? { ...env, MODEL: STAGED_PACKAGE }
      : { ...env, MODEL: STAGED_PACKAGE, LOADER: undefined }

  const { call, post, stream } = workerWith(testEnv)

  async function readEvents(
    res: Response,
    onEvent?: (e: EventSourceMessage, i: number) => Promise<void>,
  ): Promise<EventSourceMessage[]> {
    const events: EventSourceMessage[] = []
    const reader = res
      .body!.pipeThrough(new TextDecoderStream())
      .pipeThrough(new EventSourceParserStream())
      .getReader()
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      events.push(r.value)
      await onEvent?.(r.value, events.length - 1)
    }
    return events
  }

  interface StageHealth {
    isolate: string
    layers?: [number, number]
    rows?: [number, number]
    status: string
    residentBytes: number
    sequences?: number
    kv_format?: string
  }

  /** Each stage as it answers now (`probe=1` asks every stage; plain /health shows its last answer). */
  async function stages(): Promise<StageHealth[]> {
    const res = await call('/health?probe=1')
    expect(res.status).toBe(200)
    return (await res.json()).stages
  }

  /** KV sequences held by the layer stages (each holds the same ones). */
  async function held(): Promise<number[]> {
    return (await stages()).filter((s) => s.layers).map((s) => s.sequences ?? -1)
  }

  /** Tokens of KV the front keeps across chat turns (each kept turn is a sequence in the stages). */
  async function turnTokens(): Promise<number> {
    return (await (await call('/health')).json()).memory.turn_cache_tokens
  }

  /** Waits (a little) for the layer stages to hold `want` sequences; fails if they do not. */
  async function settlesAt(want: number[]): Promise<void> {
    let now = await held()
    for (let i = 0; i < 50 && now.join() !== want.join(); i++) {
      await new Promise((r) => setTimeout(r, 20))
      now = await held()
    }
    expect(now).toEqual(want)
  }

  beforeAll(async () => {
    await seedPackage(STAGED_PACKAGE, { root: 'packages' })
  })

  /** Drops stage `index`'s loaded weights and KV, as an eviction would. */
  const evict = (index: number) =>
    hosting === 'loader'
      ? env.STAGE_HOST.get(env.STAGE_HOST.idFromName(STAGED_PACKAGE)).evict({
          model: STAGED_PACKAGE,
          index,
        })
      : env.STAGES.get(env.STAGES.idFromName(`${STAGED_PACKAGE}#${index}`)).evict({
          model: STAGED_PACKAGE,
          index,
        })

  describe(`a staged package on Workers, stages in ${hosting === 'loader' ? 'Workers of their own' : 'Durable Objects'}`, () => {
    it('lists every stage in /health, each loaded and within its budget', async () => {
      const first = await call('/health')
      expect(first.status).toBe(503)
      let res = first
      const deadline = Date.now() + 30_000
      while (res.status !== 200 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100))
        res = await call('/health')
      }
      expect(res.status).toBe(200)
      const body = await res.json()
      expect(body.model).toBe(STAGED_PACKAGE)
      const list: StageHealth[] = body.stages
      expect(list.length).toBe(inject('nodeReference').staged.stages)
      expect(list.filter((s) => s.rows).length).toBeGreaterThanOrEqual(2) // a vocabulary split
      expect(list.filter((s) => s.layers).length).toBeGreaterThanOrEqual(2)
      // with Worker Loader, each stage in an isolate of its own (so its own 128 MB); objects of
      // one class may share one, and here (local workerd) all run in the test Worker's
      const isolates = new Set(list.map((s) => s.isolate))
      expect(isolates.size).toBe(hosting === 'loader' ? list.length : 1)
      for (const s of list) {
        expect(s.isolate).toMatch(/^[0-9a-f]{8}$/)
        expect(s.status).toBe('ready')
        expect(s.residentBytes).toBeGreaterThan(0)
        expect(s.residentBytes).toBeLessThanOrEqual(STAGED_BUDGET_BYTES)
        // the plan's KV format (q8, global-setup.ts), with no KV_FORMAT variable anywhere
        expect(s.kv_format).toBe(s.layers ? 'q8' : undefined)
      }
    })

    it('measures the round trip to each stage on request (/health?probe=N)', async () => {
      const res = await call('/health?probe=3')
      expect(res.status).toBe(200)
      const list: Array<StageHealth & { probeMs: number }> = (await res.json()).stages
      expect(list.length).toBe(inject('nodeReference').staged.stages)
      for (const s of list) expect(s.probeMs).toBeGreaterThan(0)
    })

    it('scores sentiment exactly as Node does over the same stages', async () => {
      const node = inject('nodeReference').staged.sentiment
      for (const [i, text] of SENTIMENT_TEXTS.entries()) {
        const res = await post('/v1/sentiment', { text })
        expect(res.status).toBe(200)
        expect(await res.json()).toEqual(node[i])
      }
    })

    it('streams the greedy reply Node gives, and releases its KV in every stage', async () => {
      const node = inject('nodeReference').staged.chat
      const before = await held()
      const keptBefore = await turnTokens()
      const { res, done } = await stream('/v1/chat', CHAT_BODY)
      expect(res.status).toBe(200)
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
      const events = await readEvents(res)
      await done
      expect(events.at(-1)?.event).toBe('done')
      const text = events
        .filter((e) => e.event === 'delta')
        .map((e) => JSON.parse(e.data).text as string)
        .join('')
      expect(JSON.parse(events.at(-1)!.data).usage).toEqual(node.usage)
      expect(text).toBe(node.content)
      // the release reaches the stages right after the reply; what stays is the turn kept for
      // reuse (a copy of its own), if the turn cache took it
      const kept = (await turnTokens()) > keptBefore ? 1 : 0
      await settlesAt(before.map((n) => n + kept))
    })

    it('releases the KV of a reply its client left, in every stage', async () => {
      const before = await held()
      const keptBefore = await turnTokens()
      // a prompt of its own: the turn it leaves in the turn cache replaces no other
      const { res, done } = await stream('/v1/chat', {
        ...CHAT_BODY,
        messages: [{ role: 'user', content: 'Count slowly from one to fifty.' }],
        max_tokens: 64,
      })
      expect(res.status).toBe(200)
      // read up to the first text: the reply is under way, its KV is in the stages
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
      let seen = ''
      while (!seen.includes('event: delta')) {
        const r = await reader.read()
        expect(r.done).toBe(false)
        seen += r.value
      }
      expect(seen).not.toContain('event: done')
      await reader.cancel()
      await done
      // what stays: the turn kept for reuse (a copy of its own), if the turn cache took it
      const kept = (await turnTokens()) > keptBefore ? 1 : 0
      await settlesAt(before.map((n) => n + kept))
    })

    it('goes on unchanged when a stage is evicted mid-reply (the lost KV is recomputed)', async () => {
      const node = inject('nodeReference').staged.chat
      const { res, done } = await stream('/v1/chat', CHAT_BODY)
      expect(res.status).toBe(200)
      let evicted = false
      const events = await readEvents(res, async (e) => {
        if (evicted || e.event !== 'delta') return
        // the second layer stage loses everything: a new load, a new epoch, no KV
        await evict(1)
        evicted = true
      })
      await done
      expect(evicted).toBe(true)
      expect(events.at(-1)?.event).toBe('done')
      const text = events
        .filter((e) => e.event === 'delta')
        .map((e) => JSON.parse(e.data).text as string)
        .join('')
      expect(text).toBe(node.content)
      const list = await stages()
      expect(list.every((s) => s.status === 'ready')).toBe(true)
    })
  })
}
