/**
 * Where model packages are read from: a folder (Node, Deno), an HTTP(S) base URL (a public R2
 * bucket, S3-compatible storage, a CDN) or an R2 binding (Workers). Keys are package-relative
 * object names such as `qwen2.5-0.5b-q8/manifest.json`.
 *
 * Contract for implementations:
 * - a missing object resolves to `null` (never throws);
 * - a failure that may pass on retry (network error, 5xx, 429) throws; one that cannot (403, a
 *   directory where a file should be) throws a `SourceError` with `transient: false`;
 * - no caching: every call reads the store again (the engine memoises whole loads).
 */
export interface ModelSource {
  /** The whole object, or null if it does not exist. */
  get(key: string): Promise<Uint8Array | null>
  /**
   * Optional streaming read, so the loader can copy a shard straight into its final place
   * instead of holding a second copy. `size` is the object's length when the store knows it.
   */
  stream?(key: string): Promise<SourceObject | null>
  /** For error messages: `folder model-shards`, `https://cdn.example/models`, `R2 bucket`. */
  describe(): string
  /**
   * Reads worth running at once when the loader is not told (its `concurrency`); default 4.
   * Each read in flight holds a shard buffer: a local folder says 1, as more reads at once only
   * add buffers (a file read waits on no network, and the shards are hashed on one thread).
   */
  parallelReads?: number
}

export interface SourceObject {
  size?: number
  body: ReadableStream<Uint8Array>
}

/** A failed read. `transient` says whether trying again may help. */
export class SourceError extends Error {
  override name = 'SourceError' as const
  constructor(
    message: string,
    readonly transient: boolean,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}

/** Everything but an explicit `transient: false` is worth another try. */
export function isTransientSourceError(err: unknown): boolean {
  return !(
    typeof err === 'object' &&
    err !== null &&
    (err as { transient?: unknown }).transient === false
  )
}
