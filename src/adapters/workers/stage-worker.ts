/**
 * The main module of a stage's own Worker, started by the stage host through Worker Loader
 * (stage-host.ts): one isolate per stage, so each stage has the 128 MB of an isolate to itself.
 * It holds one stage of one package, loaded on its first call through FILES (the front's
 * PackageFiles entrypoint, which reads R2: a loaded Worker gets no bindings of its own).
 *
 * Not part of the front's bundle: `npm run build:stage-worker` bundles it into
 * generated/stage-worker.js, and the host hands that code to Worker Loader. The kernels' imports
 * below become module entries of the loaded Worker (a loaded Worker cannot compile wasm from
 * bytes, so they arrive as modules, like the front's).
 */
import { WorkerEntrypoint } from 'cloudflare:workers'
import relaxedKernels from '../../engine/wasm/kernels/engine-relaxed.wasm'
import simd128Kernels from '../../engine/wasm/kernels/engine-simd128.wasm'
import { type ModelSource, type SourceObject, useKernelModules } from '../../engine/index.ts'
import { servingSlot, StageSlot } from './stage-rpc.ts'

useKernelModules({ relaxed: relaxedKernels, simd128: simd128Kernels })

/** What the host gives a stage's Worker: package files, read by the front's PackageFiles. */
export interface StageWorkerEnv {
  FILES: {
    get(key: string): Promise<Uint8Array | null>
    stream(key: string): Promise<SourceObject | null>
  }
  /** The host's KV_FORMAT, when set. */
  KV_FORMAT?: string
}

/** The isolate's one stage (its Worker id names one stage of one package). */
let slot: StageSlot | undefined

export class Stage extends servingSlot(WorkerEntrypoint<StageWorkerEnv>) {
  protected slot(): StageSlot {
    const files = this.env.FILES
    const source: ModelSource = {
      get: (key) => files.get(key),
      stream: (key) => files.stream(key),
      describe: () => 'R2 bucket MODEL_BUCKET (read through the front Worker)',
    }
    const kvFormat = this.env.KV_FORMAT
    return (slot ??= new StageSlot(
      () => source,
      undefined,
      () => kvFormat,
    ))
  }
}

export default {
  fetch: () => new Response('A model stage: called over RPC by its host only', { status: 404 }),
}
