/**
 * The model as the front runs it when the package is split into stages (stage.ts): the same
 * ForwardModel the serving layer drives everywhere, whose forward runs travel through the
 * stages. Per run: the token ids to the row stages that hold them (embeddings back), the rows
 * through each layer stage in order, the last rows to every row stage (their slices of the
 * logits back, put together here, so sampling and label scoring see exactly what one process
 * computes).
 *
 * Sequences. A KV cache here is a sequence number and a length; the layer stages hold the KV.
 * Caches stay immutable to their users as in the kernels: stepping a cache that is not its
 * sequence's newest forks a new sequence (the fork rides ahead of the rows, as an op), and
 * `detach` (a cache kept long: turn cache, classification prefix) is such a fork too. A
 * released sequence is released in every layer stage (a call of its own, queued behind the
 * stage's other calls: calls to one stage never overtake each other).
 *
 * Restarts. Each stage's replies carry its epoch; a new one (or a stage that no longer holds a
 * sequence) means an isolate restarted and lost its KV. The front then resets every layer
 * stage and runs the call again: each sequence it needs is recomputed from its tokens (kept
 * here, a few bytes a token), so a reply goes on as if nothing happened; it costs a prefill.
 */
import { AppError, isAppError } from '../../core/errors.ts'
import { pipelineParts, type Manifest, type PipelineEntry } from '../../format/index.ts'
import { modelShape, type ForwardModel, type ModelShape, type StepResult } from '../forward.ts'
import type { KvCache } from '../kv/kv-cache.ts'
import type { StageReport } from '../types.ts'
import { passOver, type PassReply, type StagePass } from './pass.ts'
import type { StageApi, StageOp, StageState } from './stage.ts'

/** One sequence as the front tracks it: the tokens in its KV (in the stages), in order. */
class Sequence {
  released = false
  constructor(
    readonly id: string,
    readonly generation: number,
    /** Tokens whose KV the stages hold (positions 0 … filled − 1). */
    readonly tokens: number[],
  ) {}
  get filled(): number {
    return this.tokens.length
  }
}

/** The first `length` positions of a sequence (none yet: `seq` undefined). */
export class PipelineCache implements KvCache {
  constructor(
    readonly length: number,
    readonly seq: Sequence | undefined,
    private readonly model: PipelineModel,
    /**
     * A kept cache (`detach`): its sequence is never stepped in place, so what is made from it
     * (and released after) never takes its positions with it.
     */
    readonly pinned = false,
  ) {}

  get tensors(): never {
    throw new AppError('internal', 'A pipeline KV cache lives in its stages and cannot be read')
  }

  /** A sequence of its own with these positions (a fork in the stages, sent with the next call). */
  detach(): KvCache {
    return this.model.fork(this)
  }

  slice(length: number): KvCache {
    return new PipelineCache(length, this.seq, this.model, this.pinned)
  }
}

interface Link {
  api: StageApi
  /** Calls to this stage run one after another, in the order they were made. */
  tail: Promise<unknown>
  /** Ops for the next call (layer stages). */
  ops: StageOp[]
  state?: StageState
  /** Times the stage answered with a new epoch (restarted: evicted, or its isolate reset). */
  restarts: number
  /** Calls answered, and the milliseconds from sending each to its answer (hop and compute). */
  calls: number
  ms: number
}

/**
 * How long a forward pass, a release or a probe may wait for the stages' answer. Generous: a
 * stage that restarted reloads its part (seconds from R2) inside the call that finds it.
 */
export const STAGE_CALL_TIMEOUT_MS = 120_000

export class PipelineModel implements ForwardModel {
  readonly shape: ModelShape
  readonly canBatch = true
  readonly exactBatches = true
  readonly paths = { prefill: 'decoder', decode: 'decoder' } as const
  private readonly plan: PipelineEntry
  /** One per stage, in plan order. */
  private readonly links: Link[]
  private readonly layerLinks: Link[]
  private readonly chunkRows: number
  private nextSeq = 1
  /** This front's name in the stages: its sequences are `<front>/<n>`. */
  readonly front = crypto.randomUUID()
  private generation = 0
  /** Stage restarts seen (and recovered from). */
  restarts = 0
  /**
   * A sequence collected without a release: released with the next call to the stages (queued,
   * not sent: a collector callback belongs to no request, and on Workers a call made outside a
   * live request may never be answered).
   */
  private readonly finalizer = new FinalizationRegistry<{ id: string; generation: number }>((s) =>
    this.dropSequence(s.id, s.generation, false),
  )

