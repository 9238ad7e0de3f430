/**
 * transformers.js (`@huggingface/transformers`) text generation on the benchmark's model
 * folder, offline (`env.allowRemoteModels = false`, `local_files_only`, `env.localModelPath`).
 *
 * - `web`: transformers.js on onnxruntime-web wasm, one thread: its own pinned onnxruntime-web
 *   is handed in through its documented `globalThis[Symbol.for('onnxruntime')]` hook (in Node it
 *   otherwise always picks onnxruntime-node). Two shims, both outside transformers.js: the
 *   wasm files are pointed at node_modules (it would set a CDN URL), and a file path given to
 *   `InferenceSession.create` is read into bytes (the self-contained wasm bundle only fetches URLs).
 * - `node`: its default Node path, onnxruntime-node CPU with one intra-op thread.
 */
import { readFile } from 'node:fs/promises'
import { basename, dirname, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { decodeRate } from './greedy-loop.ts'
import { median, peakRssBytes, repeat, round } from './stats.ts'
import type { BenchPlan, EngineResult } from './types.ts'
import { packageVersion, repoRoot, TRANSFORMERS_ORT_WEB } from './versions.ts'
import { wasmMemoryBytes } from './wasm-memory.ts'

type Variant = 'web' | 'node'

// The parts of transformers.js used here (its .d.ts types are far wider than needed).
interface TjsTensor {
  dims: number[]
  tolist(): unknown[]
}
interface TjsModel {
  generate(options: Record<string, unknown>): Promise<TjsTensor>
}

async function installOrtWeb(): Promise<string> {
  const dist = `${repoRoot()}node_modules/${TRANSFORMERS_ORT_WEB}/dist/`
  const ort = await import(pathToFileURL(`${dist}ort.wasm.bundle.min.mjs`).href)
  ort.env.wasm.numThreads = 1
  ort.env.wasm.proxy = false
  ort.env.wasm.wasmPaths = pathToFileURL(dist).href
  const create = ort.InferenceSession.create.bind(ort.InferenceSession)
  const shim = {
    ...ort,
    InferenceSession: {
      create: async (model: unknown, options: unknown) =>
        create(typeof model === 'string' ? new Uint8Array(await readFile(model)) : model, options),
    },
  }
  ;(globalThis as Record<symbol, unknown>)[Symbol.for('onnxruntime')] = shim
  return String(ort.env.versions.web)
}

export async function measureTransformers(
  variant: Variant,
  plan: BenchPlan,
  log: (line: string) => void,
): Promise<EngineResult> {
  const ortVersion = variant === 'web' ? await installOrtWeb() : packageVersion('onnxruntime-node')
  const tjs = await import('@huggingface/transformers')
  tjs.env.allowRemoteModels = false
  tjs.env.localModelPath = resolve(dirname(plan.modelDir)) + '/'
  const id = basename(plan.modelDir)
  const tjsVersion = packageVersion('@huggingface/transformers')
  const result: EngineResult = {
    name: `tjs-${variant}`,
    label: `transformers.js (${variant === 'web' ? 'wasm' : 'onnxruntime-node'})`,
    backend:
      variant === 'web'
        ? `@huggingface/transformers ${tjsVersion} on its onnxruntime-web ${ortVersion} wasm, 1 thread`
        : `@huggingface/transformers ${tjsVersion} on onnxruntime-node ${ortVersion} CPU EP, 1 intra-op thread`,
    notes: [],
  }

  log('loading…')
  const t0 = performance.now()
  const sessionOptions =
    variant === 'web'
      ? {
          executionProviders: ['wasm'],
          externalData: [
            { path: 'model_quantized.onnx_data', data: 'onnx/model_quantized.onnx_data' },
          ],
        }
      : { intraOpNumThreads: 1, interOpNumThreads: 1 }
  const model = (await tjs.AutoModelForCausalLM.from_pretrained(id, {
    dtype: 'q8',
    model_file_name: 'model',
    device: variant === 'web' ? 'auto' : 'cpu',
    local_files_only: true,
    session_options: sessionOptions,
  } as never)) as unknown as TjsModel
  await tjs.AutoTokenizer.from_pretrained(id, { local_files_only: true })
  result.loadMs = round(performance.now() - t0, 0)
  const wasmAfterLoad = wasmMemoryBytes()

  const ids = (xs: number[], batch = 1) =>
    new tjs.Tensor(
      'int64',
      BigInt64Array.from({ length: batch * xs.length }, (_, i) => BigInt(xs[i % xs.length])),
      [batch, xs.length],
    )
  const ones = (n: number, batch = 1) =>
    new tjs.Tensor('int64', new BigInt64Array(batch * n).fill(1n), [batch, n])
  /** Generates greedily; returns the time of each new token (streamer puts after the prompt). */
  const generate = async (prompt: number[], tokens: number) => {
    const times: number[] = []
    let puts = 0
    const startedAt = performance.now()
    const out = await model.generate({
      input_ids: ids(prompt),
      attention_mask: ones(prompt.length),
      max_new_tokens: tokens,
      min_new_tokens: tokens,
      do_sample: false,
      repetition_penalty: 1,
      streamer: {
        put: () => {
          if (puts++ > 0) times.push(performance.now())
        },
        end: () => {},
      },
    })
    const row = (out.tolist()[0] as bigint[]).slice(prompt.length).map(Number)
    return { times, startedAt, ids: row }
  }

  const warm = await generate(plan.prompts.p64.ids, 1)
  result.firstTtft64Ms = round(warm.times[0] - warm.startedAt, 0)
  await generate(plan.prompts.p512.ids, 1) // the first long run grows ORT's arena
  for (const [key, p] of [
    ['ttft64Ms', plan.prompts.p64],
    ['ttft512Ms', plan.prompts.p512],
  ] as const) {
    log(`time to first token, ${p.ids.length}-token prompt…`)
    const xs = await repeat(plan.rounds, async () => {
      const g = await generate(p.ids, 1)
      return g.times[0] - g.startedAt
    })
    result[key] = round(median(xs), 0)
  }
  const rates: number[] = []
  for (let r = 0; r < plan.decodeRounds; r++) {
    log(`decode ${plan.decodeTokens} tokens, round ${r + 1}/${plan.decodeRounds}…`)
    const g = await generate(plan.prompts.p64.ids, plan.decodeTokens)
    rates.push(decodeRate(g.times))
    result.firstIds = g.ids.slice(0, 16)
    result.decodedTokens = g.times.length
  }
  result.decodeTokS = round(median(rates))
  result.decodeRounds = rates.map((x) => round(x))

  log(`1 stream × ${plan.streamTokens} tokens…`)
  const streams = async (k: number) => {
    const s = performance.now()
    const runs = await Promise.all(
      plan.prompts.streams.slice(0, k).map((p) => generate(p.ids, plan.streamTokens)),
    )
    const tokens = runs.reduce((n, r) => n + r.times.length, 0)
    return { tokS: (tokens / (performance.now() - s)) * 1000, runs }
  }
  const oneRates: number[] = []
  const fourRates: number[] = []
  let gap = 0
  try {
    for (let r = 0; r < plan.rounds; r++) {
      oneRates.push((await streams(1)).tokS)
      log(`4 concurrent generate() calls × ${plan.streamTokens} tokens…`)
      const four = await streams(4)
      fourRates.push(four.tokS)
      for (const run of four.runs)
        for (let i = 1; i < run.times.length; i++)
          gap = Math.max(gap, run.times[i] - run.times[i - 1])
    }
    if (variant === 'node') {
      result.notes!.push(
        'concurrent generate() calls run on libuv threads in onnxruntime-node: both cores',
      )
    }
  } catch (err) {
    result.notes!.push(`4 concurrent generate() calls failed: ${(err as Error).message}`)
  }
  if (oneRates.length) result.streams1TokS = round(median(oneRates))
  if (fourRates.length) {
    result.streams4TokS = round(median(fourRates))
    result.streams4MaxGapMs = round(gap, 0)
  }

  result.peakRssBytes = peakRssBytes()
  if (variant === 'web') {
    result.wasmAfterLoadBytes = wasmAfterLoad
    result.wasmPeakBytes = wasmMemoryBytes()
  }
  return result
}
