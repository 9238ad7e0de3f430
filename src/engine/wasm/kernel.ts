/**
 * The engine's WASM kernels: one module (kernels/engine.wat, assembled by `npm run
 * build:kernels`) with one linear memory per instance, and the ABI its exports share. Every
 * pointer is a byte offset into that memory; the caller lays out weights, activations and
 * outputs (head.ts for the lm_head, decoder.ts for the layers, kv-arena.ts for the KV caches).
 * engine.wat's header documents each export; the formats are src/format's ('q8-rows',
 * 'q4-b32') and activations.ts's ('a16-row', 'a8-b32').
 *
 * Two builds of the one source: relaxed SIMD where the runtime validates it and computes with it
 * exactly (`relaxedSimdWorks`), else plain SIMD128. Both give the same results bit for bit, so
 * the choice changes only speed. The relaxed build has two forms of its 8-bit dot product for
 * q4 tiles, also with the same bits; it takes the i32 one where the runtime lowers it to
 * AVX-VNNI (`dotAddWorks`), and in V8 before 13 looped copies of the 16-bit form's tiles
 * (`loopedTilesWork`). Node and Deno compile the embedded bytes on first use. Workers
 * cannot compile from bytes: their adapter imports both .wasm files (wrangler hands them over as
 * precompiled modules) and passes them to `useKernelModules`; the pick is the same.
 */
import { WASM_BASE64 as RELAXED_BASE64 } from './kernels/engine-relaxed-wasm.ts'
import { WASM_BASE64 as SIMD128_BASE64 } from './kernels/engine-simd128-wasm.ts'
import { q4PlacedBytes } from '../../format/q4-b32.ts'

/** The builds of kernels/engine.wat (`npm run build:kernels` makes one binary per variant). */
export type IsaVariant = 'simd128' | 'relaxed'

/**
 * What runs, as `/health` reports it: the simd128 build, the relaxed one, the relaxed one with
 * its q4 tiles on the i32 dot product that this runtime lowers to AVX-VNNI, or the relaxed one
 * with its looped q4 tiles (`loopedTilesPay`).
 */
export type KernelBuild = 'simd128' | 'relaxed' | 'relaxed+vnni' | 'relaxed+looped'

/**
 * (module (func (param v128 v128) (result v128)
 *   (i16x8.relaxed_dot_i8x16_i7x16_s (local.get 0) (local.get 1))))
 * with the function exported as "f": the instruction the relaxed variant depends on.
 */
export const RELAXED_PROBE = Uint8Array.from([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 123, 123, 1, 123, 3, 2, 1, 0, 7, 5, 1, 1, 102, 0, 0,
  10, 11, 1, 9, 0, 32, 0, 32, 1, 253, 146, 2, 11,
])

/** Whether this runtime runs relaxed SIMD (Node 20 only with --experimental-wasm-relaxed-simd). */
export function relaxedSimdSupported(): boolean {
  try {
    return WebAssembly.validate(RELAXED_PROBE)
  } catch {
    return false
  }
}

/** A q4 product: out[j · ldo + v] for rows v0 ≤ v < v1 and the n activation rows at x. */
export type Q4Product = (
  w: number,
  kb: number,
  v0: number,
  v1: number,
  x: number,
  n: number,
  out: number,
  ldo: number,
) => void

