/**
 * Watches every WebAssembly.Memory that WASM modules create or import, by wrapping
 * WebAssembly.instantiate. Import this module before onnxruntime-web: ORT offers no hook of its
 * own, and its memory is created inside the module. WASM memory never shrinks, so the current
 * size is also the peak.
 */
const memories = new Set<WebAssembly.Memory>()

const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (
  ...a: unknown[]
) => Promise<WebAssembly.WebAssemblyInstantiatedSource | WebAssembly.Instance>

;(WebAssembly as { instantiate: unknown }).instantiate = async (...a: unknown[]) => {
  const result = await instantiate(...a)
  const instance = 'instance' in result ? result.instance : result
  for (const v of Object.values(instance.exports))
    if (v instanceof WebAssembly.Memory) memories.add(v)
  const imports = a[1] as Record<string, Record<string, unknown>> | undefined
  for (const ns of Object.values(imports ?? {}))
    for (const v of Object.values(ns)) if (v instanceof WebAssembly.Memory) memories.add(v)
  return result
}

/** Bytes of all WASM memories seen so far. */
export function wasmMemoryBytes(): number {
  let n = 0
  for (const m of memories) n += m.buffer.byteLength
  return n
}
