/**
 * Is another 8-bit encoding of the q8 weights faster per decode step on onnxruntime-web wasm?
 * Every variant rewrites the SAME generated q8 graph (qwen2-graph.ts: com.microsoft
 * `DynamicQuantizeMatMul` (DQMM), uint8 [K, N] weights, one scale and zero point per output
 * column), so the weights are the same numbers, exactly re-encoded, unless a row says otherwise:
 *
 * | variant | matmuls become | weights |
 * |---|---|---|
 * | u8-dqmm | (the baseline, as generated) | uint8, zero point [N] uint8 |
 * | s8-dqmm | DQMM | int8 = uint8 - 128, zero point - 128: exact |
 * | u8-mmi | DynamicQuantizeLinear → MatMulInteger → Cast → Mul(·, Mul(a_scale, w_scale)) [→ Add bias] | uint8 |
 * | s8-mmi | the same | int8 (exact) |
 * | u8-mmi-split | … → Cast → Mul(a_scale) → Mul(w_scale): a pattern ORT's fusions do not match | uint8 |
 * | s8-sym-dqmm | DQMM without zero point | int8 symmetric, REQUANTIZED from the dequantized floats |
 * | u8-nbits8 | MatMulNBits bits=8 (fp32 activations) | uint8, per-column scale repeated per block: exact |
 *
 * `u8-mmi` / `s8-mmi` is the pattern ORT's level-2 fusions (MatMulIntegerToFloatFusion, then
 * DynamicQuantizeMatMulFusion) turn back into DQMM, so it shows whether the fusion happens on
 * ORT-web; `u8-mmi-split` keeps the unfused MatMulInteger kernel. The embedding Gather reads the
 * lm_head's [H, V] matrix (tied), so it follows every re-encoding (MatMulNBits: it keeps the
 * original uint8 copy, so that variant holds the lm_head twice).
 *
 * Variants are written once under .cache/formats/<preset>-<variant>/ (weights as external data,
 * as the bench model) and rebuilt when the source model changes. All of them run in this one
 * process, interleaved round by round (load, logits check, warm-up, decode, release), so machine
 * noise hits them alike; each ratio is to the baseline of the same round.
 *
 *   npx tsx scripts/bench/formats.ts [--preset tiny|qwen2.5-0.5b] [--rounds 3] [--tokens 32]
 *     [--variants u8-dqmm,s8-dqmm,...] [--mode reload|steps]
 *
 * `--mode reload` (default) also checks logits and greedy ids against the baseline; `--mode
 * steps` keeps every session loaded and alternates single decode steps (less noise; no checks).
 */
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import {
  DataType,
  decodeModel,
  encodeModel,
  initializer,
  isExternal,
  node,
  setExternalData,
  tensorRawData,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from '../lib/onnx/index.ts'
import { isMain, runMain } from '../lib/cli.ts'
import { decodeRate, greedyDecode, GreedyLoop } from './greedy-loop.ts'
import { createWebSession, loopShape } from './measure-bare.ts'
import { ensureBenchModel } from './model-cache.ts'
import { median, round } from './stats.ts'
import { wasmMemoryBytes } from './wasm-memory.ts'

const MS = 'com.microsoft'
/** Bump when a builder changes: cached variant folders are then rebuilt. */
const BUILDER_VERSION = 1
const FORMATS_DIR = join('.cache', 'formats')
const ONNX_NAME = 'model_quantized.onnx'
/** Tensors at least this big go to the external data file (small shape constants stay inline). */
const EXTERNAL_MIN_BYTES = 1024
/** A variant slower than this gets fewer decode tokens (a slow kernel would take minutes). */
const DECODE_BUDGET_S = 40

type Build = (model: ModelProto) => ModelProto

export const VARIANTS: Record<string, { build: Build; note: string }> = {
  'u8-dqmm': { build: (m) => m, note: 'baseline: uint8 DynamicQuantizeMatMul' },
  's8-dqmm': { build: (m) => toInt8Weights(m), note: 'int8 weights, DynamicQuantizeMatMul' },
  'u8-mmi': {
    build: (m) => toMatMulInteger(m, 'fusable'),
    note: 'DQL → MatMulInteger → Cast → Mul(Mul(a_scale, w_scale)), uint8',
  },
  's8-mmi': {
    build: (m) => toMatMulInteger(toInt8Weights(m), 'fusable'),
    note: 'the same with int8 weights',
  },
  'u8-mmi-split': {
    build: (m) => toMatMulInteger(m, 'split'),
    note: 'DQL → MatMulInteger → Cast → Mul(a_scale) → Mul(w_scale): not fused',
  },
  's8-sym-dqmm': {
    build: (m) => toSymmetricInt8(m),
    note: 'symmetric int8 (requantized: changes the weights), DQMM without zero point',
  },
  'u8-nbits8': {
    build: (m) => toMatMulNBits8(m),
    note: 'MatMulNBits bits=8, per-column scale/zero point repeated per block',
  },
}

// ---------------------------------------------------------------- graph rewrites

const isDqmm = (n: NodeProto) => n.op_type === 'DynamicQuantizeMatMul' && n.domain === MS

function initializerMap(model: ModelProto): Map<string, TensorProto> {
  return new Map((model.graph?.initializer ?? []).map((t) => [t.name!, t]))
}

/** The model with `nodes` and the initializers still read by a node (plus `added`). */
function withGraph(model: ModelProto, nodes: NodeProto[], added: TensorProto[] = []): ModelProto {
  const graph = model.graph!
  const used = new Set(nodes.flatMap((n) => n.input ?? []))
  const inits = [...(graph.initializer ?? []), ...added].filter((t) => used.has(t.name!))
  return { ...model, graph: { ...graph, node: nodes, initializer: inits } }
}

function int8Copy(t: TensorProto): TensorProto {
  if (t.data_type !== DataType.UINT8) throw new Error(`${t.name} is not uint8`)
  const src = tensorRawData(t)
  const out = new Uint8Array(src.byteLength)
  for (let i = 0; i < src.byteLength; i++) out[i] = src[i] ^ 0x80 // u - 128 as two's complement
  return { name: t.name, dims: t.dims, data_type: DataType.INT8, raw_data: out }
}

/** Every DQMM weight and zero point as int8 (u - 128): same names, so the embedding follows. */
function toInt8Weights(model: ModelProto): ModelProto {
  const graph = model.graph!
  const names = new Set(graph.node!.filter(isDqmm).flatMap((n) => [n.input![1], n.input![3]]))
  const inits = graph.initializer!.map((t) => (names.has(t.name!) ? int8Copy(t) : t))
  return { ...model, graph: { ...graph, initializer: inits } }
}

/**
 * DQMM(x, W, w_scale, w_zp[, bias]) → DynamicQuantizeLinear(x) → MatMulInteger(x_q, W, x_zp,
 * w_zp) → Cast(float) → scales [→ Add(bias)]. `fusable` multiplies by Mul(x_scale, w_scale),
 * the pattern of ORT's MatMulIntegerToFloatFusion; `split` multiplies by one scale, then the
 * other, which no fusion matches.
 */
function toMatMulInteger(model: ModelProto, form: 'fusable' | 'split'): ModelProto {
  const nodes = model.graph!.node!.flatMap((n) => {
    if (!isDqmm(n)) return [n]
    const [x, w, scale, zp, bias] = n.input!
    const out = n.output![0]
    const p = n.name ?? out
    const v = (s: string) => `${p}/mmi/${s}`
    let count = 0
    const op = (type: string, inputs: string[], outputs: string[], attrs = {}) =>
      node(type, inputs, outputs, attrs, { name: v(`${type}_${count++}`) })
    const y = bias ? v('scaled') : out
    const scaled =
      form === 'fusable'
        ? [op('Mul', [v('x_scale'), scale], [v('scale')]), op('Mul', [v('acc_f'), v('scale')], [y])]
        : [op('Mul', [v('acc_f'), v('x_scale')], [v('acc_x')]), op('Mul', [v('acc_x'), scale], [y])]
    return [
      op('DynamicQuantizeLinear', [x], [v('x_q'), v('x_scale'), v('x_zp')]),
      op('MatMulInteger', [v('x_q'), w, v('x_zp'), zp], [v('acc')]),
      op('Cast', [v('acc')], [v('acc_f')], { to: DataType.FLOAT }),
      ...scaled,
      ...(bias ? [op('Add', [y, bias], [out])] : []),
    ]
  })
  return withGraph(model, nodes)
}

/**
 * Symmetric int8 weights: w = (q - zp) * scale dequantized, requantized per column to
 * round(w / s'), s' = max|w| / 127. This changes the weights (~1 bit of precision lost on
 * one-sided columns). DQMM gets no zero point; the embedding reads an all-zero one.
 */
function toSymmetricInt8(model: ModelProto): ModelProto {
  const inits = initializerMap(model)
  const rename = new Map<string, string>()
  const added: TensorProto[] = []
  for (const n of model.graph!.node!.filter(isDqmm)) {
    const [, wName, sName, zName] = n.input!
    if (rename.has(wName)) continue
    const w = inits.get(wName)!
    const [K, N] = w.dims!
    const q = tensorRawData(w)
    const zp = tensorRawData(inits.get(zName)!)
    const scale = floatsOf(inits.get(sName)!)
    const qmax = new Int32Array(N)
    for (let k = 0; k < K; k++)
      for (let c = 0; c < N; c++) {
        const d = Math.abs(q[k * N + c] - zp[c])
        if (d > qmax[c]) qmax[c] = d
      }
    const s2 = new Float32Array(N)
    for (let c = 0; c < N; c++) s2[c] = qmax[c] ? (scale[c] * qmax[c]) / 127 : scale[c]
    const q2 = new Int8Array(K * N)
    for (let k = 0; k < K; k++)
      for (let c = 0; c < N; c++) {
        const i = k * N + c
        q2[i] = Math.max(-127, Math.min(127, Math.round(((q[i] - zp[c]) * scale[c]) / s2[c])))
      }
    added.push(
      initializer(`${wName}_sym`, q2, [K, N]),
      initializer(`${sName}_sym`, s2, [N]),
      initializer(`${zName}_sym`, new Int8Array(N), [N]),
    )
    rename.set(wName, `${wName}_sym`).set(sName, `${sName}_sym`).set(zName, `${zName}_sym`)
  }
  const nodes = model.graph!.node!.map((n) => {
    const input = n.input!.map((i) => rename.get(i) ?? i)
    if (!isDqmm(n)) return { ...n, input }
    const [x, w, s, , bias] = input
    return { ...n, input: bias ? [x, w, s, '', bias] : [x, w, s] }
  })
  return withGraph(model, nodes, added)
}

/** Largest power of two in [16, 256] dividing K (MatMulNBits block sizes are powers of two). */
function blockSizeFor(K: number): number {
  for (let b = 256; b >= 16; b /= 2) if (K % b === 0) return b
  throw new Error(`K = ${K} has no power-of-two block size >= 16`)
}

/**
 * MatMulNBits bits=8: B [N, K/bs, bs] uint8 (the transposed q8 matrix), scales and zero points
 * [N, K/bs] (each column's one value repeated), so (q - zp) * scale is exactly the q8 weight.
 * Activations stay fp32 (accuracy_level 0). The bias becomes an Add.
 */
function toMatMulNBits8(model: ModelProto): ModelProto {
  const inits = initializerMap(model)
  const added: TensorProto[] = []
  const made = new Map<string, { b: string; s: string; z: string; K: number; N: number }>()
  const nodes = model.graph!.node!.flatMap((n) => {
    if (!isDqmm(n)) return [n]
    const [x, wName, sName, zName, bias] = n.input!
    let m = made.get(wName)
    if (!m) {
      const w = inits.get(wName)!
      const [K, N] = w.dims!
      const bs = blockSizeFor(K)
      const blocks = K / bs
      const q = tensorRawData(w)
      const zp = tensorRawData(inits.get(zName)!)
      const scale = floatsOf(inits.get(sName)!)
      const b = new Uint8Array(N * K)
      for (let k = 0; k < K; k++) for (let c = 0; c < N; c++) b[c * K + k] = q[k * N + c]
      const s = new Float32Array(N * blocks)
      const z = new Uint8Array(N * blocks)
      for (let c = 0; c < N; c++)
        for (let j = 0; j < blocks; j++) {
          s[c * blocks + j] = scale[c]
          z[c * blocks + j] = zp[c]
        }
      m = { b: `${wName}_nbits8`, s: `${sName}_nbits8`, z: `${zName}_nbits8`, K, N }
      added.push(
        initializer(m.b, b, [N, blocks, bs]),
        initializer(m.s, s, [N * blocks]),
        initializer(m.z, z, [N * blocks]),
      )
      made.set(wName, m)
    }
    const out = n.output![0]
    const y = bias ? `${out}_nobias` : out
    const attrs = { K: m.K, N: m.N, bits: 8, block_size: blockSizeFor(m.K) }
    const mm = node('MatMulNBits', [x, m.b, m.s, m.z], [y], attrs, { name: n.name, domain: MS })
    return bias ? [mm, node('Add', [y, bias], [out], {}, { name: `${n.name}/bias` })] : [mm]
  })
  return withGraph(model, nodes, added)
}

function floatsOf(t: TensorProto): Float32Array {
  const raw = tensorRawData(t)
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength))
}

