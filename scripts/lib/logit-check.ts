/**
 * What a prepare-time transform did to the model's output: run the reference graph and the
 * transformed one with onnxruntime-node (one thread, so the numbers are reproducible) on the
 * same short prompt, and compare the logits of the last position.
 *
 * Graphs are handed over as a file path, or as a model (inline data) that is written to a
 * temporary folder with its weights in one external data file, so graphs over protobuf's 2 GB
 * limit work too.
 */
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { InferenceSession, Tensor } from 'onnxruntime-node'
import type { Qwen2Config } from '../../src/format/index.ts'
import { halfToFloat } from './graph-rewrite.ts'
import {
  DataType,
  encodeModel,
  setExternalData,
  tensorRawData,
  type ModelProto,
  type TensorProto,
} from './onnx/index.ts'

/**
 * "The capital of France is Paris. 今天天气很好，我们去公园散步" in the Qwen tokenizer: 16 ids
 * (every Qwen2 vocabulary holds them; smaller vocabularies take them modulo their size).
 */
export const CHECK_TOKENS = [
  785, 6722, 315, 9625, 374, 12095, 13, 220, 100644, 104307, 101243, 3837, 97639, 85336, 102077,
  111261,
]

export interface LogitCheck {
  runtime: string
  tokens: number[]
  /** Over the last position's logits: max and mean |converted - reference|. */
  maxAbsError: number
  meanAbsError: number
  /** Same most likely next token. */
  top1Agrees: boolean
  referenceTop1: number
  convertedTop1: number
  /** max |reference logit|, the scale the errors compare with. */
  referenceMaxAbs: number
}

export type GraphRef = { path: string } | { model: ModelProto }

export async function checkLogits(
  reference: GraphRef,
  converted: GraphRef,
  config: Qwen2Config,
): Promise<LogitCheck> {
  const tokens = CHECK_TOKENS.map((t) => t % config.vocab_size)
  const dir = await mkdtemp(join(tmpdir(), 'qwen-edge-logit-check-'))
  try {
    const a = await lastLogits(reference, config, tokens, dir, 'reference.onnx')
    const b = await lastLogits(converted, config, tokens, dir, 'converted.onnx')
    if (a.length !== b.length) throw new Error(`logits of ${a.length} vs ${b.length} values`)
    let max = 0
    let sum = 0
    let scale = 0
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i] - b[i])
      if (!(d <= max)) max = d // NaN sticks
      sum += d
      scale = Math.max(scale, Math.abs(a[i]))
    }
    const referenceTop1 = argmax(a)
    const convertedTop1 = argmax(b)
    const { env } = await import('onnxruntime-node')
    return {
      runtime: `onnxruntime-node ${env.versions.node ?? env.versions.common}, 1 thread`,
      tokens,
      maxAbsError: max,
      meanAbsError: sum / a.length,
      top1Agrees: referenceTop1 === convertedTop1,
      referenceTop1,
      convertedTop1,
      referenceMaxAbs: scale,
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/** One prefill of `tokens` with an empty cache; the logits of the last position. */
async function lastLogits(
  graph: GraphRef,
  config: Qwen2Config,
  tokens: number[],
  dir: string,
  file: string,
): Promise<Float32Array> {
  const path = 'path' in graph ? graph.path : writeModelWithExternalData(graph.model, dir, file)
  const [logits] = await runPrefill(path, config, [tokens], ['logits'])
  const data = logits[0].data as Float32Array | Uint16Array
  const vocab = logits[0].dims[logits[0].dims.length - 1]
  const last = data.subarray(data.length - vocab)
  return logits[0].type === 'float16'
    ? Float32Array.from(last, halfToFloat)
    : Float32Array.from(last)
}

/**
 * Prefills of each of `prompts` (an empty cache each) through the graph at `path`
 * (onnxruntime-node, 1 thread): for every name of `outputs`, its tensor per prompt.
 */
export async function runPrefill(
  path: string,
  config: Qwen2Config,
  prompts: readonly (readonly number[])[],
  outputs: readonly string[],
): Promise<Tensor[][]> {
  const ort = await import('onnxruntime-node')
  const session = await ort.InferenceSession.create(path, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    logSeverityLevel: 3,
  })
  try {
    const got: Tensor[][] = outputs.map(() => [])
    for (const tokens of prompts) {
      const results = await session.run(prefillFeeds(ort.Tensor, session, config, tokens), [
        ...outputs,
      ])
      outputs.forEach((name, i) => got[i].push(results[name]))
    }
    return got
  } finally {
    await session.release()
  }
}

