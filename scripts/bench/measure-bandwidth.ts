/**
 * Memory bandwidth of one thread: copy a 256 MiB buffer with TypedArray.set (a native memcpy),
 * best of N. Decode of a q8 model streams every weight byte once per token, so
 * bandwidth / weight bytes per token is the physical bound on tokens per second.
 */
import type { BandwidthResult } from './types.ts'

export function measureBandwidth(rounds: number, bytes = 256 * 2 ** 20): BandwidthResult {
  const src = new Uint8Array(bytes)
  for (let i = 0; i < bytes; i += 4096) src[i] = i & 0xff // touch every page
  const dst = new Uint8Array(bytes)
  dst.set(src) // fault in the destination
  let best = Infinity
  for (let r = 0; r < rounds; r++) {
    const s = performance.now()
    dst.set(src)
    best = Math.min(best, performance.now() - s)
  }
  return { bufferBytes: bytes, copyBytesPerS: bytes / (best / 1000), rounds }
}
