/**
 * The engine under test: QwenEngine on onnxruntime-web wasm, measured through its public API
 * (chat events, classify). Wrappers around `engine.model.forward` and `forwardBatch` record every
 * forward step (which sequence, how many tokens, which run, when), so interleaving, batching
 * and step times are visible without touching the engine's code.
 */
import { basename, dirname } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import type { LabelExample } from '../../src/engine/serve/classify.ts'
import type { QwenEngine } from '../../src/engine/engine.ts'
import type { ForwardModel, StepResult } from '../../src/engine/forward.ts'
import type { KvCache } from '../../src/engine/kv/kv-cache.ts'
import type { ChatMessage } from '../../src/engine/types.ts'
import { maxGapMs } from './greedy-loop.ts'
import { median, peakRssBytes, repeat, round } from './stats.ts'
import {
  ENGINE_RUNTIMES,
  type BenchPlan,
  type DuringChat,
  type EngineExtra,
  type EngineResult,
  type SentimentVariant,
} from './types.ts'
import { packageVersion } from './versions.ts'
import { wasmMemoryBytes } from './wasm-memory.ts'

export interface StepRecord {
  /** Sequence id: a new one for every forward from the empty cache. */
  seq: number
  tokens: number
  ids: number[]
  /** Forward run it was part of: rows of one batched run share it. */
  run: number
  /** Sequences in that run. */
  batch: number
  start: number
  end: number
}

/** Wraps `model.forward` and `model.forwardBatch` and records every step. */
export class StepRecorder {
  readonly steps: StepRecord[] = []
  private readonly seqOf = new WeakMap<KvCache, number>()
  private nextSeq = 0
  private runs = 0

  /** Called after every step (inside the engine's step, like an I/O callback would be queued). */
  onStep?: (step: StepRecord) => void
  /** Durations of session.run inside each forward, same order as `steps`. */
  readonly runMs: number[] = []
  /** Durations of the split lm_head's full-vocabulary passes (head.ts), when there is one. */
  readonly headMs: number[] = []

  constructor(model: ForwardModel) {
    // onnxruntime's session, when the model runs in the graph (not in the kernels alone)
    const session = (model as { session?: { run: (...a: never[]) => Promise<unknown> } }).session
    if (session) {
      const run = session.run.bind(session)
      session.run = (async (...a: Parameters<typeof run>) => {
        const s = performance.now()
        const out = await run(...a)
        this.runMs.push(performance.now() - s)
        return out
      }) as typeof run
    }
    const head = model.head
    if (head) {
      const logits = head.logits.bind(head)
      head.logits = (...a: Parameters<typeof logits>) => {
        const s = performance.now()
        const out = logits(...a)
        this.headMs.push(performance.now() - s)
        return out
      }
    }
    if (model.decoder) {
      // decode steps in the package's own decoder (model.decode does not call forward then)
      const decode = model.decode.bind(model)
      ;(model as { decode: ForwardModel['decode'] }).decode = async (ids, caches) => {
        const seqs = caches.map((c) => this.seqOf.get(c) ?? -1)
        const start = performance.now()
        const rs = await decode(ids, caches)
        const end = performance.now()
        this.recordBatch(ids, seqs, rs, start, end)
        return rs
      }
    }
    const forward = model.forward.bind(model)
    ;(model as { forward: ForwardModel['forward'] }).forward = async (
      ids,
      cache,
      keep,
      columns,
    ) => {
      const seq = cache.length === 0 ? this.nextSeq++ : (this.seqOf.get(cache) ?? -1)
      const start = performance.now()
      const r: StepResult = await forward(ids, cache, keep, columns)
      const end = performance.now()
      const step = {
        seq,
        tokens: ids.length,
        ids: [...ids],
        run: this.runs++,
        batch: 1,
        start,
        end,
      }
      this.steps.push(step)
      this.onStep?.(step)
      this.seqOf.set(r.cache, seq)
      return r
    }
    const forwardBatch = model.forwardBatch.bind(model)
    ;(model as { forwardBatch: ForwardModel['forwardBatch'] }).forwardBatch = async (
      ids,
      caches,
    ) => {
      const seqs = caches.map((c) => this.seqOf.get(c) ?? -1)
      const start = performance.now()
      const rs = await forwardBatch(ids, caches)
      const end = performance.now()
      this.recordBatch(ids, seqs, rs, start, end)
      return rs
    }
  }

