/**
 * One stage of a package split for small isolates (src/format/pipeline.ts): it loads only its
 * part of the package, straight into the engine's kernels, and answers the front
 * (pipeline-model.ts), which keeps everything else (tokenizer, sampling, scheduling, HTTP).
 *
 *   - A layer stage runs rows of the residual stream through its decoder layers and keeps their
 *     KV cache per sequence: the front names sequences by number, and forks or releases them with
 *     `ops` sent ahead of the rows (in the same call, so a fork is never a hop of its own).
 *   - A row stage holds a slice of the head rows: the embedding of the token ids in its range
 *     and the logits of its range.
 *
 * Every reply carries the stage's `epoch` (new at each load) and its resident bytes: a front
 * that sees a new epoch knows the stage lost its KV caches. A stage asked to run a sequence it
 * does not hold answers `stage_unavailable`.
 *
 * Everything crossing the boundary is plain data (numbers, arrays, Float32Arrays), so the same
 * object serves in-process (Node, Deno, tests) and behind Durable Object RPC (Workers).
 */
import { AppError } from '../../core/errors.ts'
import {
  decoderSymmetric,
  headSliceSegments,
  qwen2Shape,
  STAGE_BASE_BYTES,
  type PipelineStage,
} from '../../format/index.ts'
import type { KvCache } from '../kv/kv-cache.ts'
import type { PackageHandle } from '../package/loader.ts'
import { Q8Decoder, type DecoderOptions, type ResidentCache } from '../wasm/decoder.ts'
import { Q8Head } from '../wasm/head.ts'
import { streamParts, type StreamStats } from '../wasm/kernel-loader.ts'

/** Rows of one sequence in a forward call: `count` tokens from `position`. */
export interface StageGroup {
  seq: string
  position: number
  count: number
}

/** Changes to the stage's sequences, applied in order before a call's rows. */
export type StageOp =
  | { fork: { from: string; to: string; length: number } }
  | { release: string }
  /** Releases every sequence of the front named (`<front>/…`). */
  | { reset: string }

export interface StageState {
  index: number
  layers?: [number, number]
  rows?: [number, number]
  /** New at each load: a different epoch means the stage restarted (its KV caches are gone). */
  epoch: string
  /**
   * Names the isolate (the JavaScript heap and memory) the stage runs in: stages with the same
   * one share an isolate, so its memory limit.
   */
  isolate: string
  /** WASM memory plus the arrays the stage keeps in JS, plus the fixed allowance (pipeline.ts). */
  residentBytes: number
  budgetBytes: number
  /** Sequences whose KV cache the stage holds. */
  sequences: number
  /** How a layer stage's KV cache stores a position (KV_FORMAT). */
  kvFormat?: string
  /** Calls answered since the load, and the milliseconds spent computing them (in the stage). */
  calls: number
  computeMs: number
}

/** What the front calls: a stage in-process, or a proxy of one in another isolate. */
export interface StageApi {
  state(): Promise<StageState>
  /** Layer stage: `ops`, then the rows; returns the last `keep` rows of each group (all without). */
  forward(
    hidden: Float32Array,
    groups: StageGroup[],
    ops: StageOp[],
    keep?: number,
  ): Promise<{ hidden: Float32Array; state: StageState }>
  /** Layer stage: `ops` alone (releases, when no rows follow soon). */
  apply(ops: StageOp[]): Promise<StageState>
  /** Row stage: embeddings of `ids` (each in its rows), [ids.length, hidden]. */
  embed(ids: number[]): Promise<{ hidden: Float32Array; state: StageState }>
  /**
   * Row stage: logits of `rows` hidden rows over its vocabulary slice ([rows, end − start]), or
   * with `columns` (token ids in its range) of those only ([rows, columns.length]).
   */
  logits(
    hidden: Float32Array,
    rows: number,
    columns?: number[],
  ): Promise<{ logits: Float32Array; state: StageState }>
}

export interface StageLoadOptions extends DecoderOptions {
  stats?: StreamStats
  /** How long a front may go unheard before its sequences here are freed (default 10 min). */
  idleMs?: number
  /** Milliseconds now (tests move it). */
  clock?: () => number
}

/**
 * A front not heard from for this long loses its sequences in the stages: freed, as a front
 * whose isolate went away (common on Workers) never releases them. A front that comes back
 * finds them gone and recomputes them from its tokens (pipeline-model.ts), as after a restart.
 */
export const FRONT_IDLE_MS = 10 * 60_000

/** This isolate's name (module state lives once per isolate); made on first use, as workerd
 * allows no random values in a module's global scope. */
let isolate: string | undefined
const isolateName = () => (isolate ??= crypto.randomUUID().slice(0, 8))

