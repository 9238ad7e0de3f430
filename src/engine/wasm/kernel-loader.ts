/**
 * Loads a package straight into the engine's kernels: the head file and the decoder layers are
 * written into their final place in WASM memory as the shards arrive (each verified first), and
 * a shard is dropped as soon as no layer still waiting needs its bytes. So the load never holds
 * a second full copy of the weights: its peak is the kernels' memory plus the shards in flight
 * and the few a layer spanning them keeps (a layer's matrices lie together in the data file).
 */
import { AppError } from '../../core/errors.ts'
import { freeBuffer } from '../../core/free-buffer.ts'
import {
  decoderLayerTensors,
  decoderSymmetric,
  decoderTensorBytes,
  overlapsSegments,
  placeSegments,
  resolveDecoderFloats,
  resolveDecoderLayer,
  type DecoderTensorRef,
  type FileSegment,
  qwen2Shape,
} from '../../format/index.ts'
import type { BigFile, PackageHandle } from '../package/loader.ts'
import { Q8Decoder, type DecoderOptions } from './decoder.ts'
import { Q8Head } from './head.ts'
import { KernelModel } from './kernel-model.ts'

/** What a streamed load held besides the kernels' memory (tests and reports). */
export interface StreamStats {
  /** Most bytes of shards kept at once for layers that were not complete yet. */
  peakHeldBytes: number
}

export async function streamKernelModel(
  handle: PackageHandle,
  stats: StreamStats = { peakHeldBytes: 0 },
  options: DecoderOptions = {},
): Promise<KernelModel> {
  const { manifest } = handle
  const why = KernelModel.unsupported(manifest)
  if (why) throw new AppError('model_invalid', `The package cannot run in the kernels: ${why}`)
  const head = await Q8Head.allocate(manifest.head!)
  const decoder = await Q8Decoder.allocate(
    qwen2Shape(manifest.config),
    head,
    manifest.decoder!.format,
    { ...options, q4Symmetric: decoderSymmetric(manifest.decoder!) },
  )
  await streamParts(handle, { decoder, head }, stats)
  return KernelModel.of(manifest.config, head, decoder)
}

/** What a streamed load fills: a decoder (its `range` of layers) and/or a head (or its rows). */
export interface StreamTargets {
  decoder?: Q8Decoder
  head?: Q8Head
  /** The parts of the head file `head` holds and where (a row stage); absent: the whole file. */
  headSegments?: FileSegment[]
}

/**
 * Streams the shards the targets need (and only those) into them: the decoder's layers are
 * written as soon as all their tensors have arrived, the head's bytes as they come.
 */
export async function streamParts(
  handle: PackageHandle,
  targets: StreamTargets,
  stats: StreamStats = { peakHeldBytes: 0 },
): Promise<void> {
  const { manifest } = handle
  const { decoder, head } = targets
  const entry = manifest.decoder
  if (decoder && !entry) throw new AppError('model_invalid', 'The package has no decoder map')
  if (head && !manifest.head) throw new AppError('model_invalid', 'The package has no head file')
  const segments = head ? (targets.headSegments ?? [{ from: 0, to: head.fileBytes, at: 0 }]) : []
  const headWant = segments.reduce((n, s) => n + s.to - s.from, 0)
  const pieces = new Pieces()
  const range = decoder?.range ?? [0, 0]
  const waiting = new Map<number, DecoderTensorRef[]>()
  for (let l = range[0]; l < range[1]; l++) waiting.set(l, decoderLayerTensors(entry!.layers[l]))
  let finalNorm: DecoderTensorRef | undefined = decoder?.last ? entry!.finalNorm : undefined
  const refs = [...waiting.values()].flat().concat(finalNorm ? [finalNorm] : [])
  let headBytes = 0

  const wanted = (file: BigFile, offset: number, bytes: number): boolean => {
    if (file.kind === 'head') return overlapsSegments(segments, offset, bytes)
    const key: FileKey = file.kind === 'decoder' ? 'decoder' : file.index
    return refs.some(
      (r) =>
        r.file === key && r.offset < offset + bytes && offset < r.offset + decoderTensorBytes(r),
    )
  }
  const take = (file: BigFile, offset: number, bytes: Uint8Array) => {
    if (file.kind === 'head') {
      for (const p of placeSegments(segments, offset, bytes)) {
        head!.write(p.at, p.bytes)
        headBytes += p.bytes.byteLength
      }
      return
    }
    pieces.add(file.kind === 'decoder' ? 'decoder' : file.index, offset, bytes)
    stats.peakHeldBytes = Math.max(stats.peakHeldBytes, pieces.heldBytes)
    for (const [l, layerRefs] of waiting) {
      if (!layerRefs.every((r) => pieces.has(r))) continue
      decoder!.writeLayer(l, resolveDecoderLayer(entry!.layers[l], l, pieces.bytes))
      pieces.freeJoined()
      waiting.delete(l)
    }
    if (finalNorm && pieces.has(finalNorm)) {
      decoder!.writeFinalNorm(resolveDecoderFloats(finalNorm, 'finalNorm', pieces.bytes))
      pieces.freeJoined()
      finalNorm = undefined
    }
    const needed = [...waiting.values()].flat().concat(finalNorm ? [finalNorm] : [])
    pieces.keepOnly(needed) // and copies out what it keeps of `bytes`: the loader reuses them
  }
  await handle.stream(take, wanted)
  if (waiting.size || finalNorm || headBytes !== headWant)
    throw new AppError('model_invalid', 'The package ended before its decoder map and head did')
}

