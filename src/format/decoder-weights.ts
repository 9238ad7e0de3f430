/**
 * The weights of the decoder layers as the engine's own decoder (engine/wasm/decoder.ts) takes
 * them: views into the package's bytes, resolved from the manifest's `decoder` entry. The
 * matrices are the graph's operands as they are: a q8 graph's DynamicQuantizeMatMul (B [k, n]
 * row-major, y = x · B, one scale and zero point per column or for the whole matrix) or a q4
 * graph's MatMulNBits (q4-b32.ts `MatMulNBitsTensors`: rows of 4-bit blocks), and a bias.
 */
import { AppError } from '../core/errors.ts'
import type { MatMulNBitsTensors } from './q4-b32.ts'
import {
  decoderTensorBytes,
  type DecoderEntry,
  type DecoderLayerRef,
  type DecoderMatrixRef,
  type DecoderTensorRef,
} from './manifest.ts'

export type DecoderMatrixData = DqmmMatrixData | NBitsMatrixData

export interface DqmmMatrixData {
  kind?: 'dqmm'
  /** Input size (rows of B). */
  k: number
  /** Output size (columns of B). */
  n: number
  /** B, k × n bytes, row-major; int8 when `signed`, else uint8. */
  weight: Uint8Array
  signed: boolean
  /** n values, or 1 for the whole matrix. */
  scale: Float32Array
  /** n or 1 bytes, same signedness as `weight`. */
  zeroPoint: Uint8Array
  /** n values, added after the product. */
  bias?: Float32Array
}

export interface NBitsMatrixData {
  kind: 'nbits'
  k: number
  n: number
  /** The operands as the graph holds them (float16 scales as raw bits). */
  tensors: MatMulNBitsTensors
  bias?: Float32Array
}

export interface DecoderLayerData {
  /** RMSNorm weight before attention: hidden values. */
  inputNorm: Float32Array
  q: DecoderMatrixData
  k: DecoderMatrixData
  v: DecoderMatrixData
  o: DecoderMatrixData
  /** RMSNorm weight before the MLP. */
  postNorm: Float32Array
  gate: DecoderMatrixData
  up: DecoderMatrixData
  down: DecoderMatrixData
}

export interface DecoderWeights {
  layers: DecoderLayerData[]
  /** The final RMSNorm weight: its output is the graph's `hidden_states`. */
  finalNorm: Float32Array
}

/** The bytes of one tensor of the decoder entry (`what` names it in errors). */
export type DecoderTensorBytes = (ref: DecoderTensorRef, what: string) => Uint8Array

/**
 * The decoder weights of a manifest's `decoder` entry as views into the loaded bytes: the stage's
 * external-data buffers (in `stages[0].externalData` order) and the decoder file. Nothing is
 * copied, except a float32 tensor whose offset in its buffer is not a multiple of 4 (a
 * Float32Array cannot view it; prepare aligns every tensor, so this does not happen with its
 * packages). The views keep the buffers alive.
 */
export function resolveDecoderWeights(
  entry: DecoderEntry,
  externalData: readonly Uint8Array[],
  decoderFile?: Uint8Array,
): DecoderWeights {
  const bytes = (ref: DecoderTensorRef, what: string): Uint8Array => {
    const file = ref.file === 'decoder' ? decoderFile : externalData[ref.file]
    const length = decoderTensorBytes(ref)
    if (!file || ref.offset + length > file.byteLength)
      throw new AppError(
        'model_invalid',
        `Decoder tensor ${what}: ${length} bytes at ${ref.offset} are outside ` +
          (file ? `its file (${file.byteLength} bytes)` : `file ${ref.file}, which is missing`),
      )
    return file.subarray(ref.offset, ref.offset + length)
  }
  return {
    layers: entry.layers.map((l, i) => resolveDecoderLayer(l, i, bytes)),
    finalNorm: resolveDecoderFloats(entry.finalNorm, 'finalNorm', bytes),
  }
}

