/**
 * One benchmark measurement in its own process, so each engine's memory is measured alone and
 * no two share a WASM heap. Started by child.ts with an IPC channel:
 *
 *   node --import tsx scripts/bench/worker.ts <kind> <plan.json>
 *
 * Sends `{ ok: true, result }` or `{ ok: false, error }` to the parent, then exits. The
 * `*-deno` engines run in Deno, which has no IPC channel to a Node parent: there child.ts
 * passes a third argument, a file the message is written to.
 *
 *   deno run --config deno.json -A scripts/bench/worker.ts <kind> <plan.json> <result.json>
 */
import './wasm-memory.ts' // before any WASM module is instantiated
import { readFileSync, writeFileSync } from 'node:fs'
import { progressLog } from './progress-log.ts'
import type { BenchPlan } from './types.ts'
import type { ServeScenario } from './measure-serve.ts'
import type { KvFormat } from '../../src/format/index.ts'

export type WorkerKind =
  | 'engine'
  | 'engine-q4'
  | 'engine-q4-relaxed'
  | 'engine-graph'
  | 'engine-deno'
  | 'engine-q4-deno'
  | 'engine-graph-deno'
  | 'engine-node24'
  | 'engine-q4-node24'
  | 'engine-graph-node24'
  | 'ort-web'
  | 'ort-node'
  | 'ort-node-q4'
  | 'tjs-web'
  | 'tjs-node'
  | 'bandwidth'
  | 'kernels'
  | `serve:${'node' | 'deno'}`
  | `serve-long:deno`
  | `serve-long-bounded:deno`
  | `serve-long-q8kv:deno`
  | `long:${KvFormat}`
  | `explore:${string}`

async function run(kind: WorkerKind, plan: BenchPlan): Promise<unknown> {
  const log = progressLog(kind)
  switch (kind) {
    case 'engine':
    case 'engine-q4':
    case 'engine-q4-relaxed':
    case 'engine-graph':
    case 'engine-deno':
    case 'engine-q4-deno':
    case 'engine-graph-deno':
    case 'engine-node24':
    case 'engine-q4-node24':
    case 'engine-graph-node24': {
      const { measureEngine, engineVariant } = await import('./measure-engine.ts')
      return measureEngine(plan, log, engineVariant(kind, plan))
    }
    case 'ort-web':
    case 'ort-node':
    case 'ort-node-q4':
      return (await import('./measure-bare.ts')).measureBare(kind, plan, log)
    case 'tjs-web':
    case 'tjs-node':
      return (await import('./measure-transformers.ts')).measureTransformers(
        kind === 'tjs-web' ? 'web' : 'node',
        plan,
        log,
      )
    case 'bandwidth':
      return (await import('./measure-bandwidth.ts')).measureBandwidth(plan.quick ? 3 : 10)
    case 'kernels':
      return (await import('./kernels.ts')).measureKernels(plan.quick)
    case 'serve:node':
    case 'serve:deno':
      return (await import('./measure-serve.ts')).measureServe(
        kind === 'serve:node' ? 'node' : 'deno',
        plan,
        log,
      )
    case 'serve-long:deno':
    case 'serve-long-bounded:deno':
    case 'serve-long-q8kv:deno':
      return (await import('./measure-serve.ts')).measureServe(
        'deno',
        plan,
        log,
        kind.slice('serve-'.length, -':deno'.length) as ServeScenario,
      )
    case 'long:f32':
    case 'long:q8':
      return (await import('./measure-long.ts')).measureLong(
        plan,
        log,
        kind === 'long:q8' ? 'q8' : 'f32',
      )
    default:
      return (await import('./explore.ts')).explore(kind.slice('explore:'.length), plan, log)
  }
}

const [kind, planPath, resultPath] = process.argv.slice(2)
const send = (msg: unknown) =>
  resultPath
    ? Promise.resolve(writeFileSync(resultPath, JSON.stringify(msg)))
    : new Promise<void>((resolve) =>
        process.send ? process.send(msg, () => resolve()) : resolve(),
      )
try {
  const plan = JSON.parse(readFileSync(planPath, 'utf8')) as BenchPlan
  await send({ ok: true, result: await run(kind as WorkerKind, plan) })
} catch (err) {
  const e = err as Error
  await send({ ok: false, error: e?.stack ?? String(err) })
}
process.exit(0)
