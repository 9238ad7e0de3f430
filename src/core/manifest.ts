/**
 * The model package format ("model-shards", DESIGN.md §3): `<id>/manifest.json` names every
 * other file of the package with its byte size and sha256. Pure: parsing, validation and the
 * naming rules shared by the prepare script (writer) and the package loader (reader).
 *
 * A package today:
 *   <id>/manifest.json
 *   <id>/tokenizer.json, <id>/tokenizer_config.json
 *   <id>/model_quantized.onnx                 the graph; initializers point at external data
 *   <id>/model_quantized.onnx_data.000 … .NNN  that data file cut into fixed-size shards
 *   <id>/head.q8.000 …                         optional: the lm_head (and tied embedding) rows,
 *                                              run outside the graph (see HeadEntry)
 *   <id>/decoder.bin.000 …                     optional: the small tensors of the decoder layers
 *                                              that are inline in the graph (see DecoderEntry)
 *
 * The graph's initializers name the *unsplit* data file (`location: model_quantized.onnx_data`);
 * the loader concatenates the shards into one buffer and hands it to onnxruntime-web under that
 * name. Stages let a later model split by layer ranges (one graph + data per range, each run
 * in its own isolate) use the same format; today every package has one stage: 'ids->logits', or
 * with a head file 'embeds->hidden' (tied embedding in the head) / 'ids->hidden'.
 */
import { AppError } from './errors.ts'

export const MANIFEST_VERSION = 1
export const MANIFEST_FILE = 'manifest.json'

const MiB = 1024 * 1024

/**
 * Default shard size: 16 MiB.
 * - Far below wrangler's 300 MiB single-put limit and below the 100 MB request-body limit of a
 *   Worker, so shards can be uploaded with `wrangler r2 object put` or through a Worker.
 * - Memory: shards are streamed into one preallocated buffer, but WebCrypto's one-shot
 *   `digest()` copies its input, so each shard in flight costs one shard of transient memory.
 *   16 MiB x 4 in flight = 64 MiB on Node/Deno; a Worker (128 MB for everything) should load
 *   with 1-2 in flight, and a layer-range stage of ~40-60 MB is still 3-4 shards.
 * - Parallelism and retries: the 0.5B q8 weights (~500 MB) become ~31 objects: enough to keep
 *   a few fetches overlapping, few enough for per-invocation subrequest limits, and a failed
 *   fetch repeats at most 16 MiB.
 */
export const DEFAULT_SHARD_BYTES = 16 * MiB

/** wrangler `r2 object put` refuses larger objects (multipart upload is not exposed there). */
export const MAX_OBJECT_BYTES = 300 * MiB

/**
 * What a stage's graph consumes and produces. A whole model is 'ids->logits'; with a head file
 * the graph ends at the final hidden states ('ids->hidden'), and starts from `inputs_embeds`
 * when the head also holds the embedding ('embeds->hidden').
 */
export type StageIo =
  'ids->logits' | 'ids->hidden' | 'embeds->hidden' | 'hidden->hidden' | 'hidden->logits'
const STAGE_IO: readonly StageIo[] = [
  'ids->logits',
  'ids->hidden',
  'embeds->hidden',
  'hidden->hidden',
  'hidden->logits',
]

export interface ManifestFile {
  /** Relative to the package root (`<id>/`): `[A-Za-z0-9._-]` segments joined by '/'. */
  path: string
  bytes: number
  /** Lowercase hex. */
  sha256: string
}

/** One external-data file of a graph, stored as shards (in order, concatenated). */
export interface ExternalDataEntry {
  /** The `location` the graph's initializers use (relative to the graph file). */
  location: string
  /** Size of the whole file = the sum of its shards. */
  bytes: number
  shards: ManifestFile[]
}

export interface Stage {
  io: StageIo
  /** Decoder layers this stage runs: [start, end). */
  layers: [number, number]
  graph: ManifestFile
  externalData: ExternalDataEntry[]
}

export type HeadFormat = 'q8-rows'
const HEAD_FORMATS: readonly HeadFormat[] = ['q8-rows']

