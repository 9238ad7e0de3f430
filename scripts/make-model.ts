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
  PRESETS,
  WEIGHT_FORMATS,
  isPresetName,
  type ModelDims,
  type WeightDistribution,
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
      help:
        'shapes (required): tiny, tiny-mha, small (4 layers, hidden 256), qwen2.5-0.5b ' +
        "(Qwen2.5-0.5B-Instruct's), qwen1.5-0.5b; tiny-outliers, small-outliers, " +
        'qwen2.5-0.5b-outliers: the same shapes with weights drawn like a trained model (heavy ' +
        'tails, 3 outlier channels at 40x, logit entropy of a few nats); small-spread, ' +
        'qwen2.5-0.5b-spread: the same without the outlier channels (the control)',
    },
    format: {
      type: 'string',
      arg: '<fp32|q8|q4>',
      default: 'fp32',
      help: "weights format (q8: uint8 DynamicQuantizeMatMul; q4: MatMulNBits in symmetric blocks of 32, zero point 8, as onnx-community's q4 files)",
    },
    out: { type: 'string', arg: '<dir>', help: 'output folder (required)' },
    seed: { type: 'string', arg: '<n>', default: '0', help: 'PRNG seed' },
    'logits-to-keep': {
      type: 'boolean',
      default: true,
      help: 'give the graph the num_logits_to_keep input',
    },
    'embedding-table': {
      type: 'boolean',
      help:
        'q4 / q8: the embedding as its own float32 table (a Gather) beside the quantized ' +
        "lm_head, as exporters write a tied model (onnx-community's model_q4.onnx)",
      default: false,
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
    outliers: {
      type: 'string',
      arg: '<count>x<gain>',
      help:
        'hidden channels whose layer-norm weights are <gain> times larger, in every layer ' +
        '(3x40: three channels at 40x; 0: none)',
      defaultHelp: "the preset's",
    },
    'tail-dof': {
      type: 'string',
      arg: '<n>',
      help: 'Student-t degrees of freedom of the matrices (heavy tails; 0: uniform)',
      defaultHelp: "the preset's",
    },
    'logit-scale': {
      type: 'string',
      arg: '<x>',
      help: "the final norm's weights times <x>: a wider logit spread",
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
    'npm run model:make -- --preset small-outliers --format q4 --out .cache/models/small-outliers-q4',
  ],
} as const

function main() {
  const { values } = parseCli(MAKE_MODEL_CLI)
  const preset = String(values.preset ?? '')
  const format = String(values.format) as WeightFormat
  if (!isPresetName(preset)) throw new Error(`--preset: ${Object.keys(PRESETS).join(', ')}`)
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

  const distribution: WeightDistribution = {}
  if (values.outliers !== undefined) {
    const m = /^(\d+)(?:x([\d.]+))?$/.exec(values.outliers)
    if (!m || (m[1] !== '0' && !m[2]))
      throw new Error(`--outliers: <count>x<gain> (3x40) or 0, got ${values.outliers}`)
    distribution.outliers = { count: Number(m[1]), gain: Number(m[2] ?? 1) }
  }
  if (values['tail-dof'] !== undefined) {
    const dof = Number(values['tail-dof'])
    if (!Number.isFinite(dof)) throw new Error(`--tail-dof must be a number`)
    distribution.tailDof = dof === 0 ? undefined : dof
  }
  if (values['logit-scale'] !== undefined) distribution.logitScale = Number(values['logit-scale'])

  const started = performance.now()
  const made = makeModel({
    preset,
    format,
    outDir: values.out,
    seed,
    logitsToKeep: values['logits-to-keep'],
    embeddingTable: values['embedding-table'],
    externalData: values['external-data'],
    overrides,
    distribution,
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
