/**
 * Microbenchmark of the engine's kernels (src/engine/wasm/kernels/engine.wat) at Qwen2.5-0.5B shapes,
 * both ISA variants, against a read-only bandwidth bound:
 *
 *   npx tsx scripts/bench/kernels.ts [--quick] [--only simd128|relaxed] [--errors] [--json]
 *   npx deno run -A --v8-flags=--no-liftoff scripts/bench/kernels.ts [...]   (the same in Deno)
 *
 * On Node 20 relaxed SIMD needs --experimental-wasm-relaxed-simd, and its baseline tier
 * (Liftoff) gets some of it wrong: this script sets the flag and --no-liftoff itself (every kernel
 * is timed in the optimizing tier, where both variants are exact; the tests check that).
 * `--errors` prints the error of y = W · x for the weight and activation formats instead;
 * `--json` the measurements as JSON (what `npm run bench` reads from its Deno run).
 */
import { setFlagsFromString } from 'node:v8'
setFlagsFromString('--experimental-wasm-relaxed-simd')
setFlagsFromString('--no-liftoff')

import { parseArgs } from 'node:util'
import { isMain } from '../lib/cli.ts'
import wabtInit from 'wabt'
import { dequantizeBlock, quantizeBlocks, quantizeRows } from '../../src/engine/wasm/activations.ts'
import { q4Dot, q8RowDot } from '../../src/engine/wasm/kernel-ref.ts'
import {
  instantiateEngine,
  relaxedSimdWorks,
  dotAddWorks,
  type KernelExports,
  type IsaVariant,
} from '../../src/engine/wasm/kernel.ts'
import {
  dequantizeQ4,
  q4Blocks,
  q4PlacedBytes,
  q4RowBytes,
  quantizeQ4,
  type Q4Matrix,
} from '../../src/format/q4-b32.ts'
import { dequantizeQ8Rows, q8Stride, quantizeQ8Rows } from '../../src/format/q8-rows.ts'
import { kvRecordBytes } from '../../src/format/index.ts'
import { writeQ8Record } from '../../src/engine/wasm/kv-format.ts'
import { measureBandwidth } from './measure-bandwidth.ts'
import type { KernelsResult } from './types.ts'

let quick = false
const MiB = 2 ** 20

const H = 896
const I = 4864
const V = 151936

function rng(seed: number) {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return (s >>> 0) / 2 ** 32
  }
}

/**
 * Best ms of each of `fns`, timed in turns (one call each per round, after two warm-up rounds)
 * for at least `minMs`: the machine is shared, and turns put every kernel under the same load.
 */
function timeTogether(fns: Array<() => void>, minMs = quick ? 250 : 1500): number[] {
  for (let w = 0; w < 2; w++) for (const fn of fns) fn()
  const best = fns.map(() => Infinity)
  const start = performance.now()
  for (let round = 0; round < 3 || performance.now() - start < minMs; round++) {
    fns.forEach((fn, i) => {
      const s = performance.now()
      fn()
      best[i] = Math.min(best[i], performance.now() - s)
    })
    if (round >= 400) break
  }
  return best
}

/** A WASM SIMD loop that reads `bytes` from 0 (4 independent v128 loads per step). */
async function readBound(bytes: number): Promise<number> {
  const wabt = await wabtInit()
  const parsed = wabt.parseWat(
    'read.wat',
    `(module (memory (export "memory") 1)
      (func (export "read") (param $n i32) (result i32)
        (local $p i32) (local $a v128) (local $b v128) (local $c v128) (local $d v128)
        (loop $l
          (local.set $a (i32x4.add (local.get $a) (v128.load (local.get $p))))
          (local.set $b (i32x4.add (local.get $b) (v128.load offset=16 (local.get $p))))
          (local.set $c (i32x4.add (local.get $c) (v128.load offset=32 (local.get $p))))
          (local.set $d (i32x4.add (local.get $d) (v128.load offset=48 (local.get $p))))
          (local.set $p (i32.add (local.get $p) (i32.const 64)))
          (br_if $l (i32.lt_u (local.get $p) (local.get $n))))
        (i32x4.extract_lane 0 (i32x4.add (i32x4.add (local.get $a) (local.get $b))
          (i32x4.add (local.get $c) (local.get $d))))))`,
    { simd: true },
  )
  const bytes_ = new Uint8Array(parsed.toBinary({}).buffer)
  const { instance } = await WebAssembly.instantiate(bytes_)
  parsed.destroy()
  const e = instance.exports as { memory: WebAssembly.Memory; read(n: number): number }
  e.memory.grow(bytes / 65536)
  new Uint8Array(e.memory.buffer).fill(1)
  const [ms] = timeTogether([() => e.read(bytes)])
  return bytes / ms / 1e6 // GB/s
}