// ---------------------------------------------------------------- files

function onnxFileIn(dir: string): string {
  const files = readdirSync(join(dir, 'onnx')).filter((f) => f.endsWith('.onnx'))
  if (files.length !== 1) throw new Error(`expected one .onnx file in ${dir}/onnx`)
  return join(dir, 'onnx', files[0])
}

/** Size and mtime of the source's files: a variant built from other bytes is rebuilt. */
function sourceStamp(dir: string): string {
  const onnx = onnxFileIn(dir)
  const files = [onnx, `${onnx}_data`].filter((f) => existsSync(f))
  return files.map((f) => `${f}:${statSync(f).size}:${statSync(f).mtimeMs}`).join('|')
}

/** The source model with every initializer's bytes inline (views into the files read). */
function readSourceModel(dir: string): ModelProto {
  const onnx = onnxFileIn(dir)
  const model = decodeModel(readFileSync(onnx))
  const files = new Map<string, Uint8Array>()
  const readExternal = (location: string) => {
    let bytes = files.get(location)
    if (!bytes) files.set(location, (bytes = readFileSync(join(dir, 'onnx', location))))
    return bytes
  }
  const graph = model.graph!
  graph.initializer = graph.initializer!.map((t) => {
    if (!isExternal(t)) return t
    const { external_data: _e, data_location: _l, ...rest } = t
    return { ...rest, raw_data: tensorRawData(t, readExternal) }
  })
  return model
}

