/**
 * Where the decode step's time goes, and what session options change, measured on bare
 * onnxruntime-web sessions (the engine's build and settings) so the numbers isolate one factor:
 *
 * - `options:<variant>`: decode rate with one session option changed (SESSION_VARIANTS).
 * - `layers:<dir>`: decode step of a model with fewer layers: with the full model, a line
 *   through (layers, step ms) splits a step into per-layer cost and the rest (lm_head, embedding).
 * - `shapes`: step time against the KV length (fed as synthetic past tensors, no prefill
 *   needed), batched decode (1, 2, 4 sequences in one run), and a prefill that returns the
 *   logits of every position instead of the last one only.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { basename, join } from 'node:path'
import type { Tensor } from 'onnxruntime-web'
import { createWebSession, loopShape, type WebSessionOptions } from './measure-bare.ts'
import { decodeRate, greedyDecode, GreedyLoop, type LoopState } from './greedy-loop.ts'
import { median, repeat, round } from './stats.ts'
import { argmax } from '../../src/core/sampling.ts'
import { QWEN_VOCAB_SIZE } from '../lib/model-presets.ts'
import type { BenchPlan } from './types.ts'
import { wasmMemoryBytes } from './wasm-memory.ts'

export const SESSION_VARIANTS: Record<string, WebSessionOptions> = {
  baseline: {},
  'graph-extended': { graphOptimizationLevel: 'extended' },
  'graph-basic': { graphOptimizationLevel: 'basic' },
  'graph-disabled': { graphOptimizationLevel: 'disabled' },
  'no-mem-arena': { enableCpuMemArena: false },
  'no-mem-pattern': { enableMemPattern: false },
  'execution-parallel': { executionMode: 'parallel' },
  xnnpack: { executionProviders: ['xnnpack'] },
  // the baseline again, last: how far the numbers drift during the run
  'baseline-again': {},
}

export interface OptionsProbe {
  variant: string
  options: WebSessionOptions
  loadMs?: number
  prefill64Ms?: number
  decodeTokS?: number
  stepMs?: number
  error?: string
}

export interface LayersProbe {
  layers: number
  /** A vocabulary other than Qwen's (a tiny one takes the lm_head out of the step). */
  vocabSize?: number
  stepMs: number
}

export interface FormatProbe {
  format: string
  weightBytes: number
  loadMs: number
  decodeTokS: number
  wasmBytes: number
}

export interface ShapesProbe {
  /** Decode step ms against the tokens already in the KV cache. */
  context: { past: number; stepMs: number; kvBytesInOut: number }[]
  /** One step of `tokens` new tokens of one sequence after 64 cached (verifying draft tokens). */
  multiToken: { tokens: number; stepMs: number }[]
  /** One decode step for `batch` sequences at once. */
  batch: { batch: number; stepMs: number; tokS: number }[]
  /** A 512-token prefill returning the last position's logits vs every position's. */
  logits: { keep: number; prefillMs: number; logitsBytes: number }[]
  /** A 512-token prefill run in chunks of `chunk` tokens. */
  chunkedPrefill: { chunk: number; prefillMs: number }[]
  /** JS-side time to build one decode step's feeds and read the outputs (no run). */
  feedsMs: number
}