class Mem {
  private at = 64
  constructor(readonly k: KernelExports) {}
  take(bytes: number): number {
    const at = this.at
    this.at = Math.ceil((at + bytes) / 64) * 64
    const need = Math.ceil(this.at / 65536) - this.k.memory.buffer.byteLength / 65536
    if (need > 0) this.k.memory.grow(need)
    return at
  }
  random(bytes: number, seed: number): number {
    const at = this.take(bytes)
    const r = rng(seed)
    const u32 = new Uint32Array(this.k.memory.buffer, at, bytes >> 2)
    for (let i = 0; i < u32.length; i++) u32[i] = r() * 2 ** 32
    return at
  }
  floats(n: number, seed: number, scale = 1): number {
    const at = this.take(4 * n)
    const r = rng(seed)
    const f = new Float32Array(this.k.memory.buffer, at, n)
    for (let i = 0; i < n; i++) f[i] = (r() - 0.5) * scale
    return at
  }
}

interface Row {
  kernel: string
  ms: number
  /** Weight bytes read per call. */
  bytes: number
  macs: number
}

/**
 * `bytes` of random q4 groups (84 bytes each), placed: scales of ordinary size and zero points
 * as nibbles; or with `sym`, q4-b32's symmetric layout (80-byte groups, no zero points) (random
 * f32 bits would make denormals and infinities, each a slow path of its own).
 */
function randomQ4Groups(
  m: Mem,
  bytes: number,
  seed: number,
  scaleSeed: number,
  sym = false,
): number {
  const w = m.random(bytes, seed)
  const view = new DataView(m.k.memory.buffer)
  const r = rng(scaleSeed)
  for (let g = w; g < w + bytes; g += sym ? 80 : 84)
    for (let b = 0; b < 4; b++) {
      view.setFloat32(g + 64 + 4 * b, (r() - 0.5) * 0.01, true)
      if (!sym) view.setUint8(g + 80 + b, view.getUint8(g + 80 + b) & 15)
    }
  return w
}

/**
 * q4 weights [n, k] (in the kernels' placement: random groups fill it whatever the order) and t
 * activation rows, placed; random nibbles, scales and zero points.
 */
function q4Setup(m: Mem, n: number, k: number, t: number, sym = false) {
  const kb = q4Blocks(k)
  const rowBytes = q4RowBytes(kb, sym)
  const w = randomQ4Groups(m, q4PlacedBytes(n, kb, sym), 1, 2, sym)
  const x = m.floats(t * k, 4)
  const xa = m.take(t * kb * 40)
  m.k.quant_b32(x, k, k, t, xa)
  const out = m.take(4 * t * n)
  return { kb, w, x, xa, out, bytes: n * rowBytes }
}

function q8Setup(m: Mem, n: number, k: number, t: number) {
  const stride = q8Stride(k)
  const w = m.random(n * stride, 5)
  const zp = m.random(n, 6)
  const scale = m.floats(n, 7, 0.01)
  const x = m.random(2 * t * stride, 8)
  const xi = new Int16Array(m.k.memory.buffer, x, t * stride)
  for (let i = 0; i < xi.length; i++) xi[i] = (xi[i] % 3000) | 0 // under the int16 limit
  const sum = m.floats(t, 9)
  const xscale = m.floats(t, 10, 0.001)
  const out = m.take(4 * t * n)
  return { stride, w, zp, scale, x, sum, xscale, out, bytes: n * (stride + 5) }
}

interface Case {
  kernel: string
  /** Weight bytes read per call (f32 bytes for the quantizer). */
  bytes: number
  macs: number
  /** A fresh instance of the variant with its data in place: the call to time. */
  make(k: KernelExports): () => void
}

/**
 * A q4 product; `sym`: the symmetric layout through q4s_gemv / q4s_gemm (exports without zero
 * points).
 */
