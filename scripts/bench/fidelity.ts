/**
 * How close each weight format's next-token logits stay to the fp32 model's, on a synthetic
 * preset: the plain one (uniform weights, near-uniform next-token distribution) or its
 * `-outliers` twin (heavy tails, outlier channels, a trained model's logit spread; see
 * `WeightDistribution` in scripts/lib/model-presets.ts).
 *
 * Fixed chat prompts (the real Qwen tokenizer's ids through the chat template) run through the
 * fp32 graph in onnxruntime-node, which then decodes greedily for `--steps` tokens. Every other
 * format is fed the same prompt and then fp32's tokens (teacher forcing), so each step compares
 * two next-token distributions over the same context: max and mean |Δlogit|, KL(fp32 ‖ format)
 * and top-1 agreement, also on the steps where fp32's top-1 leads its second by more than
 * `--min-lead` logits (where a flip is a real error rather than a coin toss between near-ties).
 *
 *   npm run bench:fidelity -- --preset small-outliers [--steps 64] [--prompts 8]
 *
 * A format is one entry of FORMATS: something that, given new token ids and its own cache,
 * returns the last position's logits and the cache after them. Models are generated (or reused)
 * under .cache/models/, the engine's package under .cache/fidelity/packages/; the results go to
 * .cache/fidelity/<preset>-results.json, the table to stdout, progress to stderr. Single thread
 * everywhere, so the numbers are the same on every run.
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { basename, dirname, join } from 'node:path'
import type { InferenceSession } from 'onnxruntime-web'
import {
  dequantizeBlocksQ4,
  dequantizeRowsU8,
  quantizeBlocksQ4,
  quantizeRowsU8,
  type Q4Scheme,
} from '../../src/format/index.ts'
import { AWQ_ALPHAS, CALIBRATION_QUESTIONS, meanAbsOf, searchAwq, type Encode } from '../lib/awq.ts'
import { isMain, parseCli, runMain } from '../lib/cli.ts'
import {
  PRESETS,
  isPresetName,
  resolveDims,
  resolveDistribution,
  type ModelDims,
  type PresetName,
  type WeightDistribution,
  type WeightFormat,
} from '../lib/model-presets.ts'
import { setAccuracyLevel } from '../lib/graph-rewrite.ts'
import { decodeModel, encodeModel } from '../lib/onnx/index.ts'
import { makeModel } from '../lib/synth-model.ts'
import {
  generateHfTensor,
  hfTensorSpecs,
  Q4_SCHEME,
  synthesizeWeights,
  type HfTensorSpec,
  type Weights,
} from '../lib/synth-weights.ts'
import type { ReferenceCache } from '../lib/qwen2-reference.ts'
import { compareStep, entropy, summarize, top2, type FidelitySummary } from './fidelity-metrics.ts'
import { GreedyLoop, type LoopState, type OrtApi } from './greedy-loop.ts'
import { chatPrompt, loadTokenizer } from './prompts.ts'

// ---------------------------------------------------------------- formats

/**
 * One way to compute the model's logits. `step` runs `ids` after the tokens `cache` holds
 * (undefined: none yet) and returns the last position's logits and the cache after them; a
 * cache is only ever stepped once, so a format may extend it in place.
 */
export interface Stepper {
  step(ids: readonly number[], cache: unknown): Promise<{ logits: Float32Array; cache: unknown }>
  /** Done with a sequence (the engine's decoder keeps caches in its own memory). */
  drop?(cache: unknown): void
  close(): Promise<void>
}

export interface FidelityFormat {
  /** One line for --help and the results. */
  note: string
  open(ctx: FidelityContext): Promise<Stepper>
}

export type EnginePackageKind =
  'q8' | 'q4' | 'q4-q8head' | 'q4-awq' | 'q4-awq-q8head' | 'q4-awq-sym'

