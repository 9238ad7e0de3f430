/**
 * Bare onnxruntime-web sessions over generated model folders, and one forward step with the
 * Optimum signature. For the parity tests; the engine has its own loader.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import * as ort from 'onnxruntime-web'
import type { Qwen2Config } from '../../src/format/index.ts'

ort.env.wasm.numThreads = 1

export interface LoadedModel {
  session: ort.InferenceSession
  config: Qwen2Config
  kvHeads: number
  headDim: number
  /** True when the weights came through the `externalData` session option. */
  external: boolean
}

/** Open the folder's single `onnx/*.onnx`, handing its `.onnx_data` (if any) as externalData. */
export async function loadModel(dir: string): Promise<LoadedModel> {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Qwen2Config
  const [file] = readdirSync(join(dir, 'onnx')).filter((f) => f.endsWith('.onnx'))
  const dataPath = join(dir, 'onnx', `${file}_data`)
  const external = existsSync(dataPath)
  const session = await ort.InferenceSession.create(readFileSync(join(dir, 'onnx', file)), {
    externalData: external ? [{ path: `${file}_data`, data: readFileSync(dataPath) }] : undefined,
  })
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads
  return { session, config, kvHeads: config.num_key_value_heads, headDim, external }
}

export type Past = Record<string, ort.Tensor>

/** An empty cache: every `past_key_values.{i}.key|value` is [batch, kv, 0, head_dim]. */
export function emptyPast(m: LoadedModel, batch = 1): Past {
  const past: Past = {}
  for (let i = 0; i < m.config.num_hidden_layers; i++)
    for (const kind of ['key', 'value'])
      past[`past_key_values.${i}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
        batch,
        m.kvHeads,
        0,
        m.headDim,
      ])
  return past
}

const i64 = (rows: number[][]) =>
  new ort.Tensor('int64', BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0].length])

export interface StepInput {
  /** [batch][s] new token ids. */
  ids: number[][]
  /** [batch][past + s]; default all ones. */
  attentionMask?: number[][]
  /** [batch][s]; default past .. past + s - 1. */
  positionIds?: number[][]
  past: Past
  /** `num_logits_to_keep` (only fed when the graph has the input); default 0 = all. */
  keep?: number
}

export interface StepOutput {
  /** [batch, n, vocab] flattened. */
  logits: Float32Array
  logitsDims: readonly number[]
  /** `present.*` renamed to the next step's `past_key_values.*`. */
  past: Past
}

/** One `session.run` with the Optimum / onnx-community inputs, built from `inputNames`. */
export async function runStep(m: LoadedModel, input: StepInput): Promise<StepOutput> {
  const batch = input.ids.length
  const s = input.ids[0].length
  const pastLength = input.past['past_key_values.0.key'].dims[2]
  const mask = input.attentionMask ?? input.ids.map(() => Array(pastLength + s).fill(1))
  const positions =
    input.positionIds ?? input.ids.map(() => Array.from({ length: s }, (_, i) => pastLength + i))
  const feeds: Record<string, ort.Tensor> = {
    ...input.past,
    input_ids: i64(input.ids),
    attention_mask: i64(mask),
    position_ids: i64(positions),
  }
  if (m.session.inputNames.includes('num_logits_to_keep'))
    feeds.num_logits_to_keep = new ort.Tensor(
      'int64',
      BigInt64Array.of(BigInt(input.keep ?? 0)),
      [],
    )
  if (mask.length !== batch) throw new Error('attention mask batch mismatch')
  const out = await m.session.run(feeds)
  const past: Past = {}
  for (const name of m.session.outputNames)
    if (name.startsWith('present.')) past[name.replace('present.', 'past_key_values.')] = out[name]
  return { logits: out.logits.data as Float32Array, logitsDims: out.logits.dims, past }
}

/** Row `row` of a flattened [rows, vocab] logits block. */
export function logitsRow(logits: Float32Array, vocab: number, row: number): Float32Array {
  return logits.subarray(row * vocab, (row + 1) * vocab)
}