  /** One run of one new token for each sequence `seqs[i]`. */
  private recordBatch(
    ids: readonly number[],
    seqs: number[],
    rs: StepResult[],
    start: number,
    end: number,
  ): void {
    const run = this.runs++
    rs.forEach((r, i) => {
      const step = { seq: seqs[i], tokens: 1, ids: [ids[i]], run, batch: ids.length, start, end }
      this.steps.push(step)
      this.onStep?.(step)
      this.seqOf.set(r.cache, seqs[i])
    })
  }

  since(index: number): StepRecord[] {
    return this.steps.slice(index)
  }
}

/** Most forward runs between two consecutive steps of one sequence (0: a step every run). */
function maxGapRuns(steps: readonly StepRecord[]): number {
  const last = new Map<number, number>()
  let gap = 0
  for (const s of steps) {
    const prev = last.get(s.seq)
    if (prev !== undefined) gap = Math.max(gap, s.run - prev - 1)
    last.set(s.seq, s.run)
  }
  return gap
}

/**
 * Drains a chat; returns the completion token count and when its first event arrived. The KV
 * kept from earlier turns is dropped first unless `reuse`: peers compute every prompt, and a
 * repeated bench prompt would otherwise be served from the engine's turn cache.
 */
export async function runChat(
  engine: QwenEngine,
  messages: ChatMessage[],
  maxNewTokens: number,
  reuse = false,
): Promise<{
  completion: number
  cached: number
  text: string
  firstEventAt: number
  endedAt: number
}> {
  if (!reuse) engine.turns.clear()
  const run = await engine.chat(messages, { maxNewTokens, temperature: 0, repetitionPenalty: 1 })
  let completion = 0
  let cached = 0
  let firstEventAt = 0
  let text = ''
  for await (const e of run.events) {
    if (!firstEventAt) firstEventAt = performance.now()
    if (e.type === 'text') text += e.text
    if (e.type === 'end') {
      completion = e.usage.completionTokens
      cached = e.usage.cachedTokens ?? 0
    }
  }
  return { completion, cached, text, firstEventAt, endedAt: performance.now() }
}

/**
 * Tokens per second of one chat's decode steps (its steps, the prefill's then one token each):
 * token 1 is known at the end of the prefill, token k at the end of decode step k-1.
 */
export function decodeRate(steps: readonly StepRecord[]): number {
  const decode = steps.filter((s) => s.tokens === 1)
  const prefillEnd = steps[steps.length - decode.length - 1].end
  return (decode.length / (decode[decode.length - 1].end - prefillEnd)) * 1000
}

/** Which package the engine measures, and how it runs it. */
export interface EngineVariant {
  name: string
  label: string
  format: 'q8' | 'q4'
  packageDir: string
  /** `DECODER=graph`: everything in onnxruntime-web, as before the kernels (the baseline). */
  graph?: boolean
  /** Only load, time to first token, decode and sentiment (a baseline, not a full column). */
  brief?: boolean
}

