/**
 * A package split into stages for isolates too small to hold the whole model (a Worker or a
 * Durable Object has 128 MB): `model:prepare --stage-budget-mib N` records a plan in the
 * manifest (`pipeline`), and each stage loads only the bytes of its part of the package:
 *
 *   - a layer stage: the decoder layers [start, end) in the engine's kernels, with their KV cache
 *     per sequence; the last one also applies the final norm;
 *   - a row stage: the head rows [start, end) (a slice of the vocabulary), which serves both the
 *     tied embedding of the token ids in its range and the logits of its range.
 *
 * The package's files do not change: a stage reads the shards that overlap its byte ranges.
 * The plan's `residentBytes` is this module's estimate of what the stage holds (weights in the
 * kernels' layout, the KV cache for `contextLength` positions of `sequences` sequences, scratch,
 * and a fixed allowance for the isolate's JS and code); a stage measures its own after loading
 * and refuses to run past `budgetBytes`.
 */
import type {
  DecoderFormat,
  HeadFormat,
  PipelineEntry,
  PipelineStage,
  KvFormat,
} from './manifest.ts'
import { headLayout, headStride } from './manifest.ts'
import { q4Blocks, q4PlacedBytes } from './q4-b32.ts'
import type { Qwen2Shape } from './config.ts'

const MiB = 1024 * 1024

/**
 * Memory a stage holds besides its weights, KV and scratch: the isolate's JS heap (the stage's
 * code, the manifest, the decoder's small tensors), the compiled kernel module and V8's own
 * structures. Measured on workerd's inspector for the stage worker (README, "Workers").
 */
export const STAGE_BASE_BYTES = 12 * MiB

/** Hidden rows a row stage plans its logits for at once (a decode batch). */
export const HEAD_BATCH_ROWS = 8

/**
 * Bytes of one weight matrix of `rows` outputs and `cols` inputs in the decoder's kernel layout:
 * 'dqmm' as q8-rows (rows padded to 32 bytes, an int8 zero point and an f32 scale per row),
 * 'nbits' as q4-b32 (21 bytes per block of 32 inputs, blocks in whole groups of 4; 20 in its
 * symmetric layout, `q4Symmetric`; rows in whole panels of 4); each matrix starts 64-byte aligned.
 */
export function kernelMatrixBytes(
  rows: number,
  cols: number,
  format: DecoderFormat,
  q4Symmetric = false,
): number {
  if (format === 'nbits') return align(q4PlacedBytes(rows, q4Blocks(cols), q4Symmetric), 64)
  const stride = align(cols, 32)
  const scale = align(rows * stride + rows, 16)
  return align(scale + 4 * rows, 64)
}

/** Bytes of one decoder layer's matrices in the kernels (q, k, v fused; gate, up fused; o; down). */
export function kernelLayerBytes(
  s: Qwen2Shape,
  format: DecoderFormat,
  q4Symmetric = false,
): number {
  const q = s.heads * s.headDim
  const kv = s.kvHeads * s.headDim
  return (
    kernelMatrixBytes(q + 2 * kv, s.hidden, format, q4Symmetric) +
    kernelMatrixBytes(s.hidden, q, format, q4Symmetric) +
    kernelMatrixBytes(2 * s.intermediate, s.hidden, format, q4Symmetric) +
    kernelMatrixBytes(s.hidden, s.intermediate, format, q4Symmetric)
  )
}

/**
 * f32 slots a q8 key record keeps apart at most: both channels of up to 2 RoPE pairs whose key
 * bias stands far above the rest (the decoder's kv-format.ts picks them).
 */
export const MAX_KEY_SLOTS = 4

/**
 * Bytes of one position of one KV head (a record): head_dim floats, or q8's head_dim int8
 * values, their f32 scale and `slots` f32 kept apart (keys only).
 */
export function kvRecordBytes(format: KvFormat, headDim: number, slots = 0): number {
  return format === 'q8' ? headDim + 4 + 4 * slots : 4 * headDim
}

/**
 * KV cache bytes of one position of one sequence in one layer: a key and a value record per
 * KV head, q8 keys counted with MAX_KEY_SLOTS.
 */
export function kvBytesPerPosition(s: Qwen2Shape, kvFormat: KvFormat = 'f32'): number {
  const key = kvRecordBytes(kvFormat, s.headDim, kvFormat === 'q8' ? MAX_KEY_SLOTS : 0)
  return s.kvHeads * (key + kvRecordBytes(kvFormat, s.headDim))
}

export interface StagePlanOptions {
  contextLength: number
  sequences: number
  chunkRows: number
  /** The KV cache format to count (default 'f32'). */
  kvFormat?: KvFormat
  /** 'nbits' layers in q4-b32's symmetric layout (format decoder-weights.ts `decoderSymmetric`). */
  q4Symmetric?: boolean
}

/**
 * The estimate of a stage's resident memory. Layer stages: weights, the KV cache of
 * `sequences` × `contextLength` positions, the step scratch for `chunkRows` rows, and each
 * layer's norms and biases. Row stages: the rows, and logits scratch for
 * HEAD_BATCH_ROWS hidden rows. Both plus STAGE_BASE_BYTES.
 */