type FileKey = number | 'decoder'

/** Pieces of the package's files (shards), by file and offset. */
class Pieces {
  private readonly files = new Map<
    FileKey,
    Array<{ offset: number; bytes: Uint8Array; lent?: boolean }>
  >()

  /** A piece lent by the loader (its buffer is reused once the sink returns). */
  add(file: FileKey, offset: number, bytes: Uint8Array): void {
    const list = this.files.get(file) ?? []
    list.push({ offset, bytes, lent: true })
    list.sort((a, b) => a.offset - b.offset)
    this.files.set(file, list)
  }

  /** Whether every byte of the tensor is here. */
  has(ref: DecoderTensorRef): boolean {
    let at = ref.offset
    const end = at + decoderTensorBytes(ref)
    for (const p of this.files.get(ref.file) ?? []) {
      if (at >= end) break
      if (p.offset > at) return false
      at = Math.max(at, p.offset + p.bytes.byteLength)
    }
    return at >= end
  }

  /** Copies made by `bytes` for tensors spanning pieces, until `freeJoined`. */
  private joined: Uint8Array[] = []

  /** The tensor's bytes: a view of its piece, or a copy when it spans several. */
  readonly bytes = (ref: DecoderTensorRef): Uint8Array => {
    const length = decoderTensorBytes(ref)
    const list = this.files.get(ref.file) ?? []
    const one = list.find(
      (p) => p.offset <= ref.offset && ref.offset + length <= p.offset + p.bytes.byteLength,
    )
    if (one) return one.bytes.subarray(ref.offset - one.offset, ref.offset - one.offset + length)
    const out = new Uint8Array(length)
    for (const p of list) {
      const from = Math.max(ref.offset, p.offset)
      const to = Math.min(ref.offset + length, p.offset + p.bytes.byteLength)
      if (from < to) out.set(p.bytes.subarray(from - p.offset, to - p.offset), from - ref.offset)
    }
    this.joined.push(out)
    return out
  }

  /**
   * Frees the copies `bytes` made, once what was resolved from them is written into the
   * kernels (nothing else holds them): their memory goes back now, not at the next collection.
   */
  freeJoined(): void {
    for (const out of this.joined.splice(0)) freeBuffer(out.buffer)
  }

  /**
   * Drops every piece no tensor of `refs` overlaps, and replaces a lent piece that stays by a
   * copy of the bytes those tensors need of it.
   */
  keepOnly(refs: readonly DecoderTensorRef[]): void {
    for (const [file, list] of this.files) {
      const kept: typeof list = []
      for (const p of list) {
        const end = p.offset + p.bytes.byteLength
        let from = end
        let to = p.offset
        for (const r of refs) {
          const rEnd = r.offset + decoderTensorBytes(r)
          if (r.file !== file || r.offset >= end || rEnd <= p.offset) continue
          from = Math.min(from, Math.max(r.offset, p.offset))
          to = Math.max(to, Math.min(rEnd, end))
        }
        if (from >= to) {
          if (!p.lent) freeBuffer(p.bytes.buffer) // a copy this class made: no one else has it
          continue
        }
        if (!p.lent) kept.push(p)
        else kept.push({ offset: from, bytes: p.bytes.slice(from - p.offset, to - p.offset) })
      }
      if (kept.length) this.files.set(file, kept)
      else this.files.delete(file)
    }
  }

  /** Bytes held. */
  get heldBytes(): number {
    let n = 0
    for (const list of this.files.values()) for (const p of list) n += p.bytes.byteLength
    return n
  }
}
