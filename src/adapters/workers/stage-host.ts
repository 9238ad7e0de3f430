/**
 * Stages in isolates of their own: the stage host, one Durable Object per package (named by the
 * package id), starts each stage as a Worker of its own through Worker Loader (the LOADER
 * binding) and relays the front's calls to it. A Worker started by the loader runs in an isolate
 * of its own, so each stage has the 128 MB of an isolate to itself, which Durable Objects of one
 * class do not promise (they may share an isolate). Loaded Workers run where the host runs, so a
 * forward pass crosses machines at most on the front-to-host hop.
 *
 * A stage's Worker gets no bindings: it reads its shards through PackageFiles, an entrypoint of
 * the front's own script that reads the R2 bucket, handed to it as FILES.
 */
import { DurableObject, WorkerEntrypoint } from 'cloudflare:workers'
import {
  AppError,
  isAppError,
  type ErrorCode,
  passOver,
  type PassReply,
  type PassRequest,
  type StageApi,
  type StageOp,
  type StagePass,
} from '../../engine/index.ts'
import type { Manifest, PipelineEntry } from '../../format/index.ts'
import { STAGE_WORKER } from './generated/stage-worker.js'
import { r2Source, type R2BucketLike } from './r2-source.ts'
import { keepWarm, type StageNamespace } from './stage-object.ts'
import {
  errorReply,
  type Reply,
  stageLink,
  stageName,
  type StageAddress,
  type StageRpc,
} from './stage-rpc.ts'

/** The Worker Loader binding (wrangler.toml `[[worker_loaders]]`), the part used here. */
export interface WorkerLoader {
  get(id: string, code: () => Promise<WorkerCode>): { getEntrypoint(name: string): unknown }
}

interface WorkerCode {
  compatibilityDate: string
  mainModule: string
  modules: Record<string, string | { wasm: ArrayBuffer }>
  env: Record<string, unknown>
  /** null: the stage reaches nothing on the network (its files come through FILES). */
  globalOutbound: null
}

export interface HostEnv {
  MODEL_BUCKET: R2BucketLike
  LOADER: WorkerLoader
  /** Handed to each stage's Worker (its KV cache's format). */
  KV_FORMAT?: string
}

/** Package files out of R2, for stages' Workers (which have no bindings): `get` and `stream`. */
export class PackageFiles extends WorkerEntrypoint<{ MODEL_BUCKET: R2BucketLike }> {
  private get source() {
    return r2Source(this.env.MODEL_BUCKET, { name: 'MODEL_BUCKET' })
  }
  get(key: string) {
    return this.source.get(key)
  }
  stream(key: string) {
    return this.source.stream!(key)
  }
}

let kernelBytes: Record<string, ArrayBuffer> | undefined

/** The stage Worker's code, the same for every call (the loader may cache it by id). */
function stageWorkerCode(files: unknown, kvFormat: string | undefined): WorkerCode {
  kernelBytes ??= Object.fromEntries(
    Object.entries(STAGE_WORKER.wasm).map(([name, base64]) => [
      name,
      Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer,
    ]),
  )
  const modules: WorkerCode['modules'] = { ...STAGE_WORKER.modules }
  for (const [name, bytes] of Object.entries(kernelBytes)) modules[name] = { wasm: bytes }
  return {
    compatibilityDate: STAGE_WORKER.compatibilityDate,
    mainModule: STAGE_WORKER.mainModule,
    modules,
    env: { FILES: files, ...(kvFormat && { KV_FORMAT: kvFormat }) },
    globalOutbound: null,
  }
}

interface HostContext {
  exports: { PackageFiles(options: { props: Record<string, never> }): unknown }
}

export class StageHostObject extends DurableObject<HostEnv> implements StageRpc {
  private readonly touch = keepWarm()

  /** Stage `at`'s Worker: the same isolate while the loader keeps it, else a fresh one. */
  private stage(at: StageAddress): StageRpc {
    // the id carries the code's hash and the variables it is given: a deployment with other
    // code or another KV_FORMAT never gets an old isolate
    const kvFormat = this.env.KV_FORMAT || undefined
    const id = `${stageName(at)}@${STAGE_WORKER.hash}${kvFormat ? `+kv-${kvFormat}` : ''}`
    const worker = this.env.LOADER.get(id, async () =>
      stageWorkerCode((this.ctx as HostContext).exports.PackageFiles({ props: {} }), kvFormat),
    )
    return worker.getEntrypoint('Stage') as StageRpc
  }

  private async relay<T>(
    at: StageAddress,
    call: (stage: StageRpc) => Promise<Reply<T>>,
  ): Promise<Reply<T>> {
    this.touch()
    try {
      return await call(this.stage(at))
    } catch (err) {
      // the stage's isolate failed (killed over its memory, or did not start): its KV is gone
      const message = err instanceof Error ? err.message : String(err)
      return errorReply(at, new AppError('stage_unavailable', `its Worker failed: ${message}`))
    }
  }

  // RPC serves methods of the class: each is spelled out
  state(at: StageAddress) {
    return this.relay(at, (s) => s.state(at))
  }
  forward(...a: Parameters<StageRpc['forward']>) {
    return this.relay(a[0], (s) => s.forward(...a))
  }
  apply(at: StageAddress, ops: StageOp[]) {
    return this.relay(at, (s) => s.apply(at, ops))
  }
  embed(at: StageAddress, ids: number[]) {
    return this.relay(at, (s) => s.embed(at, ids))
  }
  logits(...a: Parameters<StageRpc['logits']>) {
    return this.relay(a[0], (s) => s.logits(...a))
  }
  async evict(at: StageAddress) {
    await this.stage(at).evict(at)
  }

  /**
   * A whole forward pass of `model` (pass.ts), run here next to its stages: one call from the
   * front per pass instead of one per stage. A stage's error comes back as the pass's.
   */
  async pass(model: string, shape: PassShape, req: PassRequest): Promise<Reply<PassReply>> {
    this.touch()
    const links = shape.plan.stages.map((_, index) =>
      stageLink(() => this.stage({ model, index }), model, index),
    )
    try {
      return { ok: await passOver(shape.plan, shape.hidden, shape.vocab, links)(req) }
    } catch (err) {
      if (isAppError(err)) return { error: { code: err.code, message: err.message } }
      const message = err instanceof Error ? err.message : String(err)
      return {
        error: { code: 'stage_unavailable', message: `A stage's Worker failed: ${message}` },
      }
    }
  }
}

/** What the host needs of a package to run its passes (the front sends it with each). */
interface PassShape {
  plan: PipelineEntry
  hidden: number
  vocab: number
}

/** The forward passes of `manifest`'s package, each run by its host object (STAGE_HOST). */
export function hostedStagePass(ns: StageNamespace, manifest: Manifest): StagePass {
  const shape: PassShape = {
    plan: manifest.pipeline!,
    hidden: manifest.config.hidden_size,
    vocab: manifest.config.vocab_size,
  }
  return async (req) => {
    const host = ns.get(ns.idFromName(manifest.id)) as unknown as StageHostObject
    const r = await host.pass(manifest.id, shape, req)
    if ('error' in r) throw new AppError(r.error.code as ErrorCode, r.error.message)
    return r.ok
  }
}

/** Stage `index` of `model` in its own Worker, through the package's host object (STAGE_HOST). */
export function hostedStageLink(ns: StageNamespace, model: string, index: number): StageApi {
  return stageLink(() => ns.get(ns.idFromName(model)), model, index)
}
