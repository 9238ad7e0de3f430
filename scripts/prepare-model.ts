/**
 * Turns a Hugging Face layout export into a model package (src/format, README "Model packages"):
 *
 *   npm run model:prepare -- <hf-folder> --id <id> [--file onnx/<name>.onnx] [--shard-mb 16]
 *                            [--out model-shards] [--format keep|q8] [--no-logits-rewrite]
 *                            [--head wasm|graph] [--head-format q4|q8] [--embedding head|graph]
 *                            [--decoder wasm|graph]
 *                            [--q4-scheme asymmetric|symmetric] [--no-awq] [--no-verify]
 *
 * Input: config.json, optional generation_config.json, tokenizer.json, tokenizer_config.json and
 * an ONNX decoder with the Optimum signature under onnx/ (default pick: model_quantized.onnx,
 * then model.onnx, then the only one), weights embedded or in external data files.
 * Output: `<out>/<id>/` with the graph (every initializer of 1 KiB or more moved to ONE external
 * data file), that data file cut into shards, the head file `head.q8` cut the same way when the
 * lm_head was split off (below), the tokenizer files and manifest.json.
 *
 * Alignment: onnxruntime-web copies each initializer out of the mounted data (HEAPU8.set), so it
 * needs none; offsets are still 64-byte aligned, and those of tensors over 1 MiB 4096-byte
 * aligned as ORT's own external-data writer does, so native ORT can mmap the same data file.
 *
 * Transforms (prepare-time, so any Optimum-style Qwen2 export becomes the fast format for
 * onnxruntime-web's wasm backend):
 * - a q4f16 export kept as exported (a MatMulNBits with float16 scales, the head split asked
 *   for) is widened to float32 first, every tensor exactly (lib/graph-rewrite.ts);
 * - logits rewrite (CLI default; `--no-logits-rewrite`): an export without `num_logits_to_keep`
 *   gains it, and its lm_head runs on the last n positions only (lib/graph-rewrite.ts);
 * - `--format q8`: fp32, fp16 and q4 (`MatMulNBits`) weights become the generator's uint8
 *   `DynamicQuantizeMatMul` form (lib/quantize.ts); the graph is then `model_quantized.onnx`.
 *   `--format q4`: fp32 and fp16 weights become 4-bit `MatMulNBits` in blocks of 32, as a q4
 *   export (MatMulNBits already there is kept as exported); the graph is then `model_q4.onnx`.
 *   Before they are quantized, the matrices that read each norm are scaled by their input
 *   channels' size on calibration prompts and the norm divided by it (AWQ, lib/awq.ts;
 *   `--no-awq`: plain quantization). Blocks are asymmetric (a zero point each); `--q4-scheme
 *   symmetric` gives them all zero point 8, as onnx-community's q4 files (the kernels' faster
 *   path, for a larger rounding error).
 * - head split (`--head wasm`, the default; `--head graph` keeps the lm_head in the graph): when
 *   the prepared graph is in that q8 form, its lm_head (and a tied embedding) moves into
 *   `head.q8`, run by the engine's own kernel; a q4 export's MatMulNBits lm_head moves into
 *   `head.q4` with its 4-bit values as exported (`--head-format q8`: requantized per row into
 *   `head.q8`). The graph then ends in `hidden_states` (and takes `inputs_embeds` when tied),
 *   see lib/split-head.ts. Neither form: not applied, and the report says why.
 * - decoder map (`--decoder wasm`, the default; needs the head split): the operands of every
 *   decoder layer's DynamicQuantizeMatMul (or MatMulNBits) and its norm weights are found in the
 *   split graph and recorded in the manifest (`decoder`, byte ranges of the graph's own data file; the small
 *   tensors the graph keeps inline are copied into `decoder.bin`), so the engine can run decode
 *   steps with its own kernels, see lib/decoder-map.ts. Skipped, with the reason in the report,
 *   when the graph is not in that form.
 * After the q8 conversion or the logits rewrite, the last-position logits of the result are
 * compared with those of the input's fp32 graph on a fixed 16-token prompt (onnxruntime-node,
 * 1 thread; `--no-verify` skips it); after a head split, the graph before the split is compared
 * with the split graph plus the head rows over three steps; the decoder map is checked by
 * computing the layers from the mapped tensors in TypeScript against the split graph
 * (lib/decoder-check.ts), and left out of the manifest when they disagree (the package is
 * still whole: the graph runs every step). `prepare-report.json` next to the
 * manifest records what was done and the errors. The report is not listed in the manifest: the
 * engine never reads it.
 *
 * The output depends only on the input (no timestamps): preparing twice gives identical files,
 * so `model:upload` skips everything the second time.
 */
import { createHash } from 'node:crypto'
import { closeSync, createReadStream, openSync, readFileSync, renameSync, writeSync } from 'node:fs'
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { basename, dirname, join, relative, resolve, sep } from 'node:path'
import {
  DECODER_FILE,
  dequantizeBlocksQ4,
  quantizeBlocksQ4,
  Q4_BLOCK_SIZE,
  type Q4Scheme,
  roundActivationsLikeQ4Kernels,
  DEFAULT_SHARD_BYTES,
  headFileName,
  MANIFEST_FILE,
  planPipeline,
  decoderSymmetric,
  KV_FORMATS,
  type KvFormat,
  qwen2Shape,
  MANIFEST_VERSION,
  externalDataName,
  isValidPackageId,
  parseQwen2Config,
  parseManifest,
  shardName,
  type Qwen2Config,
  type DecoderEntry,
  type HeadFormat,
  type Manifest,
  type ManifestFile,
} from '../src/format/index.ts'
import { isMain, parseCli, runMain, usageError } from './lib/cli.ts'
import { applyAwq, AWQ_MIN_GAIN, CALIBRATION_QUESTIONS, type AwqReport } from './lib/awq.ts'
import { checkDecoder, type DecoderCheck } from './lib/decoder-check.ts'
import { findDecoder, mapDecoder, type DecoderNames } from './lib/decoder-map.ts'
import { addLogitsToKeep, convertFloatType, type LogitsRewrite } from './lib/graph-rewrite.ts'
import { checkLogits, type GraphRef, type LogitCheck } from './lib/logit-check.ts'
import {
  DataType,
  decodeModel,
  encodeModel,
  getExternalData,
  initializers,
  isExternal,
  setExternalData,
  setRawData,
  tensorByteLength,
  tensorRawData,
  type GraphProto,
  type ModelProto,
  type TensorProto,
} from './lib/onnx/index.ts'
import { progressBar } from './lib/progress.ts'
import { QwenTokenizer } from '../src/engine/text/tokenizer.ts'
import { convertWeights, dequantizeToFloat, type ConversionStats } from './lib/quantize.ts'
import {
  checkSplitHead,
  splitHead,
  tableRows,
  type HeadCheck,
  type HeadRows,
  type SplitHeadFormat,
  type SplitHeadStats,
} from './lib/split-head.ts'

/** Initializers smaller than this stay inside the graph (onnx's own default threshold). */
export const MIN_EXTERNAL_BYTES = 1024
const ALIGN = 64
const BIG_TENSOR = 1024 * 1024
const BIG_ALIGN = 4096
/** ONNX files the default pick tries, in order. */
export const ONNX_PICK_ORDER = ['onnx/model_quantized.onnx', 'onnx/model.onnx']
/** Written next to manifest.json when a transform ran; not part of the package. */
export const REPORT_FILE = 'prepare-report.json'

