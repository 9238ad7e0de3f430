/**
 * One ORT run at a time per session (WASM is single-threaded and a session refuses concurrent
 * runs), shared fairly: every forward run queues on one lock, first come first served, with one
 * exception: the decode batch (batcher.ts; at most one is ever waiting) goes ahead of other
 * waiting work once after each run that was not a decode batch. So decoding streams get a token
 * between any two prefill chunks or classification passes, even when several prompts arrive at
 * once, and a prompt or a sentiment call waits for at most one decode batch per run it makes.
 * Generations also hold one of `maxActive` slots, and with `maxKvTokens` the KV positions they
 * may fill (prompt + max_tokens) out of that total; one that does not fit waits in a queue of at
 * most `maxQueued`, first come first served, and past that the caller gets `queue_full`.
 * Classifications are admitted by the prompt tokens they will compute (`admit`): at most
 * `maxQueuedTokens` of them wait or run at once, and past that the caller gets `queue_full`
 * too, with a Retry-After from the measured time per token. A step whose signal aborted while
 * it waited is dropped without running.
 *
 * On Workers the step loop runs in the context of whichever request resumed it last, and
 * workerd does not let one request's code use another request's objects (an AbortSignal
 * included: the loop hangs). So a request's signal is only ever read by listeners that request
 * registered; the loop and the slot hand-over look at plain state.
 */
import { AppError } from '../../core/errors.ts'
import { macrotask } from './macrotask.ts'

export interface SchedulerOptions {
  /** Generations decoding at once (interleaved per step). */
  maxActive: number
  /** Generations waiting for a slot before new ones are refused. */
  maxQueued: number
  /**
   * Prompt tokens of admitted classifications not yet computed before new ones are refused.
   * A request larger than this alone is admitted when nothing else is waiting.
   */
  maxQueuedTokens?: number
  /**
   * KV cache positions the generations holding a slot may reserve together, each its prompt +
   * max_tokens (what its cache is sized for): a bound on KV memory. A generation larger than
   * this alone runs when no other does. Undefined: no bound beyond maxActive.
   */
  maxKvTokens?: number
}

export const DEFAULT_MAX_QUEUED_TOKENS = 8192

/** Admitted classification work: one entry per text, in tokens. */
export interface Admission {
  /** Text `i` starts computing (counted as active from now on). */
  start(i: number): void
  /** Text `i` is done; `computeMs` is the time its forward runs took (for Retry-After). */
  finish(i: number, computeMs: number): void
  /** Gives back the texts not started yet (the client left: they will never run). */
  drop(): void
  /** Gives back whatever was not finished (the request ended, failed or was abandoned). */
  release(): void
}

/**
 * How long steps may run back to back before the event loop gets a turn. On Node an ORT wasm
 * run settles through promise jobs only, so without a turn the socket writes of streamed
 * deltas, new requests (/health) and client disconnects all wait for the end of the reply.
 */
export const YIELD_EVERY_MS = 8

export interface Slot {
  release(): void
}

/** A generation's place, taken when it is admitted (Scheduler.reserve). */
export interface Reservation {
  slot: Promise<Slot>
  cancel(): void
}

interface Step {
  decode: boolean
  run(): Promise<void>
}

export class Scheduler {
  private readonly steps: Step[] = []
  private running = false
  private lastWasDecode = false
  private idleWaiters: (() => void)[] = []
  private slotsInUse = 0
  /** KV positions the slots in use reserved (maxKvTokens). */
  private kvReserved = 0
  private readonly waiting: { grant: () => void; positions: number }[] = []
  private lastYield = 0
  /** Admitted classification texts and tokens not yet finished, and texts computing now. */
  private pendingTexts = 0
  private pendingTokens = 0
  private computingTexts = 0
  /** Measured compute time per classified token (moving average); undefined until measured. */
  private msPerToken: number | undefined
  /** Forward runs that were not decode steps (prompt chunks, label steps), run so far. */
  promptRuns = 0

  constructor(readonly options: SchedulerOptions) {}

