/**
 * Counts the WebAssembly memory of this isolate: onnxruntime-web's heap and the engine's
 * kernels. ORT creates its memory inside its module and offers no hook, so this wraps
 * WebAssembly.instantiate and keeps every memory an instance exports or imports. It is
 * installed when this module is first imported (ort.ts imports it before onnxruntime-web).
 * WASM memory never shrinks: the current size is also the peak.
 */
const memories = new Set<WebAssembly.Memory>()

const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (
  ...a: unknown[]
) => Promise<WebAssembly.WebAssemblyInstantiatedSource | WebAssembly.Instance>

;(WebAssembly as { instantiate: unknown }).instantiate = async (...a: unknown[]) => {
  const result = await instantiate(...a)
  const instance = 'instance' in result ? result.instance : result
  for (const v of Object.values(instance.exports)) {
    if (v instanceof WebAssembly.Memory) memories.add(v)
  }
  const imports = a[1] as Record<string, Record<string, unknown>> | undefined
  for (const ns of Object.values(imports ?? {})) {
    for (const v of Object.values(ns)) if (v instanceof WebAssembly.Memory) memories.add(v)
  }
  return result
}

/** Bytes of every WASM memory instantiated in this isolate so far. */
export function wasmMemoryBytes(): number {
  let n = 0
  for (const m of memories) n += m.buffer.byteLength
  return n
}