/** Largest KV cache difference the head split check accepts (measured: 0). */
const SPLIT_KV_TOLERANCE = 1e-5

export type PrepareFormat = 'keep' | 'q8' | 'q4'
/** 'wasm': split the lm_head off into a head file (q8 and q4 graphs); 'graph': keep it. */
export type PrepareHead = 'wasm' | 'graph'
/**
 * The head file of a MatMulNBits lm_head: 'q4' (default) its 4-bit rows as exported ('q4-b32',
 * head.q4: exact, 21 bytes per 32 inputs; 'q4s-b32', 20, when every zero point is 8); 'q8' those
 * rows requantized per row ('q8-rows', head.q8: one more rounding, 1.6x the bytes). A q8 graph's
 * head is 'q8-rows' either way.
 */
export type PrepareHeadFormat = SplitHeadFormat
/** A tied model's separate embedding table: read from the head rows ('head'), or kept ('graph'). */
export type PrepareEmbedding = 'head' | 'graph'
/**
 * 'wasm': record the decoder layers' tensors in the manifest (after a head split) so the engine
 * can run decode steps itself; 'graph': the graph runs every step.
 */
export type PrepareDecoder = 'wasm' | 'graph'

export interface PrepareOptions {
  /** The Hugging Face layout folder. */
  folder: string
  id: string
  /** The ONNX file, relative to `folder`; default: see ONNX_PICK_ORDER. */
  file?: string
  /** Where packages go; default model-shards. */
  out?: string
  shardBytes?: number
  quiet?: boolean
  /** Recorded in the manifest (model:fetch sets it). */
  source?: { repo?: string; revision?: string }
  /** 'keep' (default): weights as exported; 'q8': see lib/quantize.ts. */
  format?: PrepareFormat
  /**
   * Add `num_logits_to_keep` when the export has none. Default false here, so the package of
   * a call that does not ask is the export as is; the CLI turns it on.
   */
  logitsRewrite?: boolean
  /** After a transform, compare the logits with the input's fp32 graph. Default true. */
  verify?: boolean
  /**
   * `format: 'q4'` from float weights: scale the matrices that read each norm by their input
   * channels' calibrated size first (lib/awq.ts). Default true.
   */
  awq?: boolean
  /**
   * `format: 'q4'`: the blocks' scheme. 'asymmetric' (default: the lower error) or 'symmetric'
   * (zero point 8, as onnx-community's q4 files: the kernels' faster symmetric path).
   */
  q4Scheme?: Q4Scheme
  /** Where the lm_head runs; default 'wasm' (split off when the graph is in the q8 form). */
  head?: PrepareHead
  /** Default 'wasm': map the decoder layers when the head was split off. */
  decoder?: PrepareDecoder
  /** The rows of a MatMulNBits lm_head; default 'q4' (as exported). */
  headFormat?: PrepareHeadFormat
  /**
   * A tied model whose export keeps the embedding as its own float table (onnx-community's q4
   * files): 'head' (default) drops the table and reads the embedding from the head rows, when
   * they hold the same matrix (lib/split-head.ts); 'graph' keeps it (the decoder is then not
   * mapped).
   */
  embedding?: PrepareEmbedding
  /**
   * Split the package into stages of at most this many bytes each (src/format/pipeline.ts), for
   * isolates too small for the whole model; needs the head split and the decoder map. The
   * files stay the same; the manifest gains the plan. Shards default to 4 MiB then.
   */
  stageBudgetBytes?: number
  /** KV positions per sequence a layer stage plans for; default 2048. */
  stageContext?: number
  /** Sequences at full context a layer stage plans for; default 2. */
  stageSequences?: number
  /**
   * The KV cache format the plan counts, and its layer stages run unless KV_FORMAT says
   * otherwise; default 'f32'. 'q8' holds a position in about a quarter of the bytes.
   */
  stageKvFormat?: KvFormat
}

/** A staged package's shards: a stage loading 4 at a time holds 16 MiB in flight. */
const STAGED_SHARD_BYTES = 4 * 1024 * 1024
/** Prompt rows per forward run (the engine's default prefill chunk). */
const STAGE_CHUNK_ROWS = 128

/** What `prepare-report.json` holds. */
export interface PrepareReport {
  /** The ONNX file prepared, relative to the folder. */
  input: string
  format: PrepareFormat
  /** Absent when the rewrite was not asked for. */
  logitsRewrite?: LogitsRewrite
  conversion?: ConversionStats & {
    /** fp16 tensors (initializers, constants) widened to fp32. */
    fp16Tensors: number
    /**
     * For the fp32 reference: MatMulNBits nodes replaced by MatMul with dequantized weights
     * (0 with verify off: no reference is built).
     */
    dequantizedForReference: number
  }
  /**
   * A q4f16 export kept as exported (`format: 'keep'`, head split asked for): every float16
   * tensor and type widened to float32 first, exactly (its 4-bit values untouched, their
   * float16 scales exact in float32), so the lm_head can be split and the layers mapped.
   */
  widened?: { fp16Tensors: number; types: number }
  /** AWQ before a q4 conversion of float weights (absent when not asked for). */
  awq?: AwqReport
  /**
   * Last-position logits of the prepared graph vs the reference: the input itself, or for fp16
   * and q4 inputs its fp32 graph (fp16 widened, MatMulNBits weights dequantized). Absent with
   * verify off.
   */
  logits?: LogitCheck & { reference: string }
  /** The head split (absent with `head: 'graph'`). */
  head?: HeadReport
  /** The decoder map (absent with `decoder: 'graph'`). */
  decoder?: DecoderReport
}

/** What the head split did: applied, or why not; with verify on, the check's numbers. */
export interface HeadReport extends Partial<HeadCheck> {
  applied: boolean
  reason?: string
  /** The head file's format. */
  format?: HeadFormat
  vocab?: number
  hidden?: number
  stride?: number
  embedding?: boolean
  /** Size of the head file (head.q8 or head.q4). */
  bytes?: number
  /** The graph's lm_head node that was removed. */
  lmHead?: string
  /** The tensor the graph now outputs as hidden_states. */
  hiddenTensor?: string
  /** The tensor the removed embedding computed, now the inputs_embeds input (tied). */
  embeddingTensor?: string
  embeddingNodes?: number
  /** A tied model's separate embedding table: dropped (read from the head rows) or kept, why. */
  embeddingTable?: SplitHeadStats['embeddingTable']
  removedInitializers?: string[]
}

/** What the decoder map did: applied, or why not; with verify on, the check's numbers. */
export interface DecoderReport extends Partial<DecoderCheck> {
  applied: boolean
  reason?: string
  layers?: number
  /**
   * A q4 map's layout in the engine: 'symmetric' when no matrix keeps zero points (all were 8 or
   * absent: 80 bytes per 128 weights, the kernels' symmetric copies), else 'zero-points'.
   */
  q4Layout?: 'symmetric' | 'zero-points'
  /** Tensors referenced in the graph's external data, and copied into decoder.bin. */
  externalTensors?: number
  inlineTensors?: number
  /** Size of decoder.bin (0: not written). */
  bytes?: number
}

