/**
 * Activation-aware weight scaling (AWQ, Lin et al. 2023, without its clipping search), for the
 * matrices that read an RMSNorm's output: q/k/v after input_layernorm, gate/up after
 * post_attention_layernorm. An untied lm_head after the final norm is rounded plainly: its
 * search would multiply the whole vocabulary's rows a dozen times.
 *
 * Real checkpoints carry a few hidden channels far above the rest after every norm, and a
 * weight's quantization error on such an input channel is multiplied by that channel's size.
 * So the channels' mean |activation| over calibration prompts gives s = mean|x|^alpha; the
 * matrices are stored as quantize(W · diag(s)) and the norm's weight is divided by s. In exact
 * arithmetic that changes nothing; quantized, the salient channels get finer steps. alpha is
 * searched per group for the least output error on calibration rows; alpha 0 is plain
 * quantization, so the search never picks worse than that on its own calibration data.
 *
 * `searchAwq` is the search on plain arrays (the fidelity bench uses it on synthetic weights);
 * `applyAwq` runs it on an fp32 ONNX graph before its weights are quantized: it finds the
 * groups, runs the calibration prompts through the graph with onnxruntime-node to see their
 * inputs, and returns the graph with the scaled weights and norms (still fp32, the same
 * function up to rounding: tested).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Qwen2Config } from '../../src/format/index.ts'
import { runPrefill, writeModelWithExternalData } from './logit-check.ts'
import {
  DataType,
  setRawData,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from './onnx/index.ts'
import { indexGraph } from './graph-rewrite.ts'
import { floatValues } from './quantize.ts'
import { transpose } from './synth-weights.ts'

/** A quantizer as the search sees it: rows [n, k] in, their dequantized values out. */
export type Encode = (w: Float32Array, n: number, k: number) => Float32Array

/** AWQ's grid of exponents for s = mean|x|^alpha (alpha 0: plain quantization). */
export const AWQ_ALPHAS = Array.from({ length: 11 }, (_, i) => i / 10)
/** Calibration rows the output error is measured on, per group. */
export const AWQ_ERROR_ROWS = 64
/**
 * A group is scaled only when that cuts its calibration error by at least this share; else it
 * is rounded plainly. Measured on the synthetic presets without outlier channels, scalings
 * that cut the local error by 8-18% moved the end-to-end KL by up to ±50% either way (noise
 * the local error cannot see), while outlier channels give cuts of 70-93%.
 */
export const AWQ_MIN_GAIN = 0.25

/** Calibration prompts: chat questions of the kinds users ask (languages, code, lists). */
export const CALIBRATION_QUESTIONS = [
  'Describe a sunrise over the mountains in three sentences.',
  '请简单介绍一下长城的历史。',
  'Give me a recipe for pancakes with a numbered list of steps.',
  'Why is the sky blue? Keep it short.',
  'function add(a, b) { // write a TypeScript version with types',
  'Translate to German: Where is the nearest train station?',
  'Compare cats and dogs as pets in a short table.',
  'Write a limerick about a programmer who loves coffee.',
]

/** s = mean|x|^alpha, normalised so that max(s) · min(s) = 1 (as AWQ does). */
export function awqScales(meanAbs: ArrayLike<number>, alpha: number): Float32Array {
  const s = Float32Array.from(meanAbs, (m) => Math.pow(Math.max(m, 1e-4), alpha))
  let max = 0
  let min = Infinity
  for (const v of s) {
    max = Math.max(max, v)
    min = Math.min(min, v)
  }
  const norm = Math.sqrt(max * min)
  for (let i = 0; i < s.length; i++) s[i] /= norm
  return s
}

/** Mean |x| of each of the k channels over `rows`. */
export function meanAbsOf(rows: readonly Float32Array[], k: number): Float64Array {
  const meanAbs = new Float64Array(k)
  for (const r of rows) for (let c = 0; c < k; c++) meanAbs[c] += Math.abs(r[c]) / rows.length
  return meanAbs
}

export interface AwqChoice {
  alpha: number
  /** The scales of the input channels (all 1 for alpha 0). */
  s: Float32Array
  /** Σ over calibration rows and outputs of ((W − Q(W s) / s) x)², at alpha and at 0. */
  err: number
  plainErr: number
  /** Q(W · diag(s)) dequantized, per matrix ([n, k] rows). */
  stored: Float32Array[]
}