/** The engine variants the benchmark knows, by worker name. */
export function engineVariant(name: string, plan: BenchPlan): EngineVariant {
  // the same in another runtime
  for (const [suffix, runtime] of ENGINE_RUNTIMES)
    if (name.endsWith(suffix)) {
      const v = engineVariant(name.slice(0, -suffix.length), plan)
      return { ...v, name, label: `${v.label}, ${runtime}` }
    }
  if (name === 'engine')
    return { name, label: 'qwen-edge engine', format: 'q8', packageDir: plan.packageDir }
  if (name === 'engine-q4' || name === 'engine-q4-relaxed') {
    if (!plan.q4) throw new Error('the plan has no q4 package')
    const label =
      name === 'engine-q4' ? 'qwen-edge engine, q4' : 'qwen-edge engine, q4, relaxed SIMD'
    return { name, label, format: 'q4', packageDir: plan.q4.packageDir }
  }
  if (name === 'engine-graph')
    return {
      name,
      label: 'qwen-edge engine, `DECODER=graph`',
      format: 'q8',
      packageDir: plan.packageDir,
      graph: true,
      brief: true,
    }
  throw new Error(`no engine variant ${name}`)
}

export async function measureEngine(
  plan: BenchPlan,
  log: (line: string) => void,
  variant: EngineVariant = engineVariant('engine', plan),
): Promise<EngineResult> {
  log('loading…')
  const t0 = performance.now()
  const { fsSource } = await import('../../src/adapters/node/fs-source.ts')
  const { loadPackage, openPackage } = await import('../../src/engine/package/loader.ts')
  const { QwenEngine } = await import('../../src/engine/engine.ts')
  const { installMacrotask } = await import('../../src/engine/serve/macrotask.ts')
  // as each server does (src/adapters/node/main.ts, src/adapters/deno/main.ts)
  if ('Deno' in globalThis) {
    const { openLoopbackTurn } = await import('../../src/adapters/deno/io-turn.ts')
    const loopback = await openLoopbackTurn()
    if (loopback) installMacrotask(loopback.schedule)
  } else installMacrotask(setImmediate)
  // as both servers verify shards: node:crypto's SHA-256 (since 2026-12-05; the run of that day
  // loaded with the loader's own, the serve part with this one)
  const { installSha256 } = await import('../../src/engine/package/sha256.ts')
  const { nodeSha256 } = await import('../../src/adapters/node/sha256.ts')
  installSha256(nodeSha256)
  const source = fsSource(dirname(variant.packageDir))
  const id = basename(variant.packageDir)
  // as the servers open a package: streamed into the kernels, or whole for onnxruntime
  const engine = await QwenEngine.create(
    variant.graph ? await loadPackage(source, id) : await openPackage(source, id),
    { contextLength: 4096, ...(variant.graph && { session: { decoder: false } }) },
  )
  const loadMs = performance.now() - t0
  const wasmAfterLoad = wasmMemoryBytes()
  const rec = new StepRecorder(engine.model)
  const inKernels = !!engine.model.decoder && !variant.graph
  const result: EngineResult = {
    name: variant.name,
    label: variant.label,
    format: variant.format,
    backend: inKernels
      ? `the engine's WASM SIMD kernels (${await kernelIsa()}), 1 thread, in-process; no onnxruntime session`
      : `onnxruntime-web ${packageVersion('onnxruntime-web')} wasm (SIMD), 1 thread, in-process`,
    loadMs: round(loadMs, 0),
    notes: [],
  }

  // Time to first token through chat(): template, tokenizer, chunked prefill, first sample.
  const ttft = async (messages: ChatMessage[]) => {
    const s = performance.now()
    const r = await runChat(engine, messages, 1)
    return r.firstEventAt - s
  }
  result.firstTtft64Ms = round(await ttft(plan.prompts.p64.messages), 0) // warm-up
  await ttft(plan.prompts.p512.messages) // the first long run grows ORT's arena: not in the median
  for (const [key, p] of [
    ['ttft64Ms', plan.prompts.p64],
    ['ttft512Ms', plan.prompts.p512],
  ] as const) {
    const n = engine.promptIds(p.messages).length
    if (n !== p.ids.length) result.notes!.push(`${key}: engine prompt has ${n} tokens`)
    log(`time to first token, ${n}-token prompt…`)
    result[key] = round(median(await repeat(plan.rounds, () => ttft(p.messages))), 0)
  }

  // Decode rate: steps after the prefill, from the first token to the last.
  const rates: number[] = []
  let breakdown: EngineExtra['decodeStep'] | undefined
  for (let r = 0; r < plan.decodeRounds; r++) {
    log(`decode ${plan.decodeTokens} tokens, round ${r + 1}/${plan.decodeRounds}…`)
    const from = rec.steps.length
    const chat = await runChat(engine, plan.prompts.p64.messages, plan.decodeTokens)
    const steps = rec.since(from)
    const decode = steps.filter((s) => s.tokens === 1)
    rates.push(decodeRate(steps))
    result.decodedTokens = chat.completion
    result.firstIds = decode.slice(0, 16).map((s) => s.ids[0])
    // where a decode step's wall time goes: the decoder's decode(), or session.run and the
    // rest of forward(); the gap between steps
    const heads = rec.headMs.slice(rec.headMs.length - decode.length)
    const between = round(median(decode.slice(1).map((s, i) => s.start - decode[i].end)), 2)
    const head = engine.model.head && { headMs: round(median(heads), 2) }
    if (engine.model.decoder) {
      breakdown = {
        decoderMs: round(median(decode.map((s) => s.end - s.start)), 1),
        betweenStepsMs: between,
        ...head,
      }
    } else {
      const runs = rec.runMs.slice(rec.runMs.length - decode.length)
      breakdown = {
        runMs: round(median(runs), 1),
        forwardExtraMs: round(median(decode.map((s, i) => s.end - s.start - runs[i])), 2),
        betweenStepsMs: between,
        ...head,
      }
    }
  }
  result.decodeTokS = round(median(rates))
  result.decodeRounds = rates.map((x) => round(x))
  if (result.decodedTokens !== plan.decodeTokens) {
    result.notes!.push(`decode ended after ${result.decodedTokens} tokens (eos)`)
  }

  // Sentiment: instruction prefix recomputed every time vs its KV cache reused.
  const text = plan.sentimentText
  log('sentiment, uncached instruction prefix…')
  const cold = await repeat(plan.rounds, async () => {
    const s = performance.now()
    await engine.classifier.classify(text, undefined, { usePrefixCache: false })
    return performance.now() - s
  })
  await engine.classify(text) // computes the prefix once
  log('sentiment, cached instruction prefix…')
  const cached = await repeat(plan.rounds, async () => {
    const s = performance.now()
    await engine.classify(text)
    return performance.now() - s
  })
  result.sentimentColdMs = round(median(cold), 0)
  result.sentimentCachedMs = round(median(cached), 0)
  const a = await engine.classifier.classify(text, undefined, { usePrefixCache: false })
  const b = await engine.classify(text)
  if (a.label !== b.label || Math.abs(a.score - b.score) > 1e-3) {
    result.notes!.push(
      `sentiment scores with and without the cached prefix differ: ${a.score.toFixed(4)} vs ${b.score.toFixed(4)} (DynamicQuantizeMatMul quantizes activations per run, so splitting a prompt into runs changes the numbers)`,
    )
  }

  if (!variant.brief) await measureMore(engine, rec, plan, result, breakdown!, log)

  result.wasmAfterLoadBytes = wasmAfterLoad
  result.wasmPeakBytes = wasmMemoryBytes()
  result.peakRssBytes = peakRssBytes()
  return result
}

