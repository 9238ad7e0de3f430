/**
 * httpSource against a real HTTP server: a body cut halfway is resumed with a Range request
 * for the rest, and the bytes come out whole; a server that cannot give exactly that rest
 * (ignores ranges, or the file changed in between) fails the read as transient, so the loader
 * retries the whole file.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { httpSource } from '../../../src/engine/package/sources/http-source.ts'
import { SourceError } from '../../../src/engine/package/sources/model-source.ts'
import { startFileServer, type Fault, type FileServer } from '../../helpers/file-server.ts'

const SIZE = 1_000_003
let dir: string
let bytes: Buffer
const servers: FileServer[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qwen-edge-http-source-'))
  bytes = randomBytes(SIZE)
  await writeFile(join(dir, 'blob'), bytes)
})

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()))
  await rm(dir, { recursive: true, force: true })
})

async function serve(fault: (path: string, seen: number) => Fault, ranges = true) {
  const server = await startFileServer(dir, { fault, ranges })
  servers.push(server)
  return server
}

async function readStream(body: ReadableStream<Uint8Array>): Promise<Buffer> {
  return Buffer.from(await new Response(body).arrayBuffer())
}

async function rejection(promise: Promise<unknown>): Promise<SourceError> {
  const err = await promise.then(
    () => new Error('expected the read to fail'),
    (e: unknown) => e,
  )
  if (!(err instanceof SourceError)) throw err
  return err
}

describe('httpSource', () => {
  it('resumes a body cut halfway with one Range request, for get and for stream', async () => {
    const server = await serve((_path, seen) => (seen === 0 ? 'cut' : 'serve'))
    const got = await httpSource(server.url).get('blob')
    expect(Buffer.from(got!).equals(bytes)).toBe(true)
    const head = await fetch(`${server.url}/blob`, { method: 'HEAD' })
    const tag = head.headers.get('etag')!
    expect(server.requests.slice(0, 2)).toEqual([
      { path: '/blob', status: 200 },
      { path: '/blob', range: `bytes=${Math.floor(SIZE / 2)}-`, ifRange: tag, status: 206 },
    ])

    const again = await serve((_path, seen) => (seen === 0 ? 'cut' : 'serve'))
    const obj = await httpSource(again.url).stream!('blob')
    expect(obj!.size).toBe(SIZE)
    expect((await readStream(obj!.body)).equals(bytes)).toBe(true)
    expect(again.requests.map((r) => [r.range, r.status])).toEqual([
      [undefined, 200],
      [`bytes=${Math.floor(SIZE / 2)}-`, 206],
    ])
  })

  it('gives up after `resumes` cuts with a transient error that says so', async () => {
    const server = await serve(() => 'cut')
    const err = await rejection(httpSource(server.url, { resumes: 2 }).get('blob'))
    expect(err.transient).toBe(true)
    expect(err.message).toMatch(
      /^GET http:\/\/\S+\/blob: body failed after \d+ bytes \(resumed 2 times\)/,
    )
    expect(server.requests).toHaveLength(3)
  })

  it('does not splice when the server answers the range with the whole file', async () => {
    const server = await serve((_path, seen) => (seen === 0 ? 'cut' : 'serve'), false)
    const err = await rejection(httpSource(server.url).get('blob'))
    expect(err.transient).toBe(true)
    expect(err.message).toBe(
      `GET ${server.url}/blob (resuming at byte ${Math.floor(SIZE / 2)}) answered 200 with no Content-Range`,
    )
  })

  it('does not splice two versions of a file replaced between the cut and the resume', async () => {
    const changed = Buffer.from(bytes)
    changed[SIZE - 1] ^= 1
    const server = await serve((_path, seen) => {
      if (seen === 1) writeFileSync(join(dir, 'blob'), changed) // a new ETag
      return seen === 0 ? 'cut' : 'serve'
    })
    try {
      const err = await rejection(httpSource(server.url).get('blob'))
      expect(err.message).toMatch(/\(resuming at byte \d+\) answered 200 with no Content-Range$/)
      expect(server.requests[1].ifRange).toBeDefined()
    } finally {
      await writeFile(join(dir, 'blob'), bytes)
    }
  })
})
