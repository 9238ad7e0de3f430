/**
 * Cloudflare Workers entry (`wrangler dev`, `wrangler deploy`). The model package is read from
 * the R2 bucket bound as MODEL_BUCKET, once per isolate, on the first request that needs it.
 */
import { createApp, readConfigFromEnv } from '../../app.ts'
import type { Manifest } from '../../format/index.ts'
import relaxedKernels from '../../engine/wasm/kernels/engine-relaxed.wasm'
import simd128Kernels from '../../engine/wasm/kernels/engine-simd128.wasm'
import { tieToClient } from './client-lifetime.ts'
import { installPrecompiledOrtWasm } from './ort-wasm.ts'
import { r2Source, type R2BucketLike } from './r2-source.ts'
import { hostedStageLink, hostedStagePass, type WorkerLoader } from './stage-host.ts'
import { objectStageLink, type StageNamespace } from './stage-object.ts'
import {
  createEngineHost,
  type EngineLoader,
  type EngineOptions,
  engineOptionsFromEnv,
  openPackage,
  type QwenEngine,
  useKernelModules,
} from '../../engine/index.ts'

installPrecompiledOrtWasm()
// the engine's kernels (lm_head and decoder), both builds precompiled by wrangler like ORT's own
// wasm; the engine picks the relaxed-SIMD one when it runs exactly here
useKernelModules({ relaxed: relaxedKernels, simd128: simd128Kernels })

/** Bindings and vars (wrangler.toml; API_KEY as a secret: `wrangler secret put API_KEY`). */
export interface Env {
  /** The R2 bucket holding model packages (`npm run model:upload`). */
  MODEL_BUCKET: R2BucketLike
  /** Package id inside the bucket. */
  MODEL?: string
  /**
   * A package split into stages (unused for a package that is one model): with LOADER, each
   * stage is a Worker of its own (its own isolate) behind the package's STAGE_HOST object;
   * without, each stage is an object of the STAGES class (objects of a class may share an
   * isolate). wrangler.toml declares all three.
   */
  LOADER?: WorkerLoader
  STAGE_HOST?: StageNamespace
  STAGES?: StageNamespace
  API_KEY?: string
  CORS_ORIGINS?: string
  MAX_TOKENS_DEFAULT?: string
  MAX_TOKENS_CEILING?: string
  CONTEXT_LENGTH?: string
  MAX_ACTIVE?: string
  MAX_QUEUED?: string
  MAX_QUEUED_TOKENS?: string
  MAX_KV_TOKENS?: string
  KV_FORMAT?: string
}

const DEFAULT_MODEL = 'qwen2-tiny-random-q8'

// workerd treats every named export of the main module as a handler: export nothing else.
// Bindings arrive with each request, but the engine lives as long as the isolate: the loader
// is built on the first request and kept.
let getEngine: EngineLoader | undefined
/** The engine once loaded: requests wait for its step loop to be idle (client-lifetime.ts). */
let loaded: QwenEngine | undefined

const app = createApp<{ Bindings: Env }>({
  getEngine: (c) => {
    const env = c.env // capture the bindings only: the first request's context must not live on
    getEngine ??= createEngineHost(
      () =>
        openPackage(
          r2Source(env.MODEL_BUCKET, { name: 'MODEL_BUCKET' }),
          env.MODEL || DEFAULT_MODEL,
          {
            concurrency: 2, // each shard in flight is one more shard of memory in a 128 MB isolate
          },
        ),
      withStages(engineOptionsFromEnv(env as unknown as Record<string, unknown>), env),
    )
    return getEngine().then((engine) => (loaded = engine))
  },
  config: (c) => readConfigFromEnv(c.env as unknown as Record<string, unknown>),
})

/** Where a staged package's stages run: their own Workers (LOADER) or Durable Objects (STAGES). */
function withStages(options: EngineOptions, env: Env): EngineOptions {
  const host = env.LOADER ? env.STAGE_HOST : undefined
  const objects = env.STAGES
  if (!host && !objects) return options
  return {
    ...options,
    session: {
      ...options.session,
      stageLinks: (manifest) =>
        manifest.pipeline!.stages.map((_, i) =>
          host ? hostedStageLink(host, manifest.id, i) : objectStageLink(objects!, manifest.id, i),
        ),
      // with a host, a forward pass is one call to it (it calls the stages, next to them)
      ...(host && { stagePass: (manifest: Manifest) => hostedStagePass(host, manifest) }),
    },
  }
}

// the stages' classes and entrypoints must be named exports of the main module for workerd to
// find them
export { ModelStageObject } from './stage-object.ts'
export { PackageFiles, StageHostObject } from './stage-host.ts'

export default {
  // Hono's fetch, with each request's work kept alive until its client is served or has left
  // (client-lifetime.ts: a disconnect must stop the generation, not strand it).
  fetch: tieToClient<Env>(
    (request, env, ctx) => app.fetch(request, env, ctx),
    () => loaded?.idle() ?? Promise.resolve(),
  ),
}