  private readonly runPass: StagePass

  /**
   * `stages`: a link to each stage (plan order), for state queries, releases and forks; `pass`
   * runs forward passes (default: over `stages` from here; a stage host runs them next to the
   * stages instead).
   */
  private readonly callTimeoutMs: number

  constructor(
    manifest: Manifest,
    stages: readonly StageApi[],
    pass?: StagePass,
    options: { callTimeoutMs?: number } = {},
  ) {
    this.callTimeoutMs = options.callTimeoutMs ?? STAGE_CALL_TIMEOUT_MS
    const plan = manifest.pipeline
    if (!plan) throw new AppError('model_invalid', `Package ${manifest.id} has no pipeline`)
    if (stages.length !== plan.stages.length)
      throw new Error(`PipelineModel: ${stages.length} stages for a plan of ${plan.stages.length}`)
    const c = manifest.config
    this.shape = modelShape(c)
    this.chunkRows = plan.chunkRows
    this.plan = plan
    const parts = pipelineParts(plan)
    this.links = stages.map((api) => ({
      api,
      tail: Promise.resolve(),
      ops: [],
      restarts: 0,
      calls: 0,
      ms: 0,
    }))
    this.layerLinks = parts.layers.map((p) => this.links[p.index])
    this.runPass = pass ?? passOver(plan, c.hidden_size, this.shape.vocabSize, stages)
  }

  /** Each stage as it last answered, in plan order. */
  readonly stageReports = (): StageReport[] =>
    this.plan.stages.map((part, i) => {
      const state = this.links[i].state
      return {
        ...(part.layers && { layers: part.layers }),
        ...(part.rows && { rows: part.rows }),
        status: state ? 'ready' : 'unknown',
        restarts: this.links[i].restarts,
        calls: this.links[i].calls,
        callMs: this.links[i].ms,
        ...(state && {
          isolate: state.isolate,
          residentBytes: state.residentBytes,
          budgetBytes: state.budgetBytes,
          sequences: state.sequences,
          ...(state.kvFormat && { kvFormat: state.kvFormat }),
          computeMs: state.computeMs,
        }),
      }
    })

  /** Asks every stage for its state (on Workers, loading the ones not loaded yet). */
  async refresh(): Promise<StageState[]> {
    return Promise.all(
      this.links.map((l) =>
        this.call(
          l,
          () => l.api.state(),
          (s) => s,
          undefined,
          false, // the first answer waits for the stage's load
        ),
      ),
    )
  }

  /** `rounds` state queries to each stage in turn: the median milliseconds of each stage's. */
  readonly probeStages = async (rounds: number): Promise<number[]> => {
    const out: number[] = []
    for (const l of this.links) {
      const times: number[] = []
      for (let i = 0; i < rounds; i++) {
        const t0 = performance.now()
        await this.call(
          l,
          () => l.api.state(),
          (s) => s,
        )
        times.push(performance.now() - t0)
      }
      times.sort((a, b) => a - b)
      out.push(times[Math.floor(times.length / 2)])
    }
    return out
  }

  emptyCache(): KvCache {
    return new PipelineCache(0, undefined, this)
  }

  async forward(
    ids: readonly number[],
    cache: KvCache,
    keep = 1,
    columns?: readonly number[],
  ): Promise<StepResult> {
    if (ids.length === 0) throw new Error('forward needs at least one token')
    keep = Math.max(0, Math.min(keep, ids.length))
    return this.retrying(async () => {
      const [seq] = await this.claim([this.own(cache)])
      const rows = keep
      const reply = await this.pass([seq], [ids], keep, rows ? { rows, columns } : undefined)
      const logits = reply.logits ?? new Float32Array(0)
      return { logits, rows, cache: new PipelineCache(seq.filled, seq, this) }
    })
  }

  forwardBatch(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]> {
    return this.decode(tokens, caches)
  }

  async decode(tokens: readonly number[], caches: readonly KvCache[]): Promise<StepResult[]> {
    if (tokens.length === 0 || tokens.length !== caches.length)
      throw new Error('decode needs one cache per token')
    return this.retrying(async () => {
      const seqs = await this.claim(caches.map((c) => this.own(c)))
      const reply = await this.pass(
        seqs,
        tokens.map((t) => [t]),
        1,
        { rows: tokens.length },
      )
      const logits = reply.logits!
      const V = this.shape.vocabSize
      return seqs.map((s, r) => ({
        logits: logits.subarray(r * V, (r + 1) * V),
        rows: 1,
        cache: new PipelineCache(s.filled, s, this),
      }))
    })
  }

