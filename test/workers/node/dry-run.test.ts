/**
 * `wrangler deploy --dry-run` (what `npm run check:worker` runs) bundles the Worker as it
 * would be uploaded, and the upload fits Cloudflare's Worker size limit. Runs in Node (the
 * `node` vitest project): it spawns the project's wrangler, which needs no account for this.
 *
 * Limits (https://developers.cloudflare.com/workers/platform/limits/#worker-size), measured
 * after gzip: 10 MiB on the paid plan, 3 MiB on the free plan.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { gzipSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { REPO_ROOT } from '../../helpers/models.ts'

const MiB = 1024 * 1024
const PAID_PLAN_LIMIT = 10 * MiB
const FREE_PLAN_LIMIT = 3 * MiB

const require = createRequire(import.meta.url)
const WRANGLER = join(dirname(require.resolve('wrangler/package.json')), 'bin', 'wrangler.js')
const ORT_WASM = require.resolve('onnxruntime-web/ort-wasm-simd-threaded.wasm')
const HEAD_WASM = join(REPO_ROOT, 'src', 'engine', 'kernels', 'q8-head.wasm')

let outdir: string
let output: string

beforeAll(async () => {
  outdir = await mkdtemp(join(tmpdir(), 'qwen-edge-dry-run-'))
  const { stdout, stderr } = await promisify(execFile)(
    process.execPath,
    [WRANGLER, 'deploy', '--dry-run', '--outdir', outdir],
    {
      cwd: REPO_ROOT,
      timeout: 120_000,
      env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: '1', NO_COLOR: '1' },
    },
  )
  output = stdout + stderr
}, 150_000)

afterAll(async () => {
  if (outdir) await rm(outdir, { recursive: true, force: true })
})

describe('wrangler deploy --dry-run', () => {
  it('bundles the script, onnxruntime-web wasm and the head kernel as precompiled modules', async () => {
    expect(output).toContain('--dry-run: exiting now.')
    expect(output).toMatch(/env\.MODEL_BUCKET \(qwen-edge-models\)\s+R2 Bucket/)
    const files = (await readdir(outdir)).filter((f) => f !== 'README.md' && !f.endsWith('.map'))
    const wasm = files.filter((f) => f.endsWith('.wasm')).sort()
    expect(files.sort()).toEqual(['index.js', ...wasm].sort())
    expect(wasm).toHaveLength(2)
    const ortWasm = wasm.find((f) => /-ort-wasm-simd-threaded\.wasm$/.test(f))
    const headWasm = wasm.find((f) => /-q8-head\.wasm$/.test(f))
    expect(ortWasm && headWasm).toBeTruthy()
    // byte for byte the files imported by the script (wrangler makes them WebAssembly.Modules)
    expect((await readFile(join(outdir, ortWasm!))).equals(await readFile(ORT_WASM))).toBe(true)
    expect((await readFile(join(outdir, headWasm!))).equals(await readFile(HEAD_WASM))).toBe(true)
    const script = await readFile(join(outdir, 'index.js'), 'utf8')
    for (const f of wasm) expect(script).toContain(`from "./${f}"`)
    // the model is never bundled: it comes from R2
    expect(script.length).toBeLessThan(2 * MiB)
  })

  it("stays inside the paid plan's 10 MiB after gzip (and says where the free plan's 3 MiB stands)", async () => {
    const reported = /Total Upload: ([\d.]+) KiB \/ gzip: ([\d.]+) KiB/.exec(output)
    expect(reported, output).not.toBeNull()
    const [rawKiB, gzipKiB] = [Number(reported![1]), Number(reported![2])]

    const sizes: string[] = []
    let raw = 0
    let gzip = 0
    for (const file of [
      'index.js',
      ...(await readdir(outdir)).filter((f) => f.endsWith('.wasm')),
    ]) {
      const bytes = await readFile(join(outdir, file))
      const zipped = gzipSync(bytes).byteLength
      raw += bytes.byteLength
      gzip += zipped
      sizes.push(`  ${file}: ${kib(bytes.byteLength)} raw, ${kib(zipped)} gzip`)
    }
    expect(Math.abs(raw / 1024 - rawKiB)).toBeLessThan(1) // wrangler counts what we count
    expect(gzipKiB * 1024).toBeLessThan(PAID_PLAN_LIMIT)
    expect(gzip).toBeLessThan(PAID_PLAN_LIMIT)
    const free = gzipKiB * 1024 <= FREE_PLAN_LIMIT ? 'fits' : 'does NOT fit'
    console.log(
      [
        `Worker bundle: ${kib(raw)} raw, ${kib(gzip)} gzip (wrangler: ${rawKiB} KiB / gzip ${gzipKiB} KiB)`,
        ...sizes,
        `paid plan (10 MiB gzip): fits; free plan (3 MiB gzip): ${free}`,
      ].join('\n'),
    )
  })
})

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`
}
