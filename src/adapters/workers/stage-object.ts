/**
 * A stage of a package split into stages (model:prepare --stage-budget-mib) as a Durable
 * Object: one object per stage (named `<package>#<index>`), which loads only its part of the
 * package from R2 into its own kernels on first use and answers the front Worker over RPC
 * (ModelStage's methods). Errors come back as values (`{ error: { code, message } }`): an
 * AppError's code would not survive being thrown across RPC. A failed load is not kept: the
 * next call tries again.
 *
 * Isolation: 128 MB is a limit per isolate, and Cloudflare may place several objects of one
 * class in one isolate; the README says what that means for a deployment.
 */
import { DurableObject } from 'cloudflare:workers'
import {
  AppError,
  isAppError,
  ModelStage,
  openPackage,
  type StageApi,
  type StageGroup,
  type StageOp,
  type StageState,
} from '../../engine/index.ts'
import { r2Source, type R2BucketLike } from './r2-source.ts'

export interface StageEnv {
  MODEL_BUCKET: R2BucketLike
}

type Reply<T> = { ok: T } | { error: { code: string; message: string } }

/** Which stage of which package a call is for (an object serves one). */
export interface StageAddress {
  model: string
  index: number
}

/**
 * How long a loaded stage keeps itself in memory after its last call. An idle Durable Object
 * hibernates after 10 s with nothing scheduled (its memory, so its loaded weights, gone) and is
 * evicted after 70-140 s without calls; reloading a stage reads tens of MB from R2 again. A
 * pending timer keeps it from hibernating, so an active front's stages stay loaded between
 * requests; after this long without calls the timer stops and the object may go.
 */
const KEEP_WARM_MS = 10 * 60_000
const KEEP_WARM_TICK_MS = 5_000

export class ModelStageObject extends DurableObject<StageEnv> {
  private loading?: Promise<ModelStage>
  private address?: string
  private lastCall = 0
  private warm?: ReturnType<typeof setInterval>

  /** Keeps the object from hibernating until KEEP_WARM_MS after the last call. */
  private keepWarm(): void {
    this.lastCall = Date.now()
    this.warm ??= setInterval(() => {
      if (Date.now() - this.lastCall < KEEP_WARM_MS) return
      clearInterval(this.warm)
      this.warm = undefined
    }, KEEP_WARM_TICK_MS)
  }

  private stage(at: StageAddress): Promise<ModelStage> {
    const key = `${at.model}#${at.index}`
    if (this.address && this.address !== key)
      throw new AppError('internal', `Stage object ${this.address} was asked for ${key}`)
    this.address = key
    if (!this.loading) {
      const load = openPackage(
        r2Source(this.env.MODEL_BUCKET, { name: 'MODEL_BUCKET' }),
        at.model,
        {
          smallFiles: false,
          concurrency: 2, // each shard in flight is one more shard of memory in a 128 MB isolate
        },
      ).then((handle) => ModelStage.load(handle, at.index))
      this.loading = load
      load.catch(() => {
        if (this.loading === load) this.loading = undefined
      })
    }
    return this.loading
  }

  private async reply<T>(at: StageAddress, work: (s: ModelStage) => Promise<T>): Promise<Reply<T>> {
    this.keepWarm()
    try {
      return { ok: await work(await this.stage(at)) }
    } catch (err) {
      const code = isAppError(err) ? err.code : 'internal'
      const message = err instanceof Error ? err.message : String(err)
      if (!isAppError(err)) console.error(`stage ${this.address}:`, err)
      return { error: { code, message: `Stage ${at.index}: ${message}` } }
    }
  }

  state(at: StageAddress): Promise<Reply<StageState>> {
    return this.reply(at, (s) => s.state())
  }

  forward(
    at: StageAddress,
    hidden: Float32Array,
    groups: StageGroup[],
    ops: StageOp[],
    keep?: number,
  ): Promise<Reply<{ hidden: Float32Array; state: StageState }>> {
    return this.reply(at, (s) => s.forward(hidden, groups, ops, keep))
  }

  apply(at: StageAddress, ops: StageOp[]): Promise<Reply<StageState>> {
    return this.reply(at, (s) => s.apply(ops))
  }

  embed(
    at: StageAddress,
    ids: number[],
  ): Promise<Reply<{ hidden: Float32Array; state: StageState }>> {
    return this.reply(at, (s) => s.embed(ids))
  }

  logits(
    at: StageAddress,
    hidden: Float32Array,
    rows: number,
    columns?: number[],
  ): Promise<Reply<{ logits: Float32Array; state: StageState }>> {
    return this.reply(at, (s) => s.logits(hidden, rows, columns))
  }

  /** Drops the loaded stage, as an eviction would: the next call loads it again (new epoch). */
  evict(): void {
    this.loading = undefined
  }
}

/** The binding of the stage class (wrangler.toml `durable_objects.bindings`). */
export interface StageNamespace {
  idFromName(name: string): unknown
  get(id: unknown): ModelStageStub
}

type ModelStageStub = Pick<
  ModelStageObject,
  'state' | 'forward' | 'apply' | 'embed' | 'logits' | 'evict'
>

/** The front's view of stage `index` of `model`: a StageApi over RPC to its object. */
export function stageLink(ns: StageNamespace, model: string, index: number): StageApi {
  const at: StageAddress = { model, index }
  // a stub per call: stubs are cheap, and one made in a request's context stays out of others'
  const stub = () => ns.get(ns.idFromName(stageObjectName(model, index)))
  const unwrap = async <T>(reply: Promise<Reply<T>>): Promise<T> => {
    const r = await reply
    if ('error' in r) {
      const code = r.error.code as ConstructorParameters<typeof AppError>[0]
      throw new AppError(code, r.error.message)
    }
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

export function stageObjectName(model: string, index: number): string {
  return `${model}#${index}`
}
