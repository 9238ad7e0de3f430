/**
 * Loads a model package (src/format: the manifest and its files) from any `ModelSource`: reads the manifest once, fetches
 * the tokenizer files, the stage's graph and its weight shards with bounded parallelism,
 * verifies every file's sha256 (sha256.ts, hashed as the bytes arrive) and assembles each
 * external-data file in ONE preallocated buffer, ready for onnxruntime-web's `externalData`
 * session option.
 *
 * Failures:
 * - a file that is missing, has the wrong size or the wrong hash → AppError('model_invalid')
 *   naming the file; never retried (the store holds a broken package);
 * - transport failures (network, 5xx, 429) are retried with exponential backoff, then become
 *   AppError('model_unavailable').
 * No caching: callers memoise the promise (see memoize-load.ts) and must drop the returned
 * buffers once the session exists, or the weights stay in memory twice.
 */
import { AppError, isAppError } from '../../core/errors.ts'
import { freeBuffer } from '../../core/free-buffer.ts'
import {
  MANIFEST_FILE,
  packageKey,
  parseManifest,
  type ExternalDataEntry,
  type Manifest,
  type ManifestFile,
  type Stage,
} from '../../format/index.ts'
import { resolveDecoderWeights } from '../../format/index.ts'
import type { LoadedPackage } from './model-package.ts'
import type { TokenizerJson } from '../text/tokenizer-json.ts'
import { createSha256, sha256Hex, type Sha256Hash } from './sha256.ts'
import type { GenerationConfig, Qwen2Config } from '../../format/index.ts'
import { isTransientSourceError, type ModelSource } from './sources/model-source.ts'

export interface LoadProgress {
  /** Bytes received so far (goes back when a failed read is retried). */
  loadedBytes: number
  totalBytes: number
  filesDone: number
  filesTotal: number
}

export interface LoadPackageOptions {
  /** Which stage to load; default 0 (today the only one). */
  stage?: number
  /**
   * The package was named by its location (a folder path, a URL), not looked up by id in a
   * store: serve it under its manifest's id even when the folder was renamed. Default false: a
   * store lookup must find the package it asked for.
   */
  anyId?: boolean
  /**
   * Default true. False: only the manifest is read before `stream` (a pipeline stage, which
   * needs no tokenizer or graph): the handle's tokenizer fields are empty objects and its graph
   * is empty.
   */
  smallFiles?: boolean
  /**
   * Files read at the same time; default the source's `parallelReads`, else 4. Use 1-2 inside a
   * 128 MB Worker.
   */
  concurrency?: number
  /** Extra attempts after a transient failure; default 3. */
  retries?: number
  /** First backoff delay; doubles each attempt (with jitter), capped at 8 s. Default 250 ms. */
  retryDelayMs?: number
  signal?: AbortSignal
  onProgress?: (progress: LoadProgress) => void
}

/** `LoadedPackage` plus where it came from. */
export interface LoadedModelPackage extends LoadedPackage {
  manifest: Manifest
  stage: Stage
}

const DEFAULT_CONCURRENCY = 4
const DEFAULT_RETRIES = 3
const DEFAULT_RETRY_DELAY_MS = 250
const MAX_RETRY_DELAY_MS = 8000

/** One of the package's big files: an external-data file of the stage, the decoder file or the head file. */
export type BigFile = { kind: 'external'; index: number } | { kind: 'decoder' } | { kind: 'head' }

/**
 * Takes a verified piece of a big file (`bytes` at `offset` of it). `bytes` is lent: the loader
 * reuses its buffer for another shard once the returned promise settles, so copy what must stay.
 */
export type ShardSink = (file: BigFile, offset: number, bytes: Uint8Array) => void | Promise<void>

/** Whether a stream reads the shard of `file` covering [offset, offset + bytes). */
export type ShardFilter = (file: BigFile, offset: number, bytes: number) => boolean

/**
 * A package whose manifest and small files (tokenizer, graph) are read and whose weights are
 * still in the store: `load` reads them into one buffer per file (what onnxruntime takes),
 * `stream` hands them over shard by shard so a consumer can put each in its final place and
 * drop it (the engine's kernels: no second copy of the weights during the load).
 */
export interface PackageHandle extends Omit<
  LoadedModelPackage,
  'externalData' | 'head' | 'decoder'