/**
 * The full column: a second turn with and without its kept KV, 1 and 4 streams, a sentiment
 * request during a long chat, and sentiment on a short text and without examples.
 */
async function measureMore(
  engine: QwenEngine,
  rec: StepRecorder,
  plan: BenchPlan,
  result: EngineResult,
  breakdown: EngineExtra['decodeStep'],
  log: (line: string) => void,
): Promise<void> {
  const text = plan.sentimentText
  // A conversation's second turn: its prompt starts with turn 1's prompt and reply, whose KV
  // the engine kept (turn-cache.ts), against the same prompt computed from scratch.
  log('time to first token of a second turn, kept KV vs recomputed…')
  const turn2 = async (reuse: boolean) => {
    const first = await runChat(engine, plan.prompts.p64.messages, 32)
    const messages: ChatMessage[] = [
      ...plan.prompts.p64.messages,
      { role: 'assistant', content: first.text },
      { role: 'user', content: 'Thanks. Now say the same in two sentences, please.' },
    ]
    if (!reuse) engine.turns.clear()
    const s = performance.now()
    const r = await runChat(engine, messages, 1, true)
    return { ms: r.firstEventAt - s, cached: r.cached, prompt: engine.promptIds(messages).length }
  }
  const kept = await repeat(plan.rounds, () => turn2(true))
  const fresh = await repeat(plan.rounds, () => turn2(false))
  result.turn2 = {
    promptTokens: kept[0].prompt,
    cachedTokens: kept[0].cached,
    keptMs: round(median(kept.map((k) => k.ms)), 0),
    recomputedMs: round(median(fresh.map((k) => k.ms)), 0),
  }

  // Throughput with 1 and 4 concurrent chats, interleaved by the scheduler.
  const streams = async (k: number) => {
    const from = rec.steps.length
    const s = performance.now()
    const runs = await Promise.all(
      plan.prompts.streams.slice(0, k).map((p) => runChat(engine, p.messages, plan.streamTokens)),
    )
    const wall = performance.now() - s
    const tokens = runs.reduce((n, r) => n + r.completion, 0)
    return { tokS: (tokens / wall) * 1000, steps: rec.since(from) }
  }
  log(`1 stream, then 4 concurrent streams × ${plan.streamTokens} tokens, ${plan.rounds} round(s)…`)
  const ones: Awaited<ReturnType<typeof streams>>[] = []
  const fours: typeof ones = []
  for (let r = 0; r < plan.rounds; r++) {
    ones.push(await streams(1))
    fours.push(await streams(4))
  }
  // one duration per forward run (the rows of a batched run share theirs)
  const decodeSteps = (x: (typeof ones)[number]) =>
    x.steps
      .filter((s, i, all) => s.tokens === 1 && all[i - 1]?.run !== s.run)
      .map((s) => s.end - s.start)
  result.streams1TokS = round(median(ones.map((x) => x.tokS)))
  result.streams1StepMs = round(median(ones.flatMap(decodeSteps)), 1)
  result.streams4TokS = round(median(fours.map((x) => x.tokS)))
  result.streams4StepMs = round(median(fours.flatMap(decodeSteps)), 1)
  const gaps = fours.map((x) => {
    const order = x.steps.map((s) => s.seq)
    const times = x.steps.map((s) => s.end)
    return { steps: maxGapRuns(x.steps), ms: maxGapMs(order, times) }
  })
  const decodes = fours.flatMap((x) => x.steps.filter((s) => s.tokens === 1))
  result.streams4MeanBatch = round(decodes.length / new Set(decodes.map((s) => s.run)).size, 2)
  result.streams4MaxGapSteps = Math.max(...gaps.map((g) => g.steps))
  result.streams4MaxGapMs = round(Math.max(...gaps.map((g) => g.ms)), 0)

  // A sentiment request while a long chat decodes. It arrives from outside (a timer stands in
  // for the HTTP request's I/O callback), due after the chat's prefill and ~8 decode steps: its
  // latency counts from when it was due, so time the event loop could not run it counts too.
  log('sentiment during a long chat…')
  result.sentimentAloneMs = result.sentimentCachedMs
  const during = await sentimentDuringChat(engine, rec, plan)
  result.sentimentDuringChatMs = during.latencyMs
  result.sentimentDuringChatChatSteps = during.chatSteps
  result.sentimentAnsweredBeforeChatEnd = during.beforeChatEnd
  const sentimentPromptTokens = sentimentTokens(engine, text)

  // A shorter text: the cache saves the same prefix, the uncached part is smaller.
  const short = SHORT_SENTIMENT_TEXT
  const time = async (f: () => Promise<unknown>) => {
    const s = performance.now()
    await f()
    return performance.now() - s
  }
  const variant = async (text: string, examples?: LabelExample[]): Promise<SentimentVariant> => {
    const opts = examples ? { examples } : {}
    const cold = await repeat(plan.rounds, () =>
      time(() => engine.classifier.classify(text, undefined, { ...opts, usePrefixCache: false })),
    )
    await engine.classify(text, opts) // computes this prefix once
    const cached = await repeat(plan.rounds, () => time(() => engine.classify(text, opts)))
    return {
      text,
      tokens: sentimentTokens(engine, text, examples),
      coldMs: round(median(cold), 0),
      cachedMs: round(median(cached), 0),
    }
  }
  const shortSentiment = await variant(short)
  // The instruction alone (no examples): a shorter prefix, so the cache saves less.
  const zeroShotSentiment = await variant(text, [])

  result.extra = {
    decodeStep: breakdown,
    prefixComputations: engine.classifier.prefixComputations,
    sentimentPromptTokens,
    sentimentDuringChat: during,
    shortSentiment,
    zeroShotSentiment,
  }
}

