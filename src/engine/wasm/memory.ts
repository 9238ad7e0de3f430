/**
 * Counts the WebAssembly memory of this isolate: onnxruntime-web's heap and the engine's
 * kernels. ORT creates its memory inside its module and offers no hook, so this wraps
 * WebAssembly.instantiate and keeps every memory an instance exports or imports. It is
 * installed when this module is first imported (ort.ts imports it before onnxruntime-web).
 * It holds them weakly: counting a memory must not keep it alive.
 * WASM memory never shrinks: the current size is also the peak.
 */
const memories = new Set<WeakRef<WebAssembly.Memory>>()
const seen = new WeakSet<WebAssembly.Memory>()

function track(m: WebAssembly.Memory): void {
  if (seen.has(m)) return
  seen.add(m)
  memories.add(new WeakRef(m))
}

const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (
  ...a: unknown[]
) => Promise<WebAssembly.WebAssemblyInstantiatedSource | WebAssembly.Instance>

;(WebAssembly as { instantiate: unknown }).instantiate = async (...a: unknown[]) => {
  const result = await instantiate(...a)
  const instance = 'instance' in result ? result.instance : result
  for (const v of Object.values(instance.exports)) {
    if (v instanceof WebAssembly.Memory) track(v)
  }
  const imports = a[1] as Record<string, Record<string, unknown>> | undefined
  for (const ns of Object.values(imports ?? {})) {
    for (const v of Object.values(ns)) if (v instanceof WebAssembly.Memory) track(v)
  }
  return result
}

/**
 * Bytes of every WASM memory of this isolate still alive (held weakly: a model or stage that
 * was dropped, after a failed load or an eviction, is not kept alive by being counted).
 */
export function wasmMemoryBytes(): number {
  let n = 0
  for (const ref of memories) {
    const m = ref.deref()
    if (m) n += m.buffer.byteLength
    else memories.delete(ref)
  }
  return n
}