/** Exports of engine.wat (its header is the ABI: formats, pointers, what each computes). */
export interface KernelExports {
  memory: WebAssembly.Memory
  rows(
    w: number,
    stride: number,
    zp: number,
    scale: number,
    v0: number,
    v1: number,
    x: number,
    sumx: number,
    xscale: number,
    n: number,
    out: number,
    ldo: number,
  ): void
  rows4(
    w: number,
    stride: number,
    zp: number,
    scale: number,
    v0: number,
    v1: number,
    x: number,
    sumx: number,
    xscale: number,
    out: number,
    ldo: number,
  ): void
  q8_gemm(
    w: number,
    stride: number,
    zp: number,
    scale: number,
    v0: number,
    v1: number,
    x: number,
    sumx: number,
    xscale: number,
    t: number,
    out: number,
    ldo: number,
  ): void
  /** q4 rows v0 … v1 − 1 of `w` (kb blocks a row) · n a8-b32 activation rows (decode). */
  q4_gemv: Q4Product
  /** The same for the t rows of a prompt chunk. */
  q4_gemm: Q4Product
  /** q4_gemv for a matrix in the symmetric layout (q4-b32.ts: 80-byte groups, every zero point 8). */
  q4s_gemv: Q4Product
  /** q4_gemm for a matrix in the symmetric layout. */
  q4s_gemm: Q4Product
  quant_b32(x: number, ldx: number, k: number, t: number, xa: number): void
  /** Returns the first row with a value that is not finite (not written), or t. */
  quant_a16(
    x: number,
    ldx: number,
    k: number,
    t: number,
    limit: number,
    xa: number,
    stride: number,
    sums: number,
    scales: number,
  ): number
  /** Scores of g query heads (q: g × dim) sharing one KV head: row h of out at h · ldo floats. */
  dots(q: number, g: number, k: number, n: number, dim: number, out: number, ldo: number): void
  /** In place over n floats; overwrites up to 3 floats after them. */
  softmax(p: number, n: number): void
  /** `softmax` of g rows of n floats, row h at p + 4 · h · ld. */
  softmax_rows(p: number, ld: number, g: number, n: number): void
  /** RMS norm of b rows of n floats (n a multiple of 4) at x into out (kernel-ref.ts rmsNormRef). */
  rms_norm(x: number, out: number, b: number, n: number, w: number, eps: number): void
  /**
   * The n floats at y added to each of b rows of n floats at x (n a multiple of 4); with b = 1,
   * two blocks of n floats element by element.
   */
  add_rows(x: number, b: number, n: number, y: number): void
  /** Σ_t p[h · ldp + t] · v[t] for g heads into out (g × dim). */
  mix(p: number, ldp: number, g: number, v: number, n: number, dim: number, out: number): void
  /**
   * Scores against q8 key records with nx f32 slots (kv-format.ts); the query is int16 with
   * scale qs, and nx f32 at qx for the channels the keys keep apart.
   */
  dots_q8(
    q16: number,
    qs: number,
    qx: number,
    nx: number,
    k: number,
    n: number,
    dim: number,
    out: number,
  ): void
  /** Σ p[t] · v[t] over q8 KV records; overwrites p (w = p · scale) and w16 (n + 1 int16). */
  mix_q8(p: number, v: number, n: number, dim: number, w16: number, out: number): void
  silu_mul(g: number, u: number, n: number, out: number): void
  /** Lane 0 of the relaxed i32 dot product on out-of-range inputs (0 in the simd128 build). */
  dot_probe(): number
  /** 1: the q4 tiles of 4 rows sum with the i32 form of the dot product (same bits, faster on AVX-VNNI). */
  set_dot_add(on: number): void
  /** 1: the 16-bit form's q4 tiles of 1 to 4 activation rows run their looped copies (same bits). */
  set_looped(on: number): void
}

/**
 * `dot_probe`'s result where the runtime lowers i32x4.relaxed_dot_i8x16_i7x16_add_s to one
 * AVX-VNNI vpdpbusd (4 · 255 · 127: unsigned bytes, no saturation); pmaddubsw's gives 65534,
 * a signed dot product −508 (engine.wat, "the 8-bit dot product's two forms").
 */
export const DOT_PROBE_VNNI = 4 * 255 * 127

const modules: Partial<Record<IsaVariant, WebAssembly.Module>> = {}

/** Hands over precompiled modules (Workers: the imported kernels/engine-*.wasm). */
export function useKernelModules(given: Partial<Record<IsaVariant, WebAssembly.Module>>): void {
  Object.assign(modules, given)
}

/**
 * Whether this runtime's V8 is older than 13 (Node 20 to 23), whose optimizing tier computes
 * every load of a loop body before the arithmetic and spills what does not fit in 16 registers:
 * there the relaxed build's looped q4 tiles (engine.wat, `$looped`) run a prompt's GEMM 1.2-1.3x
 * and a decode row 1.1-1.2x faster; in V8 13.6 (Node 24) they are 0.92-0.96x, in 15 (Deno)
 * 0.85-0.88x.
 * `v8`: the version string (`process.versions.v8`); a runtime that does not give one (workerd)
 * keeps the unrolled tiles.
 */
export function loopedTilesPay(v8: unknown): boolean {
  const major = typeof v8 === 'string' ? Number(/^(\d+)\./.exec(v8)?.[1]) : NaN
  return major < 13
}

/** This runtime's V8 version as `process.versions.v8` gives it (Node, Deno), else undefined. */
function runtimeV8(): unknown {
  return (globalThis as { process?: { versions?: { v8?: unknown } } }).process?.versions?.v8
}

