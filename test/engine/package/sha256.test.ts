import { randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { nodeSha256 } from '../../../src/adapters/node/sha256.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import {
  installSha256,
  Sha256,
  sha256Hex,
  type Sha256Hash,
} from '../../../src/engine/package/sha256.ts'
import { makeFakePackage, memorySource } from './fake-package.ts'

async function webCrypto(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))
  return Buffer.from(digest).toString('hex')
}

// around the padding's edges (55: the length still fits the block, 56: it does not) and a
// length that is no multiple of a block
const LENGTHS = [0, 1, 55, 56, 63, 64, 65, 119, 120, (1 << 20) + 3]

// the loader's own hash, and node:crypto's that the Node and Deno adapters install
const HASHES: Array<[string, () => Sha256Hash]> = [
  ['the TypeScript one', () => new Sha256()],
  ["the adapters' node:crypto one", nodeSha256],
]

afterEach(() => installSha256(() => new Sha256()))

describe('sha256', () => {
  for (const [name, create] of HASHES) {
    it(`${name}: agrees with WebCrypto on random bytes of every length around a block`, async () => {
      installSha256(create)
      for (const length of LENGTHS) {
        const bytes = new Uint8Array(randomBytes(length))
        expect(sha256Hex(bytes), `${length} bytes`).toBe(await webCrypto(bytes))
      }
    })

    it(`${name}: gives the same digest however the bytes are cut into updates`, async () => {
      const bytes = new Uint8Array(randomBytes((1 << 20) + 3))
      const expected = await webCrypto(bytes)
      for (const piece of [1, 7, 63, 64, 65, 4096, 65_537]) {
        const hash = create()
        for (let at = 0; at < bytes.byteLength; at += piece)
          hash.update(bytes.subarray(at, at + piece))
        expect(hash.hex(), `pieces of ${piece}`).toBe(expected)
      }
    })
  }

  it('the loader verifies shards with the installed hash, and a wrong shard still fails', async () => {
    let updates = 0
    installSha256(() => {
      const hash = nodeSha256()
      return { update: (b) => (updates++, hash.update(b)), hex: () => hash.hex() }
    })
    // shards read whole, and streamed (hashed as their bytes arrive)
    for (const streaming of [false, true]) {
      const pkg = makeFakePackage()
      updates = 0
      const loaded = await loadPackage(memorySource(pkg.objects, { streaming }), pkg.id)
      expect(Buffer.from(loaded.externalData[0].data).equals(Buffer.from(pkg.data))).toBe(true)
      expect(updates, `streaming: ${streaming}`).toBeGreaterThanOrEqual(
        pkg.manifest.stages[0].externalData[0].shards.length,
      )
      pkg.objects.get(`${pkg.id}/model.onnx_data.003`)![100] ^= 0xff
      await expect(
        loadPackage(memorySource(pkg.objects, { streaming }), pkg.id, { retryDelayMs: 1 }),
      ).rejects.toThrow(/Checksum mismatch in fake\/model\.onnx_data\.003/)
    }
  })
})