  get maxQueuedTokens(): number {
    return this.options.maxQueuedTokens ?? DEFAULT_MAX_QUEUED_TOKENS
  }

  /** Generations holding a slot, and classification texts computing. */
  get active(): number {
    return this.slotsInUse + this.computingTexts
  }

  /** Generations waiting for a slot, and admitted classification texts not yet started. */
  get queued(): number {
    return this.waiting.length + this.pendingTexts - this.computingTexts
  }

  /** KV positions the running generations reserved (the unit of maxKvTokens). */
  get kvReservedTokens(): number {
    return this.kvReserved
  }

  /** Prompt tokens of admitted classifications not yet computed (the bound's unit). */
  get queuedTokens(): number {
    return this.pendingTokens
  }

  /**
   * Admits classification work of `tokens[i]` prompt tokens per text, or throws `queue_full`
   * when it would take the admitted total past maxQueuedTokens.
   */
  admit(tokens: readonly number[]): Admission {
    const total = tokens.reduce((a, b) => a + b, 0)
    if (this.pendingTexts > 0 && this.pendingTokens + total > this.maxQueuedTokens) {
      const wait = ((this.msPerToken ?? 0) * this.pendingTokens) / 1000
      throw new AppError(
        'queue_full',
        `The server is busy: ${this.pendingTokens} tokens of classification are queued (at most ${this.maxQueuedTokens}), this request needs ${total}`,
        { details: { retryAfterSeconds: Math.min(120, Math.max(1, Math.ceil(wait))) } },
      )
    }
    this.pendingTexts += tokens.length
    this.pendingTokens += total
    const state = tokens.map(() => 0) // 0 waiting, 1 computing, 2 done
    const end = (i: number) => {
      if (state[i] === 1) this.computingTexts--
      if (state[i] !== 2) {
        this.pendingTexts--
        this.pendingTokens -= tokens[i]
      }
      state[i] = 2
    }
    return {
      start: (i) => {
        if (state[i] !== 0) return
        state[i] = 1
        this.computingTexts++
      },
      finish: (i, computeMs) => {
        if (state[i] === 2) return
        end(i)
        if (tokens[i] > 0 && computeMs > 0) {
          const sample = computeMs / tokens[i]
          this.msPerToken =
            this.msPerToken === undefined ? sample : 0.8 * this.msPerToken + 0.2 * sample
        }
      },
      drop: () => state.forEach((s, i) => s === 0 && end(i)),
      release: () => state.forEach((_, i) => end(i)),
    }
  }

  /** Throws `queue_full` if a new generation of `positions` would be refused right now. */
  assertCapacity(positions = 0): void {
    if (!this.startsNow(positions) && this.waiting.length >= this.options.maxQueued) {
      throw new AppError('queue_full', 'The server is busy: too many generations are queued', {
        details: { retryAfterSeconds: 2 },
      })
    }
  }

