/**
 * One ORT run at a time per session (WASM is single-threaded and a session refuses concurrent
 * runs), shared fairly: every forward run queues on one lock, first come first served, with one
 * exception: the decode batch (batcher.ts; at most one is ever waiting) goes ahead of other
 * waiting work once after each run that was not a decode batch. So decoding streams get a token
 * between any two prefill chunks or classification passes, even when several prompts arrive at
 * once, and a prompt or a sentiment call waits for at most one decode batch per run it makes.
 * Generations also hold one of `maxActive` slots; beyond that they wait in a queue of at most
 * `maxQueued`, and past that the caller gets `queue_full`.
 */
import { AppError } from '../core/errors.ts'
import { macrotask } from './macrotask.ts'

export interface SchedulerOptions {
  /** Generations decoding at once (interleaved per step). */
  maxActive: number
  /** Generations waiting for a slot before new ones are refused. */
  maxQueued: number
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
  private readonly waiting: { grant: () => void }[] = []
  private tracked = 0
  private lastYield = 0

  constructor(readonly options: SchedulerOptions) {}

  /** Work holding a slot or being tracked (classifications). */
  get active(): number {
    return this.slotsInUse + this.tracked
  }

  get queued(): number {
    return this.waiting.length
  }

  /** Throws `queue_full` if a new generation would be refused right now. */
  assertCapacity(): void {
    if (
      this.slotsInUse >= this.options.maxActive &&
      this.waiting.length >= this.options.maxQueued
    ) {
      throw new AppError('queue_full', 'The server is busy: too many generations are queued', {
        details: { retryAfterSeconds: 2 },
      })
    }
  }

  /** Waits for a generation slot; rejects if `signal` aborts while waiting. */
  async acquire(signal?: AbortSignal): Promise<Slot> {
    signal?.throwIfAborted()
    if (this.slotsInUse < this.options.maxActive) {
      this.slotsInUse++
      return this.slot()
    }
    this.assertCapacity()
    await new Promise<void>((resolve, reject) => {
      const entry = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        },
      }
      const onAbort = () => {
        const i = this.waiting.indexOf(entry)
        if (i !== -1) this.waiting.splice(i, 1)
        reject(signal?.reason)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiting.push(entry)
    })
    return this.slot() // the releasing slot handed its place over: slotsInUse is unchanged
  }

  /** Counts short work (a classification) as active while it runs, without taking a slot. */
  async track<T>(task: () => Promise<T>): Promise<T> {
    this.tracked++
    try {
      return await task()
    } finally {
      this.tracked--
    }
  }

  /**
   * Runs `task` (one forward run) when the lock comes to it; see above for the order.
   * `decode` marks the decode batch.
   */
  step<T>(task: () => Promise<T>, decode = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.steps.push({ decode, run: () => Promise.resolve().then(task).then(resolve, reject) })
      void this.pump()
    })
  }

  private async pump(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      while (this.steps.length > 0) {
        await this.yieldIfDue()
        let at = 0
        if (!this.lastWasDecode)
          at = Math.max(
            0,
            this.steps.findIndex((s) => s.decode),
          )
        const [next] = this.steps.splice(at, 1)
        this.lastWasDecode = next.decode
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

  private slot(): Slot {
    let released = false
    return {
      release: () => {
        if (released) return
        released = true
        const next = this.waiting.shift()
        if (next) next.grant()
        else this.slotsInUse--
      },
    }
  }
}
