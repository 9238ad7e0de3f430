/**
 * A model source over HTTP(S): `${baseUrl}/${key}` with plain GETs. Works against a public R2
 * bucket (r2.dev or a custom domain), S3-compatible storage, a CDN or `npx serve model-shards`.
 */
import { SourceError, type ModelSource, type SourceObject } from './model-source.ts'

export interface HttpSourceOptions {
  /** Extra request headers (e.g. `Authorization`). */
  headers?: HeadersInit
  /** Defaults to the global fetch. */
  fetch?: typeof fetch
}

export function httpSource(baseUrl: string | URL, options: HttpSourceOptions = {}): ModelSource {
  const base = new URL(baseUrl)
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new TypeError(`httpSource needs an http(s) URL, got ${base.protocol}`)
  }
  if (!base.pathname.endsWith('/')) base.pathname += '/'
  const doFetch = options.fetch ?? fetch
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

  return {
    async get(key) {
      const res = await open(key)
      if (!res) return null
      try {
        return new Uint8Array(await res.arrayBuffer())
      } catch (err) {
        throw new SourceError(`GET ${urlOf(key)}: body failed: ${(err as Error).message}`, true, {
          cause: err,
        })
      }
    },
    async stream(key): Promise<SourceObject | null> {
      const res = await open(key)
      if (!res) return null
      if (!res.body) return { size: 0, body: new Blob([]).stream() }
      const length = res.headers.get('content-length')
      // Content-Encoding makes Content-Length the compressed size: do not trust it then.
      const encoded = (res.headers.get('content-encoding') ?? 'identity') !== 'identity'
      const size = length !== null && !encoded ? Number(length) : undefined
      return { size: Number.isSafeInteger(size) ? size : undefined, body: res.body }
    },
    describe: () => base.href.replace(/\/$/, ''),
  }
}