/** The kernel build this runtime runs, as the engine picks it (kernel.ts `instantiateEngine`). */
async function kernelIsa(): Promise<string> {
  const { instantiateEngine } = await import('../../src/engine/wasm/kernel.ts')
  const names = {
    simd128: 'SIMD128',
    relaxed: 'relaxed SIMD',
    'relaxed+vnni': 'relaxed SIMD, AVX-VNNI dot product',
    'relaxed+looped': 'relaxed SIMD, looped q4 tiles (V8 before 13)',
  }
  return names[(await instantiateEngine()).build]
}

export const SHORT_SENTIMENT_TEXT = 'Great screen, awful battery.'

/** Prefix (cacheable) and uncached token counts of a sentiment prompt, as the classifier splits it. */
function sentimentTokens(engine: QwenEngine, text: string, examples?: LabelExample[]) {
  const prompt = engine.classifier.prompt(text, undefined, examples)
  return { prefix: prompt.prefixIds.length, uncached: prompt.bodyIds.length }
}

/**
 * Starts a long chat; when its 8th decode step ends, a timer is set to issue a sentiment request
 * (a timer is queued like the I/O callback of an HTTP request arriving then). Latency counts
 * from that moment, so time the event loop could not run the timer counts too.
 */
async function sentimentDuringChat(
  engine: QwenEngine,
  rec: StepRecorder,
  plan: BenchPlan,
): Promise<DuringChat> {
  const h = monitorEventLoopDelay({ resolution: 5 })
  h.enable()
  const from = rec.steps.length
  let chatEndedAt = Infinity
  let chatSeq: number | undefined
  let decoded = 0
  const answer = new Promise<{ dueAt: number; firedAt: number; doneAt: number }>(
    (resolve, reject) => {
      rec.onStep = (step) => {
        if (chatSeq === undefined && step.tokens > 1) chatSeq = step.seq
        if (step.seq !== chatSeq || step.tokens !== 1 || ++decoded !== 8) return
        const dueAt = performance.now()
        setTimeout(() => {
          const firedAt = performance.now()
          engine
            .classify(plan.sentimentText)
            .then(() => resolve({ dueAt, firedAt, doneAt: performance.now() }), reject)
        }, 0)
      }
    },
  )
  const chat = runChat(engine, plan.prompts.p64.messages, Math.max(plan.decodeTokens, 64)).then(
    () => {
      chatEndedAt = performance.now()
    },
  )
  const { dueAt, firedAt, doneAt } = await answer
  await chat
  rec.onStep = undefined
  h.disable()
  return {
    latencyMs: round(doneAt - dueAt, 0),
    timerLateMs: round(firedAt - dueAt, 0),
    chatSteps: rec.since(from).filter((x) => x.seq === chatSeq && x.end > firedAt && x.end < doneAt)
      .length,
    beforeChatEnd: doneAt < chatEndedAt,
    eventLoopMaxDelayMs: round(h.max / 1e6, 0),
  }
}
