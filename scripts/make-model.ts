/**
 * Generate a synthetic (random-weight) Qwen2 model folder in Hugging Face layout.
 *
 *   npm run model:make -- --preset tiny --format q8 --out .cache/models/tiny-q8
 *
 * Options
 *   --preset <tiny|tiny-mha|qwen2.5-0.5b|qwen1.5-0.5b>   shapes (required)
 *   --format <fp32|q8|q4>                                 weights format (default fp32)
 *   --out <dir>                                           output folder (required)
 *   --seed <n>                                            PRNG seed (default 0)
 *   --[no-]logits-to-keep                                 num_logits_to_keep input (default on)
 *   --[no-]external-data                                  force weights in/out of the .onnx
 *                                                         (default: external above 1 GiB)
 *   overrides: --vocab-size --hidden-size --intermediate-size --num-layers --num-heads
 *              --num-kv-heads --head-dim --rms-norm-eps --rope-theta
 *              --max-position-embeddings --[no-]qkv-bias --[no-]tie-word-embeddings
 */
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import {
  WEIGHT_FORMATS,
  isPresetName,
  type ModelDims,
  type WeightFormat,
} from './lib/model-presets.ts'
import { makeModel } from './lib/synth-model.ts'

const NUMERIC_OVERRIDES: Record<string, keyof ModelDims> = {
  'vocab-size': 'vocabSize',
  'hidden-size': 'hiddenSize',
  'intermediate-size': 'intermediateSize',
  'num-layers': 'numLayers',
  'num-heads': 'numHeads',
  'num-kv-heads': 'numKvHeads',
  'head-dim': 'headDim',
  'rms-norm-eps': 'rmsNormEps',
  'rope-theta': 'ropeTheta',
  'max-position-embeddings': 'maxPositionEmbeddings',
}

function main() {
  const { values } = parseArgs({
    allowNegative: true,
    options: {
      preset: { type: 'string' },
      format: { type: 'string', default: 'fp32' },
      out: { type: 'string' },
      seed: { type: 'string', default: '0' },
      'logits-to-keep': { type: 'boolean', default: true },
      'external-data': { type: 'boolean' },
      'qkv-bias': { type: 'boolean' },
      'tie-word-embeddings': { type: 'boolean' },
      ...Object.fromEntries(Object.keys(NUMERIC_OVERRIDES).map((k) => [k, { type: 'string' }])),
    } as const,
  })
  const preset = String(values.preset ?? '')
  const format = String(values.format) as WeightFormat
  if (!isPresetName(preset))
    throw new Error(`--preset: tiny, tiny-mha, qwen2.5-0.5b or qwen1.5-0.5b`)
  if (!WEIGHT_FORMATS.includes(format)) throw new Error(`--format: ${WEIGHT_FORMATS.join(', ')}`)
  if (!values.out) throw new Error('--out <dir> is required')
  const seed = Number(values.seed)
  if (!Number.isSafeInteger(seed)) throw new Error(`--seed must be an integer, got ${values.seed}`)

  const overrides: Partial<ModelDims> = {}
  const raw = values as Record<string, string | boolean | undefined>
  for (const [flag, key] of Object.entries(NUMERIC_OVERRIDES)) {
    if (raw[flag] === undefined) continue
    const n = Number(raw[flag])
    if (!Number.isFinite(n)) throw new Error(`--${flag} must be a number, got ${raw[flag]}`)
    Object.assign(overrides, { [key]: n })
  }
  if (values['qkv-bias'] !== undefined) overrides.qkvBias = values['qkv-bias']
  if (values['tie-word-embeddings'] !== undefined)
    overrides.tieWordEmbeddings = values['tie-word-embeddings']

  const started = performance.now()
  const made = makeModel({
    preset,
    format,
    outDir: values.out,
    seed,
    logitsToKeep: values['logits-to-keep'],
    externalData: values['external-data'],
    overrides,
  })
  const seconds = ((performance.now() - started) / 1000).toFixed(1)
  console.log(`${preset} ${format} seed ${seed} → ${made.dir} in ${seconds} s`)
  for (const file of made.files) {
    const mb = statSync(join(made.dir, file)).size / 1e6
    console.log(`  ${file.padEnd(32)} ${mb.toFixed(1).padStart(9)} MB`)
  }
}

try {
  main()
} catch (err) {
  console.error(`make-model: ${(err as Error).message}`)
  process.exit(1)
}