export interface PrepareResult {
  id: string
  /** `<out>/<id>` */
  dir: string
  manifest: Manifest
  /**
   * Set when a transform was asked for, the head split included (the default), also written to
   * `<dir>/prepare-report.json`.
   */
  report?: PrepareReport
}

export async function preparePackage(options: PrepareOptions): Promise<PrepareResult> {
  const settings = checkOptions(options)
  const { id, log } = settings
  const input = await readExport(options.folder, options.file)
  const out = resolve(options.out ?? 'model-shards')
  const final = join(out, id)
  const tmp = join(out, `.${id}.partial-${process.pid}`)
  await rm(tmp, { recursive: true, force: true })
  await mkdir(tmp, { recursive: true })
  try {
    let model = decodeModel(readFileSync(input.onnxPath))
    if (!model.graph) throw new Error(`${input.onnxFile} has no graph`)
    checkSignature(model.graph, input.config, input.onnxFile)

    let graphFile = basename(input.onnxFile)
    let report: PrepareReport | undefined
    let head: HeadRows | undefined
    let decoderNames: DecoderNames | undefined
    const { format, headMode, decoderMode } = settings
    if (format !== 'keep' || options.logitsRewrite || headMode === 'wasm') {
      // views into the external files read once anyway (readExternal caches them): no copy
      for (const t of initializers(model))
        if (isExternal(t)) setRawData(t, tensorRawData(t, input.readExternal))
      ;({
        model,
        report,
        head,
        decoder: decoderNames,
      } = await transformExport(model, {
        input: relative(input.folder, input.onnxPath).split(sep).join('/'),
        inputPath: input.onnxPath,
        config: input.config,
        format,
        logitsRewrite: options.logitsRewrite ?? false,
        verify: options.verify ?? true,
        awq: options.awq ?? true,
        q4Scheme: settings.q4Scheme,
        calibration: () => calibrationPrompts(input.folder, input.config),
        head: headMode,
        headFormat: settings.headFormat,
        embedding: settings.embedding,
        decoder: decoderMode,
        log,
      }))
      if (format === 'q8') graphFile = 'model_quantized.onnx'
      if (format === 'q4') graphFile = 'model_q4.onnx'
    }

    const files = writeWeights(model, head, input, tmp, graphFile, settings)
    const decoder =
      decoderNames && report?.decoder
        ? writeDecoderEntry(model, decoderNames, report.decoder, input, files, tmp, settings)
        : undefined
    files.bar.finish(
      `${files.moved} initializers, ${files.data.shards.length} shards` +
        (head ? `; ${headFileName(head.format)} in ${files.head.length}` : '') +
        (decoder?.file ? `; ${DECODER_FILE} in ${decoder.file.shards.length}` : ''),
    )

    const graph = encodeModel(model)
    await writeFile(join(tmp, graphFile), graph)
    const manifest = await manifestOf(input, tmp, {
      id,
      graphFile,
      graph,
      files,
      head,
      decoder,
      shardBytes: settings.shardBytes,
      source: options.source,
    })
    if (options.stageBudgetBytes !== undefined) {
      if (!manifest.decoder || !manifest.head?.embedding)
        throw new Error(
          '--stage-budget-mib needs a package that runs in the kernels: the head split with the ' +
            'embedding and the decoder map (see prepare-report.json for why they are missing)',
        )
      manifest.pipeline = planPipeline(
        qwen2Shape(manifest.config),
        manifest.decoder.format,
        manifest.head.format,
        options.stageBudgetBytes,
        {
          contextLength: options.stageContext ?? 2048,
          sequences: options.stageSequences ?? 2,
          kvFormat: options.stageKvFormat,
          chunkRows: STAGE_CHUNK_ROWS,
          q4Symmetric: decoderSymmetric(manifest.decoder),
        },
      )
      const p = manifest.pipeline
      log(
        `stage plan: ${p.contextLength} positions x ${p.sequences} sequences of KV cache in ` +
          `${p.kvFormat ?? 'f32'} per layer stage, ${(p.budgetBytes / 1048576).toFixed(1)} MiB each`,
      )
      for (const [i, st] of manifest.pipeline.stages.entries())
        log(
          `stage ${i}: ${st.layers ? `layers ${st.layers[0]}-${st.layers[1] - 1}` : `rows ${st.rows![0]}-${st.rows![1] - 1}`}, ` +
            `~${(st.residentBytes / 1048576).toFixed(1)} MiB resident`,
        )
    }
    parseManifest(JSON.parse(JSON.stringify(manifest))) // what we write must read back
    if (report) await writeFile(join(tmp, REPORT_FILE), JSON.stringify(report, null, 2) + '\n')
    await writeFile(join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n')
    await rm(final, { recursive: true, force: true })
    await rename(tmp, final)
    return { id, dir: final, manifest, report }
  } catch (err) {
    await rm(tmp, { recursive: true, force: true })
    throw err
  }
}

interface Settings {
  id: string
  format: PrepareFormat
  headMode: PrepareHead
  headFormat: PrepareHeadFormat | undefined
  q4Scheme: Q4Scheme
  embedding: PrepareEmbedding
  decoderMode: PrepareDecoder
  shardBytes: number
  quiet: boolean
  log: (line: string) => void
}

function checkOptions(options: PrepareOptions): Settings {
  const { id } = options
  if (!isValidPackageId(id)) {
    throw new Error(
      `Invalid package id ${JSON.stringify(id)}: use letters, digits, '.', '_' and '-'`,
    )
  }
  const format = options.format ?? 'keep'
  if (format !== 'keep' && format !== 'q8' && format !== 'q4')
    throw new Error(`Unknown format ${JSON.stringify(format)}: use keep, q8 or q4`)
  const headMode = options.head ?? 'wasm'
  if (headMode !== 'wasm' && headMode !== 'graph')
    throw new Error(`Unknown head ${JSON.stringify(headMode)}: use wasm or graph`)
  const headFormat = options.headFormat
  if (headFormat !== undefined && headFormat !== 'q4' && headFormat !== 'q8')
    throw new Error(`Unknown head format ${JSON.stringify(headFormat)}: use q4 or q8`)
  const q4Scheme = options.q4Scheme ?? 'asymmetric'
  if (q4Scheme !== 'asymmetric' && q4Scheme !== 'symmetric')
    throw new Error(`Unknown q4 scheme ${JSON.stringify(q4Scheme)}: use asymmetric or symmetric`)
  const embedding = options.embedding ?? 'head'
  if (embedding !== 'head' && embedding !== 'graph')
    throw new Error(`Unknown embedding ${JSON.stringify(embedding)}: use head or graph`)
  const decoderMode = options.decoder ?? 'wasm'
  if (decoderMode !== 'wasm' && decoderMode !== 'graph')
    throw new Error(`Unknown decoder ${JSON.stringify(decoderMode)}: use wasm or graph`)
  const shardBytes =
    options.shardBytes ??
    (options.stageBudgetBytes !== undefined ? STAGED_SHARD_BYTES : DEFAULT_SHARD_BYTES)
  if (options.stageBudgetBytes !== undefined && !(options.stageBudgetBytes > 0))
    throw new Error('The stage budget must be a positive number of bytes')
  if (!Number.isSafeInteger(shardBytes) || shardBytes < 4096) {
    throw new Error(`Shard size must be a whole number of bytes, at least 4096; got ${shardBytes}`)
  }
  const quiet = options.quiet ?? false
  const log = quiet ? () => {} : (line: string) => console.error(line)
  return {
    id,
    format,
    headMode,
    headFormat,
    q4Scheme,
    embedding,
    decoderMode,
    shardBytes,
    quiet,
    log,
  }
}

/** The export folder as read: its config files, its ONNX file, and a reader of its data files. */
interface ExportInput {
  folder: string
  onnxFile: string
  onnxPath: string
  config: Qwen2Config
  generationConfig: Record<string, unknown>
  /** An external data file next to the graph, read once (a view is kept). */
  readExternal(location: string): Uint8Array
}

async function readExport(dir: string, file: string | undefined): Promise<ExportInput> {
  const folder = resolve(dir)
  const required = ['config.json', 'tokenizer.json', 'tokenizer_config.json']
  const missing = []
  for (const f of required) if (!(await isFile(join(folder, f)))) missing.push(f)
  if (missing.length)
    throw new Error(`${folder} is not a Hugging Face model folder: no ${missing.join(', ')}`)
  const config = parseQwen2Config(JSON.parse(await readFile(join(folder, 'config.json'), 'utf8')))
  const generationConfig = (await isFile(join(folder, 'generation_config.json')))
    ? (JSON.parse(await readFile(join(folder, 'generation_config.json'), 'utf8')) as Record<
        string,
        unknown
      >)
    : {}
  const onnxFile = file ?? (await pickOnnxFile(folder))
  const onnxPath = resolve(folder, onnxFile)
  if (!(await isFile(onnxPath))) throw new Error(`No ONNX file ${onnxFile} in ${folder}`)
  const externalFiles = new Map<string, Uint8Array>()
  const readExternal = (loc: string) => {
    let bytes = externalFiles.get(loc)
    if (!bytes) {
      const path = resolve(dirname(onnxPath), loc)
      if (!path.startsWith(folder + sep))
        throw new Error(`${onnxFile}: external data ${loc} is outside ${folder}`)
      bytes = readFileSync(path)
      externalFiles.set(loc, bytes)
    }
    return bytes
  }
  return { folder, onnxFile, onnxPath, config, generationConfig, readExternal }
}

/** What writeWeights wrote: the data file's shards, the head's, and the progress bar. */
interface WrittenWeights {
  data: { location: string; shards: ManifestFile[] }
  head: ManifestFile[]
  moved: number
  bar: ReturnType<typeof progressBar>
}

/**
 * Moves the initializers (all but small constants) into the external data file, cut into shards,
 * and points them at it; writes the split head's rows as their own shards.
 */
function writeWeights(
  model: ModelProto,
  head: HeadRows | undefined,
  input: ExportInput,
  tmp: string,
  graphFile: string,
  settings: Settings,
): WrittenWeights {
  const location = externalDataName(graphFile)
  const moving: TensorProto[] = []
  for (const t of initializers(model)) {
    if (t.data_type === DataType.STRING) {
      if (isExternal(t))
        throw new Error(`${input.onnxFile}: external string tensor ${t.name} is not supported`)
      continue
    }
    const bytes = isExternal(t) ? getExternalData(t)!.length : tensorRawData(t).byteLength
    if (isExternal(t) || bytes >= MIN_EXTERNAL_BYTES) moving.push(t)
  }
  const total =
    moving.reduce((n, t) => n + (getExternalData(t)?.length ?? tensorRawData(t).byteLength), 0) +
    (head?.bytes.byteLength ?? 0)
  const bar = progressBar(`prepare ${settings.id}`, total, { quiet: settings.quiet })
  const writer = new ShardWriter(tmp, location, settings.shardBytes)
  for (const t of moving) {
    const bytes = tensorRawData(t, input.readExternal)
    if (bytes.byteLength !== tensorByteLength(t)) {
      throw new Error(
        `${input.onnxFile}: initializer ${t.name} has ${bytes.byteLength} bytes, ` +
          `its shape needs ${tensorByteLength(t)}`,
      )
    }
    writer.pad(bytes.byteLength > BIG_TENSOR ? BIG_ALIGN : ALIGN)
    const offset = writer.offset
    writer.write(bytes)
    setExternalData(t, { location, offset, length: bytes.byteLength })
    bar.add(bytes.byteLength)
  }
  const shards = writer.finish()
  let headShards: ManifestFile[] = []
  if (head) {
    // the head file is cut like external data, with its own name: head.q8.000 … (head.q4.000 …)
    const headWriter = new ShardWriter(tmp, headFileName(head.format), settings.shardBytes)
    headWriter.write(head.bytes)
    headShards = headWriter.finish()
    bar.add(head.bytes.byteLength)
  }
  return { data: { location, shards }, head: headShards, moved: moving.length, bar }
}

/**
 * The decoder map, now that the external data offsets are final; small tensors the graph holds
 * inline go to decoder.bin. Undefined (and the report says why) when the map does not apply.
 */
function writeDecoderEntry(
  model: ModelProto,
  names: DecoderNames,
  report: DecoderReport,
  input: ExportInput,
  files: WrittenWeights,
  tmp: string,
  settings: Settings,
): DecoderEntry | undefined {
  const mapped = mapDecoder(model, input.config, {
    externalData: files.data.shards.length ? [files.data.location] : [],
    names,
  })
  if (!mapped.applied) {
    Object.assign(report, { applied: false, reason: mapped.reason })
    settings.log(`decoder map: not applied (${mapped.reason})`)
    return undefined
  }
  const decoder: DecoderEntry = mapped.entry
  if (mapped.bytes.byteLength) {
    // cut like external data: decoder.bin.000 …
    const decoderWriter = new ShardWriter(tmp, DECODER_FILE, settings.shardBytes)
    decoderWriter.write(mapped.bytes)
    const shards = decoderWriter.finish()
    decoder.file = { location: DECODER_FILE, bytes: mapped.bytes.byteLength, shards }
  }
  Object.assign(report, {
    externalTensors: mapped.external,
    inlineTensors: mapped.inline,
    bytes: mapped.bytes.byteLength,
  })
  return decoder
}

/** The manifest of what was written (the tokenizer files are copied and hashed here). */
async function manifestOf(
  input: ExportInput,
  tmp: string,
  w: {
    id: string
    graphFile: string
    graph: Uint8Array
    files: WrittenWeights
    head: HeadRows | undefined
    decoder: DecoderEntry | undefined
    shardBytes: number
    source: PrepareOptions['source']
  },
): Promise<Manifest> {
  const { config, folder } = input
  const tokenizerJson = await copyHashed(join(folder, 'tokenizer.json'), tmp, 'tokenizer.json')
  const tokenizerConfig = await copyHashed(
    join(folder, 'tokenizer_config.json'),
    tmp,
    'tokenizer_config.json',
  )
  const graphEntry: ManifestFile = {
    path: w.graphFile,
    bytes: w.graph.byteLength,
    sha256: sha256(w.graph),
  }
  const { location, shards } = w.files.data
  const dataBytes = shards.reduce((n, s) => n + s.bytes, 0)
  const head = w.head
  const headBytes = head?.bytes.byteLength ?? 0
  const decoderBytes = w.decoder?.file?.bytes ?? 0
  return {
    version: MANIFEST_VERSION,
    id: w.id,
    synthetic: config.qwen_edge_synthetic !== undefined,
    config,
    generationConfig: input.generationConfig,
    tokenizer: { json: tokenizerJson, config: tokenizerConfig },
    stages: [
      {
        io: head ? (head.embedding ? 'embeds->hidden' : 'ids->hidden') : 'ids->logits',
        layers: [0, config.num_hidden_layers],
        graph: graphEntry,
        externalData: shards.length ? [{ location, bytes: dataBytes, shards }] : [],
      },
    ],
    ...(head && {
      head: {
        format: head.format,
        vocab: head.vocab,
        hidden: head.hidden,
        stride: head.stride,
        embedding: head.embedding,
        file: { location: headFileName(head.format), bytes: headBytes, shards: w.files.head },
      },
    }),
    ...(w.decoder && { decoder: w.decoder }),
    shardBytes: w.shardBytes,
    totalBytes:
      tokenizerJson.bytes +
      tokenizerConfig.bytes +
      w.graph.byteLength +
      dataBytes +
      headBytes +
      decoderBytes,
    source: { onnxFile: relative(folder, input.onnxPath).split(sep).join('/'), ...w.source },
  }
}

export interface TransformOptions {
  /** The input's name for the report. */
  input: string
  /** The input graph file: the reference when no fp32 graph has to be built. */
  inputPath: string
  config: Qwen2Config
  format: PrepareFormat
  logitsRewrite: boolean
  verify: boolean
  /** AWQ before a q4 conversion of float weights (with `calibration`'s prompts). */
  awq?: boolean
  /** The q4 conversion's blocks; default 'asymmetric'. */
  q4Scheme?: Q4Scheme
  calibration?: () => Promise<number[][]>
  /** Default 'graph' (no split). */
  head?: PrepareHead
  /** The rows of a MatMulNBits lm_head; default 'q4'. */
  headFormat?: PrepareHeadFormat
  /** A tied model's separate embedding table; default 'head'. */
  embedding?: PrepareEmbedding
  /** Default 'graph' (no decoder map). */
  decoder?: PrepareDecoder
  log: (line: string) => void
}

/**
 * The prepare-time transforms on a decoded export whose data is inline: q8 conversion, then
 * the logits rewrite, then the logit check against the input's fp32 graph, then the head split
 * and its check against the graph before the split, then the decoder's tensors found in the
 * split graph and checked (their byte ranges are recorded once the data file is written:
 * `mapDecoder`).
 */
export async function transformExport(
  model: ModelProto,
  o: TransformOptions,
): Promise<{ model: ModelProto; report: PrepareReport; head?: HeadRows; decoder?: DecoderNames }> {
  const report: PrepareReport = { input: o.input, format: o.format }
  let reference: GraphRef = { path: o.inputPath }
  let referenceName = 'the input graph'
  if (o.format === 'keep' && o.head === 'wasm' && hasHalfMatMulNBits(model)) {
    // a q4f16 export: the kernels take float32 hidden states and keep their own KV cache
    const widened = convertFloatType(model, DataType.FLOAT)
    model = widened.model
    report.widened = { fp16Tensors: widened.stats.tensors, types: widened.stats.types }
    o.log(
      `fp16 → fp32: ${widened.stats.tensors} float16 tensors and ${widened.stats.types} types ` +
        `widened (a q4f16 export: its 4-bit values and their scales kept exactly; activations ` +
        `and the KV cache in float32)`,
    )
  }
  if (o.format === 'q8' || o.format === 'q4') {
    const started = performance.now()
    const widened = convertFloatType(model, DataType.FLOAT)
    // the reference costs fp32 weights in memory: only built when it is used
    const fp32 = o.verify ? dequantizeToFloat(widened.model) : { model: widened.model, nodes: 0 }
    if (widened.stats.types || widened.stats.tensors || fp32.nodes) {
      reference = { model: fp32.model }
      referenceName = `fp32 graph of the input (${[
        ...(widened.stats.types || widened.stats.tensors ? ['fp16 widened'] : []),
        ...(fp32.nodes ? [`${fp32.nodes} MatMulNBits dequantized`] : []),
      ].join(', ')})`
    }
    let toConvert = widened.model
    if (o.format === 'q4' && o.awq && o.calibration) {
      const awq = await applyAwq(
        toConvert,
        o.config,
        await o.calibration(),
        q4Encoder(o.q4Scheme),
        roundActivationsLikeQ4Kernels,
      )
      toConvert = awq.model
      report.awq = awq.report
      const r = awq.report
      o.log(
        r.applied
          ? `awq: ${r.alphas!.filter((a) => a > 0).length} of ${r.groups} groups scaled by their ` +
              `calibrated input channels (the rest cut their error by under ` +
              `${AWQ_MIN_GAIN * 100}%: rounded plainly) ` +
              `(${r.calibrationTokens} tokens; alpha ${r.alphas!.join(' ')}); calibration ` +
              `output error ${r.error!.toPrecision(3)} vs ${r.plainError!.toPrecision(3)} plain ` +
              `(${r.seconds!.toFixed(1)} s)`
          : `awq: not applied (${r.reason})`,
      )
    }
    const converted = convertWeights(toConvert, {
      hiddenSize: o.config.hidden_size,
      to: o.format,
      // `--head-format q8` on a conversion: the head rows from the float weights, not from 4 bits
      ...(o.format === 'q4' && o.headFormat === 'q8' && { headTo: 'q8' as const }),
      q4Scheme: o.q4Scheme,
    })
    model = converted.model
    const s = converted.stats
    report.conversion = {
      ...s,
      fp16Tensors: widened.stats.tensors,
      dequantizedForReference: fp32.nodes,
    }
    const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`
    const q8Head = o.format === 'q4' && o.headFormat === 'q8'
    const into =
      o.format === 'q8'
        ? 'DynamicQuantizeMatMul'
        : `MatMulNBits (4-bit, blocks of 32)${q8Head ? ', the lm_head DynamicQuantizeMatMul' : ''}`
    o.log(
      `${o.format}: ${s.matMul} MatMul, ${s.gemm} Gemm, ${s.matMulNBits} MatMulNBits → ${into}` +
        (s.biases ? ` (${s.biases} biases folded)` : '') +
        `; ${s.embeddings} embedding Gather on ${q8Head ? 'the head matrix' : o.format}; ` +
        `${s.shared} matrix shared; weights ` +
        `${mb(s.bytesBefore)} → ${mb(s.bytesAfter)} (${((performance.now() - started) / 1000).toFixed(1)} s)`,
    )
  }
  if (o.logitsRewrite) {
    const r = addLogitsToKeep(model)
    model = r.model
    report.logitsRewrite = r.result
    o.log(
      r.result.applied
        ? `logits rewrite: applied (lm_head ${r.result.lmHead} on the last num_logits_to_keep ` +
            `positions of ${r.result.hidden})`
        : `logits rewrite: not applied (${r.result.reason})`,
    )
  }
  if (o.verify && (o.format !== 'keep' || report.logitsRewrite?.applied || report.widened)) {
    const started = performance.now()
    const check = await checkLogits(reference, { model }, o.config)
    report.logits = { reference: referenceName, ...check }
    o.log(
      `logits vs ${referenceName}, last of ${check.tokens.length} tokens: ` +
        `max |Δ| ${check.maxAbsError.toPrecision(3)}, mean ${check.meanAbsError.toPrecision(3)} ` +
        `(|logit| up to ${check.referenceMaxAbs.toPrecision(3)}); top-1 ` +
        (check.top1Agrees
          ? `agrees (${check.referenceTop1})`
          : `differs (${check.referenceTop1} vs ${check.convertedTop1})`) +
        ` (${((performance.now() - started) / 1000).toFixed(1)} s, ${check.runtime})`,
    )
  }
  let head: HeadRows | undefined
  if (o.head === 'wasm') {
    const started = performance.now()
    const split = splitHead(model, o.config, { format: o.headFormat, embedding: o.embedding })
    if (!split.applied) {
      report.head = { applied: false, reason: split.reason }
      o.log(`head split: not applied (${split.reason}); the lm_head stays in the graph`)
    } else {
      const before = model
      const { model: after, head: rows, exact, applied, ...stats } = split
      head = rows
      model = after
      report.head = {
        applied,
        format: rows.format,
        vocab: rows.vocab,
        hidden: rows.hidden,
        stride: rows.stride,
        embedding: rows.embedding,
        bytes: rows.bytes.byteLength,
        ...stats,
      }
      const table = stats.embeddingTable
      if (table?.dropped)
        o.log(
          `embedding table ${table.name}: the tied lm_head's matrix (‖table − head rows‖ / ` +
            `‖table‖ = ${table.relativeError!.toPrecision(3)}, worst row ` +
            `${table.maxRowError!.toPrecision(3)}): dropped, rows read from the head`,
        )
      else if (table) o.log(`embedding table ${table.name}: kept in the graph (${table.reason})`)
      o.log(
        `head split: ${stats.lmHead}${rows.embedding ? ' and the tied embedding' : ''} → ` +
          `${headFileName(rows.format)} (${rows.format}${exact ? ', requantized from 4 bits' : ''}, ` +
          `${rows.vocab} rows of ${rows.stride} bytes, ` +
          `${(rows.bytes.byteLength / 1e6).toFixed(1)} MB); the graph ends in hidden_states` +
          (rows.embedding ? ' and takes inputs_embeds' : ''),
      )
      if (o.verify) {
        // a requantized head is checked as exported (the KV cache must match exactly), and its
        // own logits and embedding measured on the same steps
        const check = await checkSplitHead(
          before,
          after,
          exact ?? rows,
          o.config,
          exact && rows,
          table?.dropped ? tableRows(before, table.name) : undefined,
        )
        Object.assign(report.head, check)
        o.log(
          `head vs the graph's lm_head, ${check.steps} steps: logits max |Δ| ` +
            `${check.maxAbsError.toPrecision(3)}, mean ${check.meanAbsError.toPrecision(3)} ` +
            `(|logit| up to ${check.referenceMaxAbs.toPrecision(3)}); top-1 ` +
            `${check.top1Agrees ? 'agrees' : 'DIFFERS'}; KV max |Δ| ` +
            `${check.presentMaxAbsError.toPrecision(3)} ` +
            `(${((performance.now() - started) / 1000).toFixed(1)} s, ${check.runtime})`,
        )
        if (check.served)
          o.log(
            `${check.served.format} head requantized from the 4-bit rows: ` +
              describeRowErrors(check.served),
          )
        if (check.tiedEmbedding)
          o.log(
            'the embedding from the head rows instead of the table: ' +
              describeRowErrors(check.tiedEmbedding),
          )
        // the layers are the same ops on the same inputs: a KV difference means the rewrite
        // (or the embedding rows) is wrong, and the package must not be written
        if (!(check.presentMaxAbsError <= SPLIT_KV_TOLERANCE)) {
          throw new Error(
            `head split check failed: the split graph's KV cache differs by ` +
              `${check.presentMaxAbsError} (allowed ${SPLIT_KV_TOLERANCE}); use --head graph`,
          )
        }
      }
    }
  }
  const decoder =
    o.decoder === 'wasm' ? await findAndCheckDecoder(model, report, head, o) : undefined
  return { model, report, head, decoder }
}

