/**
 * The parsed tokenizer.json is let go once the engine has built its tokenizer, before the
 * weights stream in: tens of MB of JS objects for Qwen's vocabulary that were held through the
 * whole load (measured on Deno with a 0.5B q4 package: about 60 MiB off the peak RSS).
 */
import { join } from 'node:path'
import { expect, it } from 'vitest'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import { openPackage } from '../../../src/engine/package/loader.ts'
import { REPO_ROOT } from '../../helpers/models.ts'

it('builds the tokenizer, then lets the handle drop the parsed tokenizer.json', async () => {
  const handle = await openPackage(
    fsSource(join(REPO_ROOT, 'model-shards')),
    'qwen2-tiny-random-q8',
  )
  expect(Object.keys(handle.tokenizerJson)).toContain('model') // the precondition: it was read
  const engine = await QwenEngine.create(handle)
  expect(handle.tokenizerJson).toEqual({})
  // the engine's tokenizer does not need it any more
  expect(engine.tokenizer.tokenId('<|im_end|>')).toBe(151645)
  expect((await engine.classify('The food was cold.')).label).toMatch(/\S/)
})
