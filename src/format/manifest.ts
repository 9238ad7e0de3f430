/**
 * The model package format ("model-shards"): `<id>/manifest.json` names every other file of
 * the package with its byte size and sha256. The types and layouts here; naming rules in
 * names.ts, validation in parse.ts. Shared by the model toolchain (writer) and the package
 * loader (reader).
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
import { q4Blocks, q4RowBytes } from './q4-b32.ts'
import type { Qwen2Config } from './config.ts'

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
export const STAGE_IO: readonly StageIo[] = [
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

export type HeadFormat = 'q8-rows' | 'q4-b32' | 'q4s-b32'
export const HEAD_FORMATS: readonly HeadFormat[] = ['q8-rows', 'q4-b32', 'q4s-b32']

/** Whether a head format holds 4-bit rows: 'q4-b32', or 'q4s-b32' (its symmetric layout). */
export function isQ4Head(format: HeadFormat): boolean {
  return format === 'q4-b32' || format === 'q4s-b32'
}

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
 *
 * 'q4-b32' (q4-b32.ts): row v at v * stride, stride = 21 * blocks bytes (4-bit values, f32
 * scale and u8 zero point per block of 32 inputs); embedding[t][k] is its dequantized value.
 * 'q4s-b32': the same in q4-b32's symmetric layout (an lm_head whose zero points are all 8, or
 * absent): stride = 20 * blocks, no zero points stored.
 */
export interface HeadEntry {
  format: HeadFormat
  vocab: number
  hidden: number
  /**
   * Bytes per row: hidden rounded up to a multiple of 32 ('q8-rows'), 21 per block ('q4-b32'),
   * 20 per block ('q4s-b32').
   */
  stride: number
  /** True when the graph takes `inputs_embeds`: the embedding is looked up from these rows (tied weights). */
  embedding: boolean
  /** The head file, cut into shards like external data: location 'head.q8', shards 'head.q8.000' … */
  file: ExternalDataEntry
}

/** The head file prepare writes (its shards: `head.q8.000` …); a 4-bit head is 'head.q4'. */
export const HEAD_FILE = 'head.q8'
/** Rows of a 'q8-rows' head file start on multiples of this many bytes. */
export const HEAD_ROW_ALIGN = 32

export function headFileName(format: HeadFormat): string {
  return isQ4Head(format) ? 'head.q4' : HEAD_FILE
}

/** Bytes per head row for a hidden size. */
export function headStride(hidden: number, format: HeadFormat = 'q8-rows'): number {
  if (isQ4Head(format)) return q4RowBytes(q4Blocks(hidden), format === 'q4s-b32')
  return Math.ceil(hidden / HEAD_ROW_ALIGN) * HEAD_ROW_ALIGN
}

/**
 * Byte offsets of the parts of a head file, and its size (a 4-bit head has its scales and zero
 * points inside the rows: both offsets are its size).
 */
export function headLayout(
  vocab: number,
  stride: number,
  format: HeadFormat = 'q8-rows',
): { rows: 0; zeroPoints: number; scales: number; bytes: number } {
  if (isQ4Head(format)) {
    const bytes = vocab * stride
    return { rows: 0, zeroPoints: bytes, scales: bytes, bytes }
  }
  const zeroPoints = vocab * stride
  const scales = Math.ceil((zeroPoints + vocab) / 4) * 4
  return { rows: 0, zeroPoints, scales, bytes: scales + 4 * vocab }
}

/**
 * 'dqmm': every matrix is a q8 graph's DynamicQuantizeMatMul; 'nbits': every matrix is a q4
 * graph's MatMulNBits (4 bits), as onnx-community's q4 / q4f16 exports and `model:make --format
 * q4` hold them.
 */
export type DecoderFormat = 'dqmm' | 'nbits'
export const DECODER_FORMATS: readonly DecoderFormat[] = ['dqmm', 'nbits']

export type DecoderTensorType = 'int8' | 'uint8' | 'float32' | 'float16'
export const DECODER_TENSOR_BYTES: Record<DecoderTensorType, number> = {
  int8: 1,
  uint8: 1,
  float32: 4,
  float16: 2,
}

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
export interface DqmmMatrixRef {
  /** Absent in packages written before 'nbits' existed. */
  kind?: 'dqmm'
  /** [K, N] row-major, int8 or uint8. */
  weight: DecoderTensorRef
  /** float32 [N], [1] or []. */
  scale: DecoderTensorRef
  /** Same type as `weight`: [N], [1] or []. */
  zeroPoint: DecoderTensorRef
  /** float32 [N]. */
  bias?: DecoderTensorRef
}