interface RelaxedChecks {
  relaxed: boolean
  dotAdd: boolean
  looped: boolean
}

let relaxedWorks: Promise<RelaxedChecks> | undefined

/**
 * Whether the relaxed build validates here and computes what the simd128 build computes, bit
 * for bit, on a small q4 problem through quant_b32, q4_gemv and q4_gemm (their tiles of 1 to 4
 * activation rows). Run on first use, so in the baseline tier: a runtime can validate relaxed SIMD and
 * still compute it wrong there (V8 11.3, Node 20 with --experimental-wasm-relaxed-simd, doubles
 * i32x4.relaxed_dot_i8x16_i7x16_add_s in Liftoff depending on register allocation; the kernels
 * use the i16x8 form, which it gets right, unless `dotAddWorks`; an experimental feature earns
 * no trust).
 */
export async function relaxedSimdWorks(): Promise<boolean> {
  return (await relaxedChecks()).relaxed
}

/**
 * Whether the relaxed kernels should sum q4 tiles with the i32 form of the dot product: the
 * relaxed build works, this runtime lowers that form to AVX-VNNI (`dot_probe`), and with it the
 * build computes what the simd128 build does, bit for bit (the same self-check).
 */
export async function dotAddWorks(): Promise<boolean> {
  return (await relaxedChecks()).dotAdd
}

/**
 * Whether the relaxed kernels should run their looped q4 tiles: the relaxed build works, they pay
 * here (`loopedTilesPay`) and with them it computes what the simd128 build does (the same
 * self-check). The i32 form, where it is taken, has no looped tiles.
 */
export async function loopedTilesWork(): Promise<boolean> {
  return (await relaxedChecks()).looped
}

function relaxedChecks(): Promise<RelaxedChecks> {
  relaxedWorks ??= (async () => {
    const none = { relaxed: false, dotAdd: false, looped: false }
    if (!relaxedSimdSupported()) return none
    const [relaxed, simd128] = await Promise.all(
      (['relaxed', 'simd128'] as const).map(async (variant) => {
        const instance = await WebAssembly.instantiate(engineModule(variant), {})
        return instance.exports as unknown as KernelExports
      }),
    )
    const want = selfCheck(simd128)
    const same = (k: KernelExports) => selfCheck(k).every((word, i) => word === want[i])
    if (!same(relaxed)) return none
    if (relaxed.dot_probe() === DOT_PROBE_VNNI) {
      relaxed.set_dot_add(1)
      if (same(relaxed)) return { relaxed: true, dotAdd: true, looped: false }
      relaxed.set_dot_add(0)
    }
    if (!loopedTilesPay(runtimeV8())) return { relaxed: true, dotAdd: false, looped: false }
    relaxed.set_looped(1)
    return { relaxed: true, dotAdd: false, looped: same(relaxed) }
  })()
  return relaxedWorks
}

/**
 * The bits of q4_gemv and q4_gemm on a fixed pseudo-random problem (6 rows of 256 inputs, 5
 * activation rows: the tiles of 4 and of 1), then of q4s_gemv and q4s_gemm on its nibbles and
 * scales in the symmetric layout, then of q4_gemv on 3 and on 2 activation rows.
 */
