/**
 * The engine's kernel module (src/engine/wasm/kernels/engine.wat) in both ISA variants against the
 * scalar reference (src/format/q4-b32.ts, q8-rows.ts; src/engine/wasm/activations.ts, kernel-ref.ts): every result bit for bit (the kernels' integer sums are
 * exact and their f32 epilogue is the reference's order), and the reference within a tight
 * bound of float64. And the committed bytes against a fresh assembly of the .wat.
 *
 * Node 20 runs relaxed SIMD only behind --experimental-wasm-relaxed-simd, and its V8 (11.3)
 * miscomputes i32x4.relaxed_dot_i8x16_i7x16_add_s in the baseline tier (Liftoff). So this file
 * (its own process) sets the flag and --no-liftoff before anything compiles: every kernel runs
 * here in the optimizing tier, the relaxed variant included, and it must (a runtime without it
 * fails instead of skipping). Two child processes cover the other tiers: Node with the flag and
 * Liftoff on, where the loader may use the relaxed build only if it is exact there, and Deno
 * (relaxed SIMD on by default, a current V8), where it must pick it and both variants must give
 * the reference's bits.
 */
import { setFlagsFromString } from 'node:v8'
setFlagsFromString('--experimental-wasm-relaxed-simd')
setFlagsFromString('--no-liftoff')

import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import wabtInit from 'wabt'
import { describe, expect, it } from 'vitest'
import { KERNELS_DIR, assemble } from '../../../../scripts/build-kernels.ts'
import { WASM_BASE64 as RELAXED_BASE64 } from '../../../../src/engine/wasm/kernels/engine-relaxed-wasm.ts'
import { WASM_BASE64 as SIMD128_BASE64 } from '../../../../src/engine/wasm/kernels/engine-simd128-wasm.ts'
import {
  ISA_VARIANTS,
  kernelSource,
  selectVariant,
} from '../../../../scripts/lib/kernel-variants.ts'
import { expandTiles, pairTile, tileSource } from '../../../../scripts/lib/kernel-tiles.ts'
import { expandExp } from '../../../../scripts/lib/kernel-exp.ts'
import { addSymmetricQ4 } from '../../../../scripts/lib/kernel-symmetric.ts'
import {
  a16Limit,
  a8Get,
  quantizeBlocks,
  quantizeRows,
  type BlockActivations,
  type RowActivations,
} from '../../../../src/engine/wasm/activations.ts'
import {
  q4Dot,
  q4DotAbs,
  q4DotF64,
  q8RowDot,
  q8RowDotF64,
  dotsRef,
  mixRef,
  rmsNormRef,
} from '../../../../src/engine/wasm/kernel-ref.ts'
import {
  DOT_PROBE_VNNI,
  RELAXED_PROBE,
  dotAddWorks,
  instantiateEngine,
  loopedTilesPay,
  relaxedSimdSupported,
  type KernelExports,
  type IsaVariant,
} from '../../../../src/engine/wasm/kernel.ts'
import {
  emptyQ4,
  placeQ4,
  q4PlacedBytes,
  q4Set,
  q4SetBlock,
  quantizeQ4,
  type Q4Matrix,
} from '../../../../src/format/q4-b32.ts'
import { quantizeQ8Rows, type Q8Rows } from '../../../../src/format/q8-rows.ts'
import {
  dotsQ8Ref,
  mixQ8Ref,
  readKeyRecord,
  writeKeyRecord,
  writeQ8Record,
  writeQueryI16,
  type Q8Records,
} from '../../../../src/engine/wasm/kv-format.ts'

/** A file of the kernels' sources, read as the build reads it. */
const readKernelFile = (f: string) => readFileSync(`${KERNELS_DIR}${f}`, 'utf8')

/** xorshift32 in [0, 1) */
function rng(seed: number) {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return (s >>> 0) / 2 ** 32
  }
}

/** Heavy-tailed values (a Student-t-like ratio) with a few channels far larger. */
function randomRows(t: number, k: number, seed: number, outliers = 3): Float32Array {
  const r = rng(seed)
  const x = new Float32Array(t * k)
  for (let i = 0; i < x.length; i++) {
    const g = (r() + r() + r() - 1.5) / (0.3 + r())
    x[i] = (i % k) % Math.max(1, Math.floor(k / outliers)) === 5 ? 40 * g : g
  }
  return x
}

function randomQ4(n: number, k: number, seed: number): Q4Matrix {
  const r = rng(seed)
  const m = emptyQ4(n, k)
  for (let i = 0; i < m.data.length; i++) m.data[i] = Math.floor(r() * 256)
  // some scales negative: exported ones are not all positive
  for (let v = 0; v < n; v++)
    for (let c = 0; c < m.kb; c++) q4SetBlock(m, v, c, (r() - 0.3) * 0.02, Math.floor(r() * 16))
  return m
}

/** `m` as the kernels read it: its rows in panels of 4 (q4-b32.ts), the last one padded. */
function placed(m: Q4Matrix): Uint8Array {
  const bytes = new Uint8Array(q4PlacedBytes(m.n, m.kb, m.sym))
  placeQ4(m, bytes, 0)
  return bytes
}

/** Regions of kernel memory, 64-byte aligned, after a guard of 64 bytes. */
class Arena {
  private at = 64
  constructor(readonly k: KernelExports) {}
  put(data: ArrayBufferView): number {
    const at = this.take(data.byteLength)
    new Uint8Array(this.k.memory.buffer, at, data.byteLength).set(
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    )
    return at
  }
  take(bytes: number): number {
    const at = this.at
    this.at = Math.ceil((at + bytes) / 64) * 64
    const need = Math.ceil(this.at / 65536) - this.k.memory.buffer.byteLength / 65536
    if (need > 0) this.k.memory.grow(need)
    new Uint8Array(this.k.memory.buffer, at, bytes).fill(0)
    return at
  }
  f32(at: number, n: number): Float32Array {
    return new Float32Array(this.k.memory.buffer, at, n).slice()
  }
}

function placeQ8(a: Arena, w: Q8Rows) {
  return { w: a.put(w.q), zp: a.put(w.zp), scale: a.put(w.scale) }
}

function placeRows(a: Arena, x: RowActivations) {
  return { x: a.put(x.x), sum: a.put(x.sum), scale: a.put(x.scale) }
}

/** Kernel q4 output [t, ldo] (rows [v0, v1) written) against q4Dot, bit for bit; NaN sentinel. */
function expectQ4(
  out: Float32Array,
  m: Q4Matrix,
  x: BlockActivations,
  v0: number,
  v1: number,
  ldo: number,
): void {
  let checked = 0
  for (let j = 0; j < x.t; j++)
    for (let v = 0; v < ldo; v++) {
      const got = out[j * ldo + v]
      if (v < v0 || v >= v1) {
        if (!Number.isNaN(got)) throw new Error(`wrote outside rows [${v0}, ${v1}): j ${j} v ${v}`)
        continue
      }
      const want = q4Dot(m, v, x, j)
      if (!Object.is(got, want)) throw new Error(`j ${j} v ${v}: kernel ${got}, reference ${want}`)
      // the reference itself: f32 rounding of kb terms, against float64
      const bound = (m.kb + 2) * 2 ** -23 * q4DotAbs(m, v, x, j) + 1e-30
      if (!(Math.abs(want - q4DotF64(m, v, x, j)) <= bound))
        throw new Error(`j ${j} v ${v}: reference ${want} is not float64's ${q4DotF64(m, v, x, j)}`)
      checked++
    }
  expect(checked).toBe(x.t * (v1 - v0))
}

