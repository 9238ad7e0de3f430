/**
 * Run by engine-kernels.test.ts in other runtimes (Node 20 with relaxed SIMD and its baseline
 * tier on; Deno, where relaxed SIMD is on by default): which variant the loader picks, and how
 * many of each variant's quant_b32, q4_gemv and q4_gemm results differ from the reference there
 * (the relaxed build's too when the loader refuses it, with its i32 dot product and with its
 * looped tiles), and what dot_probe says. Prints one line of JSON. Imports nothing
 * outside src/engine.
 */
import { quantizeBlocks } from '../../../../src/engine/wasm/activations.ts'
import { q4Dot } from '../../../../src/engine/wasm/kernel-ref.ts'
import {
  dotAddWorks,
  engineModule,
  loopedTilesWork,
  pickVariant,
  relaxedSimdSupported,
  relaxedSimdWorks,
  type KernelExports,
} from '../../../../src/engine/wasm/kernel.ts'
import { emptyQ4, placeQ4, q4PlacedBytes, q4SetBlock } from '../../../../src/format/q4-b32.ts'

let seed = 12345
const rnd = () => {
  seed ^= seed << 13
  seed ^= seed >>> 17
  seed ^= seed << 5
  return (seed >>> 0) / 2 ** 32
}

function mismatches(k: KernelExports): number {
  const n = 23
  const K = 384
  const t = 6
  const m = emptyQ4(n, K)
  for (let i = 0; i < m.data.length; i++) m.data[i] = Math.floor(rnd() * 256)
  for (let v = 0; v < n; v++)
    for (let c = 0; c < m.kb; c++) q4SetBlock(m, v, c, rnd() - 0.5, Math.floor(rnd() * 16))
  const x = new Float32Array(t * K).map((_, i) => (rnd() - 0.5) * (i % 97 === 3 ? 40 : 1))
  const ref = quantizeBlocks(x, t, K)
  k.memory.grow(4)
  let at = 1024
  const put = (a: ArrayBufferView) => {
    const p = at
    new Uint8Array(k.memory.buffer).set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), p)
    at = Math.ceil((at + a.byteLength) / 64) * 64
    return p
  }
  // the rows in the kernels' placement (panels of 4, the last padded)
  const placed = new Uint8Array(q4PlacedBytes(n, m.kb))
  placeQ4(m, placed, 0)
  const [w, xf] = [put(placed), put(x)]
  const xa = put(new Uint8Array(ref.data.length))
  k.quant_b32(xf, K, K, t, xa)
  let bad = 0
  const q = new Uint8Array(k.memory.buffer, xa, ref.data.length)
  for (let i = 0; i < q.length; i++) if (q[i] !== ref.data[i]) bad++
  const out = at
  for (const gemm of [false, true]) {
    ;(gemm ? k.q4_gemm : k.q4_gemv)(w, m.kb, 0, n, xa, t, out, n)
    const y = new Float32Array(k.memory.buffer, out, t * n)
    for (let j = 0; j < t; j++)
      for (let v = 0; v < n; v++) if (!Object.is(y[j * n + v], q4Dot(m, v, ref, j))) bad++
  }
  // one activation row: the decode tiles (4 weight rows at a time)
  k.q4_gemv(w, m.kb, 0, n, xa, 1, out, n)
  const y = new Float32Array(k.memory.buffer, out, n)
  for (let v = 0; v < n; v++) if (!Object.is(y[v], q4Dot(m, v, ref, 0))) bad++
  return bad
}

async function instance(
  variant: 'simd128' | 'relaxed',
  { dotAdd = false, looped = false } = {},
): Promise<KernelExports> {
  const { exports } = await WebAssembly.instantiate(engineModule(variant), {})
  const k = exports as unknown as KernelExports
  k.set_dot_add(dotAdd ? 1 : 0)
  k.set_looped(looped ? 1 : 0)
  return k
}

const validates = relaxedSimdSupported()
console.log(
  JSON.stringify({
    validates,
    works: await relaxedSimdWorks(),
    picked: await pickVariant(),
    simd128Mismatches: mismatches(await instance('simd128')),
    relaxedMismatches: validates ? mismatches(await instance('relaxed')) : null,
    // the relaxed build with the i32 dot product in its q4 tiles (set_dot_add), and whether
    // the loader takes that form here
    dotProbe: validates ? (await instance('relaxed')).dot_probe() : null,
    dotAddMismatches: validates ? mismatches(await instance('relaxed', { dotAdd: true })) : null,
    dotAdd: await dotAddWorks(),
    // its looped q4 tiles (set_looped), and whether the loader takes them here
    loopedMismatches: validates ? mismatches(await instance('relaxed', { looped: true })) : null,
    looped: await loopedTilesWork(),
  }),
)
