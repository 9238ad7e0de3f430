/**
 * Gives an ArrayBuffer's memory back now rather than at the next garbage collection.
 *
 * A dropped ArrayBuffer's memory is freed only when the collector finds it, and V8 starts a
 * collection for ArrayBuffers only after tens of MB of them have piled up: the logits of every
 * decode step (600 KB a sequence at Qwen's vocabulary) or the 16 MiB shard buffers of a load
 * stay in the process, in RSS, until then. Detaching a buffer (`transfer(0)`) frees its memory
 * at once (measured on Deno: 100 buffers of 2.4 MB, 235 MB of RSS, back in the same tick).
 *
 * Only for buffers nothing else uses: every view of it becomes empty. Runtimes without
 * `transfer` (Node 20) and buffers that cannot be detached (a WASM memory's) are left to the
 * collector.
 */
export function freeBuffer(buffer: ArrayBufferLike): void {
  const b = buffer as ArrayBuffer & {
    transfer?: (length: number) => ArrayBuffer
    detached?: boolean
  }
  if (typeof b.transfer !== 'function' || b.detached || b.byteLength === 0) return
  try {
    b.transfer(0)
  } catch {
    // not detachable: the collector frees it
  }
}