export interface FidelityContext {
  preset: PresetName
  dims: ModelDims
  dist: WeightDistribution
  seed: number
  /** The generated Hugging Face folder of the preset in `format`. */
  modelDir(format: WeightFormat, options?: { embeddingTable?: boolean }): Promise<string>
  /**
   * The engine's package (head and decoder in its kernels): model:prepare of the q8 folder, of
   * the q4 folder as exported (q4 head), of the q4 folder with `--head-format q8`, or of the
   * fp32 folder with `--format q4` (AWQ).
   */
  enginePackage(kind?: EnginePackageKind): Promise<string>
  /** Token ids of the calibration prompts (for formats that calibrate; never the eval ones). */
  calibration: number[][]
  /** Where weights with float activations run (`dequantized`). */
  dequantizedIn: 'ort' | 'ts'
  log(line: string): void
}

/** The formats compared with fp32 (the ORT fp32 graph, which also picks the tokens). */
export const FORMATS: Record<string, FidelityFormat> = {
  'fp32-ts': {
    note: 'fp32 weights in the TS reference: the floor (summation order only)',
    open: async (ctx) => referenceStepper(ctx, mixedWeights(ctx, keep, keep)),
  },
  'ort-q8': {
    note: 'ORT DynamicQuantizeMatMul: uint8 weights per row, uint8 activations per tensor',
    open: async (ctx) => ortStepper(await ctx.modelDir('q8')),
  },
  'engine-q8': {
    note: 'the engine as served: prompt and decode steps in its kernels (q8 weights and head)',
    open: (ctx) => engineStepper(ctx, 'kernels'),
  },
  'engine-q8-prefill-graph': {
    note: 'PREFILL=graph: prompt in the ORT q8 graph (+ WASM head), decode steps in the kernels',
    open: (ctx) => engineStepper(ctx, 'served-graph'),
  },
  'engine-q4': {
    note: 'the engine as served on the q4 export as is: 4-bit layers and head, int8 activations per block of 32',
    open: (ctx) => engineStepper(ctx, 'kernels', 'q4'),
  },
  'engine-q4-q8head': {
    note: 'the same with `model:prepare --head-format q8`: the lm_head rows requantized to q8',
    open: (ctx) => engineStepper(ctx, 'kernels', 'q4-q8head'),
  },
  'engine-q4-awq': {
    note: 'the engine on `model:prepare --format q4` of the fp32 export: AWQ-scaled 4-bit layers and head',
    open: (ctx) => engineStepper(ctx, 'kernels', 'q4-awq'),
  },
  'engine-q4-awq-sym': {
    note: "the same conversion with `--q4-scheme symmetric`: every zero point 8 (the kernels' symmetric path)",
    open: (ctx) => engineStepper(ctx, 'kernels', 'q4-awq-sym'),
  },
  'engine-q4-awq-q8head': {
    note: 'the same with `--head-format q8`: the head rows quantized to q8 from the fp32 weights',
    open: (ctx) => engineStepper(ctx, 'kernels', 'q4-awq-q8head'),
  },
  'ort-q4': {
    note: 'ORT MatMulNBits (block 32), accuracy_level 0 (float activations), q4 head',
    open: async (ctx) => ortStepper(await ctx.modelDir('q4')),
  },
  'ort-q4-table': {
    note: 'the same with the embedding a float32 table, as onnx-community q4 files keep it (the gap to ort-q4: the 4-bit rows the engine embeds from)',
    open: async (ctx) => ortStepper(await ctx.modelDir('q4', { embeddingTable: true })),
  },
  'ort-q4-acc4': {
    note: 'the same graph at accuracy_level 4 (int8 activations per block)',
    open: async (ctx) => {
      const dir = await ctx.modelDir('q4')
      return ortStepper(dir, withAccuracyLevel(onnxFile(dir), 4))
    },
  },
  'q4-q4head': {
    note: "q4 weights (block 32, symmetric: the export's) and head, float activations",
    open: async (ctx) => {
      const exported = q4(32, Q4_SCHEME)
      return dequantized(ctx, 'q4-q4head', mixedWeights(ctx, exported, exported))
    },
  },
  'q4-q8head': {
    note: 'q4 weights (block 32), q8 head, float activations',
    open: async (ctx) => dequantized(ctx, 'q4-q8head', mixedWeights(ctx, q4(32), q8)),
  },
  'q4-bs16-q8head': {
    note: 'q4 weights in blocks of 16, q8 head, float activations',
    open: async (ctx) => dequantized(ctx, 'q4-bs16-q8head', mixedWeights(ctx, q4(16), q8)),
  },
  'q4-split-q8head': {
    note: 'q4 (block 32) with the calibrated outlier input columns kept in f32, q8 head, float activations',
    open: async (ctx) =>
      dequantized(ctx, 'q4-split-q8head', (await splitWeights(ctx, q4(32), q8)).weights),
  },
  'q4-awq-q8head': {
    note: 'q4 (block 32) after AWQ-style channel scaling folded into the norms, q8 head',
    open: async (ctx) =>
      dequantized(ctx, 'q4-awq-q8head', (await awqWeights(ctx, q4(32), q8)).weights),
  },
}