/** The head check's numbers for rows other than the exported ones (served or embedded). */
function describeRowErrors(e: NonNullable<HeadCheck['tiedEmbedding']>): string {
  return (
    `logits max |Δ| ${e.maxAbsError.toPrecision(3)}, mean ${e.meanAbsError.toPrecision(3)}; ` +
    `top-1 ${e.top1Agrees ? 'agrees' : 'DIFFERS'}; embedding max |Δ| ` +
    `${e.embeddingMaxAbsError.toPrecision(3)} (|value| up to ${e.embeddingMaxAbs.toPrecision(3)})`
  )
}

/** Whether a MatMulNBits of the graph has float16 scales (a q4f16 export). */
function hasHalfMatMulNBits(model: ModelProto): boolean {
  const graph = model.graph
  const halves = new Set(
    (graph?.initializer ?? []).filter((t) => t.data_type === DataType.FLOAT16).map((t) => t.name),
  )
  return (graph?.node ?? []).some(
    (n) => n.op_type === 'MatMulNBits' && n.domain === 'com.microsoft' && halves.has(n.input?.[2]),
  )
}

/** The q4 conversion's quantizer (blocks of 32), dequantized: what AWQ's search measures. */
const q4Encoder =
  (scheme: Q4Scheme = 'asymmetric') =>
  (w: Float32Array, n: number, k: number): Float32Array => {
    const { packed, scales, zeroPoints } = quantizeBlocksQ4(w, n, k, Q4_BLOCK_SIZE, scheme)
    return dequantizeBlocksQ4(packed, scales, zeroPoints, n, k)
  }

