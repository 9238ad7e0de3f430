/**
 * A deterministic stand-in for the engine, at the HTTP layer's boundary. It emits scripted text
 * deltas (including a Chinese phrase split across deltas), honours the abort signal, holds a
 * place per generation from `chat()` until its events end or its iterator is closed (as the
 * real scheduler does), and records every call so tests can check what the routes passed in.
 */
import { AppError } from '../../src/core/errors.ts'
import type {
  ChatEvent,
  ChatMessage,
  ChatRun,
  ClassifyOptions,
  ClassifyResult,
  Engine,
  EngineStats,
  GenerationOptions,
  ModelInfo,
  TokenLogprob,
} from '../../src/engine/types.ts'

/** "你好，世界" arrives as 你好 | ，世 | 界: a client must join deltas, not print them as words. */
export const DEFAULT_SCRIPT = ['Hello', ', ', '你好', '，世', '界', '! 😀']
export const DEFAULT_TEXT = DEFAULT_SCRIPT.join('')

export interface FakeEngineOptions {
  id?: string
  script?: string[]
  /** Wait before each delta (ms). */
  delayMs?: number
  /** After this many deltas, wait until the signal aborts. */
  hangAfter?: number
  /** Repeat the script forever (until max_tokens). */
  endless?: boolean
  /** Do not look at the signal: only closing the iterator stops this generation. */
  ignoreSignal?: boolean
  /** After this many deltas, throw a plain Error (an engine crash mid-stream). */
  failAfter?: number
  /** Thrown by chat() (validation, queue, context). */
  chatError?: Error
  classifyError?: Error
  /** Generations that may hold a place at once; beyond it chat() throws queue_full. */
  maxActive?: number
  contextLength?: number
  /** Used when the request gives no max_tokens. */
  defaultMaxNewTokens?: number
}

export interface ChatCall {
  messages: ChatMessage[]
  options: GenerationOptions
}

export class FakeEngine implements Engine {
  readonly info: ModelInfo
  /** Places held (chat() returned, events not yet ended nor closed). */
  active = 0
  queued = 0
  readonly chatCalls: ChatCall[] = []
  readonly classifyCalls: { text: string; options: ClassifyOptions }[] = []
  /** How many times an events iterator was closed early (`return()`). */
  iteratorsClosed = 0
  /** Deltas handed out, over all generations. */
  deltasEmitted = 0
  private readonly o: FakeEngineOptions &
    Required<
      Pick<
        FakeEngineOptions,
        'id' | 'script' | 'delayMs' | 'maxActive' | 'contextLength' | 'defaultMaxNewTokens'
      >
    >

  constructor(options: FakeEngineOptions = {}) {
    this.o = {
      id: 'fake/qwen-test',
      script: DEFAULT_SCRIPT,
      delayMs: 0,
      maxActive: 4,
      contextLength: 4096,
      defaultMaxNewTokens: 64,
      ...options,
    }
    this.info = {
      id: this.o.id,
      synthetic: true,
      contextLength: this.o.contextLength,
      vocabSize: 1000,
      loadMs: 42,
      defaults: { temperature: 0.7, topP: 0.8, topK: 20, repetitionPenalty: 1.05 },
    }
  }

  /** The signal the last chat() call received. */
  get lastSignal(): AbortSignal | undefined {
    return this.chatCalls.at(-1)?.options.signal
  }

  stats(): EngineStats {
    return { active: this.active, queued: this.queued }
  }

  async chat(messages: ChatMessage[], options: GenerationOptions = {}): Promise<ChatRun> {
    this.chatCalls.push({ messages, options })
    if (this.o.chatError) throw this.o.chatError
    const promptTokens = messages.reduce((n, m) => n + 4 + [...m.content].length, 0)
    const maxNewTokens = options.maxNewTokens ?? this.o.defaultMaxNewTokens
    if (promptTokens + maxNewTokens > this.o.contextLength) {
      throw new AppError(
        'context_length_exceeded',
        `the prompt has ${promptTokens} tokens and max_tokens is ${maxNewTokens}: together more than the context of ${this.o.contextLength}`,
        { details: { promptTokens, maxTokens: maxNewTokens, contextLength: this.o.contextLength } },
      )
    }
    if (this.active >= this.o.maxActive) {
      throw new AppError('queue_full', 'The server is busy: too many generations are queued', {
        details: { retryAfterSeconds: 3 },
      })
    }
    this.active++
    return {
      promptTokens,
      maxNewTokens,
      events: this.events(
        promptTokens,
        maxNewTokens,
        this.o.ignoreSignal ? undefined : options.signal,
        options.logprobs,
      ),
    }
  }