/** The feeds of one prefill of `tokens` with an empty cache, for `session`'s inputs. */
function prefillFeeds(
  T: typeof Tensor,
  session: InferenceSession,
  config: Qwen2Config,
  tokens: readonly number[],
): Record<string, Tensor> {
  const n = tokens.length
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads
  const feeds: Record<string, Tensor> = {}
  for (const name of session.inputNames) {
    const meta = session.inputMetadata.find((m) => m.name === name)
    const type = meta?.isTensor ? meta.type : 'float32'
    if (name === 'input_ids')
      feeds[name] = new T('int64', BigInt64Array.from(tokens, BigInt), [1, n])
    else if (name === 'attention_mask')
      feeds[name] = new T('int64', new BigInt64Array(n).fill(1n), [1, n])
    else if (name === 'position_ids')
      feeds[name] = new T(
        'int64',
        BigInt64Array.from(tokens, (_, i) => BigInt(i)),
        [1, n],
      )
    else if (name === 'num_logits_to_keep') feeds[name] = new T('int64', BigInt64Array.of(1n), [])
    else if (name.startsWith('past_key_values.')) {
      const dims = [1, config.num_key_value_heads, 0, headDim]
      feeds[name] =
        type === 'float16'
          ? new T('float16', new Uint16Array(0), dims)
          : new T('float32', new Float32Array(0), dims)
    } else throw new Error(`the graph has an unexpected input ${name}`)
  }
  return feeds
}

/**
 * Write `model` (data inline) as `dir/file` plus `dir/file_data`, every initializer of 1 KiB or
 * more in the data file. The model is not modified. Returns the graph's path.
 */
export function writeModelWithExternalData(model: ModelProto, dir: string, file: string): string {
  const location = `${file}_data`
  const fd = openSync(join(dir, location), 'w')
  let offset = 0
  try {
    const moved = (model.graph?.initializer ?? []).map((t): TensorProto => {
      if (t.data_type === DataType.STRING) return t
      const bytes = tensorRawData(t)
      if (bytes.byteLength < 1024) return t
      const pad = (64 - (offset % 64)) % 64
      if (pad) writeAll(fd, new Uint8Array(pad))
      offset += pad
      writeAll(fd, bytes)
      const copy: TensorProto = { ...t }
      setExternalData(copy, { location, offset, length: bytes.byteLength })
      offset += bytes.byteLength
      return copy
    })
    const graph = model.graph && { ...model.graph, initializer: moved }
    writeFileSync(join(dir, file), encodeModel({ ...model, graph }))
  } finally {
    closeSync(fd)
  }
  return join(dir, file)
}

function writeAll(fd: number, data: Uint8Array) {
  for (let at = 0; at < data.byteLength;) at += writeSync(fd, data, at, data.byteLength - at)
}

function argmax(x: Float32Array): number {
  let best = 0
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i
  return best
}

/**
 * input_ids, attention_mask and position_ids for `ids` after `p` cached positions (batch 1), the
 * decoder-with-past signature's token feeds. `tensor` is onnxruntime-node's Tensor class (the
 * module is imported lazily by the callers).
 */
export function tokenFeeds(
  tensor: typeof Tensor,
  ids: readonly number[],
  p: number,
): Record<string, Tensor> {
  const n = ids.length
  return {
    input_ids: new tensor('int64', BigInt64Array.from(ids, BigInt), [1, n]),
    attention_mask: new tensor('int64', new BigInt64Array(p + n).fill(1n), [1, p + n]),
    position_ids: new tensor(
      'int64',
      BigInt64Array.from(ids, (_, i) => BigInt(p + i)),
      [1, n],
    ),
  }
}
