/**
 * A property test of who owns which KV positions in the decoder (decoder.ts): seeded random
 * steps, steps of older caches, batches (one cache in several rows), releases, and copies out to
 * the graph's layout and back in, over a handful of live caches of the tiny q8 model.
 *
 * The model it is checked against is plain: each live cache holds a sequence of token ids, and a
 * position's values depend only on the ids up to it. Each new position's values (and logits)
 * come first from a reference step of a fresh sequence, imported from the recorded positions
 * before it (the import path: no growth, fork or shared sequence), and the decoder's rows are
 * bit-identical to single steps, so after every operation each live cache must read back exactly
 * the recorded values of its ids. The model also tracks which caches share a sequence (a step
 * of its newest cache, not already claimed in the batch, grows it in place; anything else gets a
 * new one), so that it can say how many sequences hold memory and which caches a release ends.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import { ResidentCache, type Q8Decoder } from '../../../src/engine/wasm/decoder.ts'
import { QwenModel } from '../../../src/engine/graph/model.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'
import { ort, type Tensor } from '../../../src/engine/graph/ort.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import { ensureModel } from '../../helpers/models.ts'

const TOKENS = [100, 137, 174, 211, 248, 285, 322, 359]
/** Above this many live caches the next operation is a release. */
const MAX_LIVE = 8
/** Caches this long are not stepped again (keeps a round short; growth happens well before). */
const MAX_LENGTH = 200

/** mulberry32 */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Caches that share one sequence in the decoder, as the model predicts them. */
interface Group {
  /** Length of its newest cache: only that one grows the sequence in place. */
  filled: number
  freed: boolean
  sequence?: object
}

interface Handle {
  cache: KvCache
  ids: number[]
  /** What the reference wrote at each of its positions. */
  written: Written[]
  /** Undefined for a cache copied out (plain tensors, not in the decoder). */
  group?: Group
}

/** A position as written by the reference step: its KV values, and the step's logits. */
interface Written {
  kv: Float32Array
  logits: Float32Array
}

interface Counts {
  ops: number
  steps: number
  inPlace: number
  forks: number
  sameCacheTwice: number
  grows: number
  releases: number
  copies: number
  copiesStepped: number
}

const key = (ids: readonly number[]) => ids.join(',')

function sameFloats(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false
  return true
}