/** y[r · m + i] = Σ_c w[r · k + c] · xs[i][c] for the n rows of w and the m vectors xs. */
export type Dots = (
  w: Float32Array,
  n: number,
  k: number,
  xs: readonly Float32Array[],
) => Float64Array

/**
 * `Dots` in plain TypeScript: each weight row against eight vectors at a time, the vectors'
 * values interleaved in one Float64Array (value j of vector t at 8j + t), so one load of the
 * row's value feeds eight products from one cache line, the row is read from memory once per
 * eight vectors and they stay in cache. Each sum runs over j in order in f64, as a plain loop's.
 */
export const jsDots: Dots = (w, n, k, xs) => {
  const m = xs.length
  const y = new Float64Array(n * m)
  const flat = new Float64Array(8 * k)
  for (let i0 = 0; i0 < m; i0 += 8) {
    const count = Math.min(8, m - i0)
    flat.fill(0)
    for (let t = 0; t < count; t++) {
      const x = xs[i0 + t]
      for (let j = 0; j < k; j++) flat[8 * j + t] = x[j]
    }
    for (let r = 0; r < n; r++) {
      const w0 = r * k
      let e0 = 0
      let e1 = 0
      let e2 = 0
      let e3 = 0
      let e4 = 0
      let e5 = 0
      let e6 = 0
      let e7 = 0
      for (let j = 0, f = 0; j < k; j++, f += 8) {
        const v = w[w0 + j]
        e0 += v * flat[f]
        e1 += v * flat[f + 1]
        e2 += v * flat[f + 2]
        e3 += v * flat[f + 3]
        e4 += v * flat[f + 4]
        e5 += v * flat[f + 5]
        e6 += v * flat[f + 6]
        e7 += v * flat[f + 7]
      }
      const o = r * m + i0 // the vectors past `count` are zeros: their sums are not kept
      y[o] = e0
      if (count > 1) y[o + 1] = e1
      if (count > 2) y[o + 2] = e2
      if (count > 3) y[o + 3] = e3
      if (count > 4) y[o + 4] = e4
      if (count > 5) y[o + 5] = e5
      if (count > 6) y[o + 6] = e6
      if (count > 7) y[o + 7] = e7
    }
  }
  return y
}

/**
 * The alpha of `alphas` whose scaling gives the least output error of `mats` (rows [n, k], all
 * reading the same input) on the calibration `rows` (each of k values), quantized by `encode`;
 * alpha 0 (plain rounding) unless the best cuts the error by `minGain` (AWQ_MIN_GAIN).
 * `activations` is what the kernel multiplies instead of an input row (e.g. int8 per block,
 * dequantized); absent, the row itself. The error is Σ (W x − Q(W s) · act(x / s))² over the
 * outputs and up to AWQ_ERROR_ROWS rows: the stored weights with the norm divided by s.
 */
export function searchAwq(
  mats: readonly { w: Float32Array; n: number }[],
  rows: readonly Float32Array[],
  k: number,
  encode: Encode,
  options: {
    alphas?: readonly number[]
    activations?: (x: Float32Array) => Float32Array
    dots?: Dots
    minGain?: number
  } = {},
): AwqChoice {
  const { alphas = AWQ_ALPHAS, activations, minGain = AWQ_MIN_GAIN } = options
  // identical rows (the chat template's shared prefix at the same positions) count once
  const seenRows = new Set<string>()
  rows = rows.filter((r) => {
    const key = Buffer.from(r.buffer, r.byteOffset, 4 * k).toString('base64')
    return !seenRows.has(key) && !!seenRows.add(key)
  })
  const meanAbs = meanAbsOf(rows, k)
  const count = Math.min(AWQ_ERROR_ROWS, rows.length)
  const sample = Array.from(
    { length: count },
    (_, i) => rows[Math.floor((i * rows.length) / count)],
  )
  const dots = options.dots ?? jsDots
  // W x, the exact outputs, once
  const exact = mats.map(({ w, n }) => dots(w, n, k, sample))
  let best: AwqChoice | undefined
  let plain: AwqChoice | undefined
  let plainErr = NaN
  for (const alpha of alphas) {
    const s = awqScales(meanAbs, alpha)
    const inputs = sample.map((x) => {
      const xs = Float32Array.from(x, (v, c) => v / s[c])
      return activations ? activations(xs) : xs
    })
    let err = 0
    const stored = mats.map(({ w, n }, m) => {
      const scaled = new Float32Array(w.length)
      for (let r = 0; r < n; r++)
        for (let c = 0; c < k; c++) scaled[r * k + c] = w[r * k + c] * s[c]
      const q = encode(scaled, n, k)
      const got = dots(q, n, k, inputs)
      const y = exact[m]
      for (let i = 0; i < y.length; i++) err += (y[i] - got[i]) ** 2
      return q
    })
    const choice = { alpha, s, err, plainErr: NaN, stored }
    if (alpha === 0) [plain, plainErr] = [choice, err]
    if (!best || err < best.err) best = choice
  }
  if (plain && best!.err > (1 - minGain) * plainErr) best = plain
  return { ...best!, plainErr }
}