/**
 * The calibration prompts in the export's own tokenizer and chat template (ids past a
 * synthetic model's vocabulary taken modulo its size, as the logit check does).
 */
async function calibrationPrompts(folder: string, config: Qwen2Config): Promise<number[][]> {
  const json = async (name: string) => JSON.parse(await readFile(join(folder, name), 'utf8'))
  const tok = new QwenTokenizer(await json('tokenizer.json'), await json('tokenizer_config.json'))
  return CALIBRATION_QUESTIONS.map((content) =>
    tok
      .encodePrompt(tok.renderChat([{ role: 'user', content }]))
      .map((id) => id % config.vocab_size),
  )
}

/**
 * The decoder map's structure (lib/decoder-map.ts) and, with verify on, its check
 * (lib/decoder-check.ts). A check beyond tolerance leaves the decoder out (reason in the
 * report), it does not fail the prepare: without the entry the package is whole (the graph
 * runs every step), while a wrong entry would make the engine compute garbage.
 */
async function findAndCheckDecoder(
  model: ModelProto,
  report: PrepareReport,
  head: HeadRows | undefined,
  o: TransformOptions,
): Promise<DecoderNames | undefined> {
  const skip = (reason: string) => {
    report.decoder = { ...report.decoder, applied: false, reason } // the check's numbers stay
    o.log(`decoder map: not applied (${reason})`)
    return undefined
  }
  if (!head)
    return skip(
      o.head === 'wasm'
        ? 'the lm_head was not split off (see head)'
        : 'the lm_head stays in the graph (--head graph)',
    )
  const found = findDecoder(model, o.config)
  if (!found.applied) return skip(found.reason)
  const { layers } = found.names
  const nbits = layers[0]?.q.kind === 'nbits'
  const symmetric = decoderSymmetric({ format: nbits ? 'nbits' : 'dqmm', layers })
  report.decoder = {
    applied: true,
    layers: layers.length,
    ...(nbits && { q4Layout: symmetric ? ('symmetric' as const) : ('zero-points' as const) }),
  }
  o.log(
    `decoder map: ${layers.length} layers x 7 ` +
      `${nbits ? 'MatMulNBits' : 'DynamicQuantizeMatMul'} + 2 norms, and the final norm` +
      (nbits
        ? symmetric
          ? ' (zero points all 8: held without them, 80 bytes per 128 weights)'
          : ' (with zero points: 84 bytes per 128 weights)'
        : ''),
  )
  if (!o.verify) return found.names
  const started = performance.now()
  const check = await checkDecoder(model, found.names, o.config, head)
  Object.assign(report.decoder, check)
  const e = (x: number) => x.toPrecision(2)
  o.log(
    `decoder vs the graph, layer by layer over ${check.decodeTokens.length + 1} steps: max ` +
      `error ${e(check.maxError)} of the range (${check.worst}; attention ` +
      `${e(check.attentionError)}, k ${e(check.keyError)}, v ${e(check.valueError)}, mlp ` +
      `${e(check.mlpError)}, hidden ${e(check.hiddenError)}); float activations ` +
      `${e(check.float.maxError)} (${((performance.now() - started) / 1000).toFixed(1)} s, ` +
      `${check.runtime})`,
  )
  if (!check.passed)
    return skip(
      `the decoder computed from the mapped tensors differs from the graph by ` +
        `${e(check.maxError)} of the range at ${check.worst} (allowed ${check.tolerance}): ` +
        'the mapping is wrong, or the graph computes something else',
    )
  return found.names
}

