/**
 * model:fetch against a fake Hugging Face Hub: a local server with the Hub's URL layout
 * (`/{repo}/resolve/{revision}/{path}`) serving a synthetic export, Range requests included.
 */
import { mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defaultPackageId, downloadFile, fetchModel } from '../../scripts/fetch-model.ts'
import { pickOnnxFile, preparePackage } from '../../scripts/prepare-model.ts'
import { ensureModel } from '../helpers/models.ts'
import { startFileServer, type FileServer } from '../helpers/file-server.ts'

const REPO = 'test-org/Tiny-Qwen'
const PREFIX = `/${REPO}/resolve/main/`

let hf: string
let onnx: string
let work: string

beforeAll(async () => {
  hf = await ensureModel('tiny', 'q8')
  onnx = await pickOnnxFile(hf)
  work = await mkdtemp(join(tmpdir(), 'qwen-edge-fetch-'))
})
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true })
})

function fakeHub(
  fault?: (path: string, seen: number) => 'serve' | 'cut' | number,
): Promise<FileServer> {
  return startFileServer(hf, {
    route: (p) => (p.startsWith(PREFIX) ? p.slice(PREFIX.length) : null),
    fault,
  })
}

async function packageFiles(dir: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>()
  for (const name of await readdir(dir)) files.set(name, await readFile(join(dir, name)))
  return files
}

