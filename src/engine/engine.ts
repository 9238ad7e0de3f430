/**
 * The engine the HTTP layer talks to: one model, one tokenizer, one scheduler per isolate.
 */
import { AppError } from '../core/errors.ts'
import { logprobsOf } from '../core/logprobs.ts'
import { createRng, randomSeed } from '../core/rng.ts'
import type { SamplingParams } from '../core/sampling.ts'
import { StopMatcher } from '../core/stop.ts'
import { DecodeBatcher } from './serve/batcher.ts'
import { LabelClassifier } from './serve/classify.ts'
import { generateTokens } from './serve/generate.ts'
import type { PackageHandle } from './package/loader.ts'
import type { LoadedPackage } from './package/model-package.ts'

/** What the engine reads of a package besides its weights. */
type PackageInfo = Pick<
  LoadedPackage,
  'id' | 'config' | 'generationConfig' | 'tokenizerJson' | 'tokenizerConfig'
>
import type { GenerationConfig } from '../format/index.ts'
import type { ForwardModel } from './forward.ts'
import { loadModel, type ModelOptions } from './load-model.ts'
import { Scheduler, type Reservation } from './serve/scheduler.ts'
import { QwenTokenizer } from './text/tokenizer.ts'
import { TurnCache } from './kv/turn-cache.ts'
import { wasmMemoryBytes } from './wasm/memory.ts'
import type {
  ChatEvent,
  ChatMessage,
  ChatRun,
  ClassifyOptions,
  ClassifyResult,
  Engine,
  EngineStats,
  FinishReason,
  GenerationOptions,
  ModelInfo,
  TokenLogprob,
  TokenText,
} from './types.ts'
import {
  badRequest,
  checkNumber,
  MAX_TOP_LOGPROBS,
  validateMessages,
  validateSampling,
  validateStops,
} from './limits.ts'

export interface EngineOptions {
  /** Tokens of prompt + reply one sequence may hold. Default: min(model's context, 4096). */
  contextLength?: number
  /** max_new_tokens when the caller gives none (still clamped to the context). */
  defaultMaxNewTokens?: number
  maxActive?: number
  maxQueued?: number
  /** Prompt tokens of classifications waiting or computing before new ones get queue_full. */
  maxQueuedTokens?: number
  /**
   * KV cache positions the running generations may hold together (each reserves its prompt +
   * max_tokens; one that does not fit waits in the queue), so KV memory stays under this times
   * the bytes of a position. Also the context's upper bound. Default: no bound but maxActive
   * sequences of the context.
   */
  maxKvTokens?: number
  /** Decoding sequences per batched forward run; 1 turns batching off. Default: maxActive. */
  maxBatch?: number
  /**
   * KV caches kept across chat turns, in tokens (turn-cache.ts); 0 turns reuse off.
   * Default 4096 (about 96 MiB at 0.5B shapes).
   */
  kvReuseTokens?: number
  /** Prompt tokens per prefill step; smaller means fairer interleaving, larger means faster. */
  prefillChunk?: number
  /**
   * Prompt tokens per prefill step while other streams are decoding (they wait for each step):
   * shorter steps cost the new prompt a little speed and keep the others' tokens flowing.
   * Default: prefillChunk ÷ 4, at least 16. Seeded requests always use prefillChunk.
   */
  busyPrefillChunk?: number
  session?: ModelOptions
}

/** Non-fatal: a token that ends inside a character shows U+FFFD (its bytes are exact). */
const TEXT = new TextDecoder('utf-8')
/** Shorter shared prefixes are computed again: a copy of the cache would save little. */
const MIN_KV_REUSE = 16

export class QwenEngine implements Engine {
  readonly info: ModelInfo
  readonly scheduler: Scheduler
  readonly classifier: LabelClassifier
  readonly batcher: DecodeBatcher
  readonly turns: TurnCache
  /** Ids that end a reply. */
  readonly eosIds: ReadonlySet<number>
  private readonly defaults: SamplingParams
  private readonly contextLength: number
  private readonly defaultMaxNewTokens: number
  private readonly prefillChunk: number
  private readonly busyPrefillChunk: number