export class ModelStage implements StageApi {
  readonly epoch = crypto.randomUUID()
  private readonly caches = new Map<string, ResidentCache>()
  private readonly empty: KvCache = { length: 0, tensors: {} }
  private calls = 0
  private computeMs = 0
  /** When each front (the `<front>` of its sequences `<front>/<n>`) was last heard from. */
  private readonly heard = new Map<string, number>()
  private idleMs = FRONT_IDLE_MS
  private clock: () => number = Date.now

  private constructor(
    readonly index: number,
    readonly part: PipelineStage,
    private readonly budgetBytes: number,
    readonly decoder?: Q8Decoder,
    private readonly head?: Q8Head,
  ) {}

  /**
   * Stage `index` of the package's plan: allocates its kernels and streams only the shards of
   * its part into them. Throws `model_invalid` when the package has no such stage, or when the
   * loaded stage holds more than the plan's budget.
   */
  static async load(
    handle: PackageHandle,
    index: number,
    options: StageLoadOptions = {},
  ): Promise<ModelStage> {
    const { manifest } = handle
    const plan = manifest.pipeline
    const part = plan?.stages[index]
    if (!plan || !part)
      throw new AppError('model_invalid', `Package ${manifest.id} has no pipeline stage ${index}`)
    const shape = qwen2Shape(manifest.config)
    let stage: ModelStage
    if (part.layers) {
      const decoder = await Q8Decoder.allocateLayers(
        shape,
        manifest.decoder!.format,
        part.layers,
        undefined,
        // the plan's KV format unless the stage's KV_FORMAT says otherwise
        {
          kvFormat: options.kvFormat ?? plan.kvFormat,
          q4Symmetric: decoderSymmetric(manifest.decoder!),
        },
      )
      await streamParts(handle, { decoder }, options.stats)
      stage = new ModelStage(index, part, plan.budgetBytes, decoder)
    } else {
      const h = manifest.head!
      const rows = part.rows!
      const head = await Q8Head.allocate({ ...h, vocab: rows[1] - rows[0] })
      await streamParts(handle, { head, headSegments: headSliceSegments(h, rows) }, options.stats)
      stage = new ModelStage(index, part, plan.budgetBytes, undefined, head)
    }
    stage.idleMs = options.idleMs ?? FRONT_IDLE_MS
    stage.clock = options.clock ?? Date.now
    const resident = stage.residentBytes()
    // the KV cache may grow up to the budget, not past it
    if (stage.decoder) stage.decoder.memoryLimit = plan.budgetBytes - (resident - stage.wasmBytes())
    if (resident > plan.budgetBytes)
      throw new AppError(
        'model_invalid',
        `Stage ${index} of ${manifest.id} holds ${mib(resident)} MiB after loading, over its ` +
          `budget of ${mib(plan.budgetBytes)} MiB`,
      )
    return stage
  }

  async state(): Promise<StageState> {
    return this.snapshot()
  }

  async forward(
    hidden: Float32Array,
    groups: StageGroup[],
    ops: StageOp[],
    keep?: number,
  ): Promise<{ hidden: Float32Array; state: StageState }> {
    return this.timed(() => this.run(hidden, groups, ops, keep))
  }

  /** Runs a call, counting it and the time computing it; its reply carries the state after. */
  private timed<T extends object>(work: () => T): T & { state: StageState } {
    const t0 = performance.now()
    const result = work()
    this.calls++
    this.computeMs += performance.now() - t0
    return { ...result, state: this.snapshot() }
  }

  private run(
    hidden: Float32Array,
    groups: StageGroup[],
    ops: StageOp[],
    keep?: number,
  ): { hidden: Float32Array } {
    const decoder = this.layers()
    this.hear(groups, ops)
    this.applyOps(ops)
    const caches = groups.map((g) => {
      const cache = g.position === 0 ? this.empty : this.caches.get(g.seq)
      if (!cache || cache.length !== g.position)
        throw new AppError(
          'stage_unavailable',
          `Stage ${this.index} holds no KV cache of sequence ${g.seq} at ${g.position}`,
        )
      return cache
    })
    // one sequence into the last layers: the decoder computes and returns only the kept rows
    const one = groups.length === 1 && keep !== undefined && decoder.last
    const run = decoder.forwardRows(
      hidden,
      groups.map((g, i) => ({ cache: caches[i], count: g.count })),
      one ? keep : undefined,
    )
    groups.forEach((g, i) => {
      const old = this.caches.get(g.seq)
      // a sequence started again at 0 leaves its old KV behind
      if (old && old.sequence !== run.caches[i].sequence) decoder.release(old)
      this.caches.set(g.seq, run.caches[i])
    })
    const H = decoder.shape.hidden
    let out: Float32Array
    if (keep === undefined || one)
      out = run.hidden // the decoder's own copy, out of its scratch
    else {
      const kept = groups.map((g) => Math.min(keep, g.count))
      out = new Float32Array(kept.reduce((n, k) => n + k, 0) * H)
      let from = 0
      let to = 0
      groups.forEach((g, i) => {
        const skip = g.count - kept[i]
        out.set(run.hidden.subarray((from + skip) * H, (from + g.count) * H), to * H)
        from += g.count
        to += kept[i]
      })
    }
    return { hidden: out }
  }