/**
 * The lm_head moved out of the graph (`model:prepare --head wasm`), run by the engine's own
 * kernel on the graph's `hidden_states` output. Layout of 'q8-rows' (little-endian), see
 * `headLayout`:
 *
 *   [0, vocab * stride)         row v = the int8 weights of token v (bytes >= hidden are 0)
 *   [zeroPoints, + vocab)       int8 zero point of each row
 *   [scales, + 4 * vocab)       float32 scale of each row (offset 4-byte aligned)
 *
 *   logits[v]       = sum_k (row[v][k] - zeroPoint[v]) * scale[v] * hidden[k]
 *   embedding[t][k] = (row[t][k] - zeroPoint[t]) * scale[t]        (when `embedding`)
 */
export interface HeadEntry {
  format: HeadFormat
  vocab: number
  hidden: number
  /** Bytes per row: hidden rounded up to a multiple of 32. */
  stride: number
  /** True when the graph takes `inputs_embeds`: the embedding is looked up from these rows (tied weights). */
  embedding: boolean
  /** The head file, cut into shards like external data: location 'head.q8', shards 'head.q8.000' … */
  file: ExternalDataEntry
}

/** The head file prepare writes (its shards: `head.q8.000` …). */
export const HEAD_FILE = 'head.q8'
/** Rows of the head file start on multiples of this many bytes. */
export const HEAD_ROW_ALIGN = 32

/** Bytes per head row for a hidden size: rounded up to a multiple of HEAD_ROW_ALIGN. */
export function headStride(hidden: number): number {
  return Math.ceil(hidden / HEAD_ROW_ALIGN) * HEAD_ROW_ALIGN
}

/** Byte offsets of the three parts of a 'q8-rows' head file, and its size. */
export function headLayout(
  vocab: number,
  stride: number,
): { rows: 0; zeroPoints: number; scales: number; bytes: number } {
  const zeroPoints = vocab * stride
  const scales = Math.ceil((zeroPoints + vocab) / 4) * 4
  return { rows: 0, zeroPoints, scales, bytes: scales + 4 * vocab }
}

export type DecoderFormat = 'dqmm'
const DECODER_FORMATS: readonly DecoderFormat[] = ['dqmm']

export type DecoderTensorType = 'int8' | 'uint8' | 'float32'
const DECODER_TENSOR_BYTES: Record<DecoderTensorType, number> = { int8: 1, uint8: 1, float32: 4 }

/** Where one tensor of the decoder layers is: a byte range of a package file, little-endian. */
export interface DecoderTensorRef {
  /** 'decoder': the decoder entry's own file; a number: index into `stages[0].externalData`. */
  file: 'decoder' | number
  offset: number
  /** [] for a scalar. */
  dims: number[]
  type: DecoderTensorType
}

/**
 * One `com.microsoft DynamicQuantizeMatMul` of the graph, its operands as they are:
 * y = x · ((weight − zeroPoint) · scale) + bias, per column (or one scale / zero point for all).
 */
export interface DecoderMatrixRef {
  /** [K, N] row-major, int8 or uint8. */
  weight: DecoderTensorRef
  /** float32 [N], [1] or []. */
  scale: DecoderTensorRef
  /** Same type as `weight`: [N], [1] or []. */
  zeroPoint: DecoderTensorRef
  /** float32 [N]. */
  bias?: DecoderTensorRef
}

/** One Qwen2 decoder layer. Shapes: H hidden, I intermediate, q = heads x head_dim, kv likewise. */
export interface DecoderLayerRef {
  /** RMSNorm weight before attention, float32 [H]. */
  inputNorm: DecoderTensorRef
  /** [H, q] */
  q: DecoderMatrixRef
  /** [H, kv] */
  k: DecoderMatrixRef
  /** [H, kv] */
  v: DecoderMatrixRef
  /** [q, H] */
  o: DecoderMatrixRef
  /** RMSNorm weight before the MLP, float32 [H]. */
  postNorm: DecoderTensorRef
  /** [H, I] */
  gate: DecoderMatrixRef
  /** [H, I] */
  up: DecoderMatrixRef
  /** [I, H] */
  down: DecoderMatrixRef
}

/**
 * The graph's decoder layers as tensors the engine can run itself (`model:prepare --decoder
 * wasm`, the default with a head split; src/engine/wasm/decoder-weights.ts resolves them): every
 * DynamicQuantizeMatMul operand and RMSNorm weight of every layer, and the final norm, whose
 * output is the graph's `hidden_states`. The tensors are not copied: big ones are byte ranges of
 * the graph's own external data (`file` = its index in `stages[0].externalData`); the small
 * ones the graph holds inline (norms, scales, zero points, biases under 1 KiB) are copied into
 * the decoder file, `decoder.bin`, cut into shards like external data. A package with a decoder
 * has one stage and a head (the stage ends in hidden states).
 */