/** What `decoderSymmetric` reads of a layer's matrix: a map's ref, or the toolchain's names. */
type ZeroPointOf = { kind?: string; zeroPoint?: unknown }

/**
 * Whether every matrix of an 'nbits' entry comes without zero points (all 8: MatMulNBits'
 * default; prepare leaves out zero points that are all 8), so the decoder lays its q4 matrices out
 * in the symmetric layout (q4-b32.ts) before any weight arrives.
 */
export function decoderSymmetric(entry: {
  format: DecoderEntry['format']
  layers: ReadonlyArray<Record<'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down', ZeroPointOf>>
}): boolean {
  return (
    entry.format === 'nbits' &&
    entry.layers.every((l) =>
      [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].every((m) => m.kind === 'nbits' && !m.zeroPoint),
    )
  )
}

/** Every tensor a layer of the entry reads. */
export function decoderLayerTensors(l: DecoderLayerRef): DecoderTensorRef[] {
  const out = [l.inputNorm, l.postNorm]
  for (const m of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) {
    out.push(m.weight, m.scale)
    if (m.zeroPoint) out.push(m.zeroPoint)
    if (m.bias) out.push(m.bias)
  }
  return out
}

/** A float32 tensor as a Float32Array (a copy only when its bytes are not 4-byte aligned). */
export function resolveDecoderFloats(
  ref: DecoderTensorRef,
  what: string,
  bytes: DecoderTensorBytes,
): Float32Array {
  const b = bytes(ref, what)
  const aligned = b.byteOffset % 4 === 0 ? b : new Uint8Array(b) // a copy, also of a Buffer
  return new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 4)
}

/** Layer `i` of the entry, its tensors from `bytes`. */
export function resolveDecoderLayer(
  l: DecoderLayerRef,
  i: number,
  bytes: DecoderTensorBytes,
): DecoderLayerData {
  const floats = (ref: DecoderTensorRef, what: string) => resolveDecoderFloats(ref, what, bytes)
  const matrix = (m: DecoderMatrixRef, what: string): DecoderMatrixData => {
    const bias = m.bias && floats(m.bias, `${what}.bias`)
    if (m.kind !== 'nbits')
      return {
        k: m.weight.dims[0],
        n: m.weight.dims[1],
        weight: bytes(m.weight, `${what}.weight`),
        signed: m.weight.type === 'int8',
        scale: floats(m.scale, `${what}.scale`),
        zeroPoint: bytes(m.zeroPoint, `${what}.zeroPoint`),
        ...(bias && { bias }),
      }
    const scaleBytes = bytes(m.scale, `${what}.scale`)
    const scales =
      m.scale.type === 'float16'
        ? new Uint16Array(
            (scaleBytes.byteOffset % 2 ? new Uint8Array(scaleBytes) : scaleBytes).buffer,
            scaleBytes.byteOffset % 2 ? 0 : scaleBytes.byteOffset,
            scaleBytes.byteLength / 2,
          )
        : floats(m.scale, `${what}.scale`)
    const { k, n } = m
    return {
      kind: 'nbits',
      k,
      n,
      tensors: {
        n,
        k,
        bits: m.bits,
        blockSize: m.blockSize,
        b: bytes(m.weight, `${what}.weight`),
        scales,
        ...(m.zeroPoint && { zeroPoints: bytes(m.zeroPoint, `${what}.zeroPoint`) }),
      },
      ...(bias && { bias }),
    }
  }
  const at = `layers[${i}]`
  return {
    inputNorm: floats(l.inputNorm, `${at}.inputNorm`),
    q: matrix(l.q, `${at}.q`),
    k: matrix(l.k, `${at}.k`),
    v: matrix(l.v, `${at}.v`),
    o: matrix(l.o, `${at}.o`),
    postNorm: floats(l.postNorm, `${at}.postNorm`),
    gate: matrix(l.gate, `${at}.gate`),
    up: matrix(l.up, `${at}.up`),
    down: matrix(l.down, `${at}.down`),
  }
}