function q4Case(n: number, k: number, t: number, gemm: boolean, kernel: string, sym = false): Case {
  return {
    kernel,
    bytes: n * q4RowBytes(q4Blocks(k), sym),
    macs: n * k * t,
    make(kernels) {
      const m = new Mem(kernels)
      const s = q4Setup(m, n, k, t, sym)
      const f = kernels[`${sym ? 'q4s' : 'q4'}_${gemm ? 'gemm' : 'gemv'}`]
      return () => f(s.w, s.kb, 0, n, s.xa, t, s.out, n)
    },
  }
}

function q8Case(n: number, k: number, t: number, gemm: boolean, kernel: string): Case {
  return {
    kernel,
    bytes: n * (q8Stride(k) + 5),
    macs: n * k * t,
    make(kernels) {
      const m = new Mem(kernels)
      const s = q8Setup(m, n, k, t)
      const args = [s.w, s.stride, s.zp, s.scale, 0, n, s.x, s.sum, s.xscale] as const
      if (gemm) return () => kernels.q8_gemm(...args, t, s.out, n)
      if (t === 4) return () => kernels.rows4(...args, s.out, n)
      return () => kernels.rows(...args, t, s.out, n)
    },
  }
}

/**
 * `g` query heads' attention over `n` cached positions of `dim` of the KV head they share, a
 * part at a time as the decoder runs them (dots, softmax, mix): bytes are the K (dots) or V
 * (mix) rows read once for all g heads (softmax: one head's scores).
 */
function attendCase(n: number, dim: number, part: 'dots' | 'softmax' | 'mix', g = 1): Case {
  return {
    kernel: `${part} n=${n} D=${dim}${g > 1 ? ` x${g} heads` : ''}`,
    bytes: part === 'softmax' ? 4 * n : 4 * n * dim,
    macs: part === 'softmax' ? 0 : g * n * dim,
    make(kernels) {
      const m = new Mem(kernels)
      const ld = Math.ceil(n / 4) * 4 + 4
      const q = m.floats(g * dim, 11)
      const kv = m.floats(n * dim, 12)
      const p = m.floats(g * ld, 13)
      const out = m.take(4 * g * dim)
      if (part === 'dots') return () => kernels.dots(q, g, kv, n, dim, p, ld)
      if (part === 'softmax') return () => kernels.softmax(p, n)
      return () => kernels.mix(p, ld, g, kv, n, dim, out)
    },
  }
}

/** The same parts over a q8 KV cache (KV_FORMAT=q8: records of dim int8 and a scale). */
function attendQ8Case(n: number, dim: number, part: 'dots' | 'mix'): Case {
  return {
    kernel: `${part}_q8 n=${n} D=${dim}`,
    bytes: n * kvRecordBytes('q8', dim),
    macs: n * dim,
    make(kernels) {
      const m = new Mem(kernels)
      const values = new Float32Array(n * dim).map((_, i) => Math.sin(i * 0.37))
      const rec = kvRecordBytes('q8', dim)
      const kv = m.take(n * rec)
      const bytes = new Uint8Array(kernels.memory.buffer)
      for (let t = 0; t < n; t++) writeQ8Record(values, t * dim, dim, bytes, kv + t * rec)
      const q16 = m.random(2 * dim, 11)
      const p = m.floats(Math.ceil(n / 4) * 4, 13)
      const w16 = m.take(2 * (n + 1))
      const out = m.take(4 * dim)
      if (part === 'dots') return () => kernels.dots_q8(q16, 1e-3, 0, 0, kv, n, dim, p)
      return () => kernels.mix_q8(p, kv, n, dim, w16, out)
    },
  }
}

/**
 * A decode step's layer matrices (`layers` × q, k, v; o; gate, up; down, as the decoder packs
 * them) against one activation row, one after another: the weights stream from memory, as
 * they do in a real step (the single-matrix cases above stay in cache between calls).
 */