/** The ONNX file to use when none is named: ONNX_PICK_ORDER, else the only one under onnx/. */
export async function pickOnnxFile(folder: string): Promise<string> {
  for (const f of ONNX_PICK_ORDER) if (await isFile(join(folder, f))) return f
  const found = await readdir(join(folder, 'onnx')).catch(() => [] as string[])
  const onnx = found.filter((f) => f.endsWith('.onnx')).sort()
  if (onnx.length === 1) return `onnx/${onnx[0]}`
  if (onnx.length === 0) throw new Error(`No .onnx file under ${join(folder, 'onnx')}`)
  throw new Error(
    `Several ONNX files under ${join(folder, 'onnx')} (${onnx.join(', ')}): pick one with --file`,
  )
}

/**
 * The Optimum decoder-with-past signature the engine drives: input_ids, attention_mask and
 * past_key_values.{i}.key|value in, logits and present.{i}.key|value out, one pair per layer.
 */
export function checkSignature(graph: GraphProto, config: Qwen2Config, file: string): void {
  const inputs = new Set((graph.input ?? []).map((v) => v.name))
  const outputs = new Set((graph.output ?? []).map((v) => v.name))
  const missing: string[] = []
  for (const name of ['input_ids', 'attention_mask'])
    if (!inputs.has(name)) missing.push(`input ${name}`)
  if (!outputs.has('logits')) missing.push('output logits')
  for (let i = 0; i < config.num_hidden_layers; i++) {
    for (const kv of ['key', 'value']) {
      if (!inputs.has(`past_key_values.${i}.${kv}`))
        missing.push(`input past_key_values.${i}.${kv}`)
      if (!outputs.has(`present.${i}.${kv}`)) missing.push(`output present.${i}.${kv}`)
    }
  }
  const extraLayers = [...inputs].filter((n) => {
    const m = /^past_key_values\.(\d+)\./.exec(n ?? '')
    return m !== null && Number(m[1]) >= config.num_hidden_layers
  })
  if (missing.length || extraLayers.length) {
    const list = [
      ...missing.slice(0, 6),
      ...(missing.length > 6 ? [`… ${missing.length - 6} more`] : []),
    ]
    const extra = extraLayers.length
      ? `; it has past inputs beyond the config's ${config.num_hidden_layers} layers`
      : ''
    throw new Error(
      `${file} does not have the decoder-with-past signature` +
        `${missing.length ? ` (missing ${list.join(', ')})` : ''}${extra}`,
    )
  }
}