  async apply(ops: StageOp[]): Promise<StageState> {
    this.layers()
    this.hear([], ops)
    this.applyOps(ops)
    return this.snapshot()
  }

  /** Notes the fronts a call comes from, then frees the sequences of fronts gone quiet. */
  private hear(groups: StageGroup[], ops: StageOp[]): void {
    const now = this.clock()
    const front = (seq: string) => seq.slice(0, seq.lastIndexOf('/'))
    for (const g of groups) this.heard.set(front(g.seq), now)
    for (const op of ops)
      this.heard.set(
        'reset' in op ? op.reset : front('release' in op ? op.release : op.fork.to),
        now,
      )
    for (const [f, at] of this.heard)
      if (now - at > this.idleMs) {
        this.heard.delete(f)
        this.applyOps([{ reset: f }])
      }
  }

  async embed(ids: number[]): Promise<{ hidden: Float32Array; state: StageState }> {
    const [start, end] = this.rowRange()
    for (const t of ids)
      if (!(Number.isInteger(t) && t >= start && t < end))
        throw new AppError('bad_request', `token id ${t} is not in stage ${this.index}'s rows`)
    return this.timed(() => ({ hidden: this.head!.embed(ids.map((t) => t - start)) }))
  }

  async logits(
    hidden: Float32Array,
    rows: number,
    columns?: number[],
  ): Promise<{ logits: Float32Array; state: StageState }> {
    const [start] = this.rowRange()
    const head = this.head!
    return this.timed(() => {
      let logits: Float32Array
      if (!columns) logits = head.logits(hidden, rows)
      else {
        const local = columns.map((c) => c - start)
        logits = new Float32Array(rows * columns.length)
        for (let r = 0; r < rows; r++)
          logits.set(head.columns(hidden, local, r * head.hidden), r * columns.length)
      }
      return { logits }
    })
  }

  /** Bytes the stage holds: its kernels' memory, the JS arrays it keeps, the fixed allowance. */
  residentBytes(): number {
    return STAGE_BASE_BYTES + this.wasmBytes() + (this.decoder?.jsBytes ?? 0)
  }

  private wasmBytes(): number {
    return (this.decoder?.memoryBytes ?? 0) + (this.head?.memoryBytes ?? 0)
  }

  private applyOps(ops: StageOp[]): void {
    const decoder = this.decoder!
    for (const op of ops) {
      if ('reset' in op) {
        for (const [seq, c] of this.caches)
          if (seq.startsWith(`${op.reset}/`)) {
            decoder.release(c)
            this.caches.delete(seq)
          }
      } else if ('release' in op) {
        const c = this.caches.get(op.release)
        if (c) decoder.release(c)
        this.caches.delete(op.release)
      } else {
        const { from, to, length } = op.fork
        const c = this.caches.get(from)
        if (!c || c.length < length)
          throw new AppError(
            'stage_unavailable',
            `Stage ${this.index} holds no KV cache of sequence ${from} to fork`,
          )
        const old = this.caches.get(to)
        if (old) decoder.release(old)
        this.caches.set(to, decoder.copy(c, length))
      }
    }
  }

  private layers(): Q8Decoder {
    if (!this.decoder) throw new AppError('internal', `Stage ${this.index} holds no layers`)
    return this.decoder
  }

  private rowRange(): [number, number] {
    if (!this.part.rows) throw new AppError('internal', `Stage ${this.index} holds no rows`)
    return this.part.rows
  }

  private snapshot(): StageState {
    return {
      index: this.index,
      ...(this.part.layers && { layers: this.part.layers }),
      ...(this.part.rows && { rows: this.part.rows }),
      epoch: this.epoch,
      isolate: isolateName(),
      residentBytes: this.residentBytes(),
      budgetBytes: this.budgetBytes,
      sequences: this.decoder?.sequences ?? 0,
      ...(this.decoder && { kvFormat: this.decoder.kvFormat }),
      calls: this.calls,
      computeMs: this.computeMs,
    }
  }
}

function mib(n: number): string {
  return (n / 1024 / 1024).toFixed(1)
}
