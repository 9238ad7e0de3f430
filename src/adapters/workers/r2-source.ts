import { type ModelSource, type SourceObject } from '../../engine/index.ts'
/**
 * Model source over an R2 bucket binding (Workers, and miniflare's local R2 under `wrangler dev`
 * or vitest-pool-workers). Object keys are `<id>/<file>`, as `npm run model:upload` writes them.
 */

/**
 * The part of the `R2Bucket` binding type this source uses, declared structurally so the
 * project does not need @cloudflare/workers-types; a real binding satisfies it.
 */
export interface R2BucketLike {
  get(key: string): Promise<R2ObjectBodyLike | null>
}
export interface R2ObjectBodyLike {
  readonly size: number
  readonly body: ReadableStream<Uint8Array>
  arrayBuffer(): Promise<ArrayBuffer>
}

export interface R2SourceOptions {
  /** Prepended to every key, e.g. `models/` when packages do not sit at the bucket root. */
  prefix?: string
  /** Shown in error messages. */
  name?: string
}

export function r2Source(bucket: R2BucketLike, options: R2SourceOptions = {}): ModelSource {
  const prefix = options.prefix ?? ''
  return {
    async get(key) {
      const obj = await bucket.get(prefix + key)
      return obj ? new Uint8Array(await obj.arrayBuffer()) : null
    },
    async stream(key): Promise<SourceObject | null> {
      const obj = await bucket.get(prefix + key)
      return obj ? { size: obj.size, body: obj.body } : null
    },
    describe: () => {
      const name = options.name ? `R2 bucket ${options.name}` : 'R2 binding'
      return prefix ? `${name} (prefix ${prefix})` : name
    },
  }
}