function streamedCase(kind: 'q8' | 'q4', layers: number): Case {
  const shapes = [
    [H + 256, H],
    [H, H],
    [2 * I, H],
    [H, I],
  ]
  const rowBytes = (k: number) => (kind === 'q8' ? q8Stride(k) : (k / 32) * 21)
  const per = shapes.reduce((s, [n, k]) => s + n * rowBytes(k), 0)
  return {
    kernel: `${kind} ${kind === 'q8' ? 'rows' : 'gemv'} streamed ${layers} layers n=1`,
    bytes:
      layers * shapes.reduce((s, [n, k]) => s + n * (rowBytes(k) + (kind === 'q8' ? 5 : 0)), 0),
    macs: layers * shapes.reduce((s, [n, k]) => s + n * k, 0),
    make(kernels) {
      const m = new Mem(kernels)
      const weights =
        kind === 'q8' ? m.random(layers * per, 21) : randomQ4Groups(m, layers * per, 21, 24)
      const calls: Array<() => void> = []
      if (kind === 'q8') {
        const x = new Map([H, I].map((k) => [k, q8Setup(m, 1, k, 1)]))
        const zp = m.random(2 * I, 22)
        const scale = m.floats(2 * I, 23, 0.01)
        let at = weights
        for (let l = 0; l < layers; l++)
          for (const [n, k] of shapes) {
            const [w, stride, a] = [at, q8Stride(k), x.get(k)!]
            calls.push(() =>
              kernels.rows(w, stride, zp, scale, 0, n, a.x, a.sum, a.xscale, 1, a.out, n),
            )
            at += n * stride
          }
      } else {
        const x = new Map([H, I].map((k) => [k, q4Setup(m, 4, k, 1)]))
        const out = m.take(4 * 2 * I)
        let at = weights
        for (let l = 0; l < layers; l++)
          for (const [n, k] of shapes) {
            const [w, kb, a] = [at, k / 32, x.get(k)!]
            calls.push(() => kernels.q4_gemv(w, kb, 0, n, a.xa, 1, out, n))
            at += n * kb * 21
          }
      }
      return () => {
        for (const call of calls) call()
      }
    },
  }
}

/** Cases measured in turns with each other, so their ratios hold under a changing load. */
const GROUPS: Case[][] = [
  [
    q8Case(I, H, 1, false, `q8 rows   ${H}->${I} n=1`),
    q4Case(I, H, 1, false, `q4 gemv   ${H}->${I} n=1`),
    q4Case(I, H, 1, false, `q4s gemv  ${H}->${I} n=1`, true),
  ],
  // decode batches of 2 and 3 sequences (the q4 tiles of a weight row pair × 2 or 3 rows)
  [
    q8Case(I, H, 2, false, `q8 rows   ${H}->${I} n=2`),
    q4Case(I, H, 2, false, `q4 gemv   ${H}->${I} n=2`),
  ],
  [
    q8Case(I, H, 3, false, `q8 rows   ${H}->${I} n=3`),
    q4Case(I, H, 3, false, `q4 gemv   ${H}->${I} n=3`),
  ],
  [
    q8Case(I, H, 4, false, `q8 rows4  ${H}->${I} n=4`),
    q4Case(I, H, 4, false, `q4 gemv   ${H}->${I} n=4`),
    q4Case(I, H, 4, false, `q4s gemv  ${H}->${I} n=4`, true),
  ],
  [
    q8Case(H, I, 1, false, `q8 rows   ${I}->${H} n=1`),
    q4Case(H, I, 1, false, `q4 gemv   ${I}->${H} n=1`),
    q4Case(H, I, 1, false, `q4s gemv  ${I}->${H} n=1`, true),
  ],
  [
    q8Case(H, I, 4, false, `q8 rows4  ${I}->${H} n=4`),
    q4Case(H, I, 4, false, `q4 gemv   ${I}->${H} n=4`),
  ],
  [
    q8Case(I, H, 64, true, `q8 gemm   ${H}->${I} T=64`),
    q4Case(I, H, 64, true, `q4 gemm   ${H}->${I} T=64`),
  ],
  [
    q8Case(I, H, 128, true, `q8 gemm   ${H}->${I} T=128`),
    q4Case(I, H, 128, true, `q4 gemm   ${H}->${I} T=128`),
    q4Case(I, H, 128, true, `q4s gemm  ${H}->${I} T=128`, true),
  ],
  [
    q8Case(H, I, 128, true, `q8 gemm   ${I}->${H} T=128`),
    q4Case(H, I, 128, true, `q4 gemm   ${I}->${H} T=128`),
    q4Case(H, I, 128, true, `q4s gemm  ${I}->${H} T=128`, true),
  ],
  [
    q8Case(V, H, 1, false, `q8 rows   lm_head ${H}->${V} n=1`),
    q4Case(V, H, 1, false, `q4 gemv   lm_head ${H}->${V} n=1`),
    q4Case(V, H, 1, false, `q4s gemv  lm_head ${H}->${V} n=1`, true),
  ],
  [streamedCase('q8', 24), streamedCase('q4', 24)],
  [
    attendCase(3000, 64, 'dots'),
    attendCase(3000, 64, 'dots', 7),
    attendQ8Case(3000, 64, 'dots'),
    attendCase(3000, 64, 'softmax'),
    attendCase(3000, 64, 'mix'),
    attendCase(3000, 64, 'mix', 7),
    attendQ8Case(3000, 64, 'mix'),
  ],
  [
    {
      kernel: `quant_b32 128 x ${H}`,
      bytes: 128 * H * 4,
      macs: 0,
      make(kernels) {
        const s = q4Setup(new Mem(kernels), 1, H, 128)
        return () => kernels.quant_b32(s.x, H, H, 128, s.xa)
      },
    },
    {
      // the MLP's activation for a prompt chunk of 128 rows, as the decoder calls it (a row a
      // call, gate and up side by side): f32 bytes of gate and up read
      kernel: `silu_mul 128 x ${I}`,
      bytes: 128 * 2 * I * 4,
      macs: 0,
      make(kernels) {
        const m = new Mem(kernels)
        const g = m.floats(128 * 2 * I, 11, 16)
        const out = m.take(128 * I * 4)
        return () => {
          for (let r = 0; r < 128; r++) {
            const at = g + 4 * r * 2 * I
            kernels.silu_mul(at, at + 4 * I, I, out + 4 * r * I)
          }
        }
      },
    },
  ],
]

