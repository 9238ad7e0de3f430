/**
 * node:crypto's SHA-256 for the package loader (`installSha256`): incremental and native, about
 * 1 GB/s where the loader's own TypeScript hash does about 200 MB/s (engine/package/sha256.ts).
 * Deno implements node:crypto natively too, and its adapter installs this one as well.
 */
// @ts-ignore: Deno's adapter imports this file, and its type check (tsconfig.runtime.json) has
// no Node types; the one call used is typed below
import { createHash } from 'node:crypto'
import type { Sha256Hash } from '../../engine/index.ts'

interface NodeHash {
  update(bytes: Uint8Array): unknown
  digest(encoding: 'hex'): string
}

export function nodeSha256(): Sha256Hash {
  const hash: NodeHash = createHash('sha256')
  return {
    update: (bytes) => hash.update(bytes),
    hex: () => hash.digest('hex'),
  }
}