export const FIDELITY_CLI = {
  name: 'bench:fidelity',
  command: 'npm run bench:fidelity --',
  usage: ['npm run bench:fidelity -- --preset <name> [options]'],
  summary: [
    "Compares every weight format's next-token logits with the fp32 model's over fixed chat",
    "prompts, teacher-forced on fp32's greedy tokens: max and mean |Δlogit|, KL(fp32 ‖ format),",
    "top-1 agreement (all steps, and steps where fp32's top-1 leads clearly). Models are",
    'generated into .cache/models/ (reused while the generator is unchanged).',
  ],
  options: {
    preset: {
      type: 'string',
      arg: '<name>',
      default: 'small-outliers',
      help: 'synthetic preset: small and small-outliers to iterate, tiny-outliers, qwen2.5-0.5b(-outliers)',
    },
    steps: { type: 'string', arg: '<n>', default: '64', help: 'decode steps per prompt' },
    prompts: { type: 'string', arg: '<n>', default: '8', help: 'how many of the 8 fixed prompts' },
    formats: {
      type: 'string',
      arg: '<a,b,...>',
      help: 'formats to compare with fp32 (listed below)',
      defaultHelp: 'all',
    },
    dequantized: {
      type: 'string',
      arg: '<ort|ts>',
      default: 'ort',
      help:
        'where the formats with float activations run: their dequantized weights in the fp32 ' +
        'graph in onnxruntime-node, or the TS reference (the same numbers, far slower)',
    },
    'min-lead': {
      type: 'string',
      arg: '<logits>',
      default: '0.5',
      help: "the clear steps: fp32's top-1 ahead of its second by more than this",
    },
  },
  notes: [
    'Formats (compared with fp32, the ORT fp32 graph, which also picks the tokens):',
    ...Object.entries(FORMATS).map(([name, f]) => `  ${name.padEnd(17)} ${f.note}`),
  ],
  examples: [
    'npm run bench:fidelity -- --preset small-outliers',
    'npm run bench:fidelity -- --preset small --steps 16 --prompts 2 --formats ort-q8,engine-q8',
  ],
} as const

// ---------------------------------------------------------------- onnxruntime-node

function onnxFile(dir: string): string {
  const files = readdirSync(join(dir, 'onnx')).filter((f) => f.endsWith('.onnx'))
  if (files.length !== 1) throw new Error(`expected one .onnx file in ${dir}/onnx`)
  return join(dir, 'onnx', files[0])
}

/** The graph with every MatMulNBits at `level` (the generated graphs leave it at 0). */
function withAccuracyLevel(file: string, level: number): Uint8Array {
  const model = decodeModel(readFileSync(file))
  setAccuracyLevel(model, level)
  return encodeModel(model)
}

/**
 * The model folder's graph in onnxruntime-node, CPU, one thread; `bytes` instead of its file
 * (a rewritten graph with inline weights).
 */