  private constructor(
    readonly model: ForwardModel,
    readonly tokenizer: QwenTokenizer,
    pkg: PackageInfo,
    options: EngineOptions,
    loadMs: number,
  ) {
    const gc = pkg.generationConfig
    this.eosIds = eosIdsOf(pkg, tokenizer)
    this.defaults = defaultSampling(gc)
    this.contextLength = Math.min(
      options.contextLength ?? 4096,
      pkg.config.max_position_embeddings ?? Infinity,
      options.maxKvTokens ?? Infinity,
    )
    this.defaultMaxNewTokens = options.defaultMaxNewTokens ?? gc.max_new_tokens ?? 512
    this.prefillChunk = options.prefillChunk ?? 128
    this.busyPrefillChunk = Math.min(
      this.prefillChunk,
      options.busyPrefillChunk ?? Math.max(16, Math.floor(this.prefillChunk / 4)),
    )
    this.scheduler = new Scheduler({
      maxActive: options.maxActive ?? 4,
      maxQueued: options.maxQueued ?? 16,
      maxQueuedTokens: options.maxQueuedTokens,
      maxKvTokens: options.maxKvTokens,
    })
    const run = <T>(task: () => Promise<T>, signal?: AbortSignal) =>
      this.scheduler.step(task, false, signal)
    this.batcher = new DecodeBatcher(
      model,
      (task) => this.scheduler.step(task, true),
      options.maxBatch ?? this.scheduler.options.maxActive,
    )
    this.turns = new TurnCache({
      maxTokens: options.kvReuseTokens ?? 4096,
      minReuse: MIN_KV_REUSE,
      // prompts that run in the decoder start from a fork of a turn kept in its memory
      resident: model.paths.prefill === 'decoder',
    })
    this.classifier = new LabelClassifier(model, tokenizer, run, {
      prefillChunk: this.prefillChunk,
      contextLength: this.contextLength,
    })
    this.info = {
      id: pkg.id,
      synthetic: pkg.config.qwen_edge_synthetic !== undefined,
      contextLength: this.contextLength,
      vocabSize: pkg.config.vocab_size,
      loadMs,
      defaults: {
        temperature: this.defaults.temperature,
        topP: this.defaults.topP,
        topK: this.defaults.topK,
        repetitionPenalty: this.defaults.repetitionPenalty,
      },
    }
  }

  /**
   * Builds the tokenizer and the model (load-model.ts). Drop `pkg` afterwards: the model owns the
   * weights. A package handle (loader.ts `openPackage`) is streamed into the kernels when it can
   * run there.
   */
  static async create(
    pkg: LoadedPackage | PackageHandle,
    options: EngineOptions = {},
  ): Promise<QwenEngine> {
    const started = performance.now()
    const tokenizer = new QwenTokenizer(pkg.tokenizerJson, pkg.tokenizerConfig)
    if ('releaseTokenizerJson' in pkg) pkg.releaseTokenizerJson() // not held while weights load
    const model = await loadModel(pkg, options.session)
    return new QwenEngine(model, tokenizer, pkg, options, Math.round(performance.now() - started))
  }

  /**
   * Resolves when no forward run is queued or running, and a staged model's calls to its stages
   * are answered. On Workers a request stays until then: the step loop runs in the context of
   * whichever request resumed it last, and a call's answer goes to the request that made it
   * (workers adapter).
   */
  async idle(): Promise<void> {
    await this.scheduler.idle()
    await this.model.settled?.()
  }

  probeStages(rounds: number): Promise<number[]> {
    if (!this.model.probeStages)
      throw new AppError('bad_request', 'The model is not split into stages: nothing to probe')
    return this.model.probeStages(rounds)
  }

  stats(): EngineStats {
    const b = this.batcher.stats
    const stages = this.model.stageReports?.()
    return {
      active: this.scheduler.active,
      queued: this.scheduler.queued,
      queuedTokens: this.scheduler.queuedTokens,
      kvReservedTokens: this.scheduler.kvReservedTokens,
      memory: {
        wasmBytes: wasmMemoryBytes(),
        ...(this.model.decoder && {
          kvSequences: this.model.decoder.sequences,
          kvBytes: this.model.decoder.kvBytes,
          kvFormat: this.model.decoder.kvFormat,
          turnCacheResident: this.model.decoder.keptSequences,
        }),
        ...(stages && {
          kvSequences: Math.max(0, ...stages.map((s) => s.sequences ?? 0)),
        }),
        turnCacheTokens: this.turns.tokens,
      },
      decode: {
        runs: b.runs,
        tokens: b.tokens,
        largestBatch: b.largest,
        path: this.model.paths.decode,
        ...(this.model.decoder && { kernels: this.model.decoder.kernelBuild }),
        ...(this.model.decoder?.q4Matrices && { q4: this.model.decoder.q4Matrices }),
      },
      prefill: {
        path: this.model.paths.prefill,
        runs: this.scheduler.promptRuns,
      },
      ...(stages && { stages }),
    }
  }

  /** The prompt token ids for `messages` (validated), as chat() would feed them. */
  promptIds(messages: ChatMessage[]): number[] {
    validateMessages(messages)
    return this.tokenizer.encodePrompt(this.tokenizer.renderChat(messages))
  }