export function stageResidentBytes(
  s: Qwen2Shape,
  part: Pick<PipelineStage, 'layers' | 'rows'>,
  decoder: DecoderFormat,
  head: HeadFormat,
  o: StagePlanOptions,
): number {
  if (part.layers) {
    const n = part.layers[1] - part.layers[0]
    const q = s.heads * s.headDim
    const kv = s.kvHeads * s.headDim
    const widest = Math.max(q + 2 * kv, 2 * s.intermediate, s.hidden)
    const rows = Math.max(o.chunkRows, 4)
    const scratch = 4 * rows * (widest + s.intermediate) + 4 * o.contextLength + 64 * 1024
    // the rest of a forward run's rows: residual, normed rows, attention output (f32 each), and
    // the JS copy of the rows a stage sends on
    const js = 4 * rows * (2 * s.hidden + q + Math.max(s.hidden, q, s.intermediate))
    const small = n * 4 * (2 * s.hidden + q + 2 * kv)
    return (
      STAGE_BASE_BYTES +
      n * kernelLayerBytes(s, decoder, o.q4Symmetric) +
      n * o.sequences * o.contextLength * kvBytesPerPosition(s, o.kvFormat) +
      scratch +
      js +
      small
    )
  }
  if (part.rows) {
    const n = part.rows[1] - part.rows[0]
    const stride = headStride(s.hidden, head)
    const weights = headLayout(n, stride, head).bytes
    // logits of a decode batch (a prompt needs its last row only), and the JS copy sent back
    const scratch = HEAD_BATCH_ROWS * (4 * Math.max(n, s.hidden) + 2 * stride + 64)
    return STAGE_BASE_BYTES + weights + 2 * scratch
  }
  throw new Error('a stage holds layers or rows')
}

/**
 * The plan for a budget: as few layer stages as fit (consecutive layers, in order), then the
 * head's rows cut into as few equal slices as fit. Throws when one layer, or one row slice of
 * a thousand tokens, does not fit.
 */
export function planPipeline(
  s: Qwen2Shape,
  decoder: DecoderFormat,
  head: HeadFormat,
  budgetBytes: number,
  o: StagePlanOptions,
): PipelineEntry {
  const stages: PipelineStage[] = []
  const est = (part: Pick<PipelineStage, 'layers' | 'rows'>) =>
    stageResidentBytes(s, part, decoder, head, o)
  let start = 0
  while (start < s.layers) {
    let end = start + 1
    if (est({ layers: [start, end] }) > budgetBytes)
      throw new Error(
        `one decoder layer needs ${mib(est({ layers: [start, end] }))} MiB with a ` +
          `${o.contextLength}-position KV cache for ${o.sequences} sequences: more than ` +
          `the budget of ${mib(budgetBytes)} MiB`,
      )
    while (end < s.layers && est({ layers: [start, end + 1] }) <= budgetBytes) end++
    stages.push({ layers: [start, end], residentBytes: est({ layers: [start, end] }) })
    start = end
  }
  for (let slices = 1; ; slices++) {
    const size = Math.ceil(s.vocab / slices)
    if (size < 1000)
      throw new Error(`the head does not fit the budget of ${mib(budgetBytes)} MiB in any slices`)
    if (est({ rows: [0, size] }) > budgetBytes) continue
    for (let r = 0; r < s.vocab; r += size) {
      const rows: [number, number] = [r, Math.min(s.vocab, r + size)]
      stages.push({ rows, residentBytes: est({ rows }) })
    }
    break
  }
  const { kvFormat, ...rest } = o
  return { budgetBytes, ...rest, ...(kvFormat === 'q8' && { kvFormat }), stages }
}

/** The layer stages of a plan, in order, and its row stages. */
export function pipelineParts(p: PipelineEntry): {
  layers: Array<{ index: number; layers: [number, number] }>
  rows: Array<{ index: number; rows: [number, number] }>
} {
  const layers: Array<{ index: number; layers: [number, number] }> = []
  const rows: Array<{ index: number; rows: [number, number] }> = []
  p.stages.forEach((st, index) => {
    if (st.layers) layers.push({ index, layers: st.layers })
    else if (st.rows) rows.push({ index, rows: st.rows })
  })
  return { layers, rows }
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to
}

function mib(n: number): string {
  return (n / MiB).toFixed(1)
}

/** A byte range [from, to) of a file, and where it goes in the stage's copy (`at`). */
export interface FileSegment {
  from: number
  to: number
  at: number
}

/**
 * The parts of the head file a row stage holds, and where each goes in the file of a head of
 * just those rows (`headLayout(end - start, stride, format)`): the rows, and for 'q8-rows'
 * their zero points and scales.
 */
export function headSliceSegments(
  head: { format: HeadFormat; vocab: number; stride: number },
  rows: readonly [number, number],
): FileSegment[] {
  const [a, b] = rows
  const whole = headLayout(head.vocab, head.stride, head.format)
  const part = headLayout(b - a, head.stride, head.format)
  const segments = [{ from: a * head.stride, to: b * head.stride, at: 0 }]
  if (head.format === 'q8-rows')
    segments.push(
      { from: whole.zeroPoints + a, to: whole.zeroPoints + b, at: part.zeroPoints },
      { from: whole.scales + 4 * a, to: whole.scales + 4 * b, at: part.scales },
    )
  return segments
}

/** The pieces of `bytes` (at `offset` of the file) that fall in `segments`, placed. */
export function placeSegments(
  segments: readonly FileSegment[],
  offset: number,
  bytes: Uint8Array,
): Array<{ at: number; bytes: Uint8Array }> {
  const out: Array<{ at: number; bytes: Uint8Array }> = []
  const end = offset + bytes.byteLength
  for (const s of segments) {
    const from = Math.max(s.from, offset)
    const to = Math.min(s.to, end)
    if (from < to)
      out.push({ at: s.at + from - s.from, bytes: bytes.subarray(from - offset, to - offset) })
  }
  return out
}

/** Whether [offset, offset + bytes) overlaps a segment. */
export function overlapsSegments(
  segments: readonly FileSegment[],
  offset: number,
  bytes: number,
): boolean {
  return segments.some((s) => s.from < offset + bytes && offset < s.to)
}
