/**
 * The decoder's memory beyond its weights: an arena of blocks in the kernel's linear memory,
 * handed out first fit and merged when given back (the memory itself only grows). Decoding
 * sequences keep their KV cache in a block each; scratch takes blocks too.
 *
 * A sequence's block holds, per layer, the keys of each KV head then their values, `capacity`
 * positions each (a record each: head_dim floats, or head_dim int8 and a scale, keys with their
 * kept-apart channels; kv-format.ts); it grows by moving to a block twice the size. Its block
 * goes back when the sequence is released, or else when the garbage collector finds the
 * sequence unreachable.
 */
import { AppError } from '../../core/errors.ts'
import { kvRecordBytes, type KvFormat } from '../../format/index.ts'

const PAGE = 65536
/** Positions a new sequence gets beyond what it needs now (and the capacity's granule). */
const GROW_MIN = 64

/** What the collector gives back of a sequence nobody released. */
interface Block {
  at: number
  bytes: number
  kept: boolean
}

export interface KvShape {
  layers: number
  kvHeads: number
  headDim: number
  /** How a position is stored ('f32' if absent). */
  kvFormat?: KvFormat
}

/** One decoding sequence's KV in the arena. */
export class KvSequence {
  freed = false
  /** Claimed by the step running now (a cache stepped twice in one batch forks). */
  busy = false
  /**
   * Kept past its stream's end (KvArena.keep): no step extends it in place (they fork), and
   * only its keeper gives it back.
   */
  kept = false
  constructor(
    readonly arena: KvArena,
    public base: number,
    public capacity: number,
    /** Positions written: caches of this length or shorter are its prefixes. */
    public filled: number,
  ) {}
}

export class KvArena {
  private readonly free: Array<{ at: number; bytes: number }> = []
  private end: number
  private live = 0
  private keptCount = 0
  private heldBytes = 0
  private readonly finalizer = new FinalizationRegistry<Block>((b) => {
    this.live--
    if (b.kept) this.keptCount--
    this.heldBytes -= b.bytes
    this.giveBack(b.at, b.bytes)
  })
  /** Bytes of one position of one sequence over all layers. */
  private bytesPerPosition: number
  /** Bytes of one position of one key run and one value run (a layer's KV head). */
  private keyBytes: number
  private valueBytes: number
  /** Whether a sequence was ever allocated (the record sizes are fixed from then on). */
  private used = false
  private f32View?: Float32Array
  private u8View?: Uint8Array
  /**
   * Most bytes the memory may grow to (a pipeline stage's budget); past it, a sequence that
   * needs more fails with `model_unavailable` and the memory stays as it was.
   */
  limitBytes = Infinity

  /** The arena starts at byte `start` of `memory` (after what the caller placed there). */
  constructor(
    private readonly memory: WebAssembly.Memory,
    start: number,
    private readonly shape: KvShape,
  ) {
    this.end = start
    this.keyBytes = this.valueBytes = kvRecordBytes(shape.kvFormat ?? 'f32', shape.headDim)
    this.bytesPerPosition = shape.layers * 2 * shape.kvHeads * this.keyBytes
    this.ensureMemory(start)
  }

  /** Sequences holding arena memory (not yet released or collected). */
  get sequences(): number {
    return this.live
  }

  /** q8 keys: `slots` f32 kept apart in each key record. Only before the first sequence. */
  setKeySlots(slots: number): void {
    if (this.used) throw new Error('the KV record size is fixed once a sequence exists')
    this.keyBytes = kvRecordBytes(this.shape.kvFormat ?? 'f32', this.shape.headDim, slots)
    this.bytesPerPosition =
      this.shape.layers * this.shape.kvHeads * (this.keyBytes + this.valueBytes)
  }

  /** Bytes of one position of a key run (kv 0) or a value run (kv 1). */
  recordBytes(kv: number): number {
    return kv === 0 ? this.keyBytes : this.valueBytes
  }

  /**
   * A new sequence with room for `positions`, and some to grow into unless `exact` (a stream
   * that said how far it may go: KvCache.reserve).
   */
  allocate(positions: number, exact = false): KvSequence {
    this.used = true
    const capacity = exact ? Math.max(1, positions) : align(positions + GROW_MIN, GROW_MIN)
    const bytes = capacity * this.bytesPerPosition
    const s = new KvSequence(this, this.take(bytes), capacity, 0)
    this.track(s)
    this.live++
    this.heldBytes += bytes
    return s
  }

  /** Moves `s` to a block of at least `positions` (doubling), keeping its filled positions. */
  grow(s: KvSequence, positions: number): void {
    this.move(s, Math.max(positions, 2 * s.capacity))
  }

  /** Gives `s`'s block back now; later reads of it must throw (the caller checks `freed`). */
  release(s: KvSequence): void {
    if (s.freed) return
    s.freed = true
    this.live--
    if (s.kept) this.keptCount--
    this.finalizer.unregister(s)
    this.heldBytes -= s.capacity * this.bytesPerPosition
    this.giveBack(s.base, s.capacity * this.bytesPerPosition)
  }