/** Appends bytes to a data file that is written as fixed-size shards, hashing as it goes. */
class ShardWriter {
  offset = 0
  private readonly shards: Array<{ path: string; bytes: number; sha256: string }> = []
  private fd: number | undefined
  private hash = createHash('sha256')
  private inShard = 0

  constructor(
    private readonly dir: string,
    private readonly location: string,
    private readonly shardBytes: number,
  ) {}

  /** Zero bytes up to the next multiple of `align`. */
  pad(align: number): void {
    const gap = (align - (this.offset % align)) % align
    if (gap) this.write(new Uint8Array(gap))
  }

  write(bytes: Uint8Array): void {
    let at = 0
    while (at < bytes.byteLength) {
      if (this.fd === undefined) {
        // Final names come in finish(), once the shard count (hence the digit width) is known.
        this.fd = openSync(join(this.dir, `${this.location}.tmp${this.shards.length}`), 'w')
      }
      const n = Math.min(bytes.byteLength - at, this.shardBytes - this.inShard)
      const part = bytes.subarray(at, at + n)
      writeSync(this.fd, part)
      this.hash.update(part)
      at += n
      this.inShard += n
      this.offset += n
      if (this.inShard === this.shardBytes) this.close()
    }
  }

  private close(): void {
    if (this.fd === undefined) return
    closeSync(this.fd)
    this.fd = undefined
    this.shards.push({ path: '', bytes: this.inShard, sha256: this.hash.digest('hex') })
    this.hash = createHash('sha256')
    this.inShard = 0
  }

  finish(): ManifestFile[] {
    this.close()
    return this.shards.map((s, i) => {
      const path = shardName(this.location, i, this.shards.length)
      renameSync(join(this.dir, `${this.location}.tmp${i}`), join(this.dir, path))
      return { ...s, path }
    })
  }
}

async function copyHashed(from: string, dir: string, name: string): Promise<ManifestFile> {
  const bytes = await readFile(from)
  await writeFile(join(dir, name), bytes)
  return { path: name, bytes: bytes.byteLength, sha256: sha256(bytes) }
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** sha256 of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 }))
    hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function isFile(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isFile(),
    () => false,
  )
}