> {
  load(): Promise<LoadedModelPackage>
  /** Every shard (or those `wanted` says), verified, to `sink`. */
  stream(sink: ShardSink, wanted?: ShardFilter): Promise<void>
  /**
   * Lets go of tokenizer.json (its 11 MB of bytes for Qwen) once the tokenizer is built, so it
   * is not held while the weights arrive; `tokenizerJson` is then empty, here and in what
   * `load` returns.
   */
  releaseTokenizerJson(): void
}

/** The whole package, weights in memory (`openPackage(...).load()`). */
export async function loadPackage(
  source: ModelSource,
  id: string,
  options: LoadPackageOptions = {},
): Promise<LoadedModelPackage> {
  return (await openPackage(source, id, options)).load()
}

/**
 * Reads the manifest and the small files. Either `load` or `stream` may then be called once;
 * both verify every shard's sha256 before anything uses it.
 */
export async function openPackage(
  source: ModelSource,
  id: string,
  options: LoadPackageOptions = {},
): Promise<PackageHandle> {
  const ctx = new LoadContext(source, id, options)
  const manifestKey = packageKey(id, MANIFEST_FILE)
  const manifestBytes = await ctx.withRetry(manifestKey, () => source.get(manifestKey))
  if (!manifestBytes) {
    throw new AppError(
      'model_invalid',
      `Model package ${id} not found: no ${manifestKey} in ${source.describe()}`,
    )
  }
  const manifest = parseManifest(parseJson(manifestBytes, manifestKey))
  if (manifest.id !== id && !options.anyId) {
    throw new AppError(
      'model_invalid',
      `${manifestKey} describes package ${manifest.id}, not ${id}`,
    )
  }
  const stageIndex = options.stage ?? 0
  const stage = manifest.stages[stageIndex]
  if (!stage) {
    throw new AppError(
      'model_invalid',
      `Model package ${id} has no stage ${stageIndex} (it has ${manifest.stages.length})`,
    )
  }
  const readSmall = options.smallFiles !== false
  const small = readSmall ? [manifest.tokenizer.json, manifest.tokenizer.config, stage.graph] : []
  // the decoder file (small tensors of the decoder entry) and the head file (a split lm_head,
  // head.ts) are cut into shards like external data; same order as listFiles
  const decoderFile = manifest.decoder?.file
  const big: Array<{ file: BigFile; entry: ExternalDataEntry }> = [
    ...stage.externalData.map((entry, index) => ({
      file: { kind: 'external', index } as BigFile,
      entry,
    })),
    ...(decoderFile ? [{ file: { kind: 'decoder' } as BigFile, entry: decoderFile }] : []),
    ...(manifest.head ? [{ file: { kind: 'head' } as BigFile, entry: manifest.head.file }] : []),
  ]
  ctx.startProgress([...small, ...big.flatMap((b) => b.entry.shards)])
  const [tokenizerJson, tokenizerConfig, graph] = await ctx.all(
    small.map((f) => () => ctx.readWhole(f)),
  )
  const base = {
    id: manifest.id,
    config: manifest.config as Qwen2Config,
    generationConfig: manifest.generationConfig as GenerationConfig,
    // bytes: QwenTokenizer reads them (text/tokenizer-json.ts) without the 100+ MB of heap a
    // JSON.parse of Qwen's 11 MB file and the library's maps built from it went through
    tokenizerJson: readSmall ? (tokenizerJson as TokenizerJson) : ({} as TokenizerJson),
    tokenizerConfig: readSmall
      ? parseJsonObject(tokenizerConfig, manifest.tokenizer.config.path)
      : {},
    graph: graph ?? new Uint8Array(0),
    manifest,
    stage,
  }
  let used = false
  const once = () => {
    if (used) throw new Error('a package handle is read once: load() or stream()')
    used = true
  }

  const load = async (): Promise<LoadedModelPackage> => {
    once()
    const buffers = big.map((b) => new Uint8Array(new ArrayBuffer(b.entry.bytes)))
    await ctx.all(
      big.flatMap((b, i) =>
        shardsOf(b.entry).map(
          ({ shard, offset }) =>
            () =>
              ctx.readInto(shard, buffers[i].subarray(offset, offset + shard.bytes)),
        ),
      ),
    )
    const head = manifest.head && {
      format: manifest.head.format,
      vocab: manifest.head.vocab,
      hidden: manifest.head.hidden,
      stride: manifest.head.stride,
      embedding: manifest.head.embedding,
      data: buffers[buffers.length - 1],
    }
    // the entry refers to stages[0]: a package with a decoder has only that one (parseManifest)
    const decoder =
      manifest.decoder &&
      resolveDecoderWeights(
        manifest.decoder,
        buffers.slice(0, stage.externalData.length),
        decoderFile && buffers[stage.externalData.length],
      )
    return {
      ...base,
      externalData: stage.externalData.map((ext, i) => ({ path: ext.location, data: buffers[i] })),
      ...(head && { head }),
      ...(decoder && { decoder }),
    }
  }

  const stream = async (sink: ShardSink, wanted?: ShardFilter): Promise<void> => {
    once()
    // the decoder file first: its small tensors (norms, biases) complete the layers the large
    // shards bring, so those can be written and dropped as they come
    const order = [...big].sort((a, b) => rank(a.file) - rank(b.file))
    // One buffer per read in flight, reused from shard to shard: a fresh buffer for each (16 MiB)
    // shard is garbage the collector frees late, and the runtime's allocator (glibc malloc under
    // Deno) keeps what it freed, so hundreds of MB of shards stayed in the process after a load.
    const largest = Math.max(0, ...big.flatMap((b) => b.entry.shards.map((s) => s.bytes)))
    // They go back to the system when the stream ends, not at the next collection (which may
    // come after the weights have filled the kernels' memory: the pool on top of them).
    const free: ArrayBuffer[] = []
    try {
      await ctx.all(
        order.flatMap((b) =>
          shardsOf(b.entry)
            .filter(({ shard, offset }) => !wanted || wanted(b.file, offset, shard.bytes))
            .map(({ shard, offset }) => async () => {
              let buffer = free.pop() ?? new ArrayBuffer(largest)
              try {
                const bytes = await ctx.readInto(
                  shard,
                  new Uint8Array(buffer, 0, shard.bytes),
                  true,
                )
                buffer = bytes.buffer
                await sink(b.file, offset, bytes)
              } finally {
                // a read that failed may have taken the buffer with it (detached: no bytes left)
                if (buffer.byteLength === largest) free.push(buffer)
              }
            }),
        ),
      )
    } finally {
      for (const buffer of free.splice(0)) freeBuffer(buffer)
    }
  }

  const handle: PackageHandle = {
    ...base,
    load,
    stream,
    releaseTokenizerJson: () => {
      base.tokenizerJson = {}
      handle.tokenizerJson = {}
    },
  }
  return handle
}

