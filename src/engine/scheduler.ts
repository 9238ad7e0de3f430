/**
 * One ORT run at a time per session (WASM is single-threaded and a session refuses concurrent
 * runs), shared fairly: every forward *step* queues on one FIFO lock, so concurrent generations
 * interleave token by token and a sentiment call waits for at most one step per active stream,
 * never for a whole reply. Generations also hold one of `maxActive` slots; beyond that they wait
 * in a queue of at most `maxQueued`, and past that the caller gets `queue_full`.
 */
import { AppError } from '../core/errors.ts'

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

export class Scheduler {
  private tail: Promise<unknown> = Promise.resolve()
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

  /** Runs one forward step when every step queued before it has finished. */
  step<T>(task: () => Promise<T>): Promise<T> {
    const run = async () => {
      await this.yieldIfDue()
      return task()
    }
    const result = this.tail.then(run, run)
    this.tail = result.catch(() => {}) // a failed step must not block the queue
    return result
  }

  /** A macrotask turn (timers, I/O) at most every YIELD_EVERY_MS; see there. */
  private async yieldIfDue(): Promise<void> {
    const now = performance.now()
    if (now - this.lastYield < YIELD_EVERY_MS) return
    await new Promise((resolve) => setTimeout(resolve, 0))
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
