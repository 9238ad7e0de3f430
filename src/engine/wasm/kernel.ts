/**
 * The engine's WASM kernels: one module (kernels/q8-head.wat, assembled by `npm run
 * build:kernels`) with one linear memory per instance, and the ABI its exports share. Every
 * pointer is a byte offset into that memory; the caller lays out weights, activations and
 * outputs (head.ts for the lm_head, decoder.ts for the layers and the KV arena).
 *
 * q8 weight rows: int8, `stride` bytes each (a multiple of 32, zero padded), a zero point (int8)
 * and a scale (f32) per row. Activations: int16 rows of `stride`, each with its sum and scale.
 *   out[j * ldo + v] = (Σ_k w[v, k] · x[j, k] − zp[v] · Σ_k x[j, k]) · scale[v] · xscale[j]
 */
import { AppError } from '../../core/errors.ts'
import { WASM_BASE64 } from './kernels/q8-head-wasm.ts'

/** Weight rows [v0, v1) and the vectors' int16 data, sums and scales. */
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

export interface KernelExports {
  memory: WebAssembly.Memory
  /** q8 rows against `n` activation vectors. */
  rows(...a: [...RowsArgs, n: number, out: number, ldo: number]): void
  /** q8 rows against exactly 4 activation vectors (each row's weights widened once). */
  rows4(...a: [...RowsArgs, out: number, ldo: number]): void
  /** out[t] = q · k[t], t < n (f32, dim a multiple of 16). */
  dots(q: number, k: number, n: number, dim: number, out: number): void
  /** out = Σ_t p[t] · v[t], t < n. */
  mix(p: number, v: number, n: number, dim: number, out: number): void
  /** out[i] = silu(g[i]) · u[i], i < n (a multiple of 4). */
  silu_mul(g: number, u: number, n: number, out: number): void
}

let precompiled: WebAssembly.Module | undefined

/**
 * Hands over the kernel module compiled ahead of time. Workers must (they cannot compile WASM
 * from bytes: the adapter imports kernels/q8-head.wasm); elsewhere the embedded bytes are
 * compiled on first use.
 */
export function useKernelModule(module: WebAssembly.Module): void {
  precompiled = module
}

export function kernelModule(): WebAssembly.Module {
  if (!precompiled) {
    const bytes = Uint8Array.from(atob(WASM_BASE64), (c) => c.charCodeAt(0))
    try {
      precompiled = new WebAssembly.Module(bytes)
    } catch (err) {
      throw new AppError(
        'model_invalid',
        'The WASM kernels could not be compiled here (on Workers, the adapter must call ' +
          'useKernelModule with the imported kernels/q8-head.wasm)',
        { cause: err },
      )
    }
  }
  return precompiled
}

/** A new instance of the kernels, with its own memory. */
export async function instantiateKernels(): Promise<KernelExports> {
  const instance = await WebAssembly.instantiate(kernelModule(), {})
  return instance.exports as unknown as KernelExports
}