  async chat(messages: ChatMessage[], options: GenerationOptions = {}): Promise<ChatRun> {
    const prompt = this.promptIds(messages)
    const sampling = this.sampling(options)
    const stops = validateStops(options.stop)
    const top = { param: 'top_logprobs', min: 0, max: MAX_TOP_LOGPROBS, integer: true }
    const badTop = options.logprobs === undefined ? undefined : checkNumber(options.logprobs, top)
    if (badTop) throw badRequest('top_logprobs', badTop)
    const room = this.contextLength - prompt.length
    let maxNewTokens: number
    if (options.maxNewTokens !== undefined) {
      if (!Number.isInteger(options.maxNewTokens) || options.maxNewTokens < 1) {
        throw new AppError('bad_request', 'max_tokens must be a positive integer')
      }
      maxNewTokens = options.maxNewTokens
    } else {
      maxNewTokens = Math.min(this.defaultMaxNewTokens, Math.max(room, 1))
    }
    if (prompt.length + maxNewTokens > this.contextLength) {
      throw new AppError(
        'context_length_exceeded',
        `the prompt has ${prompt.length} tokens and max_tokens is ${maxNewTokens}: together more than the context of ${this.contextLength}`,
        {
          details: {
            promptTokens: prompt.length,
            maxTokens: maxNewTokens,
            contextLength: this.contextLength,
          },
        },
      )
    }
    // the place is taken now, not when the events are first read: an admitted generation
    // must not meet queue_full later, when its stream is already open
    const reservation = this.scheduler.reserve(options.signal, prompt.length + maxNewTokens)
    const seed = options.seed ?? randomSeed()
    const events = this.run(
      prompt,
      { ...options, maxNewTokens },
      sampling,
      stops,
      seed,
      reservation,
    )
    return {
      promptTokens: prompt.length,
      maxNewTokens,
      events: releaseIfUnread(events, reservation),
    }
  }

  async classify(text: string, options: ClassifyOptions = {}): Promise<ClassifyResult> {
    return (await this.classifyAll([text], options))[0]
  }

  /**
   * Validates every text first, then admits the whole request by its tokens (queue_full past
   * the bound) and classifies the texts one after another. A request whose signal aborts stops
   * before its next text, and its queued runs are dropped.
   */
  async classifyAll(
    texts: readonly string[],
    options: ClassifyOptions = {},
  ): Promise<ClassifyResult[]> {
    if (!Array.isArray(texts) || texts.some((t) => typeof t !== 'string')) {
      throw new AppError('bad_request', 'texts must be strings')
    }
    const prepared = texts.map((t) => this.classifier.prepare(t, options.labels, options.examples))
    const admission = this.scheduler.admit(prepared.map((p) => p.tokens))
    // a client that leaves gives its queued texts back at once, not when its loop next looks
    const signal = options.signal
    const drop = () => admission.drop()
    signal?.addEventListener('abort', drop, { once: true })
    try {
      const results: ClassifyResult[] = []
      for (const [i, p] of prepared.entries()) {
        if (options.signal?.aborted) {
          throw new AppError('bad_request', 'classification was cancelled')
        }
        admission.start(i)
        const { result, computeMs } = await this.classifier.run(p, { signal: options.signal })
        admission.finish(i, computeMs)
        results.push(result)
      }
      return results
    } finally {
      signal?.removeEventListener('abort', drop)
      admission.release()
    }
  }

