/**
 * e^x inline in engine.wat's loops (silu_mul, softmax), written here once: WAT has no macros,
 * and a function called per vector measured 2.6x slower. Three directives, each on a line of
 * its own, expanded by kernelSource (kernel-variants.ts) before the tiles; pure (no Node APIs):
 *
 * - `;;#exp-locals <n>`: the locals of up to n vectors at once (with the function's others);
 * - `;;#exp-constants`: sets the constant locals (before the loop, once a call);
 * - `;;#exp $a $b …`: each named v128 local (n at most) becomes e^(itself), lane by lane.
 *
 * The function is Cephes' expf: x clamped to [−87.3, 88.7] (so e^−∞ is about 1.2e-38, not 0),
 * x = k·ln2 + r with ln2 in two parts, e^r by a degree-7 polynomial (relative error about
 * 1e-7), times 2^k built in the exponent bits. Every vector takes the same steps in the same
 * order, so a value has the same bits however many go at once, in either build.
 *
 * Why this shape (Node 24, Deno and Node 20 on x64, silu_mul over a prompt chunk's 128 × 4864):
 * - the constants in locals set before the loop, not `v128.const` at each use: TurboFan builds
 *   a v128 constant where it is used, several instructions each time;
 * - the vectors' steps interleaved: the polynomial is a chain of 12 dependent operations, and
 *   one or two chains left the core waiting on their latency. 2.17 ns a value as a call of two
 *   vectors, 1.32 inline with one, 1.05 with four, 0.82 with eight (the same bits).
 */

/** The constant locals, by name (`$e_<name>`), and their value in every lane. */
const CONSTANTS: readonly (readonly [string, string])[] = [
  ['hi', '88.7'],
  ['lo', '-87.3'],
  ['log2e', '1.44269504088896341'],
  ['half', '0.5'],
  ['ln2_hi', '0.693359375'],
  ['ln2_lo', '-2.12194440e-4'],
  ['p0', '1.9875691500e-4'],
  ['p1', '1.3981999507e-3'],
  ['p2', '8.3334519073e-3'],
  ['p3', '4.1665795894e-2'],
  ['p4', '1.6666665459e-1'],
  ['p5', '5.0000001201e-1'],
  ['one', '1'],
  // k + 2^23 + 127 is exact for an integer k in [−126, 128], and its low mantissa bits are
  // 127 + k: shifted left by 23 they are 2^k's exponent (no float-to-int conversion, which
  // takes several instructions on x64)
  ['bias', '8388735'],
]

/** The most vectors one `;;#exp` may take (the temporaries declared). */
export const EXP_MAX_VECTORS = 8

function expLocals(n: number): string {
  const out = CONSTANTS.map(([c]) => `(local $e_${c} v128)`)
  for (let i = 0; i < n; i++)
    out.push(`(local $e${i}_k v128) (local $e${i}_r v128) (local $e${i}_y v128)`)
  return out.join(' ')
}

function expConstants(indent: string): string {
  return CONSTANTS.map(
    ([c, v]) => `${indent}(local.set $e_${c} (v128.const f32x4 ${v} ${v} ${v} ${v}))`,
  ).join('\n')
}

/** e^v in place for each local v, step by step across the vectors (temporaries $e<i>_*). */
export function expSource(vars: readonly string[], indent = ''): string {
  const out: string[] = []
  const step = (f: (v: string, k: string, r: string, y: string) => string) =>
    vars.forEach((v, i) => out.push(indent + f(v, `$e${i}_k`, `$e${i}_r`, `$e${i}_y`)))
  const get = (name: string) => `(local.get ${name})`
  const c = (name: string) => get(`$e_${name}`)
  // pmin / pmax (one instruction each on x64, where min / max take several for NaN and ±0):
  // the same for any x but NaN, which they keep (x is their first operand)
  step((v) => `(local.set ${v} (f32x4.pmax (f32x4.pmin ${get(v)} ${c('hi')}) ${c('lo')}))`)
  step(
    (v, k) =>
      `(local.set ${k} (f32x4.floor (f32x4.add (f32x4.mul ${get(v)} ${c('log2e')}) ${c('half')})))`,
  )
  step(
    (v, k, r) =>
      `(local.set ${r} (f32x4.sub (f32x4.sub ${get(v)} (f32x4.mul ${get(k)} ${c('ln2_hi')})) (f32x4.mul ${get(k)} ${c('ln2_lo')})))`,
  )
  step((_, __, r, y) => `(local.set ${y} (f32x4.add (f32x4.mul ${c('p0')} ${get(r)}) ${c('p1')}))`)
  for (const p of ['p2', 'p3', 'p4', 'p5'])
    step((_, __, r, y) => `(local.set ${y} (f32x4.add (f32x4.mul ${get(y)} ${get(r)}) ${c(p)}))`)
  step(
    (_, __, r, y) =>
      `(local.set ${y} (f32x4.add (f32x4.add (f32x4.mul ${get(y)} (f32x4.mul ${get(r)} ${get(r)})) ${get(r)}) ${c('one')}))`,
  )
  step(
    (v, k, _, y) =>
      `(local.set ${v} (f32x4.mul ${get(y)} (i32x4.shl (f32x4.add ${get(k)} ${c('bias')}) (i32.const 23))))`,
  )
  return out.join('\n')
}

/** Expands the `;;#exp…` directives of a kernel source (see the file's comment). */
export function expandExp(wat: string): string {
  let declared = 0 // vectors the current function's `;;#exp-locals` allows (0: none seen)
  return wat
    .split('\n')
    .map((line, i) => {
      if (/^\s*\(func\b/.test(line)) declared = 0
      const m = /^(\s*);;#(exp-locals|exp-constants|exp)\b(.*)$/.exec(line)
      if (!m) return line
      const [, indent, what, rest] = m
      const args = rest.trim().split(/\s+/).filter(Boolean)
      const at = `line ${i + 1}`
      if (what === 'exp-locals') {
        const n = Number(args[0])
        if (!(Number.isInteger(n) && n >= 1 && n <= EXP_MAX_VECTORS) || args.length !== 1)
          throw new Error(`${at}: ;;#exp-locals takes a count from 1 to ${EXP_MAX_VECTORS}`)
        declared = n
        return indent + expLocals(n)
      }
      if (declared === 0) throw new Error(`${at}: ;;#${what} before ;;#exp-locals in its function`)
      if (what === 'exp-constants') {
        if (args.length) throw new Error(`${at}: ;;#exp-constants takes no arguments`)
        return expConstants(indent)
      }
      if (args.length === 0 || args.length > declared || !args.every((a) => /^\$[\w.]+$/.test(a)))
        throw new Error(`${at}: ;;#exp takes 1 to ${declared} locals ($name)`)
      return expSource(args, indent)
    })
    .join('\n')
}