function selfCheck(k: KernelExports): Uint32Array {
  const n = 6
  const kb = 8
  const t = 5
  const mem = k.memory.buffer
  let seed = 0x9e3779b9
  const next = () => {
    seed ^= seed << 13
    seed ^= seed >>> 17
    seed ^= seed << 5
    return seed >>> 0
  }
  const w = 0
  // the rows in the kernels' placement (q4-b32.ts: panels of 4 rows, the last one padded)
  const x = w + q4PlacedBytes(n, kb)
  const xa = x + t * kb * 32 * 4
  const out = xa + t * kb * 40
  // random nibbles, zero points and scales (the f32 bits of small random numbers), group by
  // group of the placement (padding rows too: no kernel reads them)
  const bytes = new Uint8Array(mem)
  const view = new DataView(mem)
  const groups = q4PlacedBytes(n, kb) / 84
  for (let g = 0; g < groups; g++) {
    for (let i = 0; i < 64; i++) bytes[84 * g + i] = next()
    for (let b = 0; b < 4; b++) {
      view.setFloat32(84 * g + 64 + 4 * b, (next() / 2 ** 32 - 0.5) / 64, true)
      bytes[84 * g + 80 + b] = next() & 15
    }
  }
  for (let i = 0; i < t * kb * 32; i++) view.setFloat32(x + 4 * i, next() / 2 ** 31 - 1, true)
  k.quant_b32(x, kb * 32, kb * 32, t, xa)
  k.q4_gemv(w, kb, 0, n, xa, t, out, n)
  k.q4_gemm(w, kb, 0, n, xa, t, out + 4 * t * n, n)
  // and the symmetric kernels on the same nibbles and scales in their layout (80-byte groups)
  const ws = out + 16 * t * n
  for (let g = 0; g < groups; g++) bytes.copyWithin(ws + 80 * g, 84 * g, 84 * g + 80)
  k.q4s_gemv(ws, kb, 0, n, xa, t, out + 8 * t * n, n)
  k.q4s_gemm(ws, kb, 0, n, xa, t, out + 12 * t * n, n)
  // and q4_gemv of 3 and of 2 activation rows (their own tiles), after the symmetric weights
  const more = ws + 80 * groups
  k.q4_gemv(w, kb, 0, n, xa, 3, more, n)
  k.q4_gemv(w, kb, 0, n, xa, 2, more + 12 * n, n)
  const words = new Uint32Array(4 * t * n + 5 * n)
  words.set(new Uint32Array(mem, out, 4 * t * n))
  words.set(new Uint32Array(mem, more, 5 * n), 4 * t * n)
  return words
}

/** The compiled module of a variant (compiled from the embedded bytes on first use). */
export function engineModule(variant: IsaVariant): WebAssembly.Module {
  let module = modules[variant]
  if (!module) {
    const base64 = variant === 'relaxed' ? RELAXED_BASE64 : SIMD128_BASE64
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))
    try {
      module = modules[variant] = new WebAssembly.Module(bytes)
    } catch (err) {
      throw new Error(
        `The ${variant} engine kernels could not be compiled here (on Workers, the adapter must ` +
          'call useKernelModules with the imported kernels/engine-*.wasm)',
        { cause: err },
      )
    }
  }
  return module
}

/** The variant to run: `want` if given (tests; an error if it cannot run exactly), else the best. */
export async function pickVariant(want?: IsaVariant): Promise<IsaVariant> {
  const relaxed = want !== 'simd128' && (await relaxedSimdWorks())
  if (want === 'relaxed' && !relaxed)
    throw new Error(
      relaxedSimdSupported()
        ? 'relaxed SIMD validates here but the relaxed kernels compute wrong results'
        : 'the relaxed SIMD kernels were asked for, but this runtime has no relaxed SIMD',
    )
  return relaxed ? 'relaxed' : 'simd128'
}

/**
 * A new instance (its own memory) of the picked variant; a relaxed one sums q4 tiles with the
 * i32 dot product where `dotAddWorks`, or as `options.dotAdd` says, and otherwise runs the looped
 * q4 tiles where `loopedTilesWork`, or as `options.looped` says (tests: exact in every form).
 */
export async function instantiateEngine(
  want?: IsaVariant,
  options: { dotAdd?: boolean; looped?: boolean } = {},
): Promise<{
  variant: IsaVariant
  kernels: KernelExports
  dotAdd: boolean
  looped: boolean
  build: KernelBuild
}> {
  const variant = await pickVariant(want)
  const instance = await WebAssembly.instantiate(engineModule(variant), {})
  const kernels = instance.exports as unknown as KernelExports
  const relaxed = variant === 'relaxed'
  const dotAdd = relaxed && (options.dotAdd ?? (await dotAddWorks()))
  const looped = relaxed && !dotAdd && (options.looped ?? (await loopedTilesWork()))
  kernels.set_dot_add(dotAdd ? 1 : 0)
  kernels.set_looped(looped ? 1 : 0)
  const build = dotAdd ? 'relaxed+vnni' : looped ? 'relaxed+looped' : variant
  return { variant, kernels, dotAdd, looped, build }
}

/** Weight rows [v0, v1) and the vectors' int16 data, sums and scales (the q8 `rows` kernels). */
export type RowsArgs = [
  w: number,
  stride: number,
  zp: number,
  scale: number,
  v0: number,
  v1: number,
  x: number,
  sumx: number,
  xscale: number,
]

/** A new instance of the kernels (its own memory), in the best variant this runtime runs. */
export async function instantiateKernels(): Promise<KernelExports> {
  return (await instantiateEngine()).kernels
}
