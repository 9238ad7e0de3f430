/**
 * Generate a synthetic (random-weight) Qwen2 model folder in Hugging Face layout.
 *
 *   npm run model:make -- --preset tiny --format q8 --out .cache/models/tiny-q8
 *
 * `--help` lists the options (MAKE_MODEL_CLI below).
 */
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { isMain, parseCli, type CliOption } from './lib/cli.ts'
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

export const MAKE_MODEL_CLI = {
  name: 'model:make',
  command: 'npm run model:make --',
  usage: ['npm run model:make -- --preset <name> --out <dir> [options]'],
  summary: [
    'Generates a synthetic (random-weight) Qwen2 model folder in Hugging Face layout: config.json,',
    'generation_config.json, the tokenizer files and onnx/model[_quantized|_q4].onnx. Same',
    'arguments, same bytes.',
  ],
  allowNegative: true,
  options: {
    preset: {
      type: 'string',
      arg: '<name>',
      help: "shapes (required): tiny, tiny-mha, qwen2.5-0.5b (Qwen2.5-0.5B-Instruct's), qwen1.5-0.5b",
    },
    format: { type: 'string', arg: '<fp32|q8|q4>', default: 'fp32', help: 'weights format' },
    out: { type: 'string', arg: '<dir>', help: 'output folder (required)' },
    seed: { type: 'string', arg: '<n>', default: '0', help: 'PRNG seed' },
    'logits-to-keep': {
      type: 'boolean',
      default: true,
      help: 'give the graph the num_logits_to_keep input',
    },
    'external-data': {
      type: 'boolean',
      help: 'weights in an external data file, or inside the .onnx',
      defaultHelp: 'external above 1 GiB',
    },
    'qkv-bias': {
      type: 'boolean',
      help: 'bias on the q/k/v projections',
      defaultHelp: "the preset's",
    },
    'tie-word-embeddings': {
      type: 'boolean',
      help: 'lm_head shares the embedding matrix',
      defaultHelp: "the preset's",
    },
    ...Object.fromEntries(
      Object.keys(NUMERIC_OVERRIDES).map((k): [string, CliOption] => [
        k,
        { type: 'string', arg: '<n>', help: `override the preset's ${k.replaceAll('-', ' ')}` },
      ]),
    ),
  },
  examples: [
    'npm run model:make -- --preset tiny --format q8 --out .cache/models/tiny-q8',
    'npm run model:make -- --preset tiny-mha --format q4 --num-layers 1 --out /tmp/m --no-logits-to-keep',
  ],
} as const

function main() {
  const { values } = parseCli(MAKE_MODEL_CLI)
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

if (isMain(import.meta.url)) {
  try {
    main()
  } catch (err) {
    console.error(`make-model: ${(err as Error).message}`)
    process.exit(1)
  }
}