function expectQ8(out: Float32Array, w: Q8Rows, x: RowActivations, ldo: number): void {
  for (let j = 0; j < x.t; j++)
    for (let v = 0; v < w.n; v++) {
      const got = out[j * ldo + v]
      const want = q8RowDot(w, v, x, j)
      if (!Object.is(got, want)) throw new Error(`j ${j} v ${v}: kernel ${got}, reference ${want}`)
      const f64 = q8RowDotF64(w, v, x, j)
      if (!(Math.abs(want - f64) <= 4 * 2 ** -23 * (Math.abs(f64) + 1e-6)))
        throw new Error(`j ${j} v ${v}: reference ${want} is not float64's ${f64}`)
    }
}

/** q4_gemv, q4_gemm, or their symmetric forms q4s_gemv and q4s_gemm (zero points not read). */
type Kernel = 'gemv' | 'gemm' | 'sym-gemv' | 'sym-gemm'

const Q4_EXPORTS = {
  gemv: 'q4_gemv',
  gemm: 'q4_gemm',
  'sym-gemv': 'q4s_gemv',
  'sym-gemm': 'q4s_gemm',
} as const

/**
 * `m`'s nibbles and scales with every zero point 8, in the symmetric layout (80-byte groups, no
 * zero points stored): what a MatMulNBits export without zero points packs to.
 */
function symmetricOf(m: Q4Matrix): Q4Matrix {
  const groups = (m.n * m.kb) / 4
  const data = new Uint8Array(80 * groups)
  for (let g = 0; g < groups; g++) data.set(m.data.subarray(84 * g, 84 * g + 80), 80 * g)
  return { n: m.n, k: m.k, kb: m.kb, sym: true, data }
}

/**
 * A build and, for relaxed, the form of its 8-bit dot product in q4 tiles (set_dot_add) and
 * whether the 16-bit form runs its looped tiles (set_looped), each set explicitly: the loader's
 * own choice of looped tiles depends on the V8 that runs the test.
 */
interface Build {
  variant: IsaVariant
  dotAdd: boolean
  looped: boolean
}

const BUILDS: Build[] = [
  { variant: 'simd128', dotAdd: false, looped: false },
  { variant: 'relaxed', dotAdd: false, looped: false },
  { variant: 'relaxed', dotAdd: true, looped: false },
  { variant: 'relaxed', dotAdd: false, looped: true },
]

async function runQ4(
  { variant, dotAdd, looped }: Build,
  kernel: Kernel,
  m: Q4Matrix,
  x: BlockActivations,
  v0 = 0,
  v1 = m.n,
  ldo = m.n + 3,
): Promise<Float32Array> {
  const { kernels } = await instantiateEngine(variant, { dotAdd, looped })
  const a = new Arena(kernels)
  const w = a.put(placed(m))
  const xa = a.put(x.data)
  const out = a.take(4 * x.t * ldo)
  new Float32Array(kernels.memory.buffer, out, x.t * ldo).fill(NaN)
  kernels[Q4_EXPORTS[kernel]](w, m.kb, v0, v1, xa, x.t, out, ldo)
  return a.f32(out, x.t * ldo)
}