/** The matrices reading one norm's output, and the norm's weight. */
export interface AwqGroup {
  /** The tensor the matrices read (the norm's output). */
  input: string
  /** The float [k] initializer the norm multiplies by. */
  gamma: string
  /** The MatMul weights, float [k, n] initializers (x · B). */
  weights: string[]
}

/**
 * The groups of a graph: every tensor read only by MatMuls with float [k, n] initializer
 * weights, each weight read by that MatMul alone, and computed by a norm whose float [k] weight
 * feeds nothing else (a Mul by it, or SimplifiedLayerNormalization / RMSNormalization's scale).
 * Anything else (a tied head, a shared norm weight) is left as it is.
 */
export function findAwqGroups(model: ModelProto, k: number): AwqGroup[] {
  const graph = model.graph!
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]))
  const { producer, consumers } = indexGraph(graph)
  const graphOutputs = new Set((graph.output ?? []).map((v) => v.name))
  const isFloat = (t: TensorProto | undefined, dims: number[]) =>
    t?.data_type === DataType.FLOAT &&
    t.dims?.length === dims.length &&
    t.dims.every((d, i) => dims[i] < 0 || Number(d) === dims[i])
  const only = (name: string, node: NodeProto) =>
    !graphOutputs.has(name) && (consumers.get(name) ?? []).every((c) => c === node)

  const groups: AwqGroup[] = []
  const inputs = new Set<string>()
  for (const n of graph.node ?? []) if (n.op_type === 'MatMul' && !n.domain) inputs.add(n.input![0])
  for (const input of inputs) {
    if (graphOutputs.has(input)) continue
    const readers = consumers.get(input) ?? []
    const weights: string[] = []
    for (const r of readers) {
      const b = r.input?.[1]
      if (r.op_type !== 'MatMul' || r.domain || r.input![0] !== input || !b) break
      if (!isFloat(inits.get(b), [k, -1]) || !only(b, r)) break
      weights.push(b)
    }
    if (weights.length === 0 || weights.length !== readers.length) continue
    const norm = producer.get(input)
    if (!norm || norm.output?.[0] !== input) continue
    let gamma: string | undefined
    if (norm.op_type === 'Mul' && !norm.domain) {
      const w = (norm.input ?? []).filter((i) => isFloat(inits.get(i), [k]))
      if (w.length === 1) gamma = w[0]
    } else if (
      norm.op_type === 'SimplifiedLayerNormalization' ||
      norm.op_type === 'RMSNormalization'
    )
      gamma = norm.input?.[1]
    else if (norm.op_type === 'SkipSimplifiedLayerNormalization') gamma = norm.input?.[2]
    if (!gamma || !isFloat(inits.get(gamma), [k]) || !only(gamma, norm)) continue
    groups.push({ input, gamma, weights })
  }
  return groups
}

/** The groups `applyAwq` scales: findAwqGroups without an untied lm_head's. */
export function layerGroups(model: ModelProto, config: Qwen2Config): AwqGroup[] {
  const inits = new Map((model.graph!.initializer ?? []).map((t) => [t.name!, t]))
  return findAwqGroups(model, config.hidden_size).filter((g) =>
    g.weights.every((w) => Number(inits.get(w)!.dims![1]) !== config.vocab_size),
  )
}