export async function explore(
  what: string,
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<unknown> {
  const [kind, arg] = what.split(/:(.*)/s)
  if (kind === 'options') return probeOptions(arg, plan, log)
  if (kind === 'layers') return probeLayers(arg, plan, log)
  if (kind === 'shapes') return probeShapes(plan, log)
  if (kind === 'format') return probeFormat(arg, plan, log)
  throw new Error(`unknown exploration ${what}`)
}

async function probeOptions(
  variant: string,
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<OptionsProbe> {
  const options = SESSION_VARIANTS[variant]
  if (!options) throw new Error(`unknown session variant ${variant}`)
  const probe: OptionsProbe = { variant, options }
  log(`session ${variant}: loading…`)
  const t0 = performance.now()
  let made
  try {
    made = await createWebSession(plan.modelDir, options)
  } catch (err) {
    probe.error = String((err as Error).message ?? err)
      .split('\n')[0]
      .slice(0, 200)
    return probe
  }
  probe.loadMs = round(performance.now() - t0, 0)
  const loop = new GreedyLoop(made.ort, made.session, await loopShape(plan.modelDir))
  const prefill = await repeat(plan.rounds, async () => {
    const s = performance.now()
    await loop.step(loop.empty(), plan.prompts.p64.ids)
    return performance.now() - s
  })
  probe.prefill64Ms = round(median(prefill), 0)
  log(`session ${variant}: decode…`)
  const tokens = plan.quick ? 16 : 48
  const rates = await repeat(plan.rounds, async () =>
    decodeRate((await greedyDecode(loop, plan.prompts.p64.ids, tokens)).times),
  )
  probe.decodeTokS = round(median(rates))
  probe.stepMs = round(1000 / median(rates), 1)
  return probe
}

async function probeLayers(
  dir: string,
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<LayersProbe> {
  const shape = await loopShape(dir)
  const vocab = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).vocab_size as number
  log(`${shape.layers}-layer model, vocabulary ${vocab}: decode…`)
  const made = await createWebSession(dir)
  const loop = new GreedyLoop(made.ort, made.session, shape)
  const tokens = plan.quick ? 16 : 48
  const prompt = plan.prompts.p64.ids.map((id) => id % vocab)
  const rates = await repeat(plan.rounds, async () =>
    decodeRate((await greedyDecode(loop, prompt, tokens)).times),
  )
  const probe: LayersProbe = { layers: shape.layers, stepMs: round(1000 / median(rates), 1) }
  if (vocab !== QWEN_VOCAB_SIZE) probe.vocabSize = vocab
  return probe
}

/** Decode rate of the same model in another weight format (q4 MatMulNBits, fp32). */
async function probeFormat(
  dir: string,
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<FormatProbe> {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
  const format = String(config.qwen_edge_synthetic?.format ?? basename(dir))
  log(`${format}: loading…`)
  const t0 = performance.now()
  const made = await createWebSession(dir)
  const loadMs = performance.now() - t0
  const loop = new GreedyLoop(made.ort, made.session, await loopShape(dir))
  log(`${format}: decode…`)
  const trace = await greedyDecode(loop, plan.prompts.p64.ids.slice(0, 16), plan.quick ? 4 : 8)
  const weightBytes = readdirSync(join(dir, 'onnx')).reduce(
    (n, f) => n + statSync(join(dir, 'onnx', f)).size,
    0,
  )
  return {
    format,
    weightBytes,
    loadMs: round(loadMs, 0),
    decodeTokS: round(decodeRate(trace.times)),
    wasmBytes: wasmMemoryBytes(),
  }
}

/** A state of `batch` sequences with `past` tokens of synthetic (random) KV cache. */
function syntheticState(loop: GreedyLoop, T: OrtTensorCtor, batch: number, past: number) {
  const { kvHeads, headDim } = loop.shape
  const state: LoopState = { batch, length: past, past: {} }
  for (const name of loop.pastNames) {
    const data = new Float32Array(batch * kvHeads * past * headDim)
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 0.5
    state.past[name] = new T('float32', data, [batch, kvHeads, past, headDim])
  }
  return state
}

type OrtTensorCtor = new (type: 'float32', data: Float32Array, dims: number[]) => Tensor

async function probeShapes(plan: BenchPlan, log: (line: string) => void): Promise<ShapesProbe> {
  const made = await createWebSession(plan.modelDir)
  const shape = await loopShape(plan.modelDir)
  const loop = new GreedyLoop(made.ort, made.session, shape)
  const T = made.ort.Tensor as unknown as OrtTensorCtor
  const steps = plan.quick ? 4 : 12
  const timeSteps = async (state: LoopState, ids: number[]) => {
    await loop.step(state, ids) // warm
    const xs = await repeat(steps, async () => {
      const s = performance.now()
      await loop.step(state, ids)
      return performance.now() - s
    })
    return median(xs)
  }
  const kvBytesPerToken = loop.pastNames.length * shape.kvHeads * shape.headDim * 4
  log('warming up…')
  await greedyDecode(loop, plan.prompts.p64.ids, 4)

  const context: ShapesProbe['context'] = []
  for (const past of [16, 256, 1024, 2048]) {
    log(`decode step with ${past} cached tokens…`)
    const ms = await timeSteps(syntheticState(loop, T, 1, past), [42])
    // past goes into the WASM heap, present (one longer) comes back out
    context.push({ past, stepMs: round(ms, 1), kvBytesInOut: kvBytesPerToken * (2 * past + 1) })
  }

  const batch: ShapesProbe['batch'] = []
  for (const b of [1, 2, 4]) {
    log(`batched decode step, batch ${b}…`)
    const ms = await timeSteps(syntheticState(loop, T, b, 64), Array(b).fill(42))
    batch.push({ batch: b, stepMs: round(ms, 1), tokS: round((b / ms) * 1000) })
  }

  const multiToken: ShapesProbe['multiToken'] = []
  for (const n of [1, 2, 4, 8]) {
    log(`one step of ${n} new tokens after 64 cached…`)
    const ms = await timeSteps(syntheticState(loop, T, 1, 64), Array(n).fill(42))
    multiToken.push({ tokens: n, stepMs: round(ms, 1) })
  }

  const logits: ShapesProbe['logits'] = []
  const ids = plan.prompts.p512.ids
  for (const keep of [1, ids.length]) {
    log(`512-token prefill keeping ${keep} logits row(s)…`)
    let bytes = 0
    const xs = await repeat(Math.max(1, plan.rounds - 1), async () => {
      const s = performance.now()
      const r = await loop.step(loop.empty(), ids, keep)
      bytes = (r.logits.data as Float32Array).byteLength
      return performance.now() - s
    })
    logits.push({ keep, prefillMs: round(median(xs), 0), logitsBytes: bytes })
  }

  // The engine's chunked prefill (128 tokens a run, so other streams get steps in between).
  const chunked: ShapesProbe['chunkedPrefill'] = []
  for (const chunk of [64, 128, 256, ids.length]) {
    log(`512-token prefill in chunks of ${chunk}…`)
    const xs = await repeat(Math.max(1, plan.rounds - 1), async () => {
      const s = performance.now()
      let state = loop.empty()
      for (let i = 0; i < ids.length; i += chunk) {
        state = (await loop.step(state, ids.slice(i, i + chunk))).state
      }
      return performance.now() - s
    })
    chunked.push({ chunk, prefillMs: round(median(xs), 0) })
  }

  // JS side of one step without the run: feeds for 256 cached tokens and an argmax.
  const state = syntheticState(loop, T, 1, 256)
  const row = Float32Array.from({ length: QWEN_VOCAB_SIZE }, (_, i) => Math.sin(i))
  const feedsMs = median(
    await repeat(20, async () => {
      const s = performance.now()
      const feeds: Record<string, Tensor> = { ...state.past }
      feeds.input_ids = new made.ort.Tensor('int64', BigInt64Array.of(42n), [1, 1])
      feeds.attention_mask = new made.ort.Tensor('int64', new BigInt64Array(257).fill(1n), [1, 257])
      argmax(row)
      return performance.now() - s
    }),
  )
  return {
    context,
    multiToken,
    batch,
    logits,
    chunkedPrefill: chunked,
    feedsMs: round(feedsMs, 2),
  }
}