async function ortStepper(dir: string, bytes?: Uint8Array): Promise<Stepper> {
  const ort = await import('onnxruntime-node')
  const options = {
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
  } as const
  const session = bytes
    ? await ort.InferenceSession.create(bytes, options)
    : await ort.InferenceSession.create(onnxFile(dir), options)
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
  const loop = new GreedyLoop(ort as unknown as OrtApi, session as unknown as InferenceSession, {
    layers: config.num_hidden_layers,
    kvHeads: config.num_key_value_heads,
    headDim: config.head_dim ?? config.hidden_size / config.num_attention_heads,
  })
  return {
    async step(ids, cache) {
      const r = await loop.step((cache as LoopState | undefined) ?? loop.empty(), ids)
      const data = r.logits.data as Float32Array
      const vocab = r.logits.dims[2]
      return { logits: data.slice(data.length - vocab), cache: r.state }
    },
    close: () => session.release(),
  }
}

// ---------------------------------------------------------------- the engine

/**
 * The engine on one of its packages (the q8 one unless `kind` says). 'kernels': as it serves by default, the prompt (prefill) and
 * every decode step in its own kernels, the head too; 'served-graph': PREFILL=graph, the prompt
 * in the onnxruntime-web q8 graph (then the head in the kernels), decode steps in the kernels.
 */
async function engineStepper(
  ctx: FidelityContext,
  mode: 'kernels' | 'served-graph',
  kind: EnginePackageKind = 'q8',
): Promise<Stepper> {
  const dir = await ctx.enginePackage(kind)
  const { loadPackage, QwenEngine } = await import('../../src/engine/index.ts')
  const { fsSource } = await import('../../src/adapters/node/fs-source.ts')
  const pkg = await loadPackage(fsSource(dirname(dir)), basename(dir))
  const session = mode === 'served-graph' ? { prefill: 'graph' as const } : {}
  const engine = await QwenEngine.create(pkg, { session })
  const model = engine.model
  const want = mode === 'kernels' ? 'decoder' : 'graph'
  if (model.paths.prefill !== want || model.paths.decode !== 'decoder')
    throw new Error(
      `the engine runs prompts in ${model.paths.prefill}, decode steps in ` +
        `${model.paths.decode}: not the ${mode} path (${dir})`,
    )
  type Cache = ReturnType<typeof model.emptyCache>
  return {
    async step(ids, cache) {
      const c = (cache as Cache | undefined) ?? model.emptyCache()
      const r =
        ids.length === 1 && cache
          ? (await model.decode([ids[0]], [c]))[0]
          : await model.forward(ids, c, 1)
      return { logits: Float32Array.from(r.logits), cache: r.cache }
    },
    drop: (cache) => model.releaseCache(cache as Cache),
    close: () => model.release(),
  }
}

// ---------------------------------------------------------------- the TS reference

/** How a matrix [n, k] (HF layout) is stored: returns what the format computes with. */

const keep: Encode = (w) => w
const q8: Encode = (w, n, k) => {
  const { q, scale, zeroPoint } = quantizeRowsU8(w, n, k)
  return dequantizeRowsU8(q, scale, zeroPoint, n, k)
}
/** q4 blocks dequantized: asymmetric (`model:prepare --format q4`'s) unless `scheme` says. */
const q4 =
  (blockSize: number, scheme: Q4Scheme = 'asymmetric'): Encode =>
  (w, n, k) => {
    const { packed, scales, zeroPoints } = quantizeBlocksQ4(w, n, k, blockSize, scheme)
    return dequantizeBlocksQ4(packed, scales, zeroPoints, n, k, blockSize)
  }

const isHead = (spec: HfTensorSpec) => spec.kind === 'embedding' || spec.name === 'lm_head.weight'

/** The preset's weights with the layers' matrices through `body` and the embedding/lm_head through `head`. */
function mixedWeights(ctx: FidelityContext, body: Encode, head: Encode): Weights {
  const out: Weights = new Map()
  for (const spec of hfTensorSpecs(ctx.dims)) {
    const w = generateHfTensor(spec, ctx.seed, ctx.dist)
    const [n, k] = spec.shape
    if (spec.kind === 'norm' || spec.kind === 'bias') out.set(spec.name, w)
    else out.set(spec.name, (isHead(spec) ? head : body)(w, n, k))
  }
  return out
}

