/**
 * The engine's own forward step (QwenModel: feeds from inputNames, KV cache carried between
 * steps, last-position logits) against the TypeScript reference, on both graph variants.
 */
import { describe, expect, it } from 'vitest'
import { resolveDims, type PresetName } from '../../../scripts/lib/model-presets.ts'
import { synthesizeWeights } from '../../../scripts/lib/synth-weights.ts'
import { loadHfFolder } from '../../../src/adapters/node/hf-folder.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import { ensureModel } from '../../helpers/models.ts'
import { Qwen2Reference } from '../../reference/qwen2-reference.ts'
import { maxAbsDiff } from '../../helpers/numeric.ts'

const PROMPT = [151644, 872, 198, 108386, 3837, 99489, 6313] // <|im_start|>user\n你好，世界！
const STEPS = [151645, 198, 151644]

describe.each<[PresetName, boolean]>([
  ['tiny', true],
  ['tiny-mha', true],
  ['tiny', false],
])('QwenModel on %s (num_logits_to_keep: %s)', (preset, logitsToKeep) => {
  it('matches the reference for a prompt and 3 cached decode steps within 1e-4', async () => {
    const dir = await ensureModel(preset, 'fp32', logitsToKeep ? {} : { logitsToKeep: false })
    const model = await QwenModel.load(await loadHfFolder(dir))
    const dims = resolveDims(preset)
    const reference = new Qwen2Reference(dims, synthesizeWeights(dims, 0, 'fp32'))
    const refCache = reference.emptyCache()

    let step = await model.forward(PROMPT, model.emptyCache())
    expect(step.rows).toBe(1)
    expect(maxAbsDiff(step.logits, reference.forward(PROMPT, refCache).at(-1)!)).toBeLessThan(1e-4)
    for (const id of STEPS) {
      const before = step.cache
      step = await model.forward([id], step.cache)
      expect(step.cache.length).toBe(before.length + 1)
      expect(maxAbsDiff(step.logits, reference.forward([id], refCache)[0])).toBeLessThan(1e-4)
    }
    await model.release()
  })
})
