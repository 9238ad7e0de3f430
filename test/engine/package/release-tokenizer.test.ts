/**
 * tokenizer.json is let go once the engine has built its tokenizer, before the weights stream
 * in. The handle holds it as bytes (11 MB for Qwen; the tokenizer reads them without parsing
 * the vocabulary into JS objects, text/tokenizer-json.ts); when it held the parsed JSON, that
 * was tens of MB of JS objects held through the whole load.
 */
import { join } from 'node:path'
import { expect, it } from 'vitest'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import { openPackage } from '../../../src/engine/package/loader.ts'
import { REPO_ROOT } from '../../helpers/models.ts'

it('builds the tokenizer, then lets the handle drop tokenizer.json', async () => {
  const handle = await openPackage(
    fsSource(join(REPO_ROOT, 'model-shards')),
    'qwen2-tiny-random-q8',
  )
  // the precondition: it was read, as bytes
  expect(handle.tokenizerJson).toBeInstanceOf(Uint8Array)
  expect((handle.tokenizerJson as Uint8Array).byteLength).toBeGreaterThan(1_000_000)
  const engine = await QwenEngine.create(handle)
  expect(handle.tokenizerJson).toEqual({})
  // the engine's tokenizer does not need it any more
  expect(engine.tokenizer.tokenId('<|im_end|>')).toBe(151645)
  expect((await engine.classify('The food was cold.')).label).toMatch(/\S/)
})