describe('engine kernels: the committed bytes', () => {
  it('engine-{simd128,relaxed}.wasm and -wasm.ts are the assembly of engine.wat', async () => {
    for (const [v, base64] of [
      ['simd128', SIMD128_BASE64],
      ['relaxed', RELAXED_BASE64],
    ] as const) {
      const name = `engine-${v}`
      const built = Buffer.from(await assemble(name, kernelSource(name, readKernelFile)))
      expect(built.equals(readFileSync(`${KERNELS_DIR}${name}.wasm`))).toBe(true)
      expect(Buffer.from(base64, 'base64').equals(built)).toBe(true)
    }
  })

  it('the variants differ only in the marked lines, and simd128 has no relaxed instruction', async () => {
    const wat = readKernelFile('engine.wat')
    const simd = selectVariant(wat, 'simd128')
    const relaxed = selectVariant(wat, 'relaxed')
    // what is assembled: generated tiles written out (comments may name relaxed instructions)
    expect(kernelSource('engine-relaxed', readKernelFile)).toMatch(
      /i32x4.relaxed_dot_i8x16_i7x16_add_s/,
    )
    expect(kernelSource('engine-simd128', readKernelFile).replace(/;;.*$/gm, '')).not.toMatch(
      /relaxed_/,
    )
    expect(relaxed).toMatch(/i16x8.relaxed_dot_i8x16_i7x16_s/)
    const common = (s: string) =>
      s.split('\n').filter((l) => !/^\s*;;#/.test(l) && wat.split('\n').includes(l))
    expect(common(simd).length + common(relaxed).length).toBeGreaterThan(wat.split('\n').length)
    // without the feature wabt refuses the relaxed source: the simd128 build cannot use it
    await expect(assemble('engine-simd128', relaxed)).rejects.toThrow()
    expect(() => selectVariant(';;#if avx\n;;#end', 'simd128')).toThrow(/unknown variant/)
    expect(() => selectVariant(';;#if relaxed\n', 'simd128')).toThrow(/not closed/)
  })

  it('each ;;#tile line is its generated function, and only a known tile name is', () => {
    const wat = readKernelFile('engine.wat')
    const tiles = [...wat.matchAll(/^\s*;;#tile (\S+)$/gm)].map((m) => m[1])
    expect(tiles).toEqual(
      expect.arrayContaining([
        'q4_tile4x2',
        'q4_tile1x2_dot',
        'q4_tile1x4',
        'q4_tile4x2_loop',
        'q4_tile3x2_loop',
        'q4_tile2x2_loop',
        'q4_tile1x4_loop',
        'rows4',
        'store2',
      ]),
    )
    for (const v of ISA_VARIANTS) {
      const source = kernelSource(`engine-${v}`, (f) => (f === 'engine.wat' ? wat : ''))
      expect(source).not.toMatch(/^\s*;;#tile/m)
      // the relaxed-only tiles sit in `;;#if relaxed`: the simd128 build has none of them
      for (const name of tiles) {
        const count = source.match(new RegExp(`^  \\(func \\$${name}$`, 'gm'))?.length ?? 0
        expect([name, count]).toEqual([name, v === 'simd128' && name.startsWith('q4_') ? 0 : 1])
        if (count) expect(source).toContain(tileSource(name))
      }
    }
    expect(tileSource('q4_tile4x2')).toMatch(/^  \(func \$q4_tile4x2\n/)
    expect(tileSource('rows3')).toMatch(/^  \(func \$rows3\n/)
    // a looped tile: the unrolled one's steps as a loop (one step's loads, the sums from zero)
    const looped = tileSource('q4_tile4x2_loop')!
    expect(looped).toMatch(/^  \(func \$q4_tile4x2_loop\n/)
    expect(looped.match(/v128\.load offset=0 /g)?.length).toBe(2 + 4)
    expect(looped).toContain('(br_if $steps (i32.lt_u (local.get $k) (i32.const 4))))')
    expect(tileSource('q4_tile1x4_loop')).toMatch(/^  \(func \$q4_tile1x4_loop\n/)
    expect(() => pairTile(4, 'i32', true)).toThrow(/16-bit form/)
    for (const unknown of ['q4_tile5x2', 'q4_tile1x4_dot', 'rows1', 'store5', ''])
      expect(tileSource(unknown)).toBeUndefined()
    expect(() => expandTiles(';;#tile q4_tile5x2')).toThrow(/line 1: unknown tile "q4_tile5x2"/)
    expect(() => expandTiles('\n  ;;#tile')).toThrow(/line 2: unknown tile ""/)
  })

  it('each ;;#exp line is e^x inline: its locals declared once a function, at most as many vectors as declared', () => {
    const wat = readKernelFile('engine.wat')
    const uses = [...wat.matchAll(/^\s*;;#exp (.+)$/gm)].map((m) => m[1].trim().split(/\s+/).length)
    expect(uses).toEqual([8, 1, 8, 1]) // silu_mul and softmax: 8 vectors a step, then one
    for (const v of ISA_VARIANTS) {
      const source = kernelSource(`engine-${v}`, (f) => (f === 'engine.wat' ? wat : ''))
      expect(source).not.toMatch(/^\s*;;#exp/m)
      expect(source).not.toMatch(/\$expf/) // no function call per vector left
      // 8 vectors: the polynomial's 5 Horner steps for each, interleaved
      const silu = source.slice(source.indexOf('(func (export "silu_mul")'))
      expect(silu.slice(0, silu.indexOf('\n  )')).match(/\(local.get \$e_p3\)/g)).toHaveLength(9)
    }
    const fn = (body: string) => `  (func $f (local $a v128) (local $b v128)\n${body}\n  )`
    const ok = expandExp(fn('    ;;#exp-locals 2\n    ;;#exp-constants\n    ;;#exp $a $b'))
    expect(ok).toMatch(/\(local \$e1_y v128\)/)
    expect(ok).not.toMatch(/\$e2_/)
    expect(ok.match(/v128.const/g)).toHaveLength(14) // each constant set once
    expect(() => expandExp(fn('    ;;#exp $a'))).toThrow(/line 2: ;;#exp before ;;#exp-locals/)
    expect(() => expandExp(fn('    ;;#exp-locals 1\n    ;;#exp $a $b'))).toThrow(
      /line 3: ;;#exp takes 1 to 1 locals/,
    )
    expect(() => expandExp(fn('    ;;#exp-locals 9'))).toThrow(/from 1 to 8/)
    // a function's locals do not carry over to the next one
    expect(() => expandExp(fn('    ;;#exp-locals 1') + '\n' + fn('    ;;#exp-constants'))).toThrow(
      /line 5: ;;#exp-constants before/,
    )
  })

  it('every q4 function and export has a symmetric copy that reads no zero point; any other use of one is refused', () => {
    const wat = readKernelFile('engine.wat')
    for (const v of ISA_VARIANTS) {
      const source = kernelSource(`engine-${v}`, (f) => (f === 'engine.wat' ? wat : ''))
      const general = [...source.matchAll(/^ *\(func \$q4_(\w+)$/gm)].map((m) => m[1])
      expect(general).toEqual(expect.arrayContaining(['tile1', 'tile1x2', 'rows']))
      for (const name of general)
        expect(source).toMatch(new RegExp(`^ *\\(func \\$q4s_${name}$`, 'm'))
      const at = source.indexOf(';; generated by scripts/lib/kernel-symmetric.ts')
      expect(at).toBeGreaterThan(0)
      const copies = source.slice(at)
      for (const e of ['q4s_gemv', 'q4s_gemm']) expect(copies).toContain(`(func (export "${e}")`)
      // the copies call only copies, and load no zero point
      expect(copies).not.toMatch(/\$q4_|\$z[pq]\b|load32_zero offset=80/)
      expect(source.slice(0, at)).toMatch(/load32_zero offset=80/)
      // and walk the symmetric layout placed in panels of 4 rows: groups of 80 bytes, a row's
      // next group 320 on, panels of 80·kb (the general kernels: 84, 336, 84·kb)
      expect(copies).not.toMatch(/\(i32\.const (21|84|336)\)/)
      for (const [general, symmetric] of [
        ['(i32.mul (local.get $kb) (i32.const 84))', '(i32.mul (local.get $kb) (i32.const 80))'],
        ['(i32.const 336)', '(i32.const 320)'],
      ]) {
        expect(copies).toContain(symmetric)
        expect(source.slice(0, at)).toContain(general)
      }
    }
    const use = (body: string) => `(module\n  (func $q4_x (local $zp v128)\n    ${body})\n)`
    expect(
      addSymmetricQ4(use('(drop (i32x4.mul (local.get $zp) (v128.const i32x4 1 2 3 4)))')),
    ).toContain('(func $q4s_x')
    expect(() => addSymmetricQ4(use('(drop (i32x4.add (local.get $zp) (local.get $zp)))'))).toThrow(
      /\$q4s_x: a zero point is still used/,
    )
    // a row stride of 21 (bytes a block with zero points), which the rewrite does not know
    expect(() => addSymmetricQ4(use('(drop (i32.mul (local.get $n) (i32.const 21)))'))).toThrow(
      /\$q4s_x: a stride of the layout with zero points is left/,
    )
  })

  it('the feature probe is the relaxed dot product, and it validates here', async () => {
    const wabt = await wabtInit()
    const parsed = wabt.parseWat(
      'probe.wat',
      `(module (func (export "f") (param v128 v128) (result v128)
        (i16x8.relaxed_dot_i8x16_i7x16_s (local.get 0) (local.get 1))))`,
      { simd: true, relaxed_simd: true },
    )
    const bytes = new Uint8Array(parsed.toBinary({}).buffer)
    parsed.destroy()
    expect(Array.from(bytes)).toEqual(Array.from(RELAXED_PROBE))
    // loud, not skipped: without this the relaxed variant below would not be tested
    expect(
      relaxedSimdSupported(),
      'relaxed SIMD is not available in this runtime: the relaxed kernels cannot be tested',
    ).toBe(true)
    expect((await instantiateEngine()).variant).toBe('relaxed')
    expect((await instantiateEngine('simd128')).variant).toBe('simd128')
  })
})

describe('engine kernels in other runtimes', () => {
  const script = 'test/engine/wasm/kernels/runtime-check.ts'
  const run = (cmd: string, args: string[]) =>
    JSON.parse(execFileSync(cmd, [...args, script], { encoding: 'utf8', timeout: 60_000 }))

  it('Node with relaxed SIMD in the baseline tier: the loader trusts it only if it is exact', () => {
    const r = run(process.execPath, ['--experimental-wasm-relaxed-simd', '--import', 'tsx'])
    expect(r.validates).toBe(true)
    expect(r.simd128Mismatches).toBe(0)
    // whatever this Node's Liftoff computes, the loader's self-check must agree with it
    expect(r.works).toBe(r.relaxedMismatches === 0)
    expect(r.picked).toBe(r.works ? 'relaxed' : 'simd128')
    // the i32 dot product only where it is AVX-VNNI's and exact in this tier too
    expect(r.dotAdd).toBe(r.works && r.dotProbe === DOT_PROBE_VNNI && r.dotAddMismatches === 0)
    // the looped tiles only where they pay (V8 before 13), the i32 form is not taken, and they
    // are exact in this tier too
    expect(r.looped).toBe(
      r.works && !r.dotAdd && loopedTilesPay(process.versions.v8) && r.loopedMismatches === 0,
    )
  })

  it('the looped tiles pay in V8 before 13 (Node 20-23), not in 13 and later or where the version is unknown', () => {
    for (const v8 of ['11.3.244.8-node.33', '12.4.254.21-node.57', '12.9.202.28-node.14'])
      expect([v8, loopedTilesPay(v8)]).toEqual([v8, true])
    for (const v8 of ['13.6.233.10-node.28', '15.0.245.1', undefined, '', 'v8', 42])
      expect([v8, loopedTilesPay(v8)]).toEqual([v8, false])
  })

  it('Deno (relaxed SIMD on by default): relaxed picked, both variants and both dot product forms exact', () => {
    const r = run('npx', ['deno', 'run', '--no-prompt'])
    expect([2 * 32767, DOT_PROBE_VNNI, -4 * 127]).toContain(r.dotProbe)
    expect(r).toEqual({
      validates: true,
      works: true,
      picked: 'relaxed',
      simd128Mismatches: 0,
      relaxedMismatches: 0,
      dotProbe: r.dotProbe,
      dotAddMismatches: 0,
      dotAdd: r.dotProbe === DOT_PROBE_VNNI,
      // exact, and not taken: Deno's V8 is 13 or later
      loopedMismatches: 0,
      looped: false,
    })
  })
})

for (const variant of ISA_VARIANTS) {
  describe(`engine kernels, ${variant}`, () => {
    it('quant_b32 is quantizeBlocks bit for bit (padding, ldx > k, zero and extreme rows)', async () => {
      const { kernels } = await instantiateEngine(variant)
      for (const [t, k, ldx] of [
        [1, 32, 32],
        [3, 96, 100], // 3 blocks, padded to 4; rows not back to back
        [5, 160, 160],
        [2, 896, 900],
      ]) {
        const x = randomRows(t, ldx, t * k)
        x.fill(0, 0, k) // an all-zero row: scale 0
        if (t > 2) {
          x.fill(3.25, ldx, ldx + 32) // one block of a single value: all 127
          x.fill(-1e-30, ldx + 32, ldx + 64) // subnormal-ish magnitudes
          for (let i = 64; i < 96; i++) x[ldx + i] = (i - 80) * 0.5 // ties after scaling
        }
        const a = new Arena(kernels)
        const at = a.put(x)
        const ref = quantizeBlocks(x, t, k, ldx)
        const xa = a.take(ref.data.byteLength)
        new Uint8Array(kernels.memory.buffer, xa, ref.data.byteLength).fill(0x55)
        kernels.quant_b32(at, ldx, k, t, xa)
        const buf = kernels.memory.buffer
        // every byte: values, scales (f32 bits) and sums
        expect(Array.from(new Uint8Array(buf, xa, ref.data.length))).toEqual(Array.from(ref.data))
        if (t > 2) expect(a8Get(ref, 1, 0)).toBe(127)
      }
    })

    it('quant_a16 is quantizeRows bit for bit (padding, ldx > k, a tail, zero rows, ties); stops at a non-finite row', async () => {
      const { kernels } = await instantiateEngine(variant)
      for (const [t, k, ldx, stride] of [
        [1, 32, 32, 32],
        [3, 100, 104, 128], // k not a multiple of 8: the scalar tail; padded to stride
        [5, 896, 900, 896],
        [2, 4864, 4864, 4864],
      ]) {
        const x = randomRows(t, ldx, t * k + 1)
        x.fill(0, 0, k) // an all-zero row: scale 0, all values 0
        if (t > 2) {
          // row 1's max is limit / 1024, so its scale is 2^-10 and these land on n + 0.5 exactly
          for (let i = 0; i < 40; i++) x[ldx + i] = (i - 20 + 0.5) / 1024
          x.fill(0, ldx + 40, ldx + k)
          x[ldx + 41] = a16Limit(stride) / 1024
        }
        const a = new Arena(kernels)
        const at = a.put(x)
        const ref = quantizeRows(x, t, k, stride, ldx)
        const xa = a.take(2 * t * stride)
        new Uint8Array(kernels.memory.buffer, xa, 2 * t * stride).fill(0x55) // padding must be zeroed
        const sums = a.take(4 * t)
        const scales = a.take(4 * t)
        const done = kernels.quant_a16(at, ldx, k, t, a16Limit(stride), xa, stride, sums, scales)
        expect(done).toBe(t)
        const buf = kernels.memory.buffer
        expect(Array.from(new Int16Array(buf, xa, t * stride))).toEqual(Array.from(ref.x))
        expect(Array.from(new Float32Array(buf, sums, t))).toEqual(Array.from(ref.sum))
        expect(Array.from(new Float32Array(buf, scales, t))).toEqual(Array.from(ref.scale))
        if (t > 2) {
          // the ties went to even, up and down: -19.5 → -20, -18.5 → -18, ..., 19.5 → 20
          expect(ref.scale[1]).toBe(2 ** -10)
          const row = Array.from(ref.x.subarray(stride, stride + 40))
          expect(row).toEqual(row.map((_, i) => 2 * Math.round((i - 20 + 0.5) / 2) + 0))
          expect(new Set(row).size).toBe(21)
        }
      }
      // a NaN or an infinity in row 1: rows from it are refused
      for (const bad of [NaN, Infinity, -Infinity]) {
        const x = randomRows(3, 64, 5)
        x[64 + 7] = bad
        const a = new Arena(kernels)
        const at = a.put(x)
        const xa = a.take(2 * 3 * 64)
        const sums = a.take(12)
        const scales = a.take(12)
        expect(kernels.quant_a16(at, 64, 64, 3, a16Limit(64), xa, 64, sums, scales)).toBe(1)
      }
    })

    // the q4 products in each form of this build's 8-bit dot product (relaxed: both)
    for (const build of BUILDS.filter((b) => b.variant === variant)) {
      const form = build.dotAdd
        ? ', i32 dot product (set_dot_add)'
        : build.looped
          ? ', looped tiles (set_looped)'
          : ''
      it(`q4_gemv: n = 1..7 rows, odd N and K, a sub-range of rows, ldo > N${form}`, async () => {
        for (const [n, k] of [
          [1, 32],
          [5, 96],
          [37, 200], // a K that MatMulNBits can have: the last block is partial
          [13, 896],
        ]) {
          const m = randomQ4(n, k, n + k)
          for (let t = 1; t <= 7; t++) {
            const x = quantizeBlocks(randomRows(t, k, 7 * t + k), t, k)
            expectQ4(await runQ4(build, 'gemv', m, x), m, x, 0, n, n + 3)
          }
          // sub-ranges, one from row 3: rows 3 and 4 are in different panels of the placement
          // (q4-b32.ts), so they are not a pair; then whole panels from row 4 on
          for (const [v0, v1] of [
            [Math.floor(n / 3), n - Math.floor(n / 4)],
            [Math.min(3, n - 1), n],
          ])
            for (const t of [1, 3]) {
              const x = quantizeBlocks(randomRows(t, k, t), t, k)
              expectQ4(await runQ4(build, 'gemv', m, x, v0, v1), m, x, v0, v1, n + 3)
            }
        }
      })

      it(`q4_gemm: T not a multiple of the tile, several row blocks, equal to q4_gemv${form}`, async () => {
        const n = 251 // 896 inputs: 111 rows a block, so 3 blocks, the last partial
        const m = randomQ4(n, 896, 5)
        for (const t of [1, 2, 3, 4, 6, 9]) {
          const x = quantizeBlocks(randomRows(t, 896, t), t, 896)
          const gemm = await runQ4(build, 'gemm', m, x)
          expectQ4(gemm, m, x, 0, n, n + 3)
          expect(Object.is(gemm[0], (await runQ4(build, 'gemv', m, x))[0])).toBe(true)
        }
        const x = quantizeBlocks(randomRows(6, 896, 2), 6, 896)
        expectQ4(await runQ4(build, 'gemm', m, x, 100, 240), m, x, 100, 240, n + 3)
        // from an odd row: blocks that start and end inside panels
        expectQ4(await runQ4(build, 'gemm', m, x, 101, 239), m, x, 101, 239, n + 3)
      })

      it(`q4s_gemv and q4s_gemm: the symmetric layout (80-byte groups, zero points 8) gives the reference's bits${form}`, async () => {
        for (const [n, k] of [
          [1, 32],
          [5, 96],
          [37, 200],
          [13, 896],
        ]) {
          const m = symmetricOf(randomQ4(n, k, 3 * n + k))
          // precondition: 20·kb bytes a row
          expect(m.data.length).toBe(20 * m.kb * n)
          for (let t = 1; t <= 9; t++) {
            const x = quantizeBlocks(randomRows(t, k, 5 * t + k), t, k)
            const kernel = t > 4 ? 'sym-gemm' : 'sym-gemv'
            expectQ4(await runQ4(build, kernel, m, x), m, x, 0, n, n + 3)
          }
          const x = quantizeBlocks(randomRows(6, k, 2), 6, k)
          const [v0, v1] = [Math.floor(n / 3), n - Math.floor(n / 4)]
          for (const kernel of ['sym-gemv', 'sym-gemm'] as const)
            expectQ4(await runQ4(build, kernel, m, x, v0, v1), m, x, v0, v1, n + 3)
        }
        // a GEMM of several row blocks (111 rows of 896 inputs a block)
        const m = symmetricOf(randomQ4(251, 896, 6))
        const x = quantizeBlocks(randomRows(7, 896, 8), 7, 896)
        expectQ4(await runQ4(build, 'sym-gemm', m, x), m, x, 0, 251, 254)
      })

      it(`q4 extremes: activations all ±127, q 15 with zp 0, q 0 with zp 15, zero scales${form}`, async () => {
        const k = 256
        const m = emptyQ4(4, k)
        // row 0: q 15, zp 0 (the largest positive sums); row 1: q 0, zp 15; rows 2, 3: high
        // nibbles 15, low 0, zp 8; row 3: zero scales
        for (let i = 0; i < k; i++) {
          q4Set(m, 0, i, 15)
          q4Set(m, 2, i, i % 32 >= 16 ? 15 : 0)
          q4Set(m, 3, i, i % 32 >= 16 ? 15 : 0)
        }
        for (let c = 0; c < m.kb; c++) {
          q4SetBlock(m, 0, c, 0.5, 0)
          q4SetBlock(m, 1, c, 0.5, 15)
          q4SetBlock(m, 2, c, 0.5, 8)
          q4SetBlock(m, 3, c, 0, 8)
        }
        const rows = new Float32Array(3 * k)
        rows.fill(1, 0, k) // all 127
        rows.fill(-2, k, 2 * k) // all -127
        for (let i = 0; i < k; i++) rows[2 * k + i] = i % 2 ? 1 : -1
        const x = quantizeBlocks(rows, 3, k)
        for (let j = 0; j < 3; j++)
          for (let i = 0; i < k; i++) expect(Math.abs(a8Get(x, j, i))).toBe(127)
        for (const kernel of ['gemv', 'gemm'] as const) {
          const out = await runQ4(build, kernel, m, x, 0, 4, 4)
          expectQ4(out, m, x, 0, 4, 4)
          expect(out[0]).toBeCloseTo(k * 15 * 0.5, 3) // every block 32·15·127
          expect(out[4 + 1]).toBeCloseTo(k * 15 * 0.5 * 2, 3) // (0 − 15) · −127
          expect(out[3]).toBe(0)
        }
      })
    }

    it('q8_gemm: T not a multiple of 4, several row blocks; rows and rows4 as before', async () => {
      const { kernels } = await instantiateEngine(variant)
      const k = 72 // stride 96: padded rows; 682 rows a block
      const w = quantizeQ8Rows(randomRows(1500, k, 3, 0), 1500, k)
      // rows: 1 vector (row pairs), 2 and 3 ($rows2, $rows3), 4, more (a row at a time); q8_gemm:
      // tiles of 4, then the last 1, 2 or 3 rows
      for (const t of [1, 2, 3, 4, 5, 6, 7, 9]) {
        const x = quantizeRows(randomRows(t, k, 11 * t), t, k, w.stride)
        const a = new Arena(kernels)
        const wa = placeQ8(a, w)
        const xa = placeRows(a, x)
        const out = a.take(4 * t * (w.n + 1))
        kernels.q8_gemm(
          wa.w,
          w.stride,
          wa.zp,
          wa.scale,
          0,
          w.n,
          xa.x,
          xa.sum,
          xa.scale,
          t,
          out,
          w.n + 1,
        )
        expectQ8(a.f32(out, t * (w.n + 1)), w, x, w.n + 1)
        if (t === 4) {
          kernels.rows4(wa.w, w.stride, wa.zp, wa.scale, 0, w.n, xa.x, xa.sum, xa.scale, out, w.n)
          expectQ8(a.f32(out, t * w.n), w, x, w.n)
        }
        kernels.rows(wa.w, w.stride, wa.zp, wa.scale, 0, w.n, xa.x, xa.sum, xa.scale, t, out, w.n)
        expectQ8(a.f32(out, t * w.n), w, x, w.n)
      }
    })

    it('q8_gemm, rows4 and rows: a sub-range of rows with odd ends (rows scored in pairs), nothing written outside it', async () => {
      const { kernels } = await instantiateEngine(variant)
      const k = 200 // stride 224: 292 rows a block, so the last block of [3, 1500) is odd
      const n = 1500
      const w = quantizeQ8Rows(randomRows(n, k, 5, 0), n, k)
      for (const [t, v0, v1] of [
        [4, 1, 8],
        [4, 0, 1],
        [7, 3, n],
        [9, 2, 1499],
        [2, 1, 8],
        [3, 0, 1],
        [3, 3, n],
        [2, 2, 1499],
      ]) {
        const x = quantizeRows(randomRows(t, k, 13 * t), t, k, w.stride)
        const a = new Arena(kernels)
        const wa = placeQ8(a, w)
        const xa = placeRows(a, x)
        const ldo = n + 1
        // one output row more than t: a tile that stores lanes past its vectors writes there
        const out = a.take(4 * (t + 1) * ldo)
        const check = () => {
          const got = a.f32(out, (t + 1) * ldo)
          for (let j = 0; j <= t; j++)
            for (let v = 0; v < ldo; v++) {
              const y = got[j * ldo + v]
              if (j === t || v < v0 || v >= v1) {
                if (!Number.isNaN(y)) throw new Error(`wrote outside [${v0}, ${v1}): j ${j} v ${v}`)
              } else if (!Object.is(y, q8RowDot(w, v, x, j)))
                throw new Error(`j ${j} v ${v}: kernel ${y}, reference ${q8RowDot(w, v, x, j)}`)
            }
        }
        const args = [wa.w, w.stride, wa.zp, wa.scale, v0, v1, xa.x, xa.sum, xa.scale] as const
        const run = (call: () => void) => {
          new Float32Array(kernels.memory.buffer, out, (t + 1) * ldo).fill(NaN)
          call()
          check()
        }
        run(() => kernels.q8_gemm(...args, t, out, ldo))
        if (t === 4) run(() => kernels.rows4(...args, out, ldo))
        if (t <= 4) run(() => kernels.rows(...args, t, out, ldo))
      }
    })

    it('q8 extremes: weights ±128/127 against activations at the int16 limit', async () => {
      const { kernels } = await instantiateEngine(variant)
      const k = 896
      const w: Q8Rows = {
        n: 3,
        k,
        stride: k,
        q: new Int8Array(3 * k),
        zp: Int8Array.from([0, 127, -128]),
        scale: Float32Array.from([1e-3, 2e-3, 0]),
      }
      w.q.fill(-128, 0, k)
      w.q.fill(127, k, 2 * k)
      const rows = new Float32Array(2 * k).fill(-3)
      rows.fill(5, k)
      const x = quantizeRows(rows, 2, k, k)
      const a = new Arena(kernels)
      const wa = placeQ8(a, w)
      const xa = placeRows(a, x)
      const out = a.take(4 * 2 * 3)
      kernels.q8_gemm(wa.w, k, wa.zp, wa.scale, 0, 3, xa.x, xa.sum, xa.scale, 2, out, 3)
      expectQ8(a.f32(out, 6), w, x, 3)
    })

    it('kernels touch only the bytes of their rows: weights that end where memory ends', async () => {
      // the kernels load a word of each line of the next rows (q8 decode) or of a block of rows
      // (prefill) before scoring them, and a q4 tile walks a panel of 4 rows (the last one padded:
      // 9 rows take 12); a matrix placed flush against the end of memory traps if any load
      // reaches past its rows (its placement)
      const { kernels } = await instantiateEngine(variant)
      const atEnd = (a: Arena, data: Uint8Array | Int8Array): number => {
        const end = Math.ceil((kernels.memory.buffer.byteLength + data.byteLength) / 65536) * 65536
        kernels.memory.grow(end / 65536 - kernels.memory.buffer.byteLength / 65536)
        const w = end - data.byteLength
        new Uint8Array(kernels.memory.buffer, w, data.byteLength).set(
          new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
        )
        expect(w + data.byteLength).toBe(kernels.memory.buffer.byteLength)
        return w
      }
      // q4: 9 rows (4 pairs and a last row alone); 1 and 4 activation rows (q4_gemv), 5 (q4_gemm)
      const m = randomQ4(9, 896, 31)
      for (const t of [1, 4, 5]) {
        const a = new Arena(kernels)
        const x = quantizeBlocks(randomRows(t, 896, 32 + t), t, 896)
        const xa = a.put(x.data)
        const out = a.take(4 * t * m.n)
        const w = atEnd(a, placed(m))
        const call = t > 4 ? kernels.q4_gemm : kernels.q4_gemv
        call(w, m.kb, 0, m.n, xa, t, out, m.n)
        expectQ4(a.f32(out, t * m.n), m, x, 0, m.n, m.n)
        // and the symmetric kernels, on the same rows in their layout, also ending at the end
        const s = symmetricOf(m)
        const ws = atEnd(a, placed(s))
        ;(t > 4 ? kernels.q4s_gemm : kernels.q4s_gemv)(ws, m.kb, 0, m.n, xa, t, out, m.n)
        expectQ4(a.f32(out, t * m.n), s, x, 0, m.n, m.n)
      }
      // q8: 7 rows of 300 inputs (stride 320: rows this wide are touched), 1 vector (row
      // pairs), 2 and 3 ($rows2, $rows3), 4 (rows4) and 5 (q8_gemm)
      const q8 = quantizeQ8Rows(randomRows(7, 300, 33, 0), 7, 300)
      expect(q8.stride).toBe(320)
      for (const t of [1, 2, 3, 4, 5]) {
        const a = new Arena(kernels)
        const x = quantizeRows(randomRows(t, 300, 34 + t), t, 300, q8.stride)
        const xa = placeRows(a, x)
        const zp = a.put(q8.zp)
        const scale = a.put(q8.scale)
        const out = a.take(4 * t * q8.n)
        const w = atEnd(a, q8.q)
        const args = [w, q8.stride, zp, scale, 0, q8.n, xa.x, xa.sum, xa.scale] as const
        if (t === 4) kernels.rows4(...args, out, q8.n)
        else if (t === 5) kernels.q8_gemm(...args, t, out, q8.n)
        else kernels.rows(...args, t, out, q8.n)
        expectQ8(a.f32(out, t * q8.n), q8, x, q8.n)
      }
      // the activation sums or scales flush against the end: 2 and 3 vectors read only theirs
      for (const t of [2, 3])
        for (const last of ['sum', 'scale'] as const) {
          const a = new Arena(kernels)
          const x = quantizeRows(randomRows(t, 300, 44 + t), t, 300, q8.stride)
          const [w, zp, scale, xq] = [a.put(q8.q), a.put(q8.zp), a.put(q8.scale), a.put(x.x)]
          const other = a.put(last === 'sum' ? x.scale : x.sum)
          const out = a.take(4 * t * q8.n)
          const end = atEnd(a, new Uint8Array(x[last].buffer, x[last].byteOffset, 4 * t))
          const [sum, xscale] = last === 'sum' ? [end, other] : [other, end]
          kernels.rows(w, q8.stride, zp, scale, 0, q8.n, xq, sum, xscale, t, out, q8.n)
          expectQ8(a.f32(out, t * q8.n), q8, x, q8.n)
        }
    })

    it('dots_q8 and mix_q8 are dotsQ8Ref and mixQ8Ref bit for bit (odd n, blocks of 256, zero rows, keys with channels kept apart), near the float sums', async () => {
      const { kernels } = await instantiateEngine(variant)
      for (const [n, dim, slots] of [
        [1, 64, 0],
        [5, 64, 2],
        [257, 64, 0],
        [600, 128, 4],
        [3, 16, 4],
      ]) {
        const a = new Arena(kernels)
        const q = randomRows(1, dim, n)
        const kv = randomRows(n, dim, n + 1)
        if (n > 2) kv.fill(0, dim, 2 * dim) // a zero row: scale 0
        // keys: channels kept apart (RoPE pairs 3 and 5, the second one unused when 2 slots),
        // far larger than the rest, as a large key bias makes them
        const apart = [3, 5, dim / 2 + 3, dim / 2 + 5].slice(0, slots).sort((x, y) => x - y)
        const keys = kv.slice()
        for (let t = 0; t < n; t++)
          for (const c of apart) keys[t * dim + c] += 500 * (c % 2 ? 1 : -1)
        const rec = dim + 4 + 4 * slots
        const records = new Uint8Array(n * rec)
        const row = new Float32Array(dim)
        for (let t = 0; t < n; t++)
          writeKeyRecord(keys, t * dim, dim, apart, slots, row, records, t * rec)
        const k: Q8Records = { bytes: records, dim, n, slots }
        const q16 = new Uint8Array(2 * dim)
        const qs = writeQueryI16(q, 0, dim, q16, 0)
        const qx = Float32Array.from({ length: slots }, (_, i) => q[apart[i]])
        const ka = a.put(records)
        const qa = a.put(q16)
        const xa = a.put(qx)
        const out = a.take(4 * n)
        kernels.dots_q8(qa, qs, xa, slots, ka, n, dim, out)
        const scores = a.f32(out, n)
        const want = dotsQ8Ref(new Int16Array(q16.buffer), qs, k, qx)
        expect(Buffer.from(scores.buffer).equals(Buffer.from(want.buffer))).toBe(true)
        // near the float scores: at most half a quantum of each key value (its record's max
        // over the channels not kept apart / 254) and of each query value (max / 65534), times
        // the other side; the kept-apart channels exact
        const deq = new Float32Array(n * dim)
        for (let t = 0; t < n; t++) readKeyRecord(records, t * rec, dim, apart, deq, t * dim)
        const maxAbs = (x: Float32Array, from: number) =>
          Math.max(...Array.from(x.subarray(from, from + dim), Math.abs))
        for (let t = 0; t < n; t++) {
          let exact = 0
          let bound = 1e-6
          for (let d = 0; d < dim; d++) {
            exact += q[d] * keys[t * dim + d]
            bound += (Math.abs(q[d]) * maxAbs(kv, t * dim)) / 254
            bound += (Math.abs(kv[t * dim + d]) * maxAbs(q, 0)) / 65534
            if (apart.includes(d)) expect(deq[t * dim + d]).toBe(keys[t * dim + d])
          }
          expect(Math.abs(scores[t] - exact)).toBeLessThanOrEqual(
            bound * 1.01 + 1e-4 * Math.abs(exact),
          )
        }
        // values: plain records; attention weights: a softmax of the scores
        const vrec = dim + 4
        const vrecords = new Uint8Array(n * vrec)
        for (let t = 0; t < n; t++) writeQ8Record(kv, t * dim, dim, vrecords, t * vrec)
        const v: Q8Records = { bytes: vrecords, dim, n }
        const va = a.put(vrecords)
        const p = new Float32Array(n)
        let sum = 0
        for (let t = 0; t < n; t++) sum += p[t] = Math.exp(scores[t] / (8 * dim))
        for (let t = 0; t < n; t++) p[t] = p[t] / sum
        const pa = a.put(p)
        const w16 = a.take(2 * (n + 1))
        const mixed = a.take(4 * dim)
        kernels.mix_q8(pa, va, n, dim, w16, mixed)
        const got = a.f32(mixed, dim)
        const ref = mixQ8Ref(p, v)
        expect(Buffer.from(got.buffer).equals(Buffer.from(ref.buffer))).toBe(true)
        // near the float sums: half a quantum of each value (its record's max / 254) and of
        // each weight (the largest weight / 65534), times the other side
        let wMax = 0
        for (let t = 0; t < n; t++) wMax = Math.max(wMax, (p[t] * maxAbs(kv, t * dim)) / 127)
        for (let d = 0; d < dim; d++) {
          let exact = 0
          let bound = 1e-6
          for (let t = 0; t < n; t++) {
            exact += p[t] * kv[t * dim + d]
            bound += (p[t] * maxAbs(kv, t * dim)) / 254 + (127 * wMax) / 65534
          }
          expect(Math.abs(got[d] - exact)).toBeLessThanOrEqual(bound * 1.01)
        }
      }
    })

    it('mix_q8 at its integer limits: 600 positions of ±127 with equal weights, and all-zero values', async () => {
      const { kernels } = await instantiateEngine(variant)
      const a = new Arena(kernels)
      const n = 600
      const dim = 32
      const kv = new Float32Array(n * dim).map((_, i) => (i % 3 === 0 ? -1000 : 1000))
      const records = new Uint8Array(n * (dim + 4))
      for (let t = 0; t < n; t++) writeQ8Record(kv, t * dim, dim, records, t * (dim + 4))
      const k: Q8Records = { bytes: records, dim, n }
      const p = new Float32Array(n).fill(1 / n)
      const ka = a.put(records)
      const pa = a.put(p)
      const w16 = a.take(2 * (n + 1))
      const out = a.take(4 * dim)
      kernels.mix_q8(pa, ka, n, dim, w16, out)
      const got = a.f32(out, dim)
      expect(Buffer.from(got.buffer).equals(Buffer.from(mixQ8Ref(p, k).buffer))).toBe(true)
      for (let d = 0; d < dim; d++) {
        let mean = 0
        for (let t = 0; t < n; t++) mean += kv[t * dim + d] / n
        expect(got[d]).toBeCloseTo(mean, 1)
      }
      records.fill(0)
      const za = a.put(records)
      const pz = a.put(p)
      kernels.mix_q8(pz, za, n, dim, w16, out)
      expect([...a.f32(out, dim)].every((x) => x === 0)).toBe(true)
    })

    it('dots, mix and silu_mul (copied from q8-head.wat) compute what they did', async () => {
      const { kernels } = await instantiateEngine(variant)
      const a = new Arena(kernels)
      const dim = 64
      const n = 5
      const q = randomRows(1, dim, 1)
      const kv = randomRows(n, dim, 2)
      const qa = a.put(q)
      const ka = a.put(kv)
      const out = a.take(4 * dim)
      kernels.dots(qa, 1, ka, n, dim, out, n)
      const scores = a.f32(out, n)
      for (let t = 0; t < n; t++) {
        let s = 0
        for (let d = 0; d < dim; d++) s += q[d] * kv[t * dim + d]
        expect(scores[t]).toBeCloseTo(s, 3)
      }
      kernels.mix(ka, n, 1, ka, n, dim, out) // weights: the first n floats
      const mixed = a.f32(out, dim)
      for (let d = 0; d < dim; d++) {
        let s = 0
        for (let t = 0; t < n; t++) s += kv[t] * kv[t * dim + d]
        expect(mixed[d]).toBeCloseTo(s, 2)
      }
      kernels.silu_mul(qa, ka, dim, out)
      const act = a.f32(out, dim)
      for (let i = 0; i < dim; i++) {
        const want = (q[i] / (1 + Math.exp(-q[i]))) * kv[i]
        expect(Math.abs(act[i] - want)).toBeLessThanOrEqual(1e-5 * (Math.abs(want) + 1e-3))
      }
    })

    it('dots and mix: every tile (2 heads × 4 positions, an odd last head, the last positions) gives the reference bits', async () => {
      const { kernels } = await instantiateEngine(variant)
      const a = new Arena(kernels)
      // g odd and even, n below, at and past a tile of 4, dim 16 to 64
      for (const [g, n, dim] of [
        [7, 13, 64],
        [2, 4, 32],
        [1, 3, 16],
        [3, 9, 64],
        [7, 1, 64],
        [4, 8, 16],
      ]) {
        const ld = n + 3 // a row of scores: n, then 3 floats that must stay untouched
        const q = randomRows(g, dim, 31 + n)
        const keys = randomRows(n, dim, 32 + n)
        const p = randomRows(g, ld, 33 + n)
        const qa = a.put(q)
        const ka = a.put(keys)
        const pa = a.put(p)
        const out = a.put(new Float32Array(g * ld).fill(7))
        kernels.dots(qa, g, ka, n, dim, out, ld)
        const scores = a.f32(out, g * ld)
        const want: number[] = []
        for (let h = 0; h < g; h++)
          for (let t = 0; t < n; t++)
            want.push(
              dotsRef(q.subarray(h * dim, (h + 1) * dim), keys.subarray(t * dim, (t + 1) * dim)),
            )
        expect(new Set(want).size).toBe(g * n) // precondition: distinct scores
        const got = [...scores].filter((_, i) => i % ld < n)
        expect(got).toEqual(want)
        expect([...scores].filter((_, i) => i % ld >= n).every((x) => x === 7)).toBe(true)
        const mixed = a.take(4 * g * dim)
        kernels.mix(pa, ld, g, ka, n, dim, mixed)
        const sums = [...a.f32(mixed, g * dim)]
        const wantMix: number[] = []
        for (let h = 0; h < g; h++)
          for (let d = 0; d < dim; d++)
            wantMix.push(mixRef(p.subarray(h * ld, h * ld + n), keys, dim, d))
        expect(new Set(wantMix).size).toBe(g * dim)
        expect(sums).toEqual(wantMix)
      }
    })

    it('rms_norm, add_rows and softmax_rows: the residual stream and attention weights', async () => {
      const { kernels } = await instantiateEngine(variant)
      const a = new Arena(kernels)
      const [b, n] = [3, 896]
      const x = randomRows(b, n, 21)
      const w = Float32Array.from(randomRows(1, n, 22, 0), (v) => 1 + v / 4)
      const xa = a.put(x)
      const wa = a.put(w)
      const out = a.take(4 * b * n)
      const eps = 1e-6
      kernels.rms_norm(xa, out, b, n, wa, eps)
      const normed = a.f32(out, b * n)
      for (let r = 0; r < b; r++) {
        const row = x.subarray(r * n, (r + 1) * n)
        const want = rmsNormRef(row, w, eps)
        const got = normed.subarray(r * n, (r + 1) * n)
        expect(Buffer.from(got.slice().buffer).equals(Buffer.from(want.buffer))).toBe(true)
        // and within float rounding of the float64 norm
        let ss = 0
        for (const v of row) ss += v * v
        const inv = 1 / Math.sqrt(ss / n + eps)
        for (let i = 0; i < n; i++)
          expect(Math.abs(got[i] - row[i] * inv * w[i])).toBeLessThanOrEqual(
            1e-6 * Math.abs(row[i] * inv * w[i]) + 1e-30,
          )
      }
      // in place (out = x) gives the same
      kernels.rms_norm(xa, xa, b, n, wa, eps)
      expect(Buffer.from(a.f32(xa, b * n).buffer).equals(Buffer.from(normed.buffer))).toBe(true)

      const y = randomRows(b, n, 23)
      const ya = a.put(y)
      const h = a.put(x)
      kernels.add_rows(h, 1, b * n, ya) // element by element
      expect([...a.f32(h, b * n)]).toEqual([...x].map((v, i) => Math.fround(v + y[i])))
      const bias = randomRows(1, n, 24)
      const ba = a.put(bias)
      const rows = a.put(x)
      kernels.add_rows(rows, b, n, ba) // the same n floats to every row
      expect([...a.f32(rows, b * n)]).toEqual([...x].map((v, i) => Math.fround(v + bias[i % n])))

      // softmax_rows: each row as softmax alone; the row after the last untouched
      const [g, len, ld] = [3, 37, 44]
      const scores = randomRows(g + 1, ld, 25, 0)
      const one = a.put(scores)
      const all = a.put(scores)
      for (let r = 0; r < g; r++) kernels.softmax(one + 4 * r * ld, len)
      kernels.softmax_rows(all, ld, g, len)
      const want = a.f32(one, (g + 1) * ld)
      const got = a.f32(all, (g + 1) * ld)
      expect(want.subarray(g * ld)).toEqual(scores.subarray(g * ld))
      for (let r = 0; r < g; r++) {
        const row = got.subarray(r * ld, r * ld + len)
        expect(Math.abs(row.reduce((s, v) => s + v, 0) - 1)).toBeLessThan(1e-5)
      }
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true)
    })
  })
}

describe('engine kernels: the variants agree', () => {
  it('simd128, relaxed, relaxed with the i32 dot product and with the looped tiles give the same bits on Qwen-shaped q4 products', async () => {
    const m = quantizeQ4(randomRows(64, 896, 9), 64, 896)
    for (const [kernel, t] of [
      ['gemv', 2],
      ['gemv', 4], // one tile of 4 rows
      ['gemm', 9],
      ['sym-gemv', 1],
      ['sym-gemv', 3],
      ['sym-gemm', 9],
    ] as const) {
      const x = quantizeBlocks(randomRows(t, 896, 10 + t), t, 896)
      const [simd, ...others] = await Promise.all(BUILDS.map((b) => runQ4(b, kernel, m, x)))
      expect(simd.some((v) => v !== 0 && Number.isFinite(v))).toBe(true)
      for (const other of others)
        expect(Buffer.from(other.buffer).equals(Buffer.from(simd.buffer))).toBe(true)
    }
  })

  it('dot_probe tells the lowering of the i32 dot product, and the loader uses that form only where it is AVX-VNNI', async () => {
    const relaxed = await instantiateEngine('relaxed')
    const probe = relaxed.kernels.dot_probe()
    // pmaddubsw (x64 without AVX-VNNI in V8), vpdpbusd (AVX-VNNI), a signed dot product (arm64)
    expect([2 * 32767, DOT_PROBE_VNNI, -4 * 127]).toContain(probe)
    expect(relaxed.dotAdd).toBe(probe === DOT_PROBE_VNNI)
    expect(await dotAddWorks()).toBe(probe === DOT_PROBE_VNNI)
    const simd = await instantiateEngine('simd128', { dotAdd: true })
    expect(simd.kernels.dot_probe()).toBe(0)
    expect(simd.dotAdd).toBe(false)
    expect((await instantiateEngine('relaxed', { dotAdd: true })).dotAdd).toBe(true)
  })

  it('the loader runs the looped tiles where they pay (this V8 before 13) and the i32 form is not taken', async () => {
    const relaxed = await instantiateEngine('relaxed')
    const want = !relaxed.dotAdd && loopedTilesPay(process.versions.v8)
    expect(relaxed.looped).toBe(want)
    expect(relaxed.build).toBe(
      relaxed.dotAdd ? 'relaxed+vnni' : want ? 'relaxed+looped' : 'relaxed',
    )
    // the simd128 build has no looped tiles; the i32 form has none either
    expect((await instantiateEngine('simd128', { looped: true })).looped).toBe(false)
    expect((await instantiateEngine('relaxed', { dotAdd: true, looped: true })).looped).toBe(false)
    expect((await instantiateEngine('relaxed', { looped: true })).build).toBe('relaxed+looped')
    // and q4_rows calls each looped tile where $looped is set, the unrolled one where not
    const source = kernelSource('engine-relaxed', readKernelFile)
    for (const prefix of ['q4', 'q4s'])
      for (const tile of ['tile1x4', 'tile4x2', 'tile3x2', 'tile2x2'])
        expect(source).toMatch(
          new RegExp(
            `\\(if \\(global\\.get \\$looped\\)\\s+\\(then \\(call \\$${prefix}_${tile}_loop [^]*?\\(else \\(call \\$${prefix}_${tile} `,
          ),
        )
  })
})