class LoadContext {
  private readonly abort = new AbortController()
  private loaded = 0
  private total = 0
  private filesDone = 0
  private filesTotal = 0
  private readonly retries: number
  private readonly retryDelayMs: number
  private readonly concurrency: number

  constructor(
    private readonly source: ModelSource,
    private readonly id: string,
    private readonly options: LoadPackageOptions,
  ) {
    this.retries = options.retries ?? DEFAULT_RETRIES
    this.retryDelayMs = options.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS
    this.concurrency = Math.max(
      1,
      options.concurrency ?? source.parallelReads ?? DEFAULT_CONCURRENCY,
    )
    options.signal?.addEventListener('abort', () => this.abort.abort(options.signal!.reason), {
      once: true,
    })
  }

  startProgress(files: ManifestFile[]): void {
    this.total = files.reduce((n, f) => n + f.bytes, 0)
    this.filesTotal = files.length
    this.report()
  }

  private report(): void {
    this.options.onProgress?.({
      loadedBytes: this.loaded,
      totalBytes: this.total,
      filesDone: this.filesDone,
      filesTotal: this.filesTotal,
    })
  }

  private throwIfAborted(): void {
    if (this.abort.signal.aborted) throw this.abort.signal.reason
  }

  /** Runs the tasks, `concurrency` at a time. The first failure stops the rest and is thrown. */
  async all<T>(tasks: Array<() => Promise<T>>): Promise<T[]> {
    const results: T[] = new Array(tasks.length)
    let next = 0
    const worker = async () => {
      while (next < tasks.length) {
        this.throwIfAborted()
        const i = next++
        results[i] = await tasks[i]()
      }
    }
    try {
      await Promise.all(Array.from({ length: Math.min(this.concurrency, tasks.length) }, worker))
    } catch (err) {
      this.abort.abort(err) // in-flight reads stop at their next chunk
      throw err
    }
    return results
  }