  async classify(text: string, options: ClassifyOptions = {}): Promise<ClassifyResult> {
    this.classifyCalls.push({ text, options })
    if (this.o.classifyError) throw this.o.classifyError
    options.signal?.throwIfAborted()
    const labels =
      options.labels ?? (/\p{Script=Han}/u.test(text) ? ['正面', '负面'] : ['positive', 'negative'])
    const favourable = /good|great|love|好|喜欢|棒/i.test(text)
    const first = favourable ? 0.9 : 0.2
    const scores: Record<string, number> = {}
    labels.forEach((l, i) => (scores[l] = i === 0 ? first : (1 - first) / (labels.length - 1)))
    const label = labels.reduce((a, b) => (scores[b] > scores[a] ? b : a))
    return { label, score: scores[label], scores }
  }

  async classifyAll(texts: readonly string[], options: ClassifyOptions = {}) {
    const results: ClassifyResult[] = []
    for (const text of texts) results.push(await this.classify(text, options))
    return results
  }

  private events(
    promptTokens: number,
    maxNewTokens: number,
    signal?: AbortSignal,
    logprobs?: number,
  ): AsyncIterable<ChatEvent> {
    const gen = this.generate(promptTokens, maxNewTokens, signal, logprobs)
    let released = false
    const release = () => {
      if (released) return
      released = true
      this.active--
    }
    return {
      [Symbol.asyncIterator]: () => ({
        next: async () => {
          try {
            const r = await gen.next()
            if (r.done) release()
            return r
          } catch (err) {
            release()
            throw err
          }
        },
        return: async () => {
          if (!released) this.iteratorsClosed++
          release()
          await gen.return(undefined)
          return { done: true as const, value: undefined }
        },
      }),
    }
  }

  private async *generate(
    promptTokens: number,
    maxNewTokens: number,
    signal?: AbortSignal,
    logprobs?: number,
  ): AsyncGenerator<ChatEvent> {
    const end = (finishReason: 'stop' | 'length' | 'cancelled', n: number): ChatEvent => ({
      type: 'end',
      finishReason,
      usage: { promptTokens, completionTokens: n },
    })
    let n = 0
    const script = this.o.script
    for (let i = 0; this.o.endless || i < script.length; i++) {
      const text = script[i % script.length]
      if (n >= maxNewTokens) return yield end('length', n)
      if (this.o.delayMs > 0 || this.o.endless) await sleep(this.o.delayMs, signal)
      if (signal?.aborted) return yield end('cancelled', n)
      if (n === this.o.failAfter) throw new Error('fake engine exploded (secret detail)')
      if (n === this.o.hangAfter) {
        await untilAborted(signal)
        return yield end('cancelled', n)
      }
      n++
      this.deltasEmitted++
      yield {
        type: 'text',
        text,
        ...(logprobs !== undefined && { logprobs: [fakeLogprob(text, n, logprobs)] }),
      }
    }
    yield end('stop', n)
  }
}

/** One entry per delta: the delta as the token, then `top` made-up alternatives. */
export function fakeLogprob(text: string, n: number, top: number): TokenLogprob {
  const entry = (token: string, logprob: number) => ({
    token,
    bytes: Array.from(new TextEncoder().encode(token)),
    logprob,
  })
  return {
    ...entry(text, -0.25 * n),
    top: Array.from({ length: top }, (_, i) => entry(i === 0 ? text : `alt${i}`, -0.25 * n - i)),
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
    function done() {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
  })
}

function untilAborted(signal?: AbortSignal): Promise<void> {
  if (!signal) return new Promise(() => {}) // a bug in the caller: hang, and the test times out
  if (signal.aborted) return Promise.resolve()
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }))
}