/**
 * Every kernel case in both builds (or `only`), timed in turns per group, with the read bound
 * and memcpy of this process. `quickRun`: shorter timing windows.
 */
export async function measureKernels(quickRun = false, only?: IsaVariant): Promise<KernelsResult> {
  quick = quickRun
  const copyBytesPerS = measureBandwidth(quick ? 3 : 8).copyBytesPerS
  const readBytesPerS = (await readBound(256 * MiB)) * 1e9
  const deno = (globalThis as { Deno?: { version: { deno: string; v8: string } } }).Deno
  const runtime = deno
    ? `Deno ${deno.version.deno} (V8 ${deno.version.v8})`
    : `Node ${process.version} (V8 ${process.versions.v8}, relaxed SIMD and --no-liftoff set here)`
  const variants: IsaVariant[] = only ? [only] : ['simd128', 'relaxed']
  const rows: KernelsResult['rows'] = []
  for (const group of GROUPS) {
    const fns: Array<() => void> = []
    for (const c of group)
      for (const v of variants) fns.push(c.make((await instantiateEngine(v)).kernels))
    const ms = timeTogether(fns)
    group.forEach((c, i) =>
      variants.forEach((variant, vi) => {
        const t = ms[i * variants.length + vi]
        rows.push({
          kernel: c.kernel.replace(/ +/g, ' '),
          variant,
          ms: t,
          bytesPerS: (c.bytes / t) * 1000,
          macsPerS: (c.macs / t) * 1000,
        })
      }),
    )
  }
  return {
    runtime,
    relaxedUsable: await relaxedSimdWorks(),
    dotAdd: await dotAddWorks(),
    readBytesPerS,
    copyBytesPerS,
    rows,
  }
}

async function benchmarks(only?: IsaVariant): Promise<void> {
  const r = await measureKernels(quick, only)
  console.log(`read bound (WASM SIMD, 256 MiB): ${(r.readBytesPerS / 1e9).toFixed(1)} GB/s`)
  console.log(`memcpy (TypedArray.set, 256 MiB): ${(r.copyBytesPerS / 1e9).toFixed(1)} GB/s copied`)
  console.log(
    `${r.runtime}; relaxed SIMD usable: ${r.relaxedUsable}; its q4 tiles on AVX-VNNI: ${r.dotAdd}`,
  )
  const variants = [...new Set(r.rows.map((x) => x.variant))]
  const head = ['kernel'.padEnd(30)]
  for (const v of variants)
    head.push(`${v}: ms`.padStart(14), 'GB/s'.padStart(6), 'GMAC/s'.padStart(7))
  console.log(head.join(' '))
  for (const kernel of [...new Set(r.rows.map((x) => x.kernel))]) {
    const cells = [kernel.padEnd(30)]
    for (const x of r.rows.filter((x) => x.kernel === kernel))
      cells.push(
        x.ms.toFixed(3).padStart(14),
        (x.bytesPerS / 1e9).toFixed(1).padStart(6),
        (x.macsPerS / 1e9).toFixed(1).padStart(7),
      )
    console.log(cells.join(' '))
  }
  console.log('GB/s: weight bytes (q4 21 per 32 weights, q8 stride + 5 per row) / time;')
  console.log('quant_b32, silu_mul: f32 bytes read / time. Bound: the read loop above.')
}