  /** A small file, read whole and verified. */
  async readWhole(file: ManifestFile): Promise<Uint8Array<ArrayBuffer>> {
    const key = packageKey(this.id, file.path)
    const bytes = await this.withRetry(key, async () => {
      const data = await this.source.get(key)
      this.throwIfAborted()
      return data
    })
    if (!bytes) throw this.missing(file)
    if (bytes.byteLength !== file.bytes) throw this.wrongSize(file, bytes.byteLength)
    const own = isPlainArrayBuffer(bytes.buffer)
      ? (bytes as Uint8Array<ArrayBuffer>)
      : bytes.slice()
    this.verify(file, sha256Hex(own))
    this.loaded += file.bytes
    this.filesDone++
    this.report()
    return own
  }

  /**
   * A shard, written into `target` and hashed on the way, then verified. `owned`: nothing else
   * uses target's buffer, so a byte stream may read straight into it; the buffer then moves
   * (the old one is detached) and the returned view is over the new one.
   */
  async readInto(
    file: ManifestFile,
    target: Uint8Array<ArrayBuffer>,
    owned = false,
  ): Promise<Uint8Array<ArrayBuffer>> {
    const key = packageKey(this.id, file.path)
    const read = await this.withRetry(key, async () => {
      let counted = 0
      // an attempt that failed in a byte stream's read kept the buffer: start on a new one
      if (target.byteLength === 0) target = new Uint8Array(file.bytes)
      try {
        return await this.fill(key, file, target, owned, (n) => {
          counted += n
          this.loaded += n
          this.report()
        })
      } finally {
        this.loaded -= counted // counted once more below, or again by the next attempt
      }
    })
    this.verify(file, read.sha256)
    this.loaded += file.bytes
    this.filesDone++
    this.report()
    return read.bytes
  }

  /** One attempt at reading `key` into `target` (see readInto): where and the sha256 of what it read. */
  private async fill(
    key: string,
    file: ManifestFile,
    target: Uint8Array<ArrayBuffer>,
    owned: boolean,
    onBytes: (n: number) => void,
  ): Promise<{ bytes: Uint8Array<ArrayBuffer>; sha256: string }> {
    if (!this.source.stream) {
      const bytes = await this.source.get(key)
      this.throwIfAborted()
      if (!bytes) throw this.missing(file)
      if (bytes.byteLength !== file.bytes) throw this.wrongSize(file, bytes.byteLength)
      target.set(bytes)
      return { bytes: target, sha256: sha256Hex(target) }
    }
    const obj = await this.source.stream(key)
    if (!obj) throw this.missing(file)
    if (obj.size !== undefined && obj.size !== file.bytes) {
      await obj.body.cancel().catch(() => {})
      throw this.wrongSize(file, obj.size)
    }
    const hash = createSha256()
    const byob = owned ? byobReader(obj.body) : undefined
    if (byob) {
      const bytes = await this.fillByob(byob, file, target, hash, onBytes)
      return { bytes, sha256: hash.hex() }
    }
    const reader = obj.body.getReader()
    let n = 0
    try {
      for (;;) {
        this.throwIfAborted()
        const { done, value } = await reader.read()
        if (done) break
        if (n + value.byteLength > target.byteLength) {
          throw this.wrongSize(file, n + value.byteLength, true)
        }
        target.set(value, n)
        hash.update(value)
        n += value.byteLength
        onBytes(value.byteLength)
      }
    } catch (err) {
      await reader.cancel().catch(() => {})
      throw err
    } finally {
      reader.releaseLock()
    }
    if (n !== file.bytes) throw this.wrongSize(file, n)
    return { bytes: target, sha256: hash.hex() }
  }