/** Writes onnx/model_quantized.onnx + its `_data` file (every tensor >= 1 KiB) and config.json. */
function writeModelFolder(model: ModelProto, dir: string, sourceDir: string): void {
  mkdirSync(join(dir, 'onnx'), { recursive: true })
  for (const f of ['config.json', 'generation_config.json'])
    if (existsSync(join(sourceDir, f))) copyFileSync(join(sourceDir, f), join(dir, f))
  const dataName = `${ONNX_NAME}_data`
  const fd = openSync(join(dir, 'onnx', dataName), 'w')
  let offset = 0
  const inits = model.graph!.initializer!.map((t) => {
    const bytes = tensorRawData(t)
    if (bytes.byteLength < EXTERNAL_MIN_BYTES) return t
    const pad = (64 - (offset % 64)) % 64 // 64-byte aligned tensors
    if (pad) writeSync(fd, new Uint8Array(pad))
    offset += pad
    writeSync(fd, bytes)
    const copy = { ...t }
    setExternalData(copy, { location: dataName, offset, length: bytes.byteLength })
    offset += bytes.byteLength
    return copy
  })
  closeSync(fd)
  const graph = { ...model.graph!, initializer: inits }
  writeFileSync(join(dir, 'onnx', ONNX_NAME), encodeModel({ ...model, graph }))
}

