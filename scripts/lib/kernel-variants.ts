import { expandExp } from './kernel-exp.ts'
import { addSymmetricQ4 } from './kernel-symmetric.ts'
import { expandTiles } from './kernel-tiles.ts'

/**
 * The ISA variants of a kernel source (engine.wat): one .wat, two binaries, so the code the
 * variants share cannot drift. Lines between `;;#if <variant>` and `;;#else` or `;;#end` belong
 * to that variant only, lines between its `;;#else` and `;;#end` to the other; markers do not
 * nest. Used by scripts/build-kernels.ts and the tests; pure (no Node APIs).
 */

export const ISA_VARIANTS = ['simd128', 'relaxed'] as const
export type IsaVariant = (typeof ISA_VARIANTS)[number]

/** The source of one variant: other variants' lines dropped, markers kept as comments. */
export function selectVariant(wat: string, variant: IsaVariant): string {
  let only: IsaVariant | undefined
  const out: string[] = []
  wat.split('\n').forEach((line, i) => {
    const marker = /^\s*;;#(if|else|end)\b\s*(\S*)/.exec(line)
    if (marker) {
      const [, what, name] = marker
      const at = `line ${i + 1}`
      if (what === 'if') {
        if (only) throw new Error(`${at}: nested ;;#if`)
        if (!(ISA_VARIANTS as readonly string[]).includes(name))
          throw new Error(`${at}: unknown variant ${JSON.stringify(name)}`)
        only = name as IsaVariant
      } else if (what === 'else') {
        if (!only) throw new Error(`${at}: ;;#else outside ;;#if`)
        if (ISA_VARIANTS.length !== 2) throw new Error(`${at}: ;;#else needs exactly 2 variants`)
        only = ISA_VARIANTS.find((v) => v !== only)
      } else {
        if (!only) throw new Error(`${at}: ;;#end outside ;;#if`)
        only = undefined
      }
      out.push(line)
    } else if (!only || only === variant) out.push(line)
  })
  if (only) throw new Error(`;;#if ${only} is not closed`)
  return out.join('\n')
}

/**
 * A kernel's name to the source it is assembled from: `<base>-<variant>` is the variant of
 * `<base>.wat`, any other name its own .wat; then the `;;#exp` lines become inline e^x
 * (kernel-exp.ts), each `;;#tile` line its generated function (kernel-tiles.ts), and the q4
 * kernels get their symmetric copies (kernel-symmetric.ts). `read` returns a file of the kernels
 * folder.
 */
export function kernelSource(name: string, read: (file: string) => string): string {
  for (const v of ISA_VARIANTS)
    if (name.endsWith(`-${v}`))
      return addSymmetricQ4(
        expandTiles(expandExp(selectVariant(read(`${name.slice(0, -v.length - 1)}.wat`), v))),
      )
  return addSymmetricQ4(expandTiles(expandExp(read(`${name}.wat`))))
}
