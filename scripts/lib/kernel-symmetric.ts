/**
 * The symmetric q4 kernels of engine.wat, written from the general ones: `q4s_gemv` and
 * `q4s_gemm` (and every `$q4s_…` function they call) are `q4_gemv` and `q4_gemm` for matrices
 * whose zero points are all 8, the form of `MatMulNBits` without a zero_points input (what
 * transformers.js's quantizer writes for onnx-community's q4 and q4f16 files). They read the
 * symmetric layout of 'q4-b32' (q4-b32.ts): groups of 80 bytes, rows of 20·kb, no zero points
 * stored (placed in panels of 4 rows: a row's next group 320 bytes on, panels of 80·kb). Each
 * block's correction `zp · Σx` becomes `Σx << 3`, so the per-block epilogue loses an integer
 * multiply and the zero-point loads and widenings of every weight row (a prompt's GEMM about
 * 1.06x), and the matrix 4 bytes a group.
 *
 * A rewrite of the text, not a second source: the general kernels stay the one place their
 * loops are written, and this checks that it removed every use of a zero point (it throws on a
 * form it does not know). Used by kernelSource (kernel-variants.ts) after the tiles are
 * expanded; pure (no Node APIs).
 */

/** The exports copied (from `(func (export "q4_…")`); every `$q4_…` function is copied too. */
const EXPORTS: readonly string[] = ['q4_gemv', 'q4_gemm']

/** The index just past the balanced expression that opens at `at` (a '('). */
function close(src: string, at: number): number {
  let depth = 0
  for (let i = at; i < src.length; i++) {
    const c = src[i]
    if (c === ';' && src[i + 1] === ';') {
      const nl = src.indexOf('\n', i)
      i = nl < 0 ? src.length : nl
    } else if (c === '(') depth++
    else if (c === ')' && --depth === 0) return i + 1
  }
  throw new Error(`unbalanced expression at ${at}`)
}

/** The operands of the expression `(op a b …)` as text. */
function operands(expr: string): string[] {
  const out: string[] = []
  let i = expr.indexOf('(', 1)
  while (i >= 0 && i < expr.length - 1) {
    const end = close(expr, i)
    out.push(expr.slice(i, end))
    i = expr.indexOf('(', end)
  }
  return out
}

/** A zero-point vector: `(local.get $zp)`, `$zq`, or the load-and-widen of a group's 4 bytes. */
function isZeroPoint(e: string): boolean {
  const flat = e.replace(/\s+/g, ' ')
  return (
    /^\(local\.get \$z[pq]\)$/.test(flat) ||
    /^\(i32x4\.extend_low_i16x8_u \(i16x8\.extend_low_i8x16_u \(v128\.load32_zero offset=80 \(local\.get \$\w+\)\)\)\)$/.test(
      flat,
    )
  )
}

/** Every balanced expression of `src` that starts with `head`, rewritten by `f`. */
function rewrite(src: string, head: string, f: (expr: string) => string): string {
  let out = ''
  let from = 0
  for (let i = src.indexOf(head); i >= 0; i = src.indexOf(head, from)) {
    const end = close(src, i)
    out += src.slice(from, i) + f(src.slice(i, end))
    from = end
  }
  return out + src.slice(from)
}

/** One function's symmetric copy. */
function symmetricFunction(fn: string): string {
  let s = fn.replace(/\$q4_/g, '$q4s_').replace(/\(export "q4_/, '(export "q4s_')
  // statements that only load a zero-point vector
  s = rewrite(s, '(local.set $zp ', () => '').replace(/^[ \t]*\n/gm, '')
  s = rewrite(s, '(local.set $zq ', () => '').replace(/^[ \t]*\n/gm, '')
  s = rewrite(s, '(i32x4.mul', (e) => {
    const [a, b, ...rest] = operands(e)
    if (rest.length || !b) throw new Error(`i32x4.mul with ${rest.length + 2} operands`)
    if (isZeroPoint(a)) return `(i32x4.shl ${b} (i32.const 3))`
    if (isZeroPoint(b)) return `(i32x4.shl ${a} (i32.const 3))`
    return e
  })
  // Σx shifted once where it is loaded, when every use of it is a zero-point product
  const shifted = '(i32x4.shl (local.get $sx) (i32.const 3))'
  if (s.split(shifted).length === s.split('(local.get $sx)').length) {
    s = s.split(shifted).join('(local.get $sx)')
    s = rewrite(s, '(local.set $sx ', (e) => {
      const [v] = operands(e)
      return `(local.set $sx (i32x4.shl ${v} (i32.const 3)))`
    })
  }
  // the symmetric layout's strides: 80 bytes a group (not 84), 320 from a row's group to its
  // next in a panel of 4 rows (not 336), 80·kb bytes a panel (not 84·kb)
  s = s
    .split('(i32.mul (local.get $kb) (i32.const 84))')
    .join('(i32.mul (local.get $kb) (i32.const 80))')
    .split('(i32.const 84)')
    .join('(i32.const 80)')
    .split('(i32.const 336)')
    .join('(i32.const 320)')
  const name = /\(func (\S+|\(export "[^"]+"\))/.exec(s)?.[1]
  if (/\(i32\.const (21|84|336)\)/.test(s))
    throw new Error(`${name}: a stride of the layout with zero points is left`)
  s = s.replace(/ ?\(local \$z[pq] v128\)/g, '')
  if (/\$z[pq]\b/.test(s)) throw new Error(`${name}: a zero point is still used after the rewrite`)
  if (/load32_zero offset=80/.test(s)) throw new Error(`${name}: zero points are still loaded`)
  return s
}

/**
 * The source with the symmetric copy of every `$q4_…` function and of the q4_gemv and q4_gemm
 * exports added at the end of the module. A source without them is returned as it is.
 */
export function addSymmetricQ4(wat: string): string {
  const copies: string[] = []
  const starts = /\n( *)\(func (\$q4_\w+|\(export "(\w+)"\))/g
  for (let m = starts.exec(wat); m; m = starts.exec(wat)) {
    if (m[3] && !EXPORTS.includes(m[3])) continue
    const at = m.index + 1 + m[1].length
    copies.push(m[1] + symmetricFunction(wat.slice(at, close(wat, at))))
  }
  if (!copies.length) return wat
  const end = wat.lastIndexOf(')')
  return (
    wat.slice(0, end) +
    '\n  ;; generated by scripts/lib/kernel-symmetric.ts: the q4 kernels for zero points of 8\n' +
    copies.join('\n\n') +
    '\n' +
    wat.slice(end)
  )
}
