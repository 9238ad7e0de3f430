/**
 * A Node-side service binding for the `workers` vitest project: serves, read-only, the files
 * the tests inside workerd need from the host's disk. workerd has no access to the repo, and
 * vitest-pool-workers 0.15.1 offers no hook to fill miniflare's R2 from Node before the tests,
 * so the tests fetch the package through this binding and put it into the R2 binding
 * themselves (test/workers/seed.ts).
 *
 *   GET /model-shards/<id>/<file>   a file of a model package
 *   GET /packages/<id>/<file>       a file of a package the global setup prepared
 *   GET /ort-wasm                   onnxruntime-web's wasm (see test/workers/ort-wasm-module.ts)
 */
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Response } from 'miniflare'

export const MODEL_SHARDS_DIR = fileURLToPath(new URL('../../../model-shards', import.meta.url))
/** Packages the workers project's global setup prepares (test/workers/fixtures.ts). */
export const TEST_PACKAGES_DIR = fileURLToPath(
  new URL('../../../.cache/test-packages', import.meta.url),
)
export const ORT_WASM_FILE = createRequire(import.meta.url).resolve(
  'onnxruntime-web/ort-wasm-simd-threaded.wasm',
)

export async function serveHostFile(request: { url: string }): Promise<Response> {
  const { pathname } = new URL(request.url)
  let file: string | undefined
  if (pathname === '/ort-wasm') file = ORT_WASM_FILE
  else
    for (const [prefix, dir] of [
      ['/model-shards/', MODEL_SHARDS_DIR],
      ['/packages/', TEST_PACKAGES_DIR],
    ] as const)
      if (pathname.startsWith(prefix)) {
        const path = resolve(dir, decodeURIComponent(pathname.slice(prefix.length)))
        if (path.startsWith(dir + sep)) file = path
      }
  if (!file) return new Response(`no such host file: ${pathname}`, { status: 404 })
  try {
    return new Response(await readFile(file))
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
    return new Response(`${pathname}: ${(err as Error).message}`, { status: missing ? 404 : 500 })
  }
}