  private async *run(
    prompt: number[],
    options: GenerationOptions & { maxNewTokens: number },
    sampling: SamplingParams,
    stops: string[],
    seed: number,
    reservation: Reservation,
  ): AsyncGenerator<ChatEvent> {
    const signal = options.signal
    let cachedTokens = 0
    const usage = (completionTokens: number) => ({
      promptTokens: prompt.length,
      completionTokens,
      cachedTokens,
    })
    let slot
    try {
      slot = await reservation.slot
    } catch (err) {
      if (signal?.aborted) {
        yield { type: 'end', finishReason: 'cancelled', usage: usage(0) }
        return
      }
      throw err
    }
    // A seeded request is reproducible: it does not start from a kept KV cache, and it shares
    // batched runs only in the decoder, whose rows do not depend on their batch (in the graph
    // both change q8 numbers in the last digits, see batcher.ts).
    const reproducible = options.seed !== undefined
    const stream = this.batcher.open(reproducible)
    const reuse = reproducible
      ? undefined
      : this.turns.lookup(prompt, prompt.length + options.maxNewTokens)
    cachedTokens = reuse?.reused ?? 0
    // entries of tokens whose text has not come out yet (see ChatEvent)
    let pending: TokenLogprob[] = []
    const take = () => {
      const out = pending
      pending = []
      return out.length > 0 ? { logprobs: out } : {}
    }
    const top = options.logprobs
    const onSample =
      top === undefined
        ? undefined
        : (id: number, logits: Float32Array) => {
            if (this.eosIds.has(id)) return
            const l = logprobsOf(logits, id, top)
            pending.push({
              ...this.tokenText(id, l.logprob),
              top: l.top.map((t) => this.tokenText(t.id, t.logprob)),
            })
          }
    const tokens = generateTokens(
      this.model,
      (t, signal) => this.scheduler.step(t, false, signal),
      prompt,
      {
        decode: stream.step,
        onEnd: (cache, ids) => this.turns.store(ids, cache),
        ownsStart: reuse?.owned,
        maxNewTokens: options.maxNewTokens,
        onSample,
        sampling,
        rng: createRng(seed),
        eosIds: this.eosIds,
        signal,
        // chunking changes q8 numbers too: a reproducible request's must not depend on load
        prefillChunk: reproducible
          ? this.prefillChunk
          : () => (this.batcher.busy ? this.busyPrefillChunk : this.prefillChunk),
      },
      reuse?.cache,
    )
    try {
      const text = this.tokenizer.textStream()
      const matcher = new StopMatcher(stops)
      let completion = 0
      let finish: FinishReason
      for (;;) {
        const r = await tokens.next()
        if (r.done) {
          finish = r.value
          text.end()
          const rest = matcher.flush()
          if (rest) yield { type: 'text', text: rest, ...take() }
          break
        }
        completion++
        const delta = text.push(r.value)
        if (!delta) continue
        const { text: safe, stopped } = matcher.push(delta)
        if (safe) yield { type: 'text', text: safe, ...take() }
        if (stopped) {
          finish = 'stop'
          pending = [] // their text was the stop string, which is not emitted
          break
        }
      }
      yield { type: 'end', finishReason: finish, usage: usage(completion), ...take() }
    } finally {
      await tokens.return('cancelled')
      stream.close()
      slot.release()
    }
  }

  /** A token's text and bytes for logprobs. */
  private tokenText(id: number, logprob: number): TokenText {
    const bytes = this.tokenizer.tokenBytes(id)
    return { token: TEXT.decode(bytes), bytes: Array.from(bytes), logprob }
  }

  private sampling(o: GenerationOptions): SamplingParams {
    const p: SamplingParams = {
      temperature: o.temperature ?? this.defaults.temperature,
      topP: o.topP ?? this.defaults.topP,
      topK: o.topK ?? this.defaults.topK,
      repetitionPenalty: o.repetitionPenalty ?? this.defaults.repetitionPenalty,
    }
    validateSampling(p)
    return p
  }
}

/**
 * The run's events, giving the reservation back if they are closed before being read (a
 * generator that never started does not run its `finally`).
 */
function releaseIfUnread(
  events: AsyncGenerator<ChatEvent>,
  reservation: Reservation,
): AsyncIterable<ChatEvent> {
  let started = false
  return {
    [Symbol.asyncIterator]: () => ({
      next: () => {
        started = true
        return events.next()
      },
      return: (value?: unknown) => {
        if (!started) reservation.cancel()
        return events.return(value as undefined)
      },
      throw: (err?: unknown) => {
        if (!started) reservation.cancel()
        return events.throw(err)
      },
    }),
  }
}

/** Every id that ends a reply: config, generation_config, tokenizer's eos, and ChatML's <|im_end|>. */
function eosIdsOf(pkg: PackageInfo, tokenizer: QwenTokenizer): Set<number> {
  const ids = new Set<number>()
  const add = (v: unknown) => {
    for (const x of Array.isArray(v) ? v : [v]) if (typeof x === 'number') ids.add(x)
  }
  add(pkg.config.eos_token_id)
  add(pkg.generationConfig.eos_token_id)
  const eos = pkg.tokenizerConfig.eos_token
  const eosText = typeof eos === 'string' ? eos : (eos as { content?: string } | undefined)?.content
  if (eosText) add(tokenizer.tokenId(eosText))
  const template = String(pkg.tokenizerConfig.chat_template ?? '')
  if (template.includes('<|im_end|>')) add(tokenizer.tokenId('<|im_end|>'))
  if (ids.size === 0) throw new AppError('model_invalid', 'The model names no eos token')
  return ids
}

function defaultSampling(gc: GenerationConfig): SamplingParams {
  const sample = gc.do_sample ?? true
  return {
    temperature: sample ? (gc.temperature ?? 0.7) : 0,
    topP: gc.top_p ?? 1,
    topK: gc.top_k ?? 0,
    repetitionPenalty: gc.repetition_penalty ?? 1,
  }
}