export const PREPARE_CLI = {
  name: 'model:prepare',
  command: 'npm run model:prepare --',
  usage: ['npm run model:prepare -- <hf-folder> --id <id> [options]'],
  summary: [
    'Turns a Hugging Face layout export (config.json, tokenizer files, an Optimum-style ONNX',
    'decoder under onnx/) into a model package in <out>/<id>/: graph, weights in shards,',
    'manifest.json, and prepare-report.json saying what was done. Progress goes to stderr.',
  ],
  allowPositionals: true,
  allowNegative: true,
  arguments: [['<hf-folder>', 'the export: config.json, tokenizer.json, onnx/*.onnx']],
  options: {
    id: { type: 'string', arg: '<id>', help: 'package id: the folder under --out (required)' },
    file: {
      type: 'string',
      arg: '<onnx/name.onnx>',
      help: 'the ONNX file in the folder',
      defaultHelp: 'onnx/model_quantized.onnx, else onnx/model.onnx, else the only one',
    },
    'shard-mb': {
      type: 'string',
      arg: '<n>',
      help: 'shard size in MiB',
      defaultHelp: String(DEFAULT_SHARD_BYTES / (1024 * 1024)),
    },
    out: { type: 'string', arg: '<dir>', default: 'model-shards', help: 'packages folder' },
    format: {
      type: 'string',
      arg: '<keep|q8|q4>',
      default: 'keep',
      help: 'weights as exported; q8: fp32/fp16/q4 converted to uint8 DynamicQuantizeMatMul; q4: fp32/fp16 converted to 4-bit MatMulNBits, blocks of 32 (a q4 export is kept as exported)',
    },
    head: {
      type: 'string',
      arg: '<wasm|graph>',
      default: 'wasm',
      help: "wasm: split the lm_head off into head.q8 / head.q4 for the engine's kernels (q8 and q4 graphs); graph: keep it in the graph",
    },
    embedding: {
      type: 'string',
      arg: '<head|graph>',
      default: 'head',
      help: "a tied model exported with its embedding as its own float table (onnx-community's q4 files): head drops the table and reads the embedding from the split head's rows when they hold the same matrix (the report gives the difference); graph keeps the table in the graph (the decoder is then not mapped)",
    },
    'head-format': {
      type: 'string',
      arg: '<q4|q8>',
      default: 'q4',
      help: "a q4 export's split lm_head: q4 keeps its 4-bit rows as exported (head.q4); q8 requantizes them per row (head.q8); with --format q4 from fp32/fp16, q8 quantizes the head rows from the float weights",
    },
    decoder: {
      type: 'string',
      arg: '<wasm|graph>',
      default: 'wasm',
      help: "wasm: map the decoder layers for the engine's own decode step (needs the head split); graph: leave it out",
    },
    'logits-rewrite': {
      type: 'boolean',
      default: true,
      help: 'give an export without num_logits_to_keep that input (lm_head on the last position only)',
    },
    'q4-scheme': {
      type: 'string',
      arg: '<asymmetric|symmetric>',
      default: 'asymmetric',
      help: "--format q4: asymmetric blocks (a zero point each: the lower error) or symmetric ones (zero point 8, as onnx-community's q4 files; about 1.07x faster in the kernels, which skip the zero points)",
    },
    awq: {
      type: 'boolean',
      default: true,
      help: "--format q4 from fp32/fp16: scale the matrices that read each norm by their input channels' size on calibration prompts (AWQ) before quantizing",
    },
    verify: {
      type: 'boolean',
      default: true,
      help: "after a conversion or rewrite, compare the last-position logits with the input's fp32 graph",
    },
    'stage-budget-mib': {
      type: 'string',
      arg: '<n>',
      help: 'split the model into stages of at most n MiB each (layer ranges, head row slices) for small isolates (Workers: 128 MB); shards default to 4 MiB',
    },
    'stage-context': {
      type: 'string',
      arg: '<n>',
      default: '2048',
      help: 'KV positions per sequence a stage plans for',
    },
    'stage-sequences': {
      type: 'string',
      arg: '<n>',
      default: '2',
      help: 'sequences at full context a stage plans for',
    },
    'stage-kv-format': {
      type: 'string',
      arg: '<f32|q8>',
      default: 'f32',
      help: "the KV cache format the plan counts; the layer stages run it unless their KV_FORMAT says otherwise (q8: about a quarter of f32's bytes a position)",
    },
  },
  examples: [
    'npm run model:prepare -- .cache/models/tiny-q8 --id my-tiny --shard-mb 16',
    'npm run model:prepare -- .cache/hub/<repo>/main --id <id> --file onnx/model.onnx --format q8',
    'npm run model:prepare -- .cache/models/qwen2.5-0.5b-q8 --id qwen-staged --stage-budget-mib 100',
  ],
} as const

function stageOptions(values: {
  'stage-budget-mib'?: string
  'stage-context'?: string
  'stage-sequences'?: string
  'stage-kv-format'?: string
}): Pick<PrepareOptions, 'stageBudgetBytes' | 'stageContext' | 'stageSequences' | 'stageKvFormat'> {
  if (values['stage-budget-mib'] === undefined) return {}
  const budget = Number(values['stage-budget-mib'])
  const context = Number(values['stage-context'] ?? 2048)
  const sequences = Number(values['stage-sequences'] ?? 2)
  if (!(budget > 0)) throw new Error('--stage-budget-mib must be a positive number')
  if (!(Number.isInteger(context) && context > 0 && Number.isInteger(sequences) && sequences > 0))
    throw new Error('--stage-context and --stage-sequences must be positive integers')
  const kvFormat = (values['stage-kv-format'] ?? 'f32') as KvFormat
  if (!KV_FORMATS.includes(kvFormat))
    throw new Error(`--stage-kv-format must be one of ${KV_FORMATS.join(', ')}`)
  return {
    stageBudgetBytes: Math.floor(budget * 1024 * 1024),
    stageContext: context,
    stageSequences: sequences,
    stageKvFormat: kvFormat,
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseCli(PREPARE_CLI)
  if (positionals.length !== 1 || !values.id)
    usageError(PREPARE_CLI, 'needs one <hf-folder> and --id <id>')
  const shardMb = values['shard-mb'] === undefined ? undefined : Number(values['shard-mb'])
  if (shardMb !== undefined && !(shardMb > 0))
    throw new Error('--shard-mb must be a positive number')
  const started = performance.now()
  const { dir, manifest } = await preparePackage({
    folder: positionals[0],
    id: values.id,
    file: values.file,
    out: values.out,
    shardBytes: shardMb === undefined ? undefined : Math.round(shardMb * 1024 * 1024),
    format: values.format as PrepareFormat,
    head: values.head as PrepareHead,
    headFormat: values['head-format'] as PrepareHeadFormat,
    embedding: values.embedding as PrepareEmbedding,
    decoder: values.decoder as PrepareDecoder,
    logitsRewrite: values['logits-rewrite'],
    verify: values.verify,
    awq: values.awq,
    q4Scheme: values['q4-scheme'] as Q4Scheme,
    ...stageOptions(values),
  })
  const secs = ((performance.now() - started) / 1000).toFixed(1)
  const shards = manifest.stages[0].externalData[0]?.shards.length ?? 0
  console.error(
    `${dir}: ${shards} shards${manifest.head ? ` + ${manifest.head.file.location}` : ''}` +
      `${manifest.decoder ? ' + decoder map' : ''}, ` +
      `${manifest.totalBytes} bytes, ${secs} s` +
      (manifest.synthetic ? ' (synthetic weights)' : ''),
  )
}

if (isMain(import.meta.url)) runMain(main)