describe('model:fetch', () => {
  it('resumes a download cut halfway and prepares the same package as the folder itself', async () => {
    const hub = await fakeHub((path, seen) =>
      path.endsWith('.onnx') && seen === 0 ? 'cut' : 'serve',
    )
    try {
      const result = await fetchModel({
        repo: REPO,
        file: onnx,
        endpoint: hub.url,
        token: 'hf_secret',
        id: 'tiny-q8',
        cacheDir: join(work, 'cache'),
        out: join(work, 'fetched'),
        retryDelayMs: 5,
        quiet: true,
      })
      const onnxRequests = hub.requests.filter((r) => r.path === PREFIX + onnx)
      const size = (await stat(join(hf, onnx))).size
      // the retry asks for the rest of what the client had kept: half the file at most (the
      // server sent half), but the client's HTTP stack may drop the last chunks it buffered
      // when the connection ends under them (seen under load: 5 MiB of 5.06 MiB kept)
      expect(onnxRequests.map((r) => r.range?.replace(/\d+/, 'N'))).toEqual([undefined, 'bytes=N-'])
      const resumedAt = Number(/\d+/.exec(onnxRequests[1].range!)![0])
      expect(resumedAt).toBeGreaterThan(0)
      expect(resumedAt).toBeLessThanOrEqual(Math.floor(size / 2))
      expect(onnxRequests[1].status).toBe(206)
      expect(hub.requests.every((r) => r.authorization === 'Bearer hf_secret')).toBe(true)
      const downloaded = await readFile(join(result.folder, onnx))
      expect(downloaded.equals(await readFile(join(hf, onnx)))).toBe(true)
      expect(await readdir(join(result.folder, 'onnx'))).toEqual([onnx.split('/')[1]]) // no .part left

      const direct = await preparePackage({
        folder: hf,
        id: 'tiny-q8',
        file: onnx,
        out: join(work, 'direct'),
        quiet: true,
        logitsRewrite: true, // what model:fetch asks for
      })
      expect({ ...result.manifest, source: undefined }).toEqual({
        ...direct.manifest,
        source: undefined,
      })
      expect(result.manifest.source).toEqual({ onnxFile: onnx, repo: REPO, revision: 'main' })
      const a = await packageFiles(result.dir)
      const b = await packageFiles(direct.dir)
      expect([...a.keys()].sort()).toEqual([...b.keys()].sort())
      for (const [name, bytes] of a)
        if (name !== 'manifest.json') expect(bytes.equals(b.get(name)!)).toBe(true)
    } finally {
      await hub.close()
    }
  })

  it('resumes a .part left by an interrupted run; starts over when the part cannot be resumed', async () => {
    const original = await readFile(join(hf, 'tokenizer.json'))
    const dir = join(work, 'resume')
    await mkdir(dir, { recursive: true })
    const hub = await fakeHub()
    const noRanges = await startFileServer(hf, { route: (p) => p.slice(1), ranges: false })
    try {
      const url = `${hub.url}${PREFIX}tokenizer.json`
      await writeFile(join(dir, 'a.json.part'), original.subarray(0, 1000))
      await downloadFile(url, join(dir, 'a.json'), { quiet: true })
      expect((await readFile(join(dir, 'a.json'))).equals(original)).toBe(true)
      expect(hub.requests.at(-1)).toMatchObject({ range: 'bytes=1000-', status: 206 })

      // A part longer than the file: 416, then a fresh download.
      await writeFile(join(dir, 'b.json.part'), Buffer.alloc(original.byteLength + 5))
      await downloadFile(url, join(dir, 'b.json'), { quiet: true, retryDelayMs: 1 })
      expect((await readFile(join(dir, 'b.json'))).equals(original)).toBe(true)
      expect(hub.requests.slice(-2).map((r) => r.status)).toEqual([416, 200])

      // A server without Range support answers 200: the part is replaced, not appended to.
      await writeFile(join(dir, 'c.json.part'), 'stale bytes')
      await downloadFile(`${noRanges.url}/tokenizer.json`, join(dir, 'c.json'), { quiet: true })
      expect((await readFile(join(dir, 'c.json'))).equals(original)).toBe(true)
      expect(noRanges.requests).toMatchObject([{ range: 'bytes=11-', status: 200 }])
    } finally {
      await hub.close()
      await noRanges.close()
    }
  })

  it("fetches an onnx-community-style q4 file (float embedding table) into the kernels' package", async () => {
    // the README's command for a real q4 export, on the generator's fake of that layout
    const q4 = await ensureModel('tiny', 'q4', { embeddingTable: true })
    const hub = await startFileServer(q4, {
      route: (p) => (p.startsWith(PREFIX) ? p.slice(PREFIX.length) : null),
    })
    try {
      const result = await fetchModel({
        repo: REPO,
        file: 'onnx/model_q4.onnx',
        endpoint: hub.url,
        id: 'tiny-q4',
        cacheDir: join(work, 'cache-q4'),
        out: join(work, 'fetched-q4'),
        retryDelayMs: 5,
        quiet: true,
      })
      expect(result.manifest.head).toMatchObject({ format: 'q4s-b32', embedding: true })
      expect(result.manifest.decoder).toBeDefined()
    } finally {
      await hub.close()
    }
  })

  it('fails clearly for a repo the hub does not have', async () => {
    const hub = await fakeHub()
    try {
      await expect(
        fetchModel({
          repo: 'nobody/nothing',
          endpoint: hub.url,
          cacheDir: join(work, 'c2'),
          out: join(work, 'o2'),
          quiet: true,
        }),
      ).rejects.toThrow(
        /^GET http:\/\/127\.0\.0\.1:\d+\/nobody\/nothing\/resolve\/main\/config\.json answered 404 Not Found$/,
      )
    } finally {
      await hub.close()
    }
  })

  it('derives package ids from the repo and file', () => {
    expect(
      defaultPackageId('onnx-community/Qwen2.5-0.5B-Instruct', 'onnx/model_quantized.onnx'),
    ).toBe('qwen2.5-0.5b-instruct-quantized')
    expect(defaultPackageId('Xenova/Qwen1.5-0.5B-Chat', 'onnx/model.onnx')).toBe(
      'qwen1.5-0.5b-chat',
    )
    expect(defaultPackageId('Xenova/Qwen1.5-0.5B-Chat', 'onnx/model_q4f16.onnx')).toBe(
      'qwen1.5-0.5b-chat-q4f16',
    )
  })
})
