import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { Sha256, sha256Hex } from '../../../src/engine/package/sha256.ts'

async function webCrypto(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))
  return Buffer.from(digest).toString('hex')
}

// around the padding's edges (55: the length still fits the block, 56: it does not) and a
// length that is no multiple of a block
const LENGTHS = [0, 1, 55, 56, 63, 64, 65, 119, 120, (1 << 20) + 3]

describe('sha256', () => {
  it('agrees with WebCrypto on random bytes of every length around a block', async () => {
    for (const length of LENGTHS) {
      const bytes = new Uint8Array(randomBytes(length))
      expect(sha256Hex(bytes), `${length} bytes`).toBe(await webCrypto(bytes))
    }
  })

  it('gives the same digest however the bytes are cut into updates', async () => {
    const bytes = new Uint8Array(randomBytes((1 << 20) + 3))
    const expected = await webCrypto(bytes)
    for (const piece of [1, 7, 63, 64, 65, 4096, 65_537]) {
      const hash = new Sha256()
      for (let at = 0; at < bytes.byteLength; at += piece)
        hash.update(bytes.subarray(at, at + piece))
      expect(hash.hex(), `pieces of ${piece}`).toBe(expected)
    }
  })
})
