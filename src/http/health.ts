/**
 * `GET /health`: 200 when the model is ready, with its id, load time and the scheduler's
 * active and queued counts (generations and classification texts), the classification tokens
 * admitted and not yet computed (`queued_tokens`, the unit of MAX_QUEUED_TOKENS), and how decode steps were batched (`decode`: steps, the forward
 * runs that computed them, the largest batch) and the forward runs of prompts (`prefill`: path, runs); 503 (with Retry-After) while idle, loading or after a failed load.
 * A probe of an idle server starts the load, so a health-checked deployment warms itself.
 */
import { Hono, type Context, type Env } from 'hono'
import { AppError } from '../core/errors.ts'
import type { RouteDeps } from './route-deps.ts'

export function healthRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().get('/', async (c) => {
    let load = deps.loadState(c)
    if (load.state === 'idle') {
      keepAlive(
        c,
        deps.engine(c).catch(() => {}), // the outcome shows in the next probe
      )
      load = deps.loadState(c)
    }
    if (load.state !== 'ready') {
      return c.json(
        {
          status: load.state === 'failed' ? 'failed' : 'loading',
          model: deps.config(c).modelId ?? null,
          ...(load.error !== undefined && { error: load.error }),
        },
        503,
        { 'Retry-After': load.state === 'failed' ? '10' : '5', 'Cache-Control': 'no-store' },
      )
    }
    const engine = await deps.engine(c)
    const rounds = probeRounds(c.req.query('probe'))
    const probe = rounds && engine.probeStages ? await engine.probeStages(rounds) : undefined
    if (rounds && !probe)
      throw new AppError('bad_request', 'probe: the model is not split into stages')
    const { active, queued, queuedTokens, kvReservedTokens, memory, decode, prefill, stages } =
      engine.stats()
    const runtime = deps.memory?.() ?? {}
    return c.json(
      {
        status: 'ok',
        model: deps.config(c).modelId ?? engine.info.id,
        synthetic: engine.info.synthetic,
        load_ms: load.loadMs ?? engine.info.loadMs,
        active,
        queued,
        ...(queuedTokens !== undefined && { queued_tokens: queuedTokens }),
        ...(kvReservedTokens !== undefined && { kv_reserved_tokens: kvReservedTokens }),
        ...(memory && {
          memory: {
            wasm_bytes: memory.wasmBytes,
            ...(runtime.heapUsedBytes !== undefined && { js_heap_bytes: runtime.heapUsedBytes }),
            ...(runtime.rssBytes !== undefined && { rss_bytes: runtime.rssBytes }),
            ...(memory.kvSequences !== undefined && { kv_sequences: memory.kvSequences }),
            ...(memory.kvBytes !== undefined && { kv_bytes: memory.kvBytes }),
            ...(memory.kvFormat !== undefined && { kv_format: memory.kvFormat }),
            turn_cache_tokens: memory.turnCacheTokens,
            ...(memory.turnCacheResident !== undefined && {
              turn_cache_resident: memory.turnCacheResident,
            }),
          },
        }),
        ...(decode && {
          decode: {
            steps: decode.tokens,
            runs: decode.runs,
            largest_batch: decode.largestBatch,
            ...(decode.path && { path: decode.path }),
            ...(decode.kernels && { kernels: decode.kernels }),
            ...(decode.q4 && {
              q4_matrices: decode.q4.matrices,
              q4_symmetric: decode.q4.symmetric,
            }),
          },
        }),
        ...(prefill && { prefill: { path: prefill.path, runs: prefill.runs } }),
        ...(stages && {
          stages: stages.map((s, i) => ({
            ...(probe && { probeMs: Math.round(probe[i] * 1000) / 1000 }),
            ...(s.layers && { layers: s.layers }),
            ...(s.rows && { rows: s.rows }),
            status: s.status,
            ...(s.isolate !== undefined && { isolate: s.isolate }),
            ...(s.restarts !== undefined && { restarts: s.restarts }),
            ...(s.calls !== undefined && { calls: s.calls }),
            ...(s.callMs !== undefined && { callMs: Math.round(s.callMs) }),
            ...(s.computeMs !== undefined && { computeMs: Math.round(s.computeMs) }),
            ...(s.residentBytes !== undefined && { residentBytes: s.residentBytes }),
            ...(s.budgetBytes !== undefined && { budgetBytes: s.budgetBytes }),
            ...(s.sequences !== undefined && s.layers && { sequences: s.sequences }),
            ...(s.kvFormat !== undefined && { kv_format: s.kvFormat }),
          })),
        }),
      },
      200,
      { 'Cache-Control': 'no-store' },
    )
  })
}

/** `?probe=N`: N round trips to each stage (1-100); absent: none. */
function probeRounds(value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!(Number.isInteger(n) && n >= 1 && n <= 100))
    throw new AppError('bad_request', 'probe must be a whole number of round trips, 1-100')
  return n
}

/** On Workers, work left running after the response needs waitUntil to finish. */
function keepAlive<E extends Env>(c: Context<E>, work: Promise<unknown>): void {
  try {
    c.executionCtx.waitUntil(work)
  } catch {
    // not on Workers: the promise runs on by itself
  }
}