/**
 * One `com.microsoft MatMulNBits` of the graph with bits 4, its operands as they are: output n
 * is Σ_i x[i] · (q[n, i] − zp[n, b]) · scale[n, b] + bias[n], b = ⌊i / blockSize⌋; the engine
 * repacks them into 'q4-b32' (q4-b32.ts) without changing a value.
 */
export interface NBitsMatrixRef {
  kind: 'nbits'
  bits: 4
  /** Inputs (MatMulNBits' attribute K). */
  k: number
  /** Outputs (attribute N). */
  n: number
  /** Inputs per block: a multiple of 32. */
  blockSize: number
  /** uint8 [N, blocks, blockSize / 2]: input 2t of a block in the low nibble of byte t. */
  weight: DecoderTensorRef
  /** float32 or float16, [N · blocks] or [N, blocks]. */
  scale: DecoderTensorRef
  /** uint8 [N · ⌈blocks / 2⌉] or [N, ⌈blocks / 2⌉], block 2t in the low nibble; absent: 8. */
  zeroPoint?: DecoderTensorRef
  /** float32 [N]. */
  bias?: DecoderTensorRef
}

export type DecoderMatrixRef = DqmmMatrixRef | NBitsMatrixRef

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
 * wasm`, the default with a head split; decoder-weights.ts resolves them): every
 * DynamicQuantizeMatMul (or MatMulNBits) operand and RMSNorm weight of every layer, and the final norm, whose
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

/** One stage of a package split for small isolates (pipeline.ts plans them). */
export interface PipelineStage {
  /** Decoder layers [start, end) (a layer stage). */
  layers?: [number, number]
  /** Head rows [start, end) (a row stage: embedding lookups and logits of those tokens). */
  rows?: [number, number]
  /** The plan's estimate of the stage's resident memory (see `stageResidentBytes`). */
  residentBytes: number
}

/**
 * How the engine's decoder stores a position of its KV cache (KV_FORMAT; a stage plan counts
 * one): f32, or q8 records of int8 values and a scale per position and KV head
 * (`kvRecordBytes`).
 */
export type KvFormat = 'f32' | 'q8'
export const KV_FORMATS: readonly KvFormat[] = ['f32', 'q8']

export interface PipelineEntry {
  /** Most bytes one stage may hold (its isolate's share of memory). */
  budgetBytes: number
  /** Positions of KV cache per sequence a layer stage plans for. */
  contextLength: number
  /** Sequences at `contextLength` a layer stage plans for at once. */
  sequences: number
  /** Prompt rows per forward run a stage plans scratch for. */
  chunkRows: number
  /**
   * The KV cache format the plan counted ('q8': int8 records, see `kvBytesPerPosition`); a layer
   * stage runs it unless its KV_FORMAT says otherwise. Absent: 'f32'.
   */
  kvFormat?: KvFormat
  /** Layer stages in order (their ranges tile [0, layers)), then row stages (tiling [0, vocab)). */
  stages: PipelineStage[]
}

export interface Manifest {
  version: typeof MANIFEST_VERSION
  id: string
  /** True when the config carries `qwen_edge_synthetic` (random weights from the generator). */
  synthetic: boolean
  /** The model's config.json, verbatim. */
  config: Qwen2Config
  /** generation_config.json verbatim, `{}` when the export has none. */
  generationConfig: Record<string, unknown>
  tokenizer: { json: ManifestFile; config: ManifestFile }
  stages: Stage[]
  /** Present when the lm_head runs outside the graph: the stages end in hidden states. */
  head?: HeadEntry
  /** Present when the engine can run the decoder layers itself (needs `head`). */
  decoder?: DecoderEntry
  /**
   * Present when the package is split into stages for small isolates (pipeline.ts; needs
   * `decoder` and a head with the embedding). Readers that ignore it still run the whole model.
   */
  pipeline?: PipelineEntry
  /** Nominal shard size the package was cut with (the last shard of a file is shorter). */
  shardBytes: number
  /** Sum of every file listed (tokenizer, graphs, shards, head, decoder); the manifest not included. */
  totalBytes: number
  /** Where the package came from (informational). */
  source?: { onnxFile?: string; repo?: string; revision?: string }
  createdAt?: string
}