  releaseCache(cache: KvCache): void {
    if (!(cache instanceof PipelineCache) || !cache.seq || cache.seq.released) return
    const s = cache.seq
    s.released = true
    this.finalizer.unregister(s)
    this.dropSequence(s.id, s.generation)
  }

  async release(): Promise<void> {}

  /** A new sequence holding `cache`'s positions (PipelineCache.detach). */
  fork(cache: PipelineCache): KvCache {
    const from = cache.seq
    if (!from || cache.length === 0) return new PipelineCache(0, undefined, this)
    const seq = this.newSequence(from.tokens.slice(0, cache.length))
    // sent now: the stages' memory should say what is kept
    if (from.generation === this.generation && !from.released)
      this.toLayers({ fork: { from: from.id, to: seq.id, length: cache.length } })
    // else the next call that needs it recomputes it from its tokens
    else this.stale.add(seq.id)
    return new PipelineCache(cache.length, seq, this, true)
  }

  /** Sequences whose KV the stages do not hold (made while their source was lost): recompute. */
  private readonly stale = new Set<string>()

  /** `cache` as one of this model's (an empty plain cache is the same as `emptyCache()`). */
  private own(cache: KvCache): PipelineCache {
    if (cache instanceof PipelineCache) return cache
    if (cache.length === 0) return new PipelineCache(0, undefined, this)
    throw new AppError('internal', 'A pipeline model was given a KV cache it did not make')
  }

  /**
   * The sequence each cache's next rows go to: its own when the cache is its newest and not
   * used twice here, else a fork; recomputed first when the stages lost it.
   */
  private async claim(caches: PipelineCache[]): Promise<Sequence[]> {
    const used = new Set<Sequence>()
    const out: Sequence[] = []
    for (const c of caches) {
      const s = c.seq
      if (s?.released) throw new AppError('internal', 'A released KV cache was stepped')
      let seq: Sequence
      if (!s) seq = this.newSequence([])
      else if (s.generation !== this.generation || this.stale.has(s.id)) {
        seq = this.newSequence([])
        await this.recompute(seq, s.tokens.slice(0, c.length))
      } else if (s.filled === c.length && !used.has(s) && !c.pinned) seq = s
      else {
        seq = this.newSequence(s.tokens.slice(0, c.length))
        for (const l of this.layerLinks)
          l.ops.push({ fork: { from: s.id, to: seq.id, length: c.length } })
      }
      used.add(seq)
      out.push(seq)
    }
    return out
  }

  private newSequence(tokens: number[]): Sequence {
    const seq = new Sequence(`${this.front}/${this.nextSeq++}`, this.generation, tokens)
    this.finalizer.register(seq, { id: seq.id, generation: seq.generation }, seq)
    return seq
  }

  /** A sequence the stages lost, computed again from its tokens (no logits). */
  private async recompute(seq: Sequence, tokens: number[]): Promise<void> {
    for (let i = 0; i < tokens.length; i += this.chunkRows)
      await this.pass([seq], [tokens.slice(i, i + this.chunkRows)], 0)
  }

  /**
   * Rows `ids[i]` after `seqs[i]` through the stages, after every call made to them before
   * (a pass reaches every stage); the sequences take the tokens. Returns the logits asked for,
   * else the last `keep` rows of each group (normalised hidden states).
   */
  private async pass(
    seqs: Sequence[],
    ids: ReadonlyArray<readonly number[]>,
    keep: number,
    logits?: { rows: number; columns?: readonly number[] },
  ): Promise<PassReply> {
    const flat = ids.flat()
    for (const t of [...flat, ...(logits?.columns ?? [])])
      if (!(Number.isInteger(t) && t >= 0 && t < this.shape.vocabSize))
        throw new AppError('bad_request', `token id ${t} is out of range`)
    const groups = seqs.map((s, i) => ({ seq: s.id, position: s.filled, count: ids[i].length }))
    const before = Promise.all(this.links.map((l) => l.tail))
    const result = before.then(async () => {
      const reply = await this.answered(
        this.runPass({
          ids: flat,
          groups,
          ops: this.layerLinks.map((l) => l.ops.splice(0)),
          keep,
          ...(logits && { logits: { rows: logits.rows, columns: logits.columns?.slice() } }),
        }),
        'A forward pass through the stages',
      )
      // every answer is taken in (a restart throws once all are)
      let restart: unknown
      for (const a of reply.answers)
        try {
          this.observe(this.links[a.state.index], a.state, a.ms)
        } catch (err) {
          restart ??= err
        }
      if (restart) throw restart
      return reply
    })
    for (const l of this.links) l.tail = result.catch(() => {})
    const reply = await result
    seqs.forEach((s, i) => s.tokens.push(...ids[i]))
    return reply
  }

