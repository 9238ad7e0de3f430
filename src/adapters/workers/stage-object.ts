/**
 * A stage of a package split into stages as a Durable Object of its own: one object per stage
 * (named `<package>#<index>`), which loads only its part of the package from R2 on first use
 * and answers the front over RPC (stage-rpc.ts). The way to serve stages where Worker Loader is
 * not available (stage-host.ts is the other).
 *
 * Isolation: 128 MB is a limit per isolate, and Cloudflare may place several objects of one
 * class in one isolate; the README says what that means for a deployment.
 */
import { DurableObject } from 'cloudflare:workers'
import type { StageApi } from '../../engine/index.ts'
import { r2Source, type R2BucketLike } from './r2-source.ts'
import { servingSlot, stageLink, stageName, StageSlot, type StageRpc } from './stage-rpc.ts'

export interface StageEnv {
  MODEL_BUCKET: R2BucketLike
  KV_FORMAT?: string
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

/** A timer that runs until KEEP_WARM_MS after the last `touch()`. */
export function keepWarm(): () => void {
  let lastCall = 0
  let warm: ReturnType<typeof setInterval> | undefined
  return () => {
    lastCall = Date.now()
    warm ??= setInterval(() => {
      if (Date.now() - lastCall < KEEP_WARM_MS) return
      clearInterval(warm)
      warm = undefined
    }, KEEP_WARM_TICK_MS)
  }
}

export class ModelStageObject extends servingSlot(DurableObject<StageEnv>) {
  private readonly loaded = new StageSlot(
    () => r2Source(this.env.MODEL_BUCKET, { name: 'MODEL_BUCKET' }),
    keepWarm(),
    () => this.env.KV_FORMAT,
  )

  protected slot(): StageSlot {
    return this.loaded
  }
}

/** The binding of a Durable Object class answering StageRpc (wrangler.toml). */
export interface StageNamespace {
  idFromName(name: string): unknown
  get(id: unknown): StageRpc
}

/** Stage `index` of `model` in its own object of `ns` (the STAGES binding). */
export function objectStageLink(ns: StageNamespace, model: string, index: number): StageApi {
  return stageLink(() => ns.get(ns.idFromName(stageName({ model, index }))), model, index)
}
