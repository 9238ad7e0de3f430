/**
 * What re-padding the KV caches costs a batched decode step (model.ts `forwardBatch`): 4
 * sequences with `--cached` tokens each decode side by side, one copy of them through the
 * same-batch path (each run fed the last run's present as it is), the other through the path a
 * changed batch takes (every row cut out of the last present and padded into a new past). The
 * two alternate step by step in one process, in both orders, so machine noise hits them alike;
 * the ratio is the median of the per-pair ratios. Their logits must stay identical.
 *
 *   npx tsx scripts/bench/batch-kv.ts [--cached 512] [--pairs 16]
 *
 * Reads the bench's engine package (.cache/bench/packages/, made by `npm run bench`).
 */
import { existsSync } from 'node:fs'
import { basename, join } from 'node:path'
import { parseArgs } from 'node:util'
import { fsSource } from '../../src/adapters/node/fs-source.ts'
import type { StepResult } from '../../src/engine/forward.ts'
import { QwenModel } from '../../src/engine/graph/model.ts'
import type { KvCache } from '../../src/engine/kv/kv-cache.ts'
import { loadPackage } from '../../src/engine/package/loader.ts'
import { isMain, runMain } from '../lib/cli.ts'
import { BENCH_MODEL_ID, PACKAGES_DIR } from './model-cache.ts'
import { median } from './stats.ts'

const TOKENS = [1, 2, 3, 4]

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      cached: { type: 'string', default: '512' },
      pairs: { type: 'string', default: '16' },
    },
  })
  const cached = Number(values.cached)
  const pairs = Number(values.pairs)
  const dir = join(PACKAGES_DIR, BENCH_MODEL_ID)
  if (!existsSync(join(dir, 'manifest.json'))) throw new Error(`no ${dir}: run npm run bench first`)
  const model = await QwenModel.load(await loadPackage(fsSource(PACKAGES_DIR), basename(dir)))

  console.error(`prefilling 4 sequences of ${cached} tokens…`)
  const start: KvCache[] = []
  for (let s = 0; s < TOKENS.length; s++) {
    const ids = Array.from({ length: cached }, (_, i) => 1000 + ((i * 7 + s * 13) % 5000))
    let c = model.emptyCache()
    for (let at = 0; at < cached; at += 128)
      c = (await model.forward(ids.slice(at, at + 128), c, 0)).cache
    start.push(c)
  }

  let same = start
  let repadded = start
  let last: { same: StepResult[]; repadded: StepResult[] } = { same: [], repadded: [] }
  const stepSame = async () => {
    const t = performance.now()
    last.same = await model.forwardBatch(TOKENS, same)
    same = last.same.map((r) => r.cache)
    return performance.now() - t
  }
  const stepRepadded = async () => {
    const t = performance.now()
    // plain objects are never "the same batch": every run cuts the rows out and pads them again
    const plain = repadded.map((c) => ({ length: c.length, tensors: c.tensors }))
    last.repadded = await model.forwardBatch(TOKENS, plain)
    repadded = last.repadded.map((r) => r.cache)
    return performance.now() - t
  }
  await stepSame()
  await stepRepadded()
  const ms = { same: [] as number[], repadded: [] as number[] }
  const ratios: number[] = []
  for (let i = 0; i < pairs; i++) {
    let a: number
    let b: number
    if (i % 2) {
      b = await stepRepadded()
      a = await stepSame()
    } else {
      a = await stepSame()
      b = await stepRepadded()
    }
    ms.same.push(a)
    ms.repadded.push(b)
    ratios.push(b / a)
  }
  let diff = 0
  for (let r = 0; r < TOKENS.length; r++) {
    const x = last.same[r].logits
    const y = last.repadded[r].logits
    for (let i = 0; i < x.length; i++) diff = Math.max(diff, Math.abs(x[i] - y[i]))
  }
  console.log(
    `4 sequences, ${cached} cached tokens: batched step ${median(ms.same).toFixed(1)} ms ` +
      `(same batch) vs ${median(ms.repadded).toFixed(1)} ms (re-padded); ` +
      `median of paired ratios ${median(ratios).toFixed(2)}x; max |Δlogit| ${diff}`,
  )
  last = { same: [], repadded: [] }
  await model.release()
}

if (isMain(import.meta.url)) runMain(main)