  /**
   * One call to a stage, after the ones made before it; its reply's state is checked: a new
   * epoch from a stage that answered before means it restarted.
   */
  private call<R, T = R>(
    l: Link,
    send: () => Promise<R>,
    stateOf: (r: R) => StageState,
    pick: (r: R) => T = (r) => r as unknown as T,
    /** Bounded by callTimeoutMs (all but the first state queries, which load the stages). */
    bounded = true,
  ): Promise<T> {
    const index = this.links.indexOf(l)
    const result = l.tail
      .then(() => (bounded ? this.answered(send(), `Stage ${index}`) : send()))
      .then((r) => {
        this.observe(l, stateOf(r))
        return pick(r)
      })
    l.tail = result.catch(() => {})
    return result
  }

  /**
   * `work`, or `stage_unavailable` when it has not settled after callTimeoutMs: an answer lost
   * on the way (an isolate gone, a call whose request ended) must not hold every later call
   * behind it for ever. The work is then done again (`retrying`); a late answer is ignored.
   */
  private answered<T>(work: Promise<T>, what: string): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new AppError(
              'stage_unavailable',
              `${what} did not answer within ${this.callTimeoutMs / 1000} s`,
            ),
          ),
        this.callTimeoutMs,
      )
    })
    return Promise.race([work, late]).finally(() => clearTimeout(timer))
  }

  /**
   * A stage's answer: its state kept, its time counted (`ms`: a forward pass's call; not a
   * state query, which may load). A new epoch from a stage that answered before means it
   * restarted: a layer stage lost its KV (`stage_unavailable`, so the work is done again).
   */
  private observe(l: Link, state: StageState, ms?: number): void {
    if (ms !== undefined) {
      l.calls++
      l.ms += ms
    }
    const before = l.state?.epoch
    l.state = state
    if (before !== undefined && before !== state.epoch) l.restarts++
    // a row stage keeps nothing between calls: its answer stands
    if (before !== undefined && before !== state.epoch && !state.rows)
      throw new AppError('stage_unavailable', `Stage ${state.index} restarted`, {
        details: { restarted: true },
      })
  }

  /** Sends a layer stage its queued ops (releases) on their own. */
  private flush(l: Link): Promise<unknown> {
    return this.call(
      l,
      async () => {
        const ops = l.ops.splice(0)
        return ops.length ? l.api.apply(ops) : (l.state ?? l.api.state())
      },
      (s) => s,
    ).catch(() => {})
  }

  /** A sequence nothing refers to any more: released in the stages (if they still hold it). */
  private dropSequence(id: string, generation: number, now = true): void {
    this.stale.delete(id)
    if (generation === this.generation) this.toLayers({ release: id }, now)
  }

  /** `op` to every layer stage, behind the calls already made to it: now, or with the next call. */
  private toLayers(op: StageOp, now = true): void {
    for (const l of this.layerLinks) {
      l.ops.push(op)
      if (now) void this.flush(l)
    }
  }

  /**
   * Resolves once every call made to the stages so far has been answered (also those made while
   * waiting). On Workers a request stays until then: a call's answer is delivered to the request
   * that made it, and one whose request has ended is never answered.
   */
  async settled(): Promise<void> {
    for (;;) {
      const tails = this.links.map((l) => l.tail)
      await Promise.all(tails)
      if (this.links.every((l, i) => l.tail === tails[i])) return
    }
  }

  /**
   * Runs `work`; when a stage turns out to have restarted (lost KV), every layer stage is reset
   * and `work` runs once more, recomputing the sequences it needs.
   */
  private async retrying<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work()
    } catch (err) {
      if (!(isAppError(err) && err.code === 'stage_unavailable')) throw err
      this.restarts++
      this.generation++
      this.stale.clear()
      await Promise.all(
        this.layerLinks.map((l) => {
          l.ops = [{ reset: this.front }]
          return this.flush(l)
        }),
      )
      return work()
    }
  }
}
