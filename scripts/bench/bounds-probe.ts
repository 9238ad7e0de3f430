/**
 * Whether this runtime bounds-checks WASM memory loads in compiled code (Deno does: it does not
 * enable V8's trap handler) or leaves them to guard pages (Node):
 *
 *   npx tsx scripts/bench/bounds-probe.ts
 *   npx deno run -A scripts/bench/bounds-probe.ts
 *
 * Two loops of 32 `i32x4.add`s an iteration: one adds 32 `v128.load`s from a 4 KiB window (in L1),
 * the other adds registers. Prints the time of the first over the second, best of 10 runs of
 * 2·10⁶ iterations: about 1.3 where loads are not checked, about 2 where they are (Intel Xeon:
 * Node 20 1.26-1.28; with --wasm-enforce-bounds-checks 1.89-1.90; Deno 2.10). `probeWasm()` is
 * the module, for timing it elsewhere (a Worker behind `wrangler dev`, timed over HTTP).
 */
import { assemble } from '../build-kernels.ts'
import { isMain } from '../lib/cli.ts'

const ADDS = 32

export async function probeWasm(): Promise<Uint8Array<ArrayBuffer>> {
  const acc = (i: number) => `$a${i % 4}`
  const loads = Array.from(
    { length: ADDS },
    (_, i) =>
      `(local.set ${acc(i)} (i32x4.add (local.get ${acc(i)}) (v128.load offset=${16 * i} (local.get $p))))`,
  ).join('\n')
  const adds = Array.from(
    { length: ADDS },
    (_, i) => `(local.set ${acc(i)} (i32x4.add (local.get ${acc(i)}) (local.get $b${i % 4})))`,
  ).join('\n')
  const sum =
    '(i32x4.extract_lane 0 (i32x4.add (i32x4.add (local.get $a0) (local.get $a1)) (i32x4.add (local.get $a2) (local.get $a3))))'
  const accs = '(local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)'
  const wat = `(module (memory (export "memory") 2)
  (func (export "loads") (param $n i32) (param $q i32) (result i32) (local $p i32) ${accs}
    (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
      (local.set $p (i32.and (i32.mul (local.get $n) (i32.const 64)) (i32.const 4095)))
      ${loads}
      (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
    ${sum})
  (func (export "registers") (param $n i32) (param $q i32) (result i32) ${accs}
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $b0 (i32x4.splat (local.get $q)))
    (local.set $b1 (i32x4.splat (i32.add (local.get $q) (i32.const 1))))
    (local.set $b2 (i32x4.splat (i32.add (local.get $q) (i32.const 2))))
    (local.set $b3 (i32x4.splat (i32.add (local.get $q) (i32.const 3))))
    (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
      ${adds}
      (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
    ${sum}))`
  return Uint8Array.from(await assemble('bounds-probe', wat))
}

type Probe = Record<'loads' | 'registers', (n: number, q: number) => number>

if (isMain(import.meta.url)) {
  const bytes = await probeWasm()
  const k = new WebAssembly.Instance(new WebAssembly.Module(bytes), {}).exports as unknown as Probe
  const best = { loads: Infinity, registers: Infinity }
  for (let r = 0; r < 10; r++)
    for (const f of ['loads', 'registers'] as const) {
      const t = performance.now()
      k[f](2e6, r)
      best[f] = Math.min(best[f], performance.now() - t)
    }
  const ratio = best.loads / best.registers
  console.log(
    `loads ${best.loads.toFixed(1)} ms, registers ${best.registers.toFixed(1)} ms: ${ratio.toFixed(2)} ` +
      `(${ratio > 1.6 ? 'loads are bounds-checked' : 'loads are not bounds-checked'})`,
  )
}