export interface DecoderEntry {
  format: DecoderFormat
  /** One per decoder layer, in order. */
  layers: DecoderLayerRef[]
  /** float32 [H]. */
  finalNorm: DecoderTensorRef
  /** The decoder file (location 'decoder.bin'); absent when no tensor lives there. */
  file?: ExternalDataEntry
}

/** The decoder file prepare writes (its shards: `decoder.bin.000` …). */
export const DECODER_FILE = 'decoder.bin'

/** Bytes of a decoder tensor: its element count times the element size. */
export function decoderTensorBytes(ref: Pick<DecoderTensorRef, 'dims' | 'type'>): number {
  return ref.dims.reduce((n, d) => n * d, 1) * DECODER_TENSOR_BYTES[ref.type]
}

/**
 * The architecture fields the engine needs from a Hugging Face Qwen2 `config.json`. The manifest
 * keeps the whole config (every other key too); these are the ones validated.
 */
export interface ArchitectureConfig {
  model_type?: string
  vocab_size: number
  hidden_size: number
  intermediate_size: number
  num_hidden_layers: number
  num_attention_heads: number
  num_key_value_heads: number
  head_dim?: number
  max_position_embeddings: number
  rms_norm_eps: number
  rope_theta: number
  tie_word_embeddings?: boolean
  bos_token_id?: number | null
  eos_token_id?: number | number[] | null
  qwen_edge_synthetic?: { seed: number; format: string; preset: string; note: string }
  [key: string]: unknown
}

export interface Manifest {
  version: typeof MANIFEST_VERSION
  id: string
  /** True when the config carries `qwen_edge_synthetic` (random weights from the generator). */
  synthetic: boolean
  /** The model's config.json, verbatim. */
  config: ArchitectureConfig
  /** generation_config.json verbatim, `{}` when the export has none. */
  generationConfig: Record<string, unknown>
  tokenizer: { json: ManifestFile; config: ManifestFile }
  stages: Stage[]
  /** Present when the lm_head runs outside the graph: the stages end in hidden states. */
  head?: HeadEntry
  /** Present when the engine can run the decoder layers itself (needs `head`). */
  decoder?: DecoderEntry
  /** Nominal shard size the package was cut with (the last shard of a file is shorter). */
  shardBytes: number
  /** Sum of every file listed (tokenizer, graphs, shards, head, decoder); the manifest not included. */
  totalBytes: number
  /** Where the package came from (informational). */
  source?: { onnxFile?: string; repo?: string; revision?: string }
  createdAt?: string
}

// ---------------------------------------------------------------------------------------------
// Naming

/** `model.onnx_data`, shard 3 of 31 → `model.onnx_data.003` (at least 3 digits, sorts right). */
export function shardName(location: string, index: number, count: number): string {
  const width = Math.max(3, String(count - 1).length)
  return `${location}.${String(index).padStart(width, '0')}`
}

/** The external-data file prepare writes for a graph: `model_q4.onnx` → `model_q4.onnx_data`. */
export function externalDataName(graphFile: string): string {
  return `${graphFile}_data`
}

/** Byte ranges of `total` bytes cut into shards of `shardBytes`: [offset, length] pairs. */
export function shardRanges(total: number, shardBytes: number): Array<[number, number]> {
  if (!(shardBytes > 0)) throw new RangeError(`shard size must be positive, got ${shardBytes}`)
  const ranges: Array<[number, number]> = []
  for (let offset = 0; offset < total; offset += shardBytes) {
    ranges.push([offset, Math.min(shardBytes, total - offset)])
  }
  return ranges
}

