/**
 * Continuous batching of decode steps. Each concurrent generation asks for its next step
 * (one token after its cache); the requests waiting when the step lock comes free run as ONE
 * batched forward pass. A single WASM decode step is bound by reading the weights, and a batch
 * reads them once, so a batch costs less than its steps one by one (how much less depends on
 * whether the kernel is compute bound at that batch size: BENCHMARKS.md), and every stream gets
 * a token every step.
 *
 * The batch is gathered when the run starts, not when it is queued: sequences that just got
 * their token from the previous batch are still sampling and detokenizing, so when fewer
 * requests are waiting than sequences are decoding, the flush gives them one macrotask turn to
 * come back before it starts. A sequence whose consumer stalls (a slow client) is simply left
 * out of that batch and joins a later one. Prefill chunks and classifications keep their own
 * place in the step queue (scheduler.ts) between batches.
 *
 * A `solo` stream never shares a run in the graph: with q8 weights a batch shares one
 * activation scale, so only a solo stream's numbers are exactly those of the request run alone
 * (engine.ts makes seeded requests solo, so a seed reproduces its reply). The engine's decoder
 * quantizes each row on its own (`exactBatches`): there a row's numbers do not depend on its
 * batch, so solo streams share runs like the others.
 */
import type { StepResult } from '../forward.ts'
import type { KvCache } from '../kv/kv-cache.ts'
import type { StepRunner } from './generate.ts'
import { macrotask } from './macrotask.ts'

/** What batching needs of a model (a ForwardModel; tests script it). */
export interface BatchModel {
  forward(ids: readonly number[], cache: KvCache, keep?: number): Promise<StepResult>
  forwardBatch(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]>
  /** The model's decode step (its decoder, else the two above); used when present. */
  decode?(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]>
  readonly canBatch: boolean
  /** Each row of a batched step is exactly that row's step alone (the engine's decoder). */
  readonly exactBatches?: boolean
}

interface Request {
  solo: boolean
  token: number
  cache: KvCache
  resolve(r: StepResult): void
  reject(err: unknown): void
}

export interface BatchStats {
  /** Forward runs made for decode steps. */
  runs: number
  /** Decode steps (tokens) they computed: tokens ÷ runs is the mean batch size. */
  tokens: number
  /** Largest batch run so far. */
  largest: number
}

/** One generation's handle: `step` while decoding, `close` when done (in a finally). */
export interface DecodeStream {
  step(token: number, cache: KvCache): Promise<StepResult>
  close(): void
}

export class DecodeBatcher {
  private pending: Request[] = []
  private scheduled = false
  /** Non-solo streams that have decoded at least once and not closed. */
  private decoding = 0
  /** Solo streams likewise. */
  private decodingSolo = 0
  readonly stats: BatchStats = { runs: 0, tokens: 0, largest: 0 }

  /**
   * @param maxBatch sequences per run; 1 turns batching off (steps run one by one, FIFO).
   */
  constructor(
    private readonly model: BatchModel,
    private readonly run: StepRunner,
    readonly maxBatch: number,
  ) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new Error('maxBatch must be ≥ 1')
  }

  /** Streams that may share runs, have decoded at least once and are not closed. */
  get active(): number {
    return this.decoding
  }

  /** Whether any stream (solo or not) is between its first decode step and its close. */
  get busy(): boolean {
    return this.decoding + this.decodingSolo > 0
  }

  /**
   * @param reproducible the stream's numbers must not depend on other streams: its steps run
   *   alone, unless the model's batches are exact (see above).
   */
  open(reproducible = false): DecodeStream {
    const solo = reproducible && !this.model.exactBatches
    let joined = false
    let closed = false
    return {
      step: async (token, cache) => {
        if (closed) throw new Error('decode stream is closed')
        if (!joined) {
          joined = true
          if (solo) this.decodingSolo++
          else this.decoding++
        }
        return this.enqueue(token, cache, solo)
      },
      close: () => {
        if (closed) return
        closed = true
        if (joined && solo) this.decodingSolo--
        else if (joined) this.decoding--
        // the sequence's memory is given back by the decode loop (generate.ts), which owns it
      },
    }
  }

  private enqueue(token: number, cache: KvCache, solo: boolean): Promise<StepResult> {
    const done = new Promise<StepResult>((resolve, reject) => {
      this.pending.push({ solo, token, cache, resolve, reject })
    })
    this.schedule()
    return done
  }

  private schedule(): void {
    if (this.scheduled || this.pending.length === 0) return
    this.scheduled = true
    void this.run(() => this.flush())
  }

  private async flush(): Promise<void> {
    const canBatch = this.maxBatch > 1 && this.model.canBatch
    const shared = () => this.pending.reduce((n, r) => n + (r.solo ? 0 : 1), 0)
    if (canBatch && !this.pending[0]?.solo && shared() < Math.min(this.decoding, this.maxBatch)) {
      await macrotask()
    }
    this.scheduled = false
    let batch: Request[]
    if (!canBatch || this.pending[0]?.solo) batch = this.pending.splice(0, 1)
    else {
      batch = []
      const rest: Request[] = []
      for (const r of this.pending) {
        if (!r.solo && batch.length < this.maxBatch) batch.push(r)
        else rest.push(r)
      }
      this.pending = rest
    }
    this.schedule() // whatever is left waits for the next turn of the step lock
    if (batch.length === 0) return
    try {
      const tokens = batch.map((r) => r.token)
      const caches = batch.map((r) => r.cache)
      const results = this.model.decode
        ? await this.model.decode(tokens, caches)
        : batch.length === 1
          ? [await this.model.forward(tokens, caches[0], 1)]
          : await this.model.forwardBatch(tokens, caches)
      this.stats.runs++
      this.stats.tokens += batch.length
      this.stats.largest = Math.max(this.stats.largest, batch.length)
      batch.forEach((r, i) => r.resolve(results[i]))
    } catch (err) {
      for (const r of batch) r.reject(err)
    }
  }
}