/**
 * Weights with float activations, as the engine's q4 kernels will compute: the dequantized
 * weights in the fp32 graph in onnxruntime-node (written under .cache/fidelity/models/ for
 * the run), or in the TS reference, which computes the same to float rounding at a fraction of
 * the speed (about 1 s per token at 0.5B shapes).
 */
async function dequantized(ctx: FidelityContext, name: string, weights: Weights): Promise<Stepper> {
  if (ctx.dequantizedIn === 'ts') return referenceStepper(ctx, weights)
  const dir = join('.cache', 'fidelity', 'models', `${ctx.preset}-${name}`)
  rmSync(dir, { recursive: true, force: true })
  makeModel({
    preset: ctx.preset,
    format: 'fp32',
    outDir: dir,
    tensors: (spec) => weights.get(spec.name)!,
  })
  weights.clear() // the session holds its own copy
  const stepper = await ortStepper(dir)
  return {
    ...stepper,
    close: async () => {
      await stepper.close()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

async function referenceStepper(ctx: FidelityContext, weights: Weights): Promise<Stepper> {
  const { Qwen2Reference } = await import('../../test/reference/qwen2-reference.ts')
  const ref = new Qwen2Reference(ctx.dims, weights)
  return {
    async step(ids, cache) {
      const c = (cache as ReferenceCache | undefined) ?? ref.emptyCache()
      const [logits] = ref.forward([...ids], c, 1)
      return { logits, cache: c }
    },
    close: async () => {},
  }
}

/** The matrices that read one RMSNorm's output, in one layer. */
const NORM_GROUPS = [
  { norm: 'input_layernorm', reads: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'] },
  { norm: 'post_attention_layernorm', reads: ['mlp.gate_proj', 'mlp.up_proj'] },
]

/**
 * The calibration prompts through the TS reference on `fp32`: the input rows of each norm group,
 * keyed by the weight name of the group's first reader.
 */
async function calibrationRows(
  ctx: FidelityContext,
  fp32: Weights,
): Promise<Map<string, Float32Array[]>> {
  const { Qwen2Reference } = await import('../../test/reference/qwen2-reference.ts')
  const rows = new Map<string, Float32Array[]>()
  const observe = (name: string, x: Float32Array, n: number) => {
    if (!NORM_GROUPS.some((g) => name.endsWith(`${g.reads[0]}.weight`))) return
    const got = rows.get(name) ?? []
    for (let r = 0; r < n; r++) got.push(x.slice((r * x.length) / n, ((r + 1) * x.length) / n))
    rows.set(name, got)
  }
  const ref = new Qwen2Reference(ctx.dims, fp32, { observe })
  for (const ids of ctx.calibration) ref.forward(ids, ref.emptyCache(), 1)
  return rows
}

/**
 * AWQ-style activation-aware scaling (lib/awq.ts) on the synthetic weights: the calibration
 * prompts run through the TS reference, and every layer's two norm groups are scaled by the
 * alpha `searchAwq` picks.
 */
export async function awqWeights(
  ctx: FidelityContext,
  body: Encode,
  head: Encode,
  alphas = AWQ_ALPHAS,
): Promise<{ weights: Weights; chosen: number[] }> {
  const fp32 = synthesizeWeights(ctx.dims, ctx.seed, 'fp32', ctx.dist)
  const rows = await calibrationRows(ctx, fp32)
  const out = mixedWeights(ctx, body, head)
  const H = ctx.dims.hiddenSize
  const chosen: number[] = []
  for (let l = 0; l < ctx.dims.numLayers; l++)
    for (const g of NORM_GROUPS) {
      const p = `model.layers.${l}`
      const mats = g.reads.map((m) => {
        const w = fp32.get(`${p}.${m}.weight`)!
        return { name: `${p}.${m}.weight`, w, n: w.length / H }
      })
      const best = searchAwq(mats, rows.get(`${p}.${g.reads[0]}.weight`)!, H, body, { alphas })
      chosen.push(best.alpha)
      mats.forEach((m, i) => out.set(m.name, best.stored[i]))
      const gamma = Float32Array.from(fp32.get(`${p}.${g.norm}.weight`)!)
      for (let c = 0; c < H; c++) gamma[c] /= best.s[c]
      out.set(`${p}.${g.norm}.weight`, gamma)
    }
  ctx.log(`awq: alpha per layer (attn, mlp): ${chosen.join(' ')}`)
  return { weights: out, chosen }
}

/** Channels whose mean |x| is above `factor` times the median channel's. */
export function salientChannels(meanAbs: ArrayLike<number>, factor = 6, max = 8): number[] {
  const sorted = Float64Array.from(meanAbs).sort()
  const median = sorted[sorted.length >> 1]
  return Array.from(meanAbs, (m, c) => [m, c])
    .filter(([m]) => m > factor * median)
    .sort((a, b) => b[0] - a[0])
    .slice(0, max)
    .map(([, c]) => c)
}

/** q4 layers with the calibrated outlier input columns of each norm group kept exact. */
export async function splitWeights(
  ctx: FidelityContext,
  body: Encode,
  head: Encode,
): Promise<{ weights: Weights; channels: number[][] }> {
  const fp32 = synthesizeWeights(ctx.dims, ctx.seed, 'fp32', ctx.dist)
  const inputs = await calibrationRows(ctx, fp32)
  const out = mixedWeights(ctx, body, head)
  const H = ctx.dims.hiddenSize
  const channels: number[][] = []
  for (let l = 0; l < ctx.dims.numLayers; l++)
    for (const g of NORM_GROUPS) {
      const p = `model.layers.${l}`
      const keepCols = salientChannels(meanAbsOf(inputs.get(`${p}.${g.reads[0]}.weight`)!, H))
      channels.push(keepCols)
      for (const m of g.reads) {
        const name = `${p}.${m}.weight`
        const w = Float32Array.from(fp32.get(name)!)
        const n = w.length / H
        for (let r = 0; r < n; r++) for (const c of keepCols) w[r * H + c] = 0
        const stored = body(w, n, H)
        const src = fp32.get(name)!
        for (let r = 0; r < n; r++) for (const c of keepCols) stored[r * H + c] = src[r * H + c]
        out.set(name, stored)
      }
    }
  ctx.log(`split: outlier channels per group: ${channels.map((c) => c.join('+') || '-').join(' ')}`)
  return { weights: out, channels }
}

// ---------------------------------------------------------------- prompts

/** The measured prompts: mixed languages, code, lists; the chat template around each. */
export const EVAL_QUESTIONS = [
  'Write a short poem about the sea at night.',
  '用三句话解释什么是量子计算。',
  'List five uses of a paperclip, one per line.',
  'Explain what a hash map is to a ten-year-old.',
  'def fib(n):\n    # complete this function in Python',
  'Translate to French: The train leaves at seven tomorrow morning.',
  'What are the pros and cons of remote work? Answer in two bullet points each.',
  'Summarize the plot of a heist movie you invent, in one paragraph.',
]

// ---------------------------------------------------------------- the run

export interface FormatResult extends FidelitySummary {
  format: string
  note: string
  seconds: number
}

export interface FidelityRun {
  preset: PresetName
  dist: WeightDistribution
  dequantizedIn: 'ort' | 'ts'
  prompts: number
  steps: number
  /** fp32's next-token entropy, mean over all steps (nats), and the share of clear steps. */
  meanEntropy: number
  clearShare: number
  fp32Seconds: number
  results: FormatResult[]
}

export async function runFidelity(options: {
  preset: PresetName
  steps: number
  prompts: number
  formats: string[]
  minLead: number
  dequantizedIn: 'ort' | 'ts'
  log: (line: string) => void
}): Promise<FidelityRun> {
  const { preset, steps, log } = options
  const { ensureModel } = await import('../../test/helpers/models.ts')
  const modelDir = (format: WeightFormat, o: { embeddingTable?: boolean } = {}) =>
    ensureModel(preset, format, o)
  const fp32Dir = await modelDir('fp32')
  const tok = await loadTokenizer(fp32Dir)
  const ids = (q: string) => chatPrompt(tok, q).ids
  const packages = new Map<EnginePackageKind, Promise<string>>()
  const ctx: FidelityContext = {
    preset,
    dims: resolveDims(preset),
    dist: resolveDistribution(preset),
    seed: 0,
    modelDir,
    enginePackage: (kind = 'q8') => {
      if (!packages.has(kind))
        packages.set(
          kind,
          preparedPackage(
            preset,
            kind,
            modelDir(kind === 'q8' ? 'q8' : kind.startsWith('q4-awq') ? 'fp32' : 'q4'),
            log,
          ),
        )
      return packages.get(kind)!
    },
    calibration: CALIBRATION_QUESTIONS.map(ids),
    dequantizedIn: options.dequantizedIn,
    log,
  }
  const prompts = EVAL_QUESTIONS.slice(0, options.prompts).map(ids)

  // fp32: the tokens every format is fed, and the logits they are compared with
  const t0 = performance.now()
  log(`fp32: ${prompts.length} prompts × ${steps} steps (onnxruntime-node)…`)
  const fp32 = await ortStepper(fp32Dir)
  const reference: { tokens: number[]; logits: Float32Array[] }[] = []
  let entropySum = 0
  let clear = 0
  for (const prompt of prompts) {
    const run = { tokens: [] as number[], logits: [] as Float32Array[] }
    let r = await fp32.step(prompt, undefined)
    for (let i = 0; i < steps; i++) {
      if (i > 0) r = await fp32.step([run.tokens[i - 1]], r.cache)
      run.logits.push(r.logits)
      const t = top2(r.logits)
      run.tokens.push(t.top1)
      entropySum += entropy(r.logits)
      if (t.lead > options.minLead) clear++
    }
    reference.push(run)
  }
  await fp32.close()
  const fp32Seconds = (performance.now() - t0) / 1000
  const total = prompts.length * steps
  log(
    `fp32: ${fp32Seconds.toFixed(1)} s; next-token entropy ${(entropySum / total).toFixed(2)} ` +
      `nats (mean), ${clear}/${total} steps lead by > ${options.minLead}`,
  )

  const results: FormatResult[] = []
  for (const name of options.formats) {
    const format = FORMATS[name]
    const started = performance.now()
    log(`${name}: ${format.note}…`)
    const stepper = await format.open(ctx)
    const compared = []
    for (let p = 0; p < prompts.length; p++) {
      const { tokens, logits } = reference[p]
      let r = await stepper.step(prompts[p], undefined)
      for (let i = 0; i < steps; i++) {
        if (i > 0) r = await stepper.step([tokens[i - 1]], r.cache)
        compared.push(compareStep(logits[i], r.logits))
      }
      stepper.drop?.(r.cache)
    }
    await stepper.close()
    const seconds = (performance.now() - started) / 1000
    const summary = summarize(compared, options.minLead)
    results.push({ format: name, note: format.note, seconds, ...summary })
    log(
      `${name}: KL ${summary.meanKl.toExponential(2)}, top-1 ${summary.agree}/${summary.steps}, ` +
        `${seconds.toFixed(1)} s`,
    )
  }
  return {
    preset,
    dist: ctx.dist,
    dequantizedIn: options.dequantizedIn,
    prompts: prompts.length,
    steps,
    meanEntropy: entropySum / total,
    clearShare: clear / total,
    fp32Seconds,
    results,
  }
}

/** The engine's package of the q8 folder, prepared again when the folder is newer. */
async function preparedPackage(
  preset: string,
  kind: EnginePackageKind,
  exportDir: Promise<string>,
  log: (line: string) => void,
): Promise<string> {
  const folder = await exportDir
  const out = join('.cache', 'fidelity', 'packages')
  const id = `${preset}-${kind}`
  const manifest = join(out, id, 'manifest.json')
  if (
    existsSync(manifest) &&
    statSync(manifest).mtimeMs > statSync(join(folder, 'config.json')).mtimeMs
  )
    return join(out, id)
  log(`preparing the engine's package ${join(out, id)}…`)
  mkdirSync(out, { recursive: true })
  const { preparePackage } = await import('../prepare-model.ts')
  const { report } = await preparePackage({
    folder,
    id,
    out,
    quiet: true,
    verify: false,
    ...((kind === 'q4-q8head' || kind === 'q4-awq-q8head') && { headFormat: 'q8' as const }),
    ...(kind.startsWith('q4-awq') && { format: 'q4' as const }),
    ...(kind === 'q4-awq-sym' && { q4Scheme: 'symmetric' as const }),
  })
  if (!report?.decoder?.applied)
    throw new Error(`no decoder in the package: ${report?.decoder?.reason}`)
  return join(out, id)
}

const pct = (n: number, of: number) => (of ? `${((100 * n) / of).toFixed(1)}%` : '–')

export function fidelityTable(run: FidelityRun): string {
  const lines = [
    `| format | max \\|Δlogit\\| | mean \\|Δlogit\\| | mean KL (nats) | top-1 agree | ` +
      `top-1 agree, lead > ${run.results[0]?.minLead ?? 0.5} | s |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const r of run.results)
    lines.push(
      `| ${r.format} | ${r.maxAbs.toFixed(3)} | ${r.meanAbs.toFixed(4)} | ${r.meanKl.toExponential(2)} | ` +
        `${pct(r.agree, r.steps)} | ${pct(r.clearAgree, r.clearSteps)} (${r.clearSteps}) | ` +
        `${r.seconds.toFixed(0)} |`,
    )
  return lines.join('\n')
}

async function main(): Promise<void> {
  const { values } = parseCli(FIDELITY_CLI)
  const preset = values.preset
  if (!isPresetName(preset)) throw new Error(`--preset: ${Object.keys(PRESETS).join(', ')}`)
  const positive = (name: string, v: string) => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`)
    return n
  }
  const steps = positive('steps', values.steps)
  const prompts = Math.min(positive('prompts', values.prompts), EVAL_QUESTIONS.length)
  const minLead = Number(values['min-lead'])
  if (!(minLead >= 0)) throw new Error('--min-lead must be a number >= 0')
  const formats = values.formats?.split(',').filter(Boolean) ?? Object.keys(FORMATS)
  for (const f of formats)
    if (!FORMATS[f])
      throw new Error(`unknown format ${f}; one of ${Object.keys(FORMATS).join(', ')}`)
  const dequantizedIn = values.dequantized
  if (dequantizedIn !== 'ort' && dequantizedIn !== 'ts') throw new Error('--dequantized: ort or ts')
  const log = (line: string) => console.error(`[fidelity] ${line}`)
  const started = performance.now()
  const run = await runFidelity({ preset, steps, prompts, formats, minLead, dequantizedIn, log })
  const minutes = (performance.now() - started) / 60000
  mkdirSync(join('.cache', 'fidelity'), { recursive: true })
  const out = join('.cache', 'fidelity', `${preset}-results.json`)
  writeFileSync(out, JSON.stringify({ ...run, minutes }, null, 2) + '\n')
  console.log(
    `\n${preset}: ${run.prompts} prompts × ${run.steps} steps teacher-forced on fp32 ` +
      `(onnxruntime-node, 1 thread); fp32 next-token entropy ${run.meanEntropy.toFixed(2)} nats ` +
      `(mean), ${(100 * run.clearShare).toFixed(0)}% of steps lead by > ${minLead}; ` +
      `${minutes.toFixed(1)} min; ${out}\n`,
  )
  console.log(fidelityTable(run))
}

if (isMain(import.meta.url)) runMain(main)
