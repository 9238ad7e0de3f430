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

export interface Slot {
  release(): void
}

export class Scheduler {
  private tail: Promise<unknown> = Promise.resolve()
  private slotsInUse = 0
  private readonly waiting: { grant: () => void }[] = []
  private tracked = 0

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
    const result = this.tail.then(task, task)
    this.tail = result.catch(() => {}) // a failed step must not block the queue
    return result
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
