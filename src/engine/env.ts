/**
 * Engine settings from environment variables (process.env, Deno.env, Workers vars):
 * CONTEXT_LENGTH, MAX_TOKENS_DEFAULT, MAX_ACTIVE, MAX_QUEUED, MAX_QUEUED_TOKENS, MAX_KV_TOKENS, MAX_BATCH,
 * PREFILL_CHUNK, PREFILL_CHUNK_BUSY and
 * KV_REUSE_TOKENS (0 allowed: turns reuse off), DECODER ('wasm', the default: decode steps in the
 * package's own decoder when it has one; 'graph': everything in onnxruntime) and PREFILL ('wasm',
 * the default: prompts in the kernels too when the package allows, so no onnxruntime session
 * holds the weights; 'graph': prompts in onnxruntime, next to the decoder's copy of the
 * weights), PIPELINE ('stages', the default for a package split into stages: each stage apart,
 * all in this process; 'whole': one model) and KV_FORMAT ('f32', the default; 'q8': the
 * decoder's KV cache in int8 with a scale per position and head, 3.8x smaller at head_dim 64).
 * Unset or empty keeps the default.
 */
import type { EngineOptions } from './engine.ts'
import type { KvFormat } from '../format/index.ts'

/** KV_FORMAT's value: 'q8', or undefined for the default ('f32', or unset or empty). */
export function kvFormatFromEnv(value: unknown): KvFormat | undefined {
  if (value === undefined || value === null || value === '' || value === 'f32') return undefined
  if (value !== 'q8') throw new Error(`KV_FORMAT must be f32 or q8, got ${String(value)}`)
  return 'q8'
}

export function engineOptionsFromEnv(vars: Record<string, unknown>): EngineOptions {
  const int = (name: string, min = 1): number | undefined => {
    const v = vars[name]
    if (v === undefined || v === null || v === '') return undefined
    const n = Number(v)
    if (!Number.isSafeInteger(n) || n < min)
      throw new Error(
        `${name} must be ${min === 0 ? 'a non-negative' : 'a positive'} integer, got ${String(v)}`,
      )
    return n
  }
  return {
    contextLength: int('CONTEXT_LENGTH'),
    defaultMaxNewTokens: int('MAX_TOKENS_DEFAULT'),
    maxActive: int('MAX_ACTIVE'),
    maxQueued: int('MAX_QUEUED'),
    maxQueuedTokens: int('MAX_QUEUED_TOKENS'),
    maxKvTokens: int('MAX_KV_TOKENS'),
    maxBatch: int('MAX_BATCH'),
    prefillChunk: int('PREFILL_CHUNK'),
    busyPrefillChunk: int('PREFILL_CHUNK_BUSY'),
    kvReuseTokens: int('KV_REUSE_TOKENS', 0),
    ...session(vars.DECODER, vars.PREFILL, vars.PIPELINE, vars.KV_FORMAT),
  }
}

function session(
  decoder: unknown,
  prefill: unknown,
  pipeline: unknown,
  kvFormat: unknown,
): Pick<EngineOptions, 'session'> {
  const unset = (v: unknown) => v === undefined || v === null || v === ''
  if (!unset(pipeline) && pipeline !== 'stages' && pipeline !== 'whole')
    throw new Error(`PIPELINE must be stages or whole, got ${String(pipeline)}`)
  if (!unset(decoder) && decoder !== 'wasm' && decoder !== 'graph')
    throw new Error(`DECODER must be wasm or graph, got ${String(decoder)}`)
  if (!unset(prefill) && prefill !== 'wasm' && prefill !== 'graph')
    throw new Error(`PREFILL must be wasm or graph, got ${String(prefill)}`)
  const kv = kvFormatFromEnv(kvFormat)
  const options = {
    ...(decoder === 'graph' && { decoder: false }),
    ...(prefill === 'graph' && { prefill: 'graph' as const }),
    ...(pipeline === 'whole' && { pipeline: 'whole' as const }),
    ...(kv && { kvFormat: kv }),
  }
  return Object.keys(options).length ? { session: options } : {}
}