export interface AwqReport {
  applied: boolean
  /** Why not, when not applied. */
  reason?: string
  groups?: number
  /** The alpha chosen per group, in graph order (0: quantized plainly). */
  alphas?: number[]
  /** Σ of the groups' calibration output error, scaled and plain (searchAwq's err). */
  error?: number
  plainError?: number
  calibrationTokens?: number
  seconds?: number
}

/**
 * AWQ on an fp32 graph with inline data: calibration prompts run through it (onnxruntime-node,
 * 1 thread), then every group's alpha is searched with `encode` (and the kernel's
 * `activations`, see searchAwq) and its weights and norm are scaled. Returns a new model (the input is not modified) with the same function.
 */
export async function applyAwq(
  model: ModelProto,
  config: Qwen2Config,
  calibration: readonly (readonly number[])[],
  encode: Encode,
  activations?: (x: Float32Array) => Float32Array,
): Promise<{ model: ModelProto; report: AwqReport }> {
  const started = performance.now()
  const k = config.hidden_size
  const groups = layerGroups(model, config)
  if (groups.length === 0)
    return { model, report: { applied: false, reason: 'no MatMul reads a norm of its own' } }
  const inits = new Map((model.graph!.initializer ?? []).map((t) => [t.name!, t]))

  // the groups' inputs as extra outputs of one calibration pass
  const dir = await mkdtemp(join(tmpdir(), 'qwen-edge-awq-'))
  let seen: Float32Array[][]
  try {
    const output = groups.map((g) => ({ name: g.input, type: { tensor_type: { elem_type: 1 } } }))
    const graph = { ...model.graph!, output: [...(model.graph!.output ?? []), ...output] }
    const path = writeModelWithExternalData({ ...model, graph }, dir, 'calibration.onnx')
    const got = await runPrefill(
      path,
      config,
      calibration,
      groups.map((g) => g.input),
    )
    seen = got.map((perPrompt) =>
      perPrompt.flatMap((t) => {
        const data = t.data as Float32Array
        return Array.from({ length: data.length / k }, (_, r) => data.subarray(r * k, (r + 1) * k))
      }),
    )
  } finally {
    await rm(dir, { recursive: true, force: true })
  }

  const replaced = new Map<string, TensorProto>()
  const floatTensor = (t: TensorProto, values: Float32Array): TensorProto => {
    const copy: TensorProto = { ...t }
    setRawData(copy, new Uint8Array(values.buffer, values.byteOffset, values.byteLength))
    return copy
  }
  const alphas: number[] = []
  let error = 0
  let plainError = 0
  groups.forEach((g, i) => {
    const mats = g.weights.map((name) => {
      const b = floatValues(inits.get(name)!) // [k, n]
      const n = b.length / k
      return { w: transpose(b, k, n), n }
    })
    const choice = searchAwq(mats, seen[i], k, encode, { activations })
    alphas.push(choice.alpha)
    error += choice.err
    plainError += choice.plainErr
    if (choice.alpha === 0) return
    const s = choice.s
    for (const name of g.weights) {
      const b = Float32Array.from(floatValues(inits.get(name)!))
      const n = b.length / k
      for (let c = 0; c < k; c++) for (let j = 0; j < n; j++) b[c * n + j] *= s[c]
      replaced.set(name, floatTensor(inits.get(name)!, b))
    }
    const gamma = Float32Array.from(floatValues(inits.get(g.gamma)!))
    for (let c = 0; c < k; c++) gamma[c] /= s[c]
    replaced.set(g.gamma, floatTensor(inits.get(g.gamma)!, gamma))
  })
  const initializer = (model.graph!.initializer ?? []).map((t) => replaced.get(t.name!) ?? t)
  return {
    model: { ...model, graph: { ...model.graph!, initializer } },
    report: {
      applied: true,
      groups: groups.length,
      alphas,
      error,
      plainError,
      calibrationTokens: calibration.reduce((a, p) => a + p.length, 0),
      seconds: (performance.now() - started) / 1000,
    },
  }
}
