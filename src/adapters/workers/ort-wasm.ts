/**
 * onnxruntime-web on workerd. Workers may not compile WebAssembly from bytes at run time, and
 * ORT has no hook to hand it a compiled module, so: give ORT a small marker as its `wasmBinary`
 * and, when ORT instantiates that marker, instantiate the module wrangler precompiled instead.
 * Remove when onnxruntime-web accepts a `WebAssembly.Module` (env.wasm has no such option in 1.30).
 */
import wasmModule from 'onnxruntime-web/ort-wasm-simd-threaded.wasm'
import { ort } from '../../engine/index.ts'

const MARKER = new TextEncoder().encode('\0asmqwen-edge:precompiled')

function isMarker(source: unknown): boolean {
  const bytes =
    source instanceof Uint8Array
      ? source
      : source instanceof ArrayBuffer
        ? new Uint8Array(source)
        : undefined
  return (
    bytes !== undefined && bytes.length === MARKER.length && bytes.every((b, i) => b === MARKER[i])
  )
}

let installed = false

export function installPrecompiledOrtWasm(): void {
  if (installed) return
  installed = true
  const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (
    source: unknown,
    imports?: WebAssembly.Imports,
  ) => Promise<unknown>
  // ORT copies wasmBinary before instantiating, so the marker is recognised by content.
  ;(WebAssembly as { instantiate: unknown }).instantiate = async (
    source: unknown,
    imports?: WebAssembly.Imports,
  ) => {
    if (!isMarker(source)) return instantiate(source, imports)
    const instance = await WebAssembly.instantiate(wasmModule, imports)
    return { instance, module: wasmModule }
  }
  ort.env.wasm.wasmBinary = MARKER
}