/** Object key of a package file: `<id>/<path>`. */
export function packageKey(id: string, path: string): string {
  return `${id}/${path}`
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/
const SEGMENT_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/
const SHA256_RE = /^[0-9a-f]{64}$/

/** Package ids are one path segment: letters, digits, '.', '_', '-'. */
export function isValidPackageId(id: string): boolean {
  return ID_RE.test(id) && !id.includes('..')
}

/** A relative path without '..', empty or dot-leading segments (no way out of the package). */
export function isSafeRelativePath(path: string): boolean {
  return path.length > 0 && path.length <= 512 && path.split('/').every((s) => SEGMENT_RE.test(s))
}

/** Every file of the package (tokenizer, graphs, shards, decoder and head shards), in load order. */
export function listFiles(manifest: Manifest): ManifestFile[] {
  const files = [manifest.tokenizer.json, manifest.tokenizer.config]
  for (const stage of manifest.stages) {
    files.push(stage.graph)
    for (const ext of stage.externalData) files.push(...ext.shards)
  }
  if (manifest.decoder?.file) files.push(...manifest.decoder.file.shards)
  if (manifest.head) files.push(...manifest.head.file.shards)
  return files
}

// ---------------------------------------------------------------------------------------------
// Parsing

class Invalid extends Error {}

/**
 * Validates a parsed `manifest.json`. Throws AppError('model_invalid') naming the first bad
 * field; unknown top-level keys are ignored (so a later minor addition does not break readers),
 * an unknown `version` is not.
 */
export function parseManifest(json: unknown): Manifest {
  try {
    return readManifest(json)
  } catch (err) {
    if (err instanceof Invalid) {
      throw new AppError('model_invalid', `Invalid model manifest: ${err.message}`)
    }
    throw err
  }
}

function readManifest(json: unknown): Manifest {
  const m = object(json, 'manifest')
  if (m.version !== MANIFEST_VERSION) {
    throw new Invalid(
      `unsupported format version ${JSON.stringify(m.version)} ` +
        `(this build reads version ${MANIFEST_VERSION})`,
    )
  }
  const id = string(m.id, 'id')
  if (!isValidPackageId(id)) throw new Invalid(`id ${JSON.stringify(id)} is not a valid package id`)
  const config = readArchitectureConfig(m.config, 'config')
  const generationConfig =
    m.generationConfig === undefined ? {} : object(m.generationConfig, 'generationConfig')
  const tok = object(m.tokenizer, 'tokenizer')
  const tokenizer = {
    json: file(tok.json, 'tokenizer.json'),
    config: file(tok.config, 'tokenizer.config'),
  }
  const shardBytes = positiveInt(m.shardBytes, 'shardBytes')

  const stagesJson = array(m.stages, 'stages')
  if (stagesJson.length === 0) throw new Invalid('stages is empty')
  const stages = stagesJson.map((s, i) => readStage(s, `stages[${i}]`))
  const head = m.head === undefined ? undefined : readHead(m.head, config, 'head')
  checkStageChain(stages, config.num_hidden_layers, head)
  const decoder =
    m.decoder === undefined ? undefined : readDecoder(m.decoder, config, stages, head, 'decoder')

  const manifest: Manifest = {
    version: MANIFEST_VERSION,
    id,
    synthetic: config.qwen_edge_synthetic !== undefined,
    config,
    generationConfig,
    tokenizer,
    stages,
    shardBytes,
    totalBytes: nonNegativeInt(m.totalBytes, 'totalBytes'),
  }
  if (head) manifest.head = head
  if (decoder) manifest.decoder = decoder
  if (m.synthetic !== undefined && m.synthetic !== manifest.synthetic) {
    throw new Invalid(`synthetic is ${String(m.synthetic)} but config says ${manifest.synthetic}`)
  }
  const files = listFiles(manifest)
  const seen = new Set<string>()
  for (const f of files) {
    if (seen.has(f.path)) throw new Invalid(`file ${f.path} is listed twice`)
    seen.add(f.path)
  }
  if (seen.has(MANIFEST_FILE)) throw new Invalid(`${MANIFEST_FILE} cannot be a package file`)
  const sum = files.reduce((n, f) => n + f.bytes, 0)
  if (sum !== manifest.totalBytes) {
    throw new Invalid(`totalBytes is ${manifest.totalBytes} but the files add up to ${sum}`)
  }
  if (m.source !== undefined) {
    const src = object(m.source, 'source')
    manifest.source = {}
    for (const k of ['onnxFile', 'repo', 'revision'] as const) {
      if (src[k] !== undefined) manifest.source[k] = string(src[k], `source.${k}`)
    }
  }
  if (m.createdAt !== undefined) manifest.createdAt = string(m.createdAt, 'createdAt')
  return manifest
}

function readStage(json: unknown, at: string): Stage {
  const s = object(json, at)
  const io = string(s.io, `${at}.io`) as StageIo
  if (!STAGE_IO.includes(io))
    throw new Invalid(`${at}.io ${JSON.stringify(io)} is not one of ${STAGE_IO.join(', ')}`)
  const range = array(s.layers, `${at}.layers`)
  if (range.length !== 2) throw new Invalid(`${at}.layers must be [start, end)`)
  const layers: [number, number] = [
    nonNegativeInt(range[0], `${at}.layers[0]`),
    nonNegativeInt(range[1], `${at}.layers[1]`),
  ]
  if (layers[1] <= layers[0]) throw new Invalid(`${at}.layers [${layers}] is empty`)
  const graph = file(s.graph, `${at}.graph`)
  const externalData = array(s.externalData ?? [], `${at}.externalData`).map((e, i) =>
    readExternalData(e, `${at}.externalData[${i}]`),
  )
  const locations = new Set(externalData.map((e) => e.location))
  if (locations.size !== externalData.length)
    throw new Invalid(`${at}.externalData repeats a location`)
  return { io, layers, graph, externalData }
}

function readExternalData(json: unknown, at: string): ExternalDataEntry {
  const e = object(json, at)
  const location = string(e.location, `${at}.location`)
  if (!isSafeRelativePath(location))
    throw new Invalid(`${at}.location ${JSON.stringify(location)} is not a safe relative path`)
  const bytes = nonNegativeInt(e.bytes, `${at}.bytes`)
  const shards = array(e.shards, `${at}.shards`).map((f, i) => file(f, `${at}.shards[${i}]`))
  const sum = shards.reduce((n, f) => n + f.bytes, 0)
  if (sum !== bytes) throw new Invalid(`${at}: shards add up to ${sum} bytes, not ${bytes}`)
  return { location, bytes, shards }
}

/**
 * Stages must cover layers [0, num_hidden_layers) in order, ids first and logits last. With a
 * head the last stage returns hidden states instead (the head computes the logits), and the
 * first takes embeddings ('embeds') when the head holds the embedding.
 */
function checkStageChain(stages: Stage[], numLayers: number, head: HeadEntry | undefined): void {
  const first = head?.embedding ? 'embeds' : 'ids'
  let next = 0
  stages.forEach((s, i) => {
    const [start, end] = s.layers
    if (start !== next)
      throw new Invalid(`stages[${i}].layers starts at ${start}, expected ${next}`)
    const [input, output] = s.io.split('->')
    const at = `stages[${i}].io ${s.io}`
    if (input === 'embeds' && !head?.embedding)
      throw new Invalid(`${at}: takes embeds, but the package has no head holding the embedding`)
    if (i > 0 && input !== 'hidden') throw new Invalid(`${at}: only the first stage takes ${input}`)
    if (i === 0 && input !== first) {
      throw new Invalid(
        head
          ? `${at}: the first stage takes ${first} (head.embedding is ${head.embedding})`
          : `${at}: only the first stage takes ids`,
      )
    }
    if (head) {
      if (output !== 'hidden')
        throw new Invalid(
          `${at}: with a head every stage returns hidden (the head computes logits)`,
        )
    } else if ((i === stages.length - 1) !== (output === 'logits')) {
      throw new Invalid(`${at}: only the last stage returns logits`)
    }
    next = end
  })
  if (next !== numLayers) {
    throw new Invalid(`stages cover layers [0, ${next}) but the model has ${numLayers}`)
  }
}

function readHead(json: unknown, config: ArchitectureConfig, at: string): HeadEntry {
  const h = object(json, at)
  const format = string(h.format, `${at}.format`) as HeadFormat
  if (!HEAD_FORMATS.includes(format))
    throw new Invalid(
      `${at}.format ${JSON.stringify(format)} is not one of ${HEAD_FORMATS.join(', ')}`,
    )
  const vocab = positiveInt(h.vocab, `${at}.vocab`)
  const hidden = positiveInt(h.hidden, `${at}.hidden`)
  const stride = positiveInt(h.stride, `${at}.stride`)
  if (vocab !== config.vocab_size)
    throw new Invalid(`${at}.vocab is ${vocab} but config.vocab_size is ${config.vocab_size}`)
  if (hidden !== config.hidden_size)
    throw new Invalid(`${at}.hidden is ${hidden} but config.hidden_size is ${config.hidden_size}`)
  if (stride % HEAD_ROW_ALIGN !== 0 || stride < hidden)
    throw new Invalid(
      `${at}.stride ${stride} must be a multiple of ${HEAD_ROW_ALIGN} and at least hidden (${hidden})`,
    )
  if (typeof h.embedding !== 'boolean') throw new Invalid(`${at}.embedding must be a boolean`)
  const file = readExternalData(h.file, `${at}.file`)
  const expected = headLayout(vocab, stride).bytes
  if (file.bytes !== expected)
    throw new Invalid(
      `${at}.file.bytes is ${file.bytes}, a ${format} head of ${vocab} x ${stride} has ${expected}`,
    )
  return { format, vocab, hidden, stride, embedding: h.embedding, file }
}

function readDecoder(
  json: unknown,
  config: ArchitectureConfig,
  stages: Stage[],
  head: HeadEntry | undefined,
  at: string,
): DecoderEntry {
  const d = object(json, at)
  const format = string(d.format, `${at}.format`) as DecoderFormat
  if (!DECODER_FORMATS.includes(format))
    throw new Invalid(
      `${at}.format ${JSON.stringify(format)} is not one of ${DECODER_FORMATS.join(', ')}`,
    )
  if (!head) throw new Invalid(`${at} needs a head (the decoder layers end in hidden states)`)
  if (stages.length !== 1)
    throw new Invalid(`${at} needs a package of one stage, this one has ${stages.length}`)
  const file = d.file === undefined ? undefined : readExternalData(d.file, `${at}.file`)
  const files = stages[0].externalData
  const H = config.hidden_size
  const I = config.intermediate_size
  const headDim = config.head_dim ?? H / config.num_attention_heads
  const qDim = config.num_attention_heads * headDim
  const kvDim = config.num_key_value_heads * headDim

  const tensor = (v: unknown, where: string, types: readonly DecoderTensorType[]) => {
    const t = object(v, where)
    let ref: DecoderTensorRef['file']
    if (t.file === 'decoder') {
      if (!file) throw new Invalid(`${where}.file is 'decoder' but ${at}.file is absent`)
      ref = 'decoder'
    } else {
      ref = nonNegativeInt(t.file, `${where}.file`)
      if (ref >= files.length)
        throw new Invalid(
          `${where}.file ${ref} is not an index of stages[0].externalData (${files.length} files)`,
        )
    }
    const type = string(t.type, `${where}.type`) as DecoderTensorType
    if (!types.includes(type))
      throw new Invalid(`${where}.type ${JSON.stringify(type)} is not one of ${types.join(', ')}`)
    const dims = array(t.dims, `${where}.dims`).map((x, i) =>
      nonNegativeInt(x, `${where}.dims[${i}]`),
    )
    const offset = nonNegativeInt(t.offset, `${where}.offset`)
    const size = ref === 'decoder' ? file!.bytes : files[ref].bytes
    const bytes = decoderTensorBytes({ dims, type })
    if (offset + bytes > size)
      throw new Invalid(
        `${where}: ${bytes} bytes at offset ${offset} run past the end of its file (${size} bytes)`,
      )
    return { file: ref, offset, dims, type }
  }
  const shape = (ref: DecoderTensorRef, where: string, ...allowed: number[][]) => {
    if (!allowed.some((dims) => sameDims(ref.dims, dims)))
      throw new Invalid(
        `${where}.dims [${ref.dims.join(', ')}] are not ` +
          allowed.map((dims) => `[${dims.join(', ')}]`).join(' or '),
      )
    return ref
  }
  const norm = (v: unknown, where: string) => shape(tensor(v, where, ['float32']), where, [H])
  const matrix = (v: unknown, where: string, k: number, n: number): DecoderMatrixRef => {
    const m = object(v, where)
    const weight = tensor(m.weight, `${where}.weight`, ['int8', 'uint8'])
    shape(weight, `${where}.weight`, [k, n])
    const scale = tensor(m.scale, `${where}.scale`, ['float32'])
    shape(scale, `${where}.scale`, [n], [1], [])
    const zeroPoint = tensor(m.zeroPoint, `${where}.zeroPoint`, [weight.type])
    shape(zeroPoint, `${where}.zeroPoint`, [n], [1], [])
    const out: DecoderMatrixRef = { weight, scale, zeroPoint }
    if (m.bias !== undefined)
      out.bias = shape(tensor(m.bias, `${where}.bias`, ['float32']), `${where}.bias`, [n])
    return out
  }

  const layersJson = array(d.layers, `${at}.layers`)
  if (layersJson.length !== config.num_hidden_layers)
    throw new Invalid(
      `${at}.layers has ${layersJson.length} entries but the model has ${config.num_hidden_layers}`,
    )
  const layers = layersJson.map((l, i): DecoderLayerRef => {
    const w = `${at}.layers[${i}]`
    const o = object(l, w)
    return {
      inputNorm: norm(o.inputNorm, `${w}.inputNorm`),
      q: matrix(o.q, `${w}.q`, H, qDim),
      k: matrix(o.k, `${w}.k`, H, kvDim),
      v: matrix(o.v, `${w}.v`, H, kvDim),
      o: matrix(o.o, `${w}.o`, qDim, H),
      postNorm: norm(o.postNorm, `${w}.postNorm`),
      gate: matrix(o.gate, `${w}.gate`, H, I),
      up: matrix(o.up, `${w}.up`, H, I),
      down: matrix(o.down, `${w}.down`, I, H),
    }
  })
  const entry: DecoderEntry = { format, layers, finalNorm: norm(d.finalNorm, `${at}.finalNorm`) }
  if (file) entry.file = file
  return entry
}

function sameDims(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

const REQUIRED_INTS = [
  'vocab_size',
  'hidden_size',
  'intermediate_size',
  'num_hidden_layers',
  'num_attention_heads',
  'num_key_value_heads',
  'max_position_embeddings',
] as const

/**
 * Checks the fields of a Hugging Face `config.json` the engine relies on and returns the object
 * unchanged (every other key kept). Used by the manifest parser and the prepare script.
 */
export function parseArchitectureConfig(json: unknown, at = 'config'): ArchitectureConfig {
  try {
    return readArchitectureConfig(json, at)
  } catch (err) {
    if (err instanceof Invalid)
      throw new AppError('model_invalid', `Invalid model config: ${err.message}`)
    throw err
  }
}

function readArchitectureConfig(json: unknown, at: string): ArchitectureConfig {
  const c = object(json, at)
  for (const k of REQUIRED_INTS) positiveInt(c[k], `${at}.${k}`)
  for (const k of ['rms_norm_eps', 'rope_theta'] as const) {
    if (typeof c[k] !== 'number' || !(c[k] > 0))
      throw new Invalid(`${at}.${k} must be a positive number`)
  }
  if (c.head_dim !== undefined && c.head_dim !== null) positiveInt(c.head_dim, `${at}.head_dim`)
  if ((c.num_attention_heads as number) % (c.num_key_value_heads as number) !== 0) {
    throw new Invalid(`${at}.num_attention_heads is not a multiple of num_key_value_heads`)
  }
  if (c.qwen_edge_synthetic !== undefined)
    object(c.qwen_edge_synthetic, `${at}.qwen_edge_synthetic`)
  return c as ArchitectureConfig
}

function file(json: unknown, at: string): ManifestFile {
  const f = object(json, at)
  const path = string(f.path, `${at}.path`)
  if (!isSafeRelativePath(path))
    throw new Invalid(`${at}.path ${JSON.stringify(path)} is not a safe relative path`)
  const sha256 = string(f.sha256, `${at}.sha256`)
  if (!SHA256_RE.test(sha256)) throw new Invalid(`${at}.sha256 must be 64 lowercase hex digits`)
  return { path, bytes: nonNegativeInt(f.bytes, `${at}.bytes`), sha256 }
}

function object(v: unknown, at: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new Invalid(`${at} must be an object`)
  return v as Record<string, unknown>
}

function array(v: unknown, at: string): unknown[] {
  if (!Array.isArray(v)) throw new Invalid(`${at} must be an array`)
  return v
}

function string(v: unknown, at: string): string {
  if (typeof v !== 'string' || v === '') throw new Invalid(`${at} must be a non-empty string`)
  return v
}

function nonNegativeInt(v: unknown, at: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new Invalid(`${at} must be a non-negative integer`)
  }
  return v
}

function positiveInt(v: unknown, at: string): number {
  if (nonNegativeInt(v, at) === 0) throw new Invalid(`${at} must be positive`)
  return v as number
}
