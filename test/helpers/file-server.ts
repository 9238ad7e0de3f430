/**
 * A static file server on 127.0.0.1 for the package tests: serves a folder, supports Range (and
 * If-Range) requests, logs every request and can misbehave on demand (answer 503, cut the
 * connection halfway through a body).
 */
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join, normalize, resolve, sep } from 'node:path'

export interface LoggedRequest {
  path: string
  range?: string
  ifRange?: string
  authorization?: string
  status: number
}

/** What to do with a request: serve it, answer with a status, or cut the body halfway. */
export type Fault = 'serve' | 'cut' | number

export interface FileServer {
  url: string
  requests: LoggedRequest[]
  close(): Promise<void>
}

export interface FileServerOptions {
  /** Maps a URL path to a file path below `root`, or null for 404. Default: the path itself. */
  route?: (path: string) => string | null
  /** Called per request with how many times this path was requested before. */
  fault?: (path: string, seen: number) => Fault
  /** Honour Range headers (default true); false answers every GET with the whole file. */
  ranges?: boolean
}

export async function startFileServer(
  folder: string,
  options: FileServerOptions = {},
): Promise<FileServer> {
  const root = resolve(folder)
  const requests: LoggedRequest[] = []
  const seen = new Map<string, number>()
  const route = options.route ?? ((p: string) => p.replace(/^\/+/, ''))

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<number> {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
    const n = seen.get(path) ?? 0
    seen.set(path, n + 1)
    const fault = options.fault?.(path, n) ?? 'serve'
    if (typeof fault === 'number') {
      res.writeHead(fault, { 'content-type': 'text/plain' }).end('nope')
      return fault
    }
    const rel = route(path)
    const file = rel === null ? null : normalize(join(root, rel))
    const st = file && file.startsWith(root + sep) ? await stat(file).catch(() => null) : null
    if (!file || !st?.isFile()) {
      res.writeHead(404).end('not found')
      return 404
    }
    let start = 0
    let end = st.size - 1
    let status = 200
    const etag = `"${st.size}-${st.mtimeMs}"`
    // If-Range names the version the client has part of: another version is sent whole
    const sameVersion = (req.headers['if-range'] ?? etag) === etag
    const range = options.ranges === false || !sameVersion ? undefined : req.headers.range
    if (range) {
      const m = /^bytes=(\d+)-(\d*)$/.exec(range)
      if (!m || Number(m[1]) >= st.size) {
        res.writeHead(416, { 'content-range': `bytes */${st.size}` }).end()
        return 416
      }
      start = Number(m[1])
      if (m[2]) end = Math.min(end, Number(m[2]))
      status = 206
    }
    const length = end - start + 1
    const headers: Record<string, string | number> = {
      'content-length': length,
      'content-type': 'application/octet-stream',
      'accept-ranges': options.ranges === false ? 'none' : 'bytes',
      etag,
    }
    if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${st.size}`
    res.writeHead(status, headers)
    if (req.method === 'HEAD') {
      res.end()
      return status
    }
    if (fault === 'cut') {
      // Send half the body, then close the connection: the client sees a truncated response.
      // Closed with end(), not destroy(): a reset can discard bytes already sent, and the
      // client would stop at a byte the test cannot know. Ended once the last chunk has reached
      // the socket (its write callback): res.write may still hold chunks when the file ends.
      const half = Math.floor(length / 2)
      const stream = createReadStream(file, { start, end: start + half - 1 })
      let written = Promise.resolve()
      stream.on('data', (chunk) => {
        written = new Promise((done) => res.write(chunk, () => done()))
      })
      stream.on('end', () => void written.then(() => res.socket?.end()))
      return status
    }
    createReadStream(file, { start, end }).pipe(res)
    return status
  }

  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
    const entry: LoggedRequest = { path, status: 0 }
    if (req.headers.range) entry.range = req.headers.range
    const ifRange = req.headers['if-range']
    if (typeof ifRange === 'string') entry.ifRange = ifRange
    if (req.headers.authorization) entry.authorization = req.headers.authorization
    requests.push(entry)
    handle(req, res).then(
      (status) => (entry.status = status),
      (err) => {
        entry.status = 500
        res.writeHead(500).end(String(err))
      },
    )
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise((resolve, reject) => {
        server.closeAllConnections()
        server.close((err) => (err ? reject(err) : resolve()))
      }),
  }
}
