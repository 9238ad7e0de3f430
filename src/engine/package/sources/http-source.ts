/**
 * A model source over HTTP(S): `${baseUrl}/${key}` with plain GETs. Works against a public R2
 * bucket (r2.dev or a custom domain), S3-compatible storage, a CDN or `npx serve model-shards`.
 *
 * A body whose connection drops partway is resumed where it stopped with
 * `Range: bytes=<received>-` (and `If-Range` when the server gave a strong ETag), so a cut in a
 * 16 MiB shard costs the missing bytes, not the whole shard again. The loader sees one
 * unbroken stream and still checks the shard's sha256. A server that does not answer the range
 * exactly (200, another start, another length) ends the read with a transient error, and the
 * loader retries the whole file as before.
 */
import { SourceError, type ModelSource, type SourceObject } from './model-source.ts'

export interface HttpSourceOptions {
  /** Extra request headers (e.g. `Authorization`). */
  headers?: HeadersInit
  /** Defaults to the global fetch. */
  fetch?: typeof fetch
  /** Range requests one body may make after cuts before the read fails; default 3. */
  resumes?: number
}

const DEFAULT_RESUMES = 3

export function httpSource(baseUrl: string | URL, options: HttpSourceOptions = {}): ModelSource {
  const base = new URL(baseUrl)
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new TypeError(`httpSource needs an http(s) URL, got ${base.protocol}`)
  }
  if (!base.pathname.endsWith('/')) base.pathname += '/'
  const doFetch = options.fetch ?? fetch
  const maxResumes = options.resumes ?? DEFAULT_RESUMES
  const urlOf = (key: string) => new URL(key.split('/').map(encodeURIComponent).join('/'), base)

  async function open(key: string): Promise<Response | null> {
    const url = urlOf(key)
    let res: Response
    try {
      res = await doFetch(url, { headers: options.headers })
    } catch (err) {
      throw new SourceError(`GET ${url} failed: ${(err as Error).message}`, true, { cause: err })
    }
    if (res.status === 404 || res.status === 410) {
      await res.body?.cancel()
      return null
    }
    if (!res.ok) {
      await res.body?.cancel()
      // 408 timeout, 429 rate limit and 5xx may pass; other 4xx (403 …) will not.
      const transient = res.status === 408 || res.status === 429 || res.status >= 500
      throw new SourceError(`GET ${url} answered ${res.status} ${res.statusText}`.trim(), transient)
    }
    return res
  }

  /** The rest of the object from byte `from`, or a transient error when the server will not. */
  async function reopen(
    url: URL,
    from: number,
    size: number,
    ifRange: string | undefined,
  ): Promise<ReadableStreamDefaultReader<Uint8Array>> {
    const headers = new Headers(options.headers)
    headers.set('range', `bytes=${from}-`)
    if (ifRange) headers.set('if-range', ifRange)
    const what = `GET ${url} (resuming at byte ${from})`
    let res: Response
    try {
      res = await doFetch(url, { headers })
    } catch (err) {
      throw new SourceError(`${what} failed: ${(err as Error).message}`, true, { cause: err })
    }
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get('content-range') ?? '')
    const fits =
      res.status === 206 &&
      !isEncoded(res) &&
      range !== null &&
      Number(range[1]) === from &&
      Number(range[2]) === size - 1 &&
      Number(range[3]) === size
    if (!fits || !res.body) {
      await res.body?.cancel()
      const got = res.headers.get('content-range') ?? 'no Content-Range'
      throw new SourceError(`${what} answered ${res.status} with ${got}`, true)
    }
    return res.body.getReader()
  }

  /** `res`'s body, resumed after cuts when the server can say where the rest starts. */
  function resumable(url: URL, res: Response, size: number | undefined) {
    const body = res.body!
    if (size === undefined || res.status !== 200 || maxResumes <= 0) return body
    const etag = res.headers.get('etag')
    const ifRange = etag && !etag.startsWith('W/') ? etag : undefined
    let reader: ReadableStreamDefaultReader<Uint8Array> = body.getReader()
    let received = 0
    let resumes = 0
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        for (;;) {
          try {
            const { done, value } = await reader.read()
            if (done) return controller.close()
            received += value.byteLength
            return controller.enqueue(value)
          } catch (err) {
            if (received >= size || resumes >= maxResumes) {
              const tries = resumes ? ` (resumed ${resumes} times)` : ''
              const why = (err as Error).message
              throw new SourceError(
                `GET ${url}: body failed after ${received} bytes${tries}: ${why}`,
                true,
                { cause: err },
              )
            }
            resumes++
            reader = await reopen(url, received, size, ifRange)
          }
        }
      },
      cancel: (reason) => reader.cancel(reason),
    })
  }

  async function stream(key: string): Promise<SourceObject | null> {
    const res = await open(key)
    if (!res) return null
    if (!res.body) return { size: 0, body: new Blob([]).stream() }
    const length = res.headers.get('content-length')
    // Content-Encoding makes Content-Length the compressed size: do not trust it then.
    const size = length !== null && !isEncoded(res) ? Number(length) : undefined
    const known = Number.isSafeInteger(size) ? size : undefined
    return { size: known, body: resumable(urlOf(key), res, known) }
  }

  return {
    async get(key) {
      const obj = await stream(key)
      if (!obj) return null
      try {
        return await readAll(obj.body)
      } catch (err) {
        if (err instanceof SourceError) throw err
        throw new SourceError(`GET ${urlOf(key)}: body failed: ${(err as Error).message}`, true, {
          cause: err,
        })
      }
    },
    stream,
    describe: () => base.href.replace(/\/$/, ''),
  }
}

function isEncoded(res: Response): boolean {
  return (res.headers.get('content-encoding') ?? 'identity') !== 'identity'
}

async function readAll(body: ReadableStream<Uint8Array>): Promise<Uint8Array<ArrayBuffer>> {
  const chunks: Uint8Array[] = []
  let total = 0
  const reader = body.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    chunks.push(value)
    total += value.byteLength
  }
  const out = new Uint8Array(total)
  let offset = 0
  for (const chunk of chunks) {
    out.set(chunk, offset)
    offset += chunk.byteLength
  }
  return out
}
