/**
 * Test-only stand-in for `import wasm from 'onnxruntime-web/ort-wasm-simd-threaded.wasm'` in
 * src/adapters/workers/ort-wasm.ts (vitest.workers.config.ts aliases the specifier here).
 *
 * Why: vitest-pool-workers 0.15.1 does load the real import as a compiled Wasm module, but it
 * ships the module through its module-fallback service as JSON (`Array.from(bytes)`), which
 * takes ~18 s for ORT's 14 MB wasm in every test file's fresh runtime. Here the same file
 * arrives as bytes over a service binding (~1 s) and is compiled by the pool's own unsafe-eval
 * binding (~0.1 s): the adapter gets the same kind of object, a `WebAssembly.Module`, and its
 * marker hook, ORT and the engine run unchanged. How wrangler bundles the real import is
 * checked by test/workers/node/dry-run.test.ts. Remove when the pool sends Wasm as binary.
 */
import { env } from 'cloudflare:workers'

const newWasmModule = env.__VITEST_POOL_WORKERS_UNSAFE_EVAL?.newWasmModule?.bind(
  env.__VITEST_POOL_WORKERS_UNSAFE_EVAL,
)
if (!newWasmModule) {
  throw new Error(
    'vitest-pool-workers no longer exposes its unsafe-eval binding: drop the ' +
      "'onnxruntime-web/ort-wasm-simd-threaded.wasm' alias in vitest.workers.config.ts " +
      '(the real import works, only slower)',
  )
}
const res = await env.HOST_FILES.fetch('http://host/ort-wasm')
if (!res.ok)
  throw new Error(`cannot read onnxruntime-web's wasm: ${res.status} ${await res.text()}`)
const wasmModule: WebAssembly.Module = newWasmModule(new Uint8Array(await res.arrayBuffer()))

export default wasmModule