describe('decoder KV ownership, random operations against a model (tiny, q8)', () => {
  let work: string
  let model: QwenModel
  let decoder: Q8Decoder

  beforeAll(async () => {
    const hf = await ensureModel('tiny', 'q8')
    work = await mkdtemp(join(tmpdir(), 'qwen-edge-ownership-'))
    await preparePackage({ folder: hf, id: 'tiny', out: work, quiet: true, verify: false })
    // a decoder of its own: no other test's sequences in its count or its arena
    model = await QwenModel.load(await loadPackage(fsSource(work), 'tiny'))
    decoder = model.decoder!
  })

  afterAll(async () => {
    await model?.release()
    if (work) await rm(work, { recursive: true, force: true })
  })

  it('every live cache holds exactly its ids; releases end their sequence and give memory back', () => {
    const { layers, kvHeads, headDim: D } = decoder.shape
    const names = Array.from({ length: layers }, (_, l) => [
      `past_key_values.${l}.key`,
      `past_key_values.${l}.value`,
    ]).flat()

    /** Position `p` of graph-layout tensors of `n` positions: per layer, key|value, KV head. */
    const positionOf = (tensors: Readonly<Record<string, Tensor>>, n: number, p: number) => {
      const out = new Float32Array(names.length * kvHeads * D)
      names.forEach((name, i) => {
        const data = tensors[name].data as Float32Array
        for (let g = 0; g < kvHeads; g++)
          out.set(data.subarray((g * n + p) * D, (g * n + p + 1) * D), (i * kvHeads + g) * D)
      })
      return out
    }

    /** The first position of graph-layout tensors that is not `want`'s (-1: other dims). */
    const firstWrong = (tensors: Readonly<Record<string, Tensor>>, want: Written[]) => {
      const n = want.length
      let wrong = Infinity
      names.forEach((name, i) => {
        const t = tensors[name]
        if (t.dims.join() !== [1, kvHeads, n, D].join()) wrong = -1
        const data = t.data as Float32Array
        for (let p = 0; p < Math.min(n, wrong); p++)
          for (let g = 0; g < kvHeads; g++) {
            const from = (g * n + p) * D
            const kv = want[p].kv
            const at = (i * kvHeads + g) * D
            for (let d = 0; d < D; d++)
              if (!Object.is(data[from + d], kv[at + d])) {
                wrong = Math.min(wrong, p)
                break
              }
          }
      })
      return wrong
    }

    /** Graph-layout tensors made of these positions. */
    const tensorsOf = (positions: Float32Array[]): Record<string, Tensor> => {
      const n = positions.length
      const tensors: Record<string, Tensor> = {}
      names.forEach((name, i) => {
        const data = new Float32Array(kvHeads * n * D)
        positions.forEach((pos, p) => {
          for (let g = 0; g < kvHeads; g++)
            data.set(
              pos.subarray((i * kvHeads + g) * D, (i * kvHeads + g + 1) * D),
              (g * n + p) * D,
            )
        })
        tensors[name] = new ort.Tensor('float32', data, [1, kvHeads, n, D])
      })
      return tensors
    }

    /** A decoder cache's positions read from its sequence now (not a copy kept by `tensors`). */
    const readNow = (cache: KvCache) => {
      const { decoder, sequence, length } = cache as ResidentCache
      return decoder.exportKv(sequence, length)
    }

    function round(seed: number, opCount: number) {
      const random = prng(seed)
      const pick = <T>(a: readonly T[]): T => a[Math.floor(random() * a.length)]
      const written = new Map<string, Written>()
      let live: Handle[] = []
      const dead: Handle[] = []
      const counts: Counts = {
        ops: 0,
        steps: 0,
        inPlace: 0,
        forks: 0,
        sameCacheTwice: 0,
        grows: 0,
        releases: 0,
        copies: 0,
        copiesStepped: 0,
      }
      let op = ''

      /**
       * The reference: the last position of each `ids` after its `before`, in fresh sequences
       * imported from those positions (one batch: rows are their single steps exactly).
       */
      const reference = (rows: Array<{ before: Written[]; ids: number[] }>): Written[] => {
        const todo = rows.filter((r, i) => {
          const k = key(r.ids)
          return !written.has(k) && rows.findIndex((x) => key(x.ids) === k) === i
        })
        if (todo.length) {
          const plain = todo.map(({ before }) => ({
            length: before.length,
            tensors: tensorsOf(before.map((b) => b.kv)),
          }))
          const results = decoder.step(
            todo.map((r) => r.ids.at(-1)!),
            plain,
          )
          results.forEach((res, i) => {
            const n = todo[i].ids.length
            const kv = positionOf(readNow(res.cache), n, n - 1)
            written.set(key(todo[i].ids), { kv, logits: res.logits.slice() })
          })
          for (const res of results) decoder.release(res.cache)
        }
        return rows.map((r) => written.get(key(r.ids))!)
      }

      /** One decoder step of these rows (a batch when more than one); returns the new caches. */
      const step = (rows: Array<{ handle: Handle; token: number }>): Handle[] => {
        const next = rows.map((r) => [...r.handle.ids, r.token])
        const wrote = reference(rows.map((r, i) => ({ before: r.handle.written, ids: next[i] })))
        // the model: the first row that steps its group's newest cache grows it in place
        const claimed = new Set<Group>()
        const groups = rows.map(({ handle: h }) => {
          const g = h.group
          if (g && g.filled === h.ids.length && !claimed.has(g)) {
            claimed.add(g)
            return {
              group: g,
              inPlace: true,
              capacity: (h.cache as ResidentCache).sequence.capacity,
            }
          }
          if (g && claimed.has(g) && g.filled === h.ids.length) counts.sameCacheTwice++
          if (!g && h.ids.length > 0) counts.copiesStepped++
          return { group: { filled: 0, freed: false } as Group, inPlace: false, capacity: 0 }
        })
        const results = decoder.step(
          rows.map((r) => r.token),
          rows.map((r) => r.handle.cache),
        )
        counts.steps++
        return results.map((res, r) => {
          const { group, inPlace, capacity } = groups[r]
          const ids = next[r]
          const logitsOk = sameFloats(res.logits, wrote[r].logits)
          expect(logitsOk, `${op}: row ${r}'s logits are not its reference step's`).toBe(true)
          const sequence = (res.cache as ResidentCache).sequence
          if (inPlace) {
            counts.inPlace++
            expect(sequence, `${op}: row ${r} should grow its sequence in place`).toBe(
              group.sequence,
            )
            if (sequence.capacity !== capacity) counts.grows++
          } else {
            counts.forks++
            group.sequence = sequence
          }
          group.filled = ids.length
          return { cache: res.cache, ids, written: [...rows[r].handle.written, wrote[r]], group }
        })
      }

      const check = () => {
        const failures: string[] = []
        const groups = new Set<Group>()
        const sequences = new Set<object>()
        for (const [i, h] of live.entries()) {
          const n = h.ids.length
          if (h.cache.length !== n) failures.push(`cache ${i}: length ${h.cache.length}, not ${n}`)
          if (h.group) {
            expect(h.group.freed).toBe(false)
            groups.add(h.group)
            sequences.add(h.group.sequence!)
            if ((h.cache as ResidentCache).sequence !== h.group.sequence)
              failures.push(`cache ${i}: not in its group's sequence`)
          }
          const wrong = firstWrong(h.group ? readNow(h.cache) : h.cache.tensors, h.written)
          if (wrong < 0) failures.push(`cache ${i} (${n} ids): tensors of another length`)
          else if (wrong < n)
            failures.push(`cache ${i} (${n} ids): position ${wrong} is not what its ids give`)
        }
        expect(failures, `${op}:\n${failures.join('\n')}`).toEqual([])
        expect(sequences.size, `${op}: two groups in one sequence`).toBe(groups.size)
        // every sequence holding memory is one the model knows, and no other
        expect(decoder.sequences, `${op}: sequences holding memory`).toBe(groups.size)
        for (const d of dead.slice(-3)) {
          expect(() => readNow(d.cache), `${op}: read after release`).toThrow(/released/)
          expect(() => decoder.step([TOKENS[0]], [d.cache]), `${op}: step`).toThrow(/released/)
        }
      }

      const root: Handle = { cache: model.emptyCache(), ids: [], written: [] }
      const steppable = () => live.filter((h) => h.ids.length < MAX_LENGTH)

      for (let i = 0; i < opCount; i++) {
        counts.ops++
        const canStep = steppable()
        const r = random()
        if (live.length > MAX_LIVE || (canStep.length === 0 && live.length > 0) || r < 0.1) {
          if (live.length === 0) continue
          // release: every cache of its sequence ends with it; a copied-out cache is not the
          // decoder's (it is left alone, checked before it is dropped here). The longest cache
          // is kept, so that runs of steps make it outgrow its sequence.
          const longest = live.reduce((a, b) => (b.ids.length > a.ids.length ? b : a))
          const h = pick(live.length > 1 ? live.filter((x) => x !== longest) : live)
          op = `#${i} release (${h.ids.length} ids${h.group ? '' : ', copied out'})`
          model.releaseCache(h.cache)
          if (h.group) {
            counts.releases++
            h.group.freed = true
            dead.push(...live.filter((x) => x.group === h.group))
            live = live.filter((x) => x.group !== h.group)
          } else {
            check()
            live = live.filter((x) => x !== h)
          }
        } else if (r < 0.2) {
          // copied out to the graph's layout; stepping it copies it back in
          const h = pick(live.length ? live : [root])
          op = `#${i} copy out (${h.ids.length} ids)`
          if (h === root) continue
          counts.copies++
          const cache = { length: h.cache.length, tensors: h.cache.tensors }
          live.push({ cache, ids: h.ids, written: h.written })
        } else if (r < 0.5 || canStep.length === 0) {
          // one step of any cache: the newest of its sequence, an older one, or a new sequence
          const h = canStep.length === 0 || random() < 0.08 ? root : pick(canStep)
          op = `#${i} step (${h.ids.length} ids)`
          live.push(...step([{ handle: h, token: pick(TOKENS) }]))
        } else if (r < 0.65) {
          // a run of steps, often of the longest cache: long enough to outgrow a sequence
          const longest = canStep.reduce((a, b) => (b.ids.length > a.ids.length ? b : a))
          let h = random() < 0.6 ? longest : pick(canStep)
          const k = Math.min(16 + Math.floor(random() * 33), MAX_LENGTH - h.ids.length)
          op = `#${i} run of ${k} steps (from ${h.ids.length} ids)`
          for (let s = 0; s < k; s++) [h] = step([{ handle: h, token: pick(TOKENS) }])
          live.push(h)
        } else {
          // a batch of 2-4 rows with different tokens; a row may repeat the row before it
          const n = 2 + Math.floor(random() * 3)
          const tokens = [...TOKENS].sort(() => random() - 0.5).slice(0, n)
          const rows: Array<{ handle: Handle; token: number }> = []
          for (const token of tokens) {
            const handle = rows.length && random() < 0.35 ? rows.at(-1)!.handle : pick(canStep)
            rows.push({ handle, token })
          }
          op = `#${i} batch of ${rows.map((x) => x.handle.ids.length).join(', ')} ids`
          live.push(...step(rows))
        }
        check()
      }
      // the end: everything released, nothing left holding memory
      op = 'release all'
      for (const h of live) model.releaseCache(h.cache)
      for (const h of live) if (h.group) h.group.freed = true
      dead.push(...live.filter((h) => h.group))
      live = []
      check()
      return { counts, written }
    }

    const first = round(17, 200)
    const { counts } = first
    // the operations the ownership rules are about all happened
    expect(counts.inPlace).toBeGreaterThan(100)
    expect(counts.forks).toBeGreaterThan(20)
    expect(counts.sameCacheTwice).toBeGreaterThan(0)
    expect(counts.grows).toBeGreaterThan(0)
    expect(counts.releases).toBeGreaterThan(5)
    expect(counts.copiesStepped).toBeGreaterThan(0)
    const bytes = decoder.memoryBytes

    // The same operations again from the same (all released) arena: first fit puts every block
    // where it went the first time, so memory that a release did not give back shows as growth.
    const again = round(17, 30)
    expect(decoder.memoryBytes).toBe(bytes)
    for (const [ids, w] of again.written) {
      const before = first.written.get(ids)
      expect(before && sameFloats(w.kv, before.kv), `position of ${ids}`).toBe(true)
    }
  })
})