/** Student-t (ν = 3) values: heavy tails, like trained weights. */
function heavyTailed(n: number, seed: number, scale: number): Float32Array {
  const r = rng(seed)
  const normal = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r())
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    const chi = normal() ** 2 + normal() ** 2 + normal() ** 2
    out[i] = (normal() / Math.sqrt(chi / 3)) * scale
  }
  return out
}

function relError(y: ArrayLike<number>, ref: Float64Array): number {
  let num = 0
  let den = 0
  for (let i = 0; i < ref.length; i++) {
    num += (y[i] - ref[i]) ** 2
    den += ref[i] ** 2
  }
  return Math.sqrt(num / den)
}

function matvec(w: ArrayLike<number>, n: number, k: number, x: ArrayLike<number>, j: number) {
  const y = new Float64Array(n)
  for (let v = 0; v < n; v++) {
    let s = 0
    for (let i = 0; i < k; i++) s += w[v * k + i] * x[j * k + i]
    y[v] = s
  }
  return y
}

function errors(): void {
  const n = quick ? 128 : 384
  const t = 4
  console.log(`relative error ‖y − W·x‖ / ‖W·x‖, ${n} rows, ${t} vectors, float64 reference;`)
  console.log('weights Student-t (ν = 3), activations normal with 3 channels at 40x')
  for (const k of [H, I]) {
    const w = heavyTailed(n * k, k, 0.02)
    const r = rng(k + 1)
    const x = new Float32Array(t * k).map(
      () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r()),
    )
    for (let j = 0; j < t; j++) for (const c of [7, k >> 1, k - 3]) x[j * k + c] *= 40
    const ref: Float64Array[] = []
    for (let j = 0; j < t; j++) ref.push(matvec(w, n, k, x, j))
    const report = (label: string, y: (j: number) => ArrayLike<number>) => {
      let e = 0
      for (let j = 0; j < t; j++) e += relError(y(j), ref[j]) ** 2
      console.log(`  K=${k}  ${label.padEnd(48)} ${(Math.sqrt(e / t) * 100).toFixed(3)} %`)
    }
    const q8 = quantizeQ8Rows(w, n, k)
    const q8w = dequantizeQ8Rows(q8)
    const a16 = quantizeRows(x, t, k, q8.stride)
    const a8 = quantizeBlocks(x, t, k)
    const xa8 = new Float32Array(t * k)
    for (let j = 0; j < t; j++)
      for (let i = 0; i < k; i++) xa8[j * k + i] = dequantizeBlock(a8, j, i)
    const xa16 = new Float32Array(t * k)
    for (let j = 0; j < t; j++)
      for (let i = 0; i < k; i++) xa16[j * k + i] = a16.x[j * q8.stride + i] * a16.scale[j]
    report('q8 per-row w + int16 per-row x (today)', (j) =>
      Array.from({ length: n }, (_, v) => q8RowDot(q8, v, a16, j)),
    )
    report('q8 per-row w + f32 x', (j) => matvec(q8w, n, k, x, j))
    report('f32 w + int16 per-row x', (j) => matvec(w, n, k, xa16, j))
    report('f32 w + int8 block-32 x', (j) => matvec(w, n, k, xa8, j))
    for (const scheme of ['asymmetric', 'symmetric'] as const) {
      const q4: Q4Matrix = quantizeQ4(w, n, k, scheme)
      const q4w = dequantizeQ4(q4)
      const zp = scheme === 'asymmetric' ? 'zp per block' : 'no zp (q4_0)'
      report(`q4 ${zp} + int8 block-32 x (kernels)`, (j) =>
        Array.from({ length: n }, (_, v) => q4Dot(q4, v, a8, j)),
      )
      report(`q4 ${zp} + f32 x`, (j) => matvec(q4w, n, k, x, j))
    }
  }
}

if (isMain(import.meta.url)) {
  const { values: opts } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      errors: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  })
  quick = opts.quick
  if (opts.errors) errors()
  else if (opts.json) console.log(JSON.stringify(await measureKernels(quick)))
  else await benchmarks(opts.only as IsaVariant | undefined)
}
