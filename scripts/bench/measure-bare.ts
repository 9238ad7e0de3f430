/**
 * The bare-loop peers: onnxruntime-web (wasm, one thread: the same build and settings as the
 * engine) and onnxruntime-node (CPU execution provider, one intra-op thread) running
 * greedy-loop.ts on the benchmark graph.
 */
import { readdirSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import type { InferenceSession } from 'onnxruntime-web'
import {
  decodeRate,
  greedyDecode,
  GreedyLoop,
  interleavedDecode,
  maxGapMs,
  maxGapSteps,
  type LoopShape,
  type OrtApi,
  type StreamsTrace,
} from './greedy-loop.ts'
import { median, peakRssBytes, repeat, round } from './stats.ts'
import type { BenchPlan, EngineResult } from './types.ts'
import { packageVersion } from './versions.ts'
import { wasmMemoryBytes } from './wasm-memory.ts'

/** The one .onnx file under `modelDir`/onnx (q8, fp32 and q4 folders name it differently). */
function onnxFileIn(modelDir: string): string {
  const files = readdirSync(join(modelDir, 'onnx')).filter((f) => f.endsWith('.onnx'))
  if (files.length !== 1) throw new Error(`expected one .onnx file in ${modelDir}/onnx`)
  return join('onnx', files[0])
}

export async function loopShape(modelDir: string): Promise<LoopShape> {
  const c = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8'))
  return {
    layers: c.num_hidden_layers,
    kvHeads: c.num_key_value_heads,
    headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
  }
}

/** onnxruntime-web session options the benchmark varies (see explore.ts). */
export type WebSessionOptions = InferenceSession.SessionOptions

/** An onnxruntime-web wasm session on the model, weights handed over as external data. */
export async function createWebSession(
  modelDir: string,
  options: WebSessionOptions = {},
): Promise<{ ort: OrtApi; session: InferenceSession }> {
  const { ort } = await import('../../src/engine/graph/ort.ts')
  const file = onnxFileIn(modelDir)
  const graph = new Uint8Array(await readFile(join(modelDir, file)))
  const data = new Uint8Array(await readFile(join(modelDir, `${file}_data`)))
  const session = await ort.InferenceSession.create(graph, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
    externalData: [{ path: `${basename(file)}_data`, data }],
    ...options,
  })
  return { ort: ort as unknown as OrtApi, session }
}

/** An onnxruntime-node CPU session with one intra-op and one inter-op thread. */
export async function createNodeSession(
  modelDir: string,
): Promise<{ ort: OrtApi; session: InferenceSession }> {
  const ort = await import('onnxruntime-node')
  const session = await ort.InferenceSession.create(join(modelDir, onnxFileIn(modelDir)), {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
  })
  return {
    ort: ort as unknown as OrtApi,
    session: session as unknown as InferenceSession,
  }
}

export async function measureBare(
  kind: 'ort-web' | 'ort-node' | 'ort-node-q4',
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<EngineResult> {
  log('loading…')
  const q4 = kind === 'ort-node-q4'
  if (q4 && !plan.q4) throw new Error('the plan has no q4 model')
  const dir = q4 ? plan.q4!.acc4Dir : plan.modelDir
  const t0 = performance.now()
  const { ort, session } =
    kind === 'ort-web' ? await createWebSession(dir) : await createNodeSession(dir)
  const loadMs = performance.now() - t0
  const wasmAfterLoad = wasmMemoryBytes()
  const loop = new GreedyLoop(ort, session, await loopShape(dir))
  const versions = packageVersion(kind === 'ort-web' ? 'onnxruntime-web' : 'onnxruntime-node')
  const result: EngineResult = {
    name: kind,
    label: {
      'ort-web': 'bare ORT-web loop',
      'ort-node': 'bare ORT-node loop',
      'ort-node-q4': 'bare ORT-node loop, q4',
    }[kind],
    format: q4 ? 'q4' : 'q8',
    backend:
      kind === 'ort-web'
        ? `onnxruntime-web ${versions} wasm (SIMD), 1 thread, in-process`
        : `onnxruntime-node ${versions} native CPU EP, 1 intra-op thread${q4 ? ', `MatMulNBits` at accuracy_level 4' : ''}`,
    loadMs: round(loadMs, 0),
  }
  Object.assign(result, await measureLoop(loop, plan, log))
  result.peakRssBytes = peakRssBytes()
  if (kind === 'ort-web') {
    result.wasmAfterLoadBytes = wasmAfterLoad
    result.wasmPeakBytes = wasmMemoryBytes()
  }
  return result
}

/** TTFT, decode rate and 1/4-stream throughput of a greedy loop. */
export async function measureLoop(
  loop: GreedyLoop,
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<Partial<EngineResult>> {
  const ttft = async (ids: number[]) => {
    const s = performance.now()
    await loop.step(loop.empty(), ids)
    return performance.now() - s
  }
  const first = await ttft(plan.prompts.p64.ids) // warm-up
  await ttft(plan.prompts.p512.ids) // the first long run grows ORT's arena: not in the median
  log(`time to first token, ${plan.prompts.p64.ids.length}-token prompt…`)
  const ttft64 = await repeat(plan.rounds, () => ttft(plan.prompts.p64.ids))
  log(`time to first token, ${plan.prompts.p512.ids.length}-token prompt…`)
  const ttft512 = await repeat(plan.rounds, () => ttft(plan.prompts.p512.ids))
  const rates: number[] = []
  let firstIds: number[] = []
  for (let r = 0; r < plan.decodeRounds; r++) {
    log(`decode ${plan.decodeTokens} tokens, round ${r + 1}/${plan.decodeRounds}…`)
    const trace = await greedyDecode(loop, plan.prompts.p64.ids, plan.decodeTokens)
    rates.push(decodeRate(trace.times))
    firstIds = trace.ids.slice(0, 16)
  }
  log(
    `1 stream, then 4 interleaved streams × ${plan.streamTokens} tokens, ${plan.rounds} round(s)…`,
  )
  const streamIds = plan.prompts.streams.map((p) => p.ids)
  const ones: StreamsTrace[] = []
  const fours: StreamsTrace[] = []
  for (let r = 0; r < plan.rounds; r++) {
    ones.push(await interleavedDecode(loop, streamIds.slice(0, 1), plan.streamTokens))
    fours.push(await interleavedDecode(loop, streamIds, plan.streamTokens))
  }
  const tokS = (t: StreamsTrace) => (t.tokens / (t.endedAt - t.startedAt)) * 1000
  const stepsOf = (t: StreamsTrace) => t.times.slice(1).map((x, i) => x - t.times[i])
  const four = fours[fours.length - 1]
  return {
    firstTtft64Ms: round(first, 0),
    ttft64Ms: round(median(ttft64), 0),
    ttft512Ms: round(median(ttft512), 0),
    decodeTokS: round(median(rates)),
    decodeRounds: rates.map((x) => round(x)),
    decodedTokens: plan.decodeTokens,
    firstIds,
    streams1TokS: round(median(ones.map(tokS))),
    streams1StepMs: round(median(ones.flatMap(stepsOf)), 1),
    streams4TokS: round(median(fours.map(tokS))),
    streams4MaxGapSteps: Math.max(...fours.map((t) => maxGapSteps(t.order))),
    streams4MaxGapMs: round(Math.max(...fours.map((t) => maxGapMs(t.order, t.times))), 0),
    streams4StepMs: round(median(fours.flatMap(stepsOf)), 1),
  }
}