/** Builds (or reuses) every variant's folder; returns variant → folder. */
function ensureVariants(
  preset: string,
  sourceDir: string,
  variants: string[],
  log: (line: string) => void,
): Map<string, string> {
  const stamp = JSON.stringify({ stamp: sourceStamp(sourceDir), version: BUILDER_VERSION })
  const dirs = new Map<string, string>()
  let source: ModelProto | undefined
  for (const v of variants) {
    const dir = join(FORMATS_DIR, `${preset}-${v}`)
    dirs.set(v, dir)
    const marker = join(dir, '.formats-source.json')
    if (existsSync(marker) && readFileSync(marker, 'utf8') === `${stamp}\n`) continue
    const started = performance.now()
    source ??= readSourceModel(sourceDir)
    const tmp = `${dir}.partial`
    rmSync(tmp, { recursive: true, force: true })
    writeModelFolder(VARIANTS[v].build(source), tmp, sourceDir)
    writeFileSync(join(tmp, '.formats-source.json'), `${stamp}\n`)
    rmSync(dir, { recursive: true, force: true })
    renameSync(tmp, dir)
    log(`built ${dir} in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  }
  return dirs
}

// ---------------------------------------------------------------- measurement

export interface VariantResult {
  variant: string
  note: string
  loadMs: number[]
  prefill16Ms: number[]
  decodeTokS: number[]
  /** decodeTokS ÷ the baseline's of the same round. */
  ratio: number[]
  decodedTokens?: number
  /** Last-position logits after the prompt vs the baseline's (first round). */
  maxAbsDiff?: number
  /** maxAbsDiff ÷ max |baseline logit|. */
  relDiff?: number
  /** Greedy ids equal to the baseline's, of those decoded (first round). */
  sameIds?: string
  weightFileBytes: number
  error?: string
}

/** A fixed 16-token prompt (random weights: any ids do). */
function promptIds(vocab: number): number[] {
  return Array.from({ length: 16 }, (_, i) => (1000 + i * 7919) % vocab)
}

async function measure(
  dirs: Map<string, string>,
  rounds: number,
  tokens: number,
  log: (line: string) => void,
): Promise<VariantResult[]> {
  const variants = [...dirs.keys()]
  const anyDir = dirs.get(variants[0])!
  const shape = await loopShape(anyDir)
  const vocab = JSON.parse(readFileSync(join(anyDir, 'config.json'), 'utf8')).vocab_size
  const prompt = promptIds(vocab)
  const results = new Map<string, VariantResult>(
    variants.map((v) => {
      const onnx = onnxFileIn(dirs.get(v)!)
      return [
        v,
        {
          variant: v,
          note: VARIANTS[v].note,
          loadMs: [],
          prefill16Ms: [],
          decodeTokS: [],
          ratio: [],
          weightFileBytes: statSync(`${onnx}_data`).size + statSync(onnx).size,
        },
      ]
    }),
  )
  // Untimed: the first session compiles ORT's wasm and V8 tiers its hot functions up.
  log('warm-up: baseline session, 16 tokens (not recorded)…')
  const warm = await createWebSession(anyDir)
  await greedyDecode(new GreedyLoop(warm.ort, warm.session, shape), prompt, 16)
  await warm.session.release()
  let refLogits: Float32Array | undefined
  let refIds: number[] | undefined
  const decodeTokens = new Map<string, number>()
  for (let r = 0; r < rounds; r++) {
    let baseRate = NaN
    for (const v of variants) {
      const res = results.get(v)!
      if (res.error) continue
      log(`round ${r + 1}/${rounds}: ${v}: loading…`)
      let release = async () => {}
      try {
        const t0 = performance.now()
        const { ort, session } = await createWebSession(dirs.get(v)!)
        release = () => session.release()
        res.loadMs.push(performance.now() - t0)
        const loop = new GreedyLoop(ort, session, shape)
        const s0 = performance.now()
        const first = await loop.step(loop.empty(), prompt)
        res.prefill16Ms.push(performance.now() - s0)
        if (r === 0) {
          const logits = Float32Array.from(first.logits.data as Float32Array)
          if (!refLogits) refLogits = logits
          else {
            let diff = 0
            let scale = 0
            for (let i = 0; i < logits.length; i++) {
              diff = Math.max(diff, Math.abs(logits[i] - refLogits[i]))
              scale = Math.max(scale, Math.abs(refLogits[i]))
            }
            res.maxAbsDiff = diff
            res.relDiff = diff / scale
          }
        }
        const warm = await greedyDecode(loop, prompt, 4)
        let n = decodeTokens.get(v)
        if (n === undefined) {
          const warmRate = decodeRate(warm.times)
          n = Math.max(4, Math.min(tokens, Math.floor(warmRate * DECODE_BUDGET_S)))
          decodeTokens.set(v, n)
          res.decodedTokens = n
        }
        log(`round ${r + 1}/${rounds}: ${v}: decode ${n} tokens…`)
        const trace = await greedyDecode(loop, prompt, n + 1)
        const rate = decodeRate(trace.times)
        res.decodeTokS.push(rate)
        if (v === variants[0]) baseRate = rate
        res.ratio.push(rate / baseRate)
        if (r === 0) {
          refIds ??= trace.ids
          const same = trace.ids.filter((id, i) => id === refIds![i]).length
          res.sameIds = `${same}/${trace.ids.length}`
        }
        log(
          `round ${r + 1}/${rounds}: ${v}: load ${res.loadMs.at(-1)!.toFixed(0)} ms, ` +
            `${rate.toFixed(2)} tok/s (${(rate / baseRate).toFixed(3)}x), ` +
            `wasm memory ${(wasmMemoryBytes() / 2 ** 20).toFixed(0)} MiB`,
        )
      } catch (err) {
        res.error = String((err as Error).message ?? err)
          .split('\n')[0]
          .slice(0, 300)
        log(`${v}: failed: ${res.error}`)
      } finally {
        await release()
      }
    }
  }
  return [...results.values()]
}

/**
 * Finer interleaving for a noisy machine: every variant's session stays loaded and the variants
 * take turns one decode step at a time (the order rotating each step), so a burst of load from
 * other jobs hits them alike. Decode rate = 1000 / median step ms; ratios per round.
 */
async function measureSteps(
  dirs: Map<string, string>,
  rounds: number,
  tokens: number,
  log: (line: string) => void,
): Promise<VariantResult[]> {
  const variants = [...dirs.keys()]
  const anyDir = dirs.get(variants[0])!
  const shape = await loopShape(anyDir)
  const vocab = JSON.parse(readFileSync(join(anyDir, 'config.json'), 'utf8')).vocab_size
  const prompt = promptIds(vocab)
  const runs: { v: string; loop: GreedyLoop; res: VariantResult; steps: number[][] }[] = []
  for (const v of variants) {
    const onnx = onnxFileIn(dirs.get(v)!)
    const res: VariantResult = {
      variant: v,
      note: VARIANTS[v].note,
      loadMs: [],
      prefill16Ms: [],
      decodeTokS: [],
      ratio: [],
      decodedTokens: tokens,
      weightFileBytes: statSync(`${onnx}_data`).size + statSync(onnx).size,
    }
    log(`${v}: loading (stays loaded)…`)
    const t0 = performance.now()
    const { ort, session } = await createWebSession(dirs.get(v)!)
    res.loadMs.push(performance.now() - t0)
    const loop = new GreedyLoop(ort, session, shape)
    await greedyDecode(loop, prompt, 4) // warm-up
    runs.push({ v, loop, res, steps: [] })
    log(`${v}: loaded, wasm memory ${(wasmMemoryBytes() / 2 ** 20).toFixed(0)} MiB`)
  }
  for (let r = 0; r < rounds; r++) {
    log(`round ${r + 1}/${rounds}: ${tokens} steps, variants taking turns…`)
    const states = []
    for (const run of runs) {
      const s0 = performance.now()
      const first = await run.loop.step(run.loop.empty(), prompt)
      run.res.prefill16Ms.push(performance.now() - s0)
      states.push(first)
      run.steps.push([])
    }
    for (let t = 0; t < tokens; t++)
      for (let j = 0; j < runs.length; j++) {
        const i = (j + t) % runs.length
        const s = performance.now()
        states[i] = await runs[i].loop.step(states[i].state, [states[i].next[0]])
        runs[i].steps[r].push(performance.now() - s)
      }
    const base = 1000 / median(runs[0].steps[r])
    for (const run of runs) {
      const rate = 1000 / median(run.steps[r])
      run.res.decodeTokS.push(rate)
      run.res.ratio.push(rate / base)
    }
    log(runs.map((run) => `${run.v} ${run.res.decodeTokS[r].toFixed(2)}`).join(', '))
  }
  for (const run of runs) await run.loop.session.release()
  return runs.map((run) => run.res)
}

function formatTable(results: VariantResult[]): string {
  const lines = [
    '| variant | weights on disk | max abs logit diff (rel.) | same greedy ids | load ms | ' +
      'prefill 16 ms | decode tok/s (rounds) | ratio vs baseline, per round (median) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const r of results) {
    if (r.error && !r.decodeTokS.length) {
      lines.push(`| ${r.variant} | | fails: ${r.error} | | | | | |`)
      continue
    }
    const diff =
      r.maxAbsDiff === undefined
        ? r === results[0] && r.sameIds
          ? '(reference)'
          : '–'
        : `${r.maxAbsDiff.toExponential(2)} (${r.relDiff!.toExponential(1)})`
    const n = r.decodedTokens === undefined ? '' : ` ×${r.decodedTokens}`
    lines.push(
      `| ${r.variant} | ${(r.weightFileBytes / 2 ** 20).toFixed(1)} MiB | ${diff} | ` +
        `${r.sameIds ?? ''} | ${median(r.loadMs).toFixed(0)} | ${median(r.prefill16Ms).toFixed(0)} | ` +
        `**${round(median(r.decodeTokS))}** (${r.decodeTokS.map((x) => round(x)).join(', ')})${n} | ` +
        `${r.ratio.map((x) => x.toFixed(3)).join(', ')} (**${median(r.ratio).toFixed(3)}x**) |`,
    )
  }
  return lines.join('\n')
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'tiny' },
      rounds: { type: 'string', default: '3' },
      tokens: { type: 'string', default: '32' },
      variants: { type: 'string', default: Object.keys(VARIANTS).join(',') },
      /** reload: each round loads, checks and decodes each variant in turn; steps: see measureSteps. */
      mode: { type: 'string', default: 'reload' },
    },
  })
  const log = (line: string) => console.error(`[formats] ${line}`)
  const preset = values.preset!
  let sourceDir: string
  if (preset === 'qwen2.5-0.5b') sourceDir = ensureBenchModel(log)
  else if (preset === 'tiny') {
    const { ensureModel } = await import('../../test/helpers/models.ts')
    sourceDir = await ensureModel('tiny', 'q8')
  } else throw new Error(`--preset: tiny or qwen2.5-0.5b, not ${preset}`)
  const picked = values.variants!.split(',').filter(Boolean)
  for (const v of picked) if (!VARIANTS[v]) throw new Error(`unknown variant ${v}`)
  // the baseline runs first in every round: the reference for logits and ratios
  const variants = ['u8-dqmm', ...picked.filter((v) => v !== 'u8-dqmm')]
  log(`source ${sourceDir}`)
  const dirs = ensureVariants(preset, sourceDir, variants, log)
  const measureWith = values.mode === 'steps' ? measureSteps : measure
  const results = await measureWith(dirs, Number(values.rounds), Number(values.tokens), log)
  const out = join(FORMATS_DIR, `${preset}-${values.mode}-results.json`)
  writeFileSync(out, JSON.stringify({ preset, sourceDir, at: new Date(), results }, null, 2))
  console.log(`\n${preset} (${sourceDir}), onnxruntime-web wasm, 1 thread; ${out}\n`)
  console.log(formatTable(results))
}

if (isMain(import.meta.url)) runMain(main)
