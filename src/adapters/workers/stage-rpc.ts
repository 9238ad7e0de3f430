/**
 * How the front Worker talks to the stages of a package split into stages (model:prepare
 * --stage-budget-mib), whatever holds them: a Durable Object per stage (stage-object.ts), or a
 * Worker of its own per stage behind one host object (stage-host.ts, stage-worker.ts). Both
 * answer the same calls: a stage's address, then ModelStage's arguments. Errors come back as
 * values (`{ error: { code, message } }`): an AppError's code would not survive being thrown
 * across RPC.
 */
import {
  AppError,
  type ErrorCode,
  isAppError,
  kvFormatFromEnv,
  ModelStage,
  type ModelSource,
  openPackage,
  type StageApi,
  type StageGroup,
  type StageOp,
  type StageState,
} from '../../engine/index.ts'

export type Reply<T> = { ok: T } | { error: { code: string; message: string } }

/** Which stage of which package a call is for. */
export interface StageAddress {
  model: string
  index: number
}

/** The calls a stage answers over RPC (ModelStage's, with the address first). */
export interface StageRpc {
  state(at: StageAddress): Promise<Reply<StageState>>
  forward(
    at: StageAddress,
    hidden: Float32Array,
    groups: StageGroup[],
    ops: StageOp[],
    keep?: number,
  ): Promise<Reply<{ hidden: Float32Array; state: StageState }>>
  apply(at: StageAddress, ops: StageOp[]): Promise<Reply<StageState>>
  embed(
    at: StageAddress,
    ids: number[],
  ): Promise<Reply<{ hidden: Float32Array; state: StageState }>>
  logits(
    at: StageAddress,
    hidden: Float32Array,
    rows: number,
    columns?: number[],
  ): Promise<Reply<{ logits: Float32Array; state: StageState }>>
  /** Drops the loaded stage, as an eviction would: the next call loads it again (new epoch). */
  evict(at: StageAddress): Promise<void>
}

/**
 * One stage, loaded from `source` on its first call and kept; a failed load is not kept (the
 * next call tries again). Answers StageRpc's calls for the one address it serves.
 */
export class StageSlot implements StageRpc {
  private loading?: Promise<ModelStage>
  private address?: string

  constructor(
    private readonly source: () => ModelSource,
    /** Called with each call (a keep-warm timer). */
    private readonly onCall: () => void = () => {},
    /** KV_FORMAT of the stage's Worker (its variables), read when the stage loads. */
    private readonly kvFormat: () => unknown = () => undefined,
  ) {}

  private stage(at: StageAddress): Promise<ModelStage> {
    const key = stageName(at)
    if (this.address && this.address !== key)
      throw new AppError('internal', `Stage ${this.address} was asked for ${key}`)
    this.address = key
    if (!this.loading) {
      const load = openPackage(this.source(), at.model, {
        smallFiles: false,
        concurrency: 2, // each shard in flight is one more shard of memory in a 128 MB isolate
      }).then((handle) =>
        ModelStage.load(handle, at.index, { kvFormat: kvFormatFromEnv(this.kvFormat()) }),
      )
      this.loading = load
      load.catch(() => {
        if (this.loading === load) this.loading = undefined
      })
    }
    return this.loading
  }

  private async reply<T>(at: StageAddress, work: (s: ModelStage) => Promise<T>): Promise<Reply<T>> {
    this.onCall()
    try {
      return { ok: await work(await this.stage(at)) }
    } catch (err) {
      if (!isAppError(err)) console.error(`stage ${stageName(at)}:`, err)
      return errorReply(at, err)
    }
  }

  state(at: StageAddress) {
    return this.reply(at, (s) => s.state())
  }

  forward(
    at: StageAddress,
    hidden: Float32Array,
    groups: StageGroup[],
    ops: StageOp[],
    keep?: number,
  ) {
    return this.reply(at, (s) => s.forward(hidden, groups, ops, keep))
  }

  apply(at: StageAddress, ops: StageOp[]) {
    return this.reply(at, (s) => s.apply(ops))
  }

  embed(at: StageAddress, ids: number[]) {
    return this.reply(at, (s) => s.embed(ids))
  }

  logits(at: StageAddress, hidden: Float32Array, rows: number, columns?: number[]) {
    return this.reply(at, (s) => s.logits(hidden, rows, columns))
  }

  async evict(): Promise<void> {
    this.loading = undefined
  }
}

/**
 * `Base` (DurableObject, WorkerEntrypoint) answering StageRpc's calls with the StageSlot its
 * subclass gives (`slot()`). RPC serves methods of a class, not functions kept in fields, so
 * each call is a method here, written once for every class that serves one stage.
 */
export function servingSlot<B extends abstract new (...args: any[]) => object>(Base: B) {
  abstract class ServingSlot extends Base implements StageRpc {
    protected abstract slot(): StageSlot
    state(at: StageAddress) {
      return this.slot().state(at)
    }
    forward(...a: Parameters<StageRpc['forward']>) {
      return this.slot().forward(...a)
    }
    apply(at: StageAddress, ops: StageOp[]) {
      return this.slot().apply(at, ops)
    }
    embed(at: StageAddress, ids: number[]) {
      return this.slot().embed(at, ids)
    }
    logits(...a: Parameters<StageRpc['logits']>) {
      return this.slot().logits(...a)
    }
    evict() {
      return this.slot().evict()
    }
  }
  return ServingSlot
}

/** `err` as a reply, its message naming the stage. */
export function errorReply(
  at: StageAddress,
  err: unknown,
): { error: { code: string; message: string } } {
  const code = isAppError(err) ? err.code : 'internal'
  const message = err instanceof Error ? err.message : String(err)
  return { error: { code, message: `Stage ${at.index}: ${message}` } }
}

export function stageName(at: StageAddress): string {
  return `${at.model}#${at.index}`
}

/**
 * The front's view of stage `index` of `model`: a StageApi over RPC to whatever `stub()` returns
 * (a stub per call: stubs are cheap, and one made in a request's context stays out of others').
 */
export function stageLink(stub: () => StageRpc, model: string, index: number): StageApi {
  const at: StageAddress = { model, index }
  const unwrap = async <T>(reply: Promise<Reply<T>>): Promise<T> => {
    const r = await reply
    if ('error' in r) throw new AppError(r.error.code as ErrorCode, r.error.message)
    return r.ok
  }
  return {
    state: () => unwrap(stub().state(at)),
    forward: (hidden, groups, ops, keep) => unwrap(stub().forward(at, hidden, groups, ops, keep)),
    apply: (ops) => unwrap(stub().apply(at, ops)),
    embed: (ids) => unwrap(stub().embed(at, ids)),
    logits: (hidden, rows, columns) => unwrap(stub().logits(at, hidden, rows, columns)),
  }
}
