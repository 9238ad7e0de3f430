/**
 * The Deno entry serving a package from an HTTP(S) URL, as it does on Deno Deploy, where the
 * model comes from a bucket: the real server (`npm run start:deno`, then started as Deploy
 * starts it) against a local static server that misbehaves the way a real host can (a 503, a
 * connection cut halfway through a shard, a broken shard that is repaired later). What the
 * host sees is asserted from its request log.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { listFiles, parseManifest, type Manifest } from '../../src/format/index.ts'
import { startFileServer, type Fault, type FileServer } from '../helpers/file-server.ts'
import { request } from './client.ts'
import { MODEL_ID, ROOT } from './runtimes.ts'
import { freePort, startServer, type ServerProcess } from './servers.ts'

const quiet = { NO_COLOR: '1', FORCE_COLOR: '0', DENO_NO_UPDATE_CHECK: '1' }
const DATA = 'model_quantized.onnx_data.000'
const HEAD = 'head.q8.000'

let work: string
let manifest: Manifest
let files: FileServer
/** Which copy of the package the file server serves: the good one or the one with a bad shard. */
let serving: 'good' | 'broken' = 'good'
let faults: Record<string, (seen: number) => Fault> = {}
const servers: ServerProcess[] = []

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-deno-http-'))
  const from = join(ROOT, 'model-shards', MODEL_ID)
  await cp(from, join(work, 'good', MODEL_ID), { recursive: true })
  await cp(from, join(work, 'broken', MODEL_ID), { recursive: true })
  const shard = join(work, 'broken', MODEL_ID, DATA)
  const bytes = await readFile(shard)
  bytes[bytes.length >> 1] ^= 0x40
  await writeFile(shard, bytes)
  manifest = parseManifest(JSON.parse(await readFile(join(from, 'manifest.json'), 'utf8')))
  files = await startFileServer(work, {
    route: (path) => `${serving}${path}`,
    fault: (path, seen) => faults[path.split('/').pop()!]?.(seen) ?? 'serve',
  })
})

afterAll(async () => {
  for (const server of servers) await server.stop()
  await files?.close()
  if (work) await rm(work, { recursive: true, force: true })
})

function requestsFor(file: string) {
  return files.requests.filter((r) => r.path === `/${MODEL_ID}/${file}`)
}

async function sentiment(server: ServerProcess) {
  const res = await request(server, '/v1/sentiment', { body: { text: 'great' }, auth: false })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

describe('Deno serving MODEL=http://… (as on Deno Deploy)', () => {
  it('npm run start:deno loads through a 503 and a cut connection, reading every file once more at most', async () => {
    faults = {
      [DATA]: (seen) => (seen === 0 ? 503 : 'serve'),
      [HEAD]: (seen) => (seen === 0 ? 'cut' : 'serve'),
      'tokenizer.json': (seen) => (seen === 0 ? 'cut' : 'serve'),
    }
    const port = await freePort()
    const server = await startServer({
      name: 'deno (npm run start:deno, MODEL=http)',
      command: 'npm',
      args: ['run', '--silent', 'start:deno'],
      cwd: ROOT,
      env: { ...quiet, PORT: String(port), HOST: '127.0.0.1', MODEL: `${files.url}/${MODEL_ID}` },
      port,
      readyTimeoutMs: 60_000,
    })
    servers.push(server)
    const answer = await sentiment(server)
    expect(answer.status).toBe(200)
    expect(answer.body.label).toMatch(/^(positive|negative)$/)
    // the engine's turns of the event loop are the loopback's, not the timer's (io-turn.ts)
    expect(server.logs()).toContain('event-loop turns: loopback TCP')

    const expected = ['manifest.json', ...listFiles(manifest).map((f) => f.path)]
    for (const file of expected) {
      expect(requestsFor(file).at(-1)?.status, file).toBeOneOf([200, 206])
    }
    expect(new Set(files.requests.map((r) => r.path.split('/').pop()))).toEqual(new Set(expected))
    // the 503 is retried after a backoff, with a whole GET
    expect(requestsFor(DATA).map((r) => [r.range, r.status])).toEqual([
      [undefined, 503],
      [undefined, 200],
    ])
    // a cut body is resumed where it stopped
    for (const file of [HEAD, 'tokenizer.json']) {
      const size = listFiles(manifest).find((f) => f.path === file)!.bytes
      expect(
        requestsFor(file).map((r) => [r.range, r.status]),
        file,
      ).toEqual([
        [undefined, 200],
        [`bytes=${Math.floor(size / 2)}-`, 206],
      ])
    }
    const others = expected.filter((f) => ![DATA, HEAD, 'tokenizer.json'].includes(f))
    for (const file of others) expect(requestsFor(file), file).toHaveLength(1)
    await server.stop()
  })

  it('started as Deploy starts it: a broken shard fails the load, naming it; after the repair a request loads', async () => {
    faults = {}
    serving = 'broken'
    files.requests.length = 0
    const port = await freePort()
    // Deploy: `deno run -A <entrypoint>` with no other flags (the rest comes from deno.json),
    // DENO_DEPLOY=true and no PORT/HOST; DENO_SERVE_ADDRESS stands in for the address Deploy
    // gives Deno.serve
    const server = await startServer({
      name: 'deno (as on Deno Deploy)',
      command: join(ROOT, 'node_modules', '.bin', 'deno'),
      args: ['run', '-A', 'src/adapters/deno/main.ts'],
      cwd: ROOT,
      env: {
        ...quiet,
        DENO_DEPLOY: 'true',
        DENO_SERVE_ADDRESS: `tcp:127.0.0.1:${port}`,
        MODEL: `${files.url}/${MODEL_ID}`,
      },
      port,
      readyTimeoutMs: 60_000,
      ready: (status, body) => status === 503 && JSON.parse(body).status === 'failed',
    })
    servers.push(server)
    const health = await request(server, '/health', { auth: false })
    expect(health.status).toBe(503)
    const failed = (await health.json()) as { status: string; error: string }
    expect(failed.status).toBe('failed')
    expect(failed.error).toContain(`Checksum mismatch in ${MODEL_ID}/${DATA} (${files.url})`)
    const refused = await sentiment(server)
    expect(refused.status).toBe(503)
    expect(refused.body.error).toMatchObject({ code: 'model_invalid' })
    expect((refused.body.error as { message: string }).message).toContain(`${MODEL_ID}/${DATA}`)
    // a bad checksum is not retried within a load: one GET per load of the shard
    const loads = requestsFor('manifest.json').length
    expect(requestsFor(DATA)).toHaveLength(loads)

    serving = 'good'
    const answer = await sentiment(server)
    expect(answer.status).toBe(200)
    expect((await request(server, '/health', { auth: false })).status).toBe(200)
    // deno.json's no-legacy-abort reached the runtime without a flag: no deprecation warning
    expect(server.logs()).not.toContain('legacy behavior')
    await server.stop()
  })
})