  /**
   * Reads a byte stream (a file, an R2 body) straight into target's buffer: no chunk allocated
   * per read (64 KiB each from a Deno file, 300 MB of them for a 0.5B package, which the
   * runtime's allocator kept after the collector freed them). Each read hands the buffer back
   * moved; the view over where it ends is returned.
   */
  private async fillByob(
    reader: ReadableStreamBYOBReader,
    file: ManifestFile,
    target: Uint8Array<ArrayBuffer>,
    hash: Sha256Hash,
    onBytes: (n: number) => void,
  ): Promise<Uint8Array<ArrayBuffer>> {
    let buffer = target.buffer
    const start = target.byteOffset
    let n = 0
    try {
      while (n < file.bytes) {
        this.throwIfAborted()
        const { done, value } = await reader.read(new Uint8Array(buffer, start + n, file.bytes - n))
        if (!value) break
        buffer = value.buffer
        if (done) break
        hash.update(value)
        n += value.byteLength
        onBytes(value.byteLength)
      }
      if (n === file.bytes) {
        const more = await reader.read(new Uint8Array(1)) // the stream must end here
        if (!more.done) throw this.wrongSize(file, n + more.value.byteLength, true)
      }
    } catch (err) {
      await reader.cancel().catch(() => {})
      throw err
    } finally {
      reader.releaseLock()
    }
    if (n !== file.bytes) throw this.wrongSize(file, n)
    return new Uint8Array(buffer, start, file.bytes)
  }

  async withRetry<T>(key: string, attempt: () => Promise<T>): Promise<T> {
    for (let n = 0; ; n++) {
      this.throwIfAborted()
      try {
        return await attempt()
      } catch (err) {
        if (isAppError(err) || this.abort.signal.aborted) throw err
        if (!isTransientSourceError(err) || n >= this.retries) {
          const tries = n + 1 === 1 ? '' : ` (${n + 1} attempts)`
          throw new AppError(
            'model_unavailable',
            `Could not read ${key} from ${this.source.describe()}${tries}: ${errorText(err)}`,
            { cause: err },
          )
        }
        const delay =
          Math.min(MAX_RETRY_DELAY_MS, this.retryDelayMs * 2 ** n) * (0.5 + Math.random() / 2)
        await sleep(delay, this.abort.signal)
      }
    }
  }

  private verify(file: ManifestFile, actual: string): void {
    if (actual !== file.sha256) {
      throw new AppError(
        'model_invalid',
        `Checksum mismatch in ${this.where(file)}: sha256 ${actual}, manifest says ${file.sha256}`,
        { details: { file: file.path } },
      )
    }
  }

  private where(file: ManifestFile): string {
    return `${packageKey(this.id, file.path)} (${this.source.describe()})`
  }

  private missing(file: ManifestFile): AppError {
    return new AppError('model_invalid', `Missing file ${this.where(file)}`, {
      details: { file: file.path },
    })
  }

  private wrongSize(file: ManifestFile, actual: number, atLeast = false): AppError {
    const what = actual < file.bytes ? 'truncated' : 'too long'
    const size = `${atLeast ? 'at least ' : ''}${actual} bytes`
    return new AppError(
      'model_invalid',
      `File ${this.where(file)} is ${what}: ${size}, manifest says ${file.bytes}`,
      {
        details: { file: file.path },
      },
    )
  }
}

/** The shards of a big file, each with its byte offset in the file. */
function shardsOf(entry: ExternalDataEntry): Array<{ shard: ManifestFile; offset: number }> {
  let offset = 0
  return entry.shards.map((shard) => ({ shard, offset: (offset += shard.bytes) - shard.bytes }))
}

function rank(file: BigFile): number {
  return file.kind === 'decoder' ? 0 : file.kind === 'external' ? 1 : 2
}

/** A reader that fills the caller's buffers, when the stream is a byte stream. */
function byobReader(body: ReadableStream<Uint8Array>): ReadableStreamBYOBReader | undefined {
  try {
    return body.getReader({ mode: 'byob' })
  } catch {
    return undefined // not a byte stream (TypeError): it still can be read by chunks
  }
}

/** `instanceof ArrayBuffer` fails across realms; a SharedArrayBuffer-backed view must be copied. */
function isPlainArrayBuffer(buffer: ArrayBufferLike): buffer is ArrayBuffer {
  return Object.prototype.toString.call(buffer) === '[object ArrayBuffer]'
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function parseJsonObject(bytes: Uint8Array, key: string): Record<string, unknown> {
  const value = parseJson(bytes, key)
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AppError('model_invalid', `${key} is not a JSON object`)
  }
  return value as Record<string, unknown>
}

function parseJson(bytes: Uint8Array, key: string): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes))
  } catch (err) {
    throw new AppError('model_invalid', `${key} is not valid JSON`, { cause: err })
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason)
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal.reason)
    }
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
