/**
 * The Node entry's relaxed-SIMD switch (src/adapters/node/relaxed-simd.ts), in child processes:
 * it sets a V8 flag, which must not leak into this test process.
 */
import { execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** What a fresh Node says: relaxed SIMD before, enableRelaxedSimd's answer, and after. */
function probe(env: Record<string, string>): { before: boolean; enabled: boolean; after: boolean } {
  const script = [
    "const { relaxedSimdSupported } = await import('./src/engine/wasm/kernel.ts')",
    "const { enableRelaxedSimd } = await import('./src/adapters/node/relaxed-simd.ts')",
    'const before = relaxedSimdSupported()',
    'const enabled = enableRelaxedSimd(process.env)',
    'console.log(JSON.stringify({ before, enabled, after: relaxedSimdSupported() }))',
  ].join('\n')
  const out = execFileSync(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', script],
    {
      cwd: ROOT,
      env: { ...process.env, ...env },
    },
  )
  return JSON.parse(out.toString().trim().split('\n').at(-1)!)
}

describe('enableRelaxedSimd (the Node entry)', () => {
  it('turns relaxed SIMD on where V8 has it behind a flag (Node 20), and leaves it on elsewhere', () => {
    const r = probe({ RELAXED_SIMD: '' })
    expect(r.enabled).toBe(true)
    expect(r.after).toBe(true)
  })

  it('RELAXED_SIMD=0 keeps Node’s default', () => {
    const r = probe({ RELAXED_SIMD: '0' })
    // Node 20: off by default and left off; Node 22 and later: on by default, nothing to keep off
    expect(r.after).toBe(r.before)
    expect(r.enabled).toBe(r.before)
  })
})