  /**
   * Marks `s` kept (KvSequence.kept) and fits its block to its filled positions, in place: a
   * stream's block has room for all it might have said (KvCache.reserve) and to grow into,
   * which a kept turn never uses. The rest of the block goes back to the arena.
   */
  keep(s: KvSequence): void {
    if (s.freed || s.kept) return
    s.kept = true
    this.keptCount++
    const fitted = Math.max(1, s.filled)
    if (fitted < s.capacity) {
      // each (layer, key|value, head) run of positions moves down to its place at the new
      // stride; a run's new place starts at or before its old one and after the runs before it
      const { layers, kvHeads } = this.shape
      const mem = this.u8()
      for (let l = 0; l < layers; l++)
        for (let kv = 0; kv < 2; kv++)
          for (let g = 0; g < kvHeads; g++) {
            const from = this.runAt(s.base, s.capacity, l, kv, g)
            const to = this.runAt(s.base, fitted, l, kv, g)
            mem.copyWithin(to, from, from + s.filled * this.recordBytes(kv))
          }
      const spare = (s.capacity - fitted) * this.bytesPerPosition
      this.heldBytes -= spare
      this.giveBack(s.base + fitted * this.bytesPerPosition, spare)
      s.capacity = fitted
    }
    this.track(s)
  }

  /** Moves `s` to a new block for `positions` (allocate's room), keeping its filled positions. */
  private move(s: KvSequence, positions: number): void {
    const block = this.allocate(positions)
    this.copyPositions(s, block, s.filled)
    this.finalizer.unregister(block)
    this.live-- // `block` only lent its memory to `s`
    this.heldBytes -= s.capacity * this.bytesPerPosition
    this.giveBack(s.base, s.capacity * this.bytesPerPosition)
    s.base = block.base
    s.capacity = block.capacity
    this.track(s)
  }

  /** (Re)registers `s` so the collector gives back its block as it is now. */
  private track(s: KvSequence): void {
    this.finalizer.unregister(s)
    const bytes = s.capacity * this.bytesPerPosition
    this.finalizer.register(s, { at: s.base, bytes, kept: s.kept }, s)
  }

  /** Bytes of the blocks sequences hold (kept ones included; scratch not). */
  get sequenceBytes(): number {
    return this.heldBytes
  }

  /** Bytes of one position of one sequence over all layers. */
  get positionBytes(): number {
    return this.bytesPerPosition
  }

  /** Kept sequences holding arena memory (KvArena.keep). */
  get keptSequences(): number {
    return this.keptCount
  }

  /** The first `n` positions of `from` into `to`. */
  copyPositions(from: KvSequence, to: KvSequence, n: number): void {
    const { layers, kvHeads } = this.shape
    const mem = this.u8()
    for (let l = 0; l < layers; l++)
      for (let kv = 0; kv < 2; kv++)
        for (let g = 0; g < kvHeads; g++) {
          const src = this.kvAt(from, l, kv, g)
          mem.copyWithin(this.kvAt(to, l, kv, g), src, src + n * this.recordBytes(kv))
        }
  }

  /** Byte offset of position 0 of layer `l`'s key (kv 0) or value (kv 1), KV head `g`. */
  kvAt(s: KvSequence, l: number, kv: number, g: number): number {
    return this.runAt(s.base, s.capacity, l, kv, g)
  }

  /** Where that run starts in a block at `base` laid out for `capacity` positions. */
  private runAt(base: number, capacity: number, l: number, kv: number, g: number): number {
    const { kvHeads } = this.shape
    const layer = base + l * kvHeads * capacity * (this.keyBytes + this.valueBytes)
    return kv === 0
      ? layer + g * capacity * this.keyBytes
      : layer + kvHeads * capacity * this.keyBytes + g * capacity * this.valueBytes
  }

  /** A block of `bytes`: first fit from the free blocks, else the end of the arena. */
  take(bytes: number): number {
    for (let i = 0; i < this.free.length; i++) {
      const f = this.free[i]
      if (f.bytes < bytes) continue
      const at = f.at
      if (f.bytes === bytes) this.free.splice(i, 1)
      else {
        f.at += bytes
        f.bytes -= bytes
      }
      return at
    }
    const at = this.end
    this.ensureMemory(at + bytes)
    this.end = at + bytes
    return at
  }

  giveBack(at: number, bytes: number): void {
    // keep the list sorted and merge neighbours; a block at the end shrinks the arena
    let i = 0
    while (i < this.free.length && this.free[i].at < at) i++
    this.free.splice(i, 0, { at, bytes })
    if (i + 1 < this.free.length && at + bytes === this.free[i + 1].at) {
      this.free[i].bytes += this.free[i + 1].bytes
      this.free.splice(i + 1, 1)
    }
    if (i > 0 && this.free[i - 1].at + this.free[i - 1].bytes === at) {
      this.free[i - 1].bytes += this.free[i].bytes
      this.free.splice(i, 1)
      i--
    }
    const last = this.free[this.free.length - 1]
    if (last && last.at + last.bytes === this.end) {
      this.end = last.at
      this.free.pop()
    }
  }

  /** The whole memory as floats (a new view after the memory grew). */
  f32(): Float32Array {
    const buf = this.memory.buffer
    if (this.f32View?.buffer !== buf) this.f32View = new Float32Array(buf)
    return this.f32View
  }

  /** The whole memory as bytes (a new view after the memory grew). */
  u8(): Uint8Array {
    const buf = this.memory.buffer
    if (this.u8View?.buffer !== buf) this.u8View = new Uint8Array(buf)
    return this.u8View
  }

  private ensureMemory(end: number): void {
    const pages = Math.ceil(end / PAGE) - this.memory.buffer.byteLength / PAGE
    if (pages <= 0) return
    if (Math.ceil(end / PAGE) * PAGE > this.limitBytes)
      throw new AppError(
        'model_unavailable',
        `No memory left for more KV cache: ${Math.ceil(end / 1048576)} MiB would pass the ` +
          `limit of ${Math.floor(this.limitBytes / 1048576)} MiB; retry when other replies end`,
      )
    try {
      this.memory.grow(pages)
    } catch (err) {
      throw new AppError('model_unavailable', 'Out of memory for the KV cache', { cause: err })
    }
  }
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to
}