  /**
   * Takes a generation's place now: a slot if one is free and its `positions` of KV fit
   * (maxKvTokens), else a place in the queue (queue_full when that is full too). `slot`
   * resolves when the generation may run; it rejects if `signal` aborts while waiting.
   * `cancel()` gives the place back whatever its state, so a generation that is admitted but
   * never run holds nothing.
   */
  reserve(signal?: AbortSignal, positions = 0): Reservation {
    signal?.throwIfAborted()
    if (this.startsNow(positions)) {
      const slot = this.take(positions)
      return { slot: Promise.resolve(slot), cancel: () => slot.release() }
    }
    this.assertCapacity(positions)
    let cancel!: () => void
    const waiting = new Promise<Slot>((resolve, reject) => {
      let state: 'waiting' | 'granted' | 'gone' = 'waiting'
      let granted: Slot | undefined
      const leave = () => {
        const i = this.waiting.indexOf(entry)
        if (i !== -1) this.waiting.splice(i, 1)
        signal?.removeEventListener('abort', onAbort)
        this.grantWaiting() // the ones behind it may fit now
      }
      const entry = {
        positions,
        // runs in the releasing request's context: it must not touch this request's signal
        // (workerd), so the abort listener stays and finds the state no longer 'waiting'
        grant: () => {
          state = 'granted'
          granted = this.take(positions)
          resolve(granted)
        },
      }
      const onAbort = () => {
        if (state !== 'waiting') return
        state = 'gone'
        leave()
        reject(signal?.reason)
      }
      cancel = () => {
        if (state === 'granted') granted!.release()
        else if (state === 'waiting') {
          state = 'gone'
          leave()
          reject(new Error('the generation was dropped before it ran'))
        }
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiting.push(entry)
    })
    waiting.catch(() => {}) // a dropped reservation that nobody awaits is not an error
    return { slot: waiting, cancel: () => cancel() }
  }

  /** Waits for a generation slot; rejects if `signal` aborts while waiting. */
  acquire(signal?: AbortSignal): Promise<Slot> {
    try {
      return this.reserve(signal).slot
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * Runs `task` (one forward run) when the lock comes to it; see above for the order.
   * `decode` marks the decode batch. If `signal` aborts before the step's turn, the step is
   * dropped and rejects with the signal's reason: abandoned work never reaches the model.
   */
  step<T>(task: () => Promise<T>, decode = false, signal?: AbortSignal): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason)
      const step: Step = {
        decode,
        run: () => Promise.resolve().then(task).then(resolve, reject),
      }
      // The listener runs in the signal's own request; the step loop, which may run in another
      // request's context (workerd), never touches the signal.
      signal?.addEventListener(
        'abort',
        () => {
          const at = this.steps.indexOf(step)
          if (at === -1) return // already running or done
          this.steps.splice(at, 1)
          reject(signal.reason)
        },
        { once: true },
      )
      this.steps.push(step)
      void this.pump()
    })
  }

  private async pump(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      while (this.steps.length > 0) {
        await this.yieldIfDue()
        if (this.steps.length === 0) break // the steps left were dropped while we yielded

        let at = 0
        if (!this.lastWasDecode)
          at = Math.max(
            0,
            this.steps.findIndex((s) => s.decode),
          )
        const [next] = this.steps.splice(at, 1)
        this.lastWasDecode = next.decode
        if (!next.decode) this.promptRuns++
        await next.run() // settles the caller's promise; a failed step must not block the queue
      }
    } finally {
      this.running = false
      for (const wake of this.idleWaiters.splice(0)) wake()
    }
  }

  /**
   * Resolves when no step is queued or running. On Workers, the step loop runs in the context
   * of whichever request's event resumed it, so a request keeps its context alive until this
   * resolves (adapters/workers/client-lifetime.ts).
   */
  idle(): Promise<void> {
    if (!this.running && this.steps.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /** A macrotask turn (timers, I/O) at most every YIELD_EVERY_MS; see there. */
  private async yieldIfDue(): Promise<void> {
    const now = performance.now()
    if (now - this.lastYield < YIELD_EVERY_MS) return
    await macrotask()
    this.lastYield = performance.now()
  }

  /** Whether a generation of `positions` would get a slot now (nobody waits before it). */
  private startsNow(positions: number): boolean {
    return this.waiting.length === 0 && this.fits(positions)
  }

  private fits(positions: number): boolean {
    if (this.slotsInUse >= this.options.maxActive) return false
    const max = this.options.maxKvTokens
    return max === undefined || this.slotsInUse === 0 || this.kvReserved + positions <= max
  }

  /** Slots for the waiting generations, in order, while the first of them fits. */
  private grantWaiting(): void {
    while (this.waiting.length > 0 && this.fits(this.waiting[0].positions))
      this.waiting.shift()!.grant()
  }

  private take(positions: number): Slot {
    this.slotsInUse++
    this.kvReserved += positions
    let released = false
    return {
      release: () => {
        if (released) return
        released = true
        this.slotsInUse--
        this.kvReserved -= positions
        this.grantWaiting()
      },
    }
  }
}
