/**
 * The Hugging Face `config.json` and `generation_config.json` of a Qwen2 model: the fields the
 * engine and the toolchain read. The manifest keeps the whole config (every other key too);
 * `parseQwen2Config` validates the ones relied on.
 */
import { AppError } from '../core/errors.ts'
import { Invalid, object, positiveInt } from './json.ts'

export interface Qwen2Config {
  model_type?: string
  vocab_size: number
  hidden_size: number
  intermediate_size: number
  num_hidden_layers: number
  num_attention_heads: number
  num_key_value_heads: number
  /** Absent in most Qwen configs: hidden_size / num_attention_heads. */
  head_dim?: number
  max_position_embeddings: number
  rms_norm_eps: number
  rope_theta: number
  tie_word_embeddings?: boolean
  bos_token_id?: number | null
  eos_token_id?: number | number[] | null
  /** Set by this project's generator: the weights are random. */
  qwen_edge_synthetic?: { seed: number; format: string; preset: string; note: string }
  [key: string]: unknown
}

export interface GenerationConfig {
  eos_token_id?: number | number[]
  pad_token_id?: number
  bos_token_id?: number
  do_sample?: boolean
  temperature?: number
  top_p?: number
  top_k?: number
  repetition_penalty?: number
  max_new_tokens?: number
}

/** The numbers of a Qwen2 model's shape, as the kernels, the decoder and the stage plan use them. */
export interface Qwen2Shape {
  hidden: number
  intermediate: number
  layers: number
  heads: number
  kvHeads: number
  headDim: number
  vocab: number
  eps: number
  ropeTheta: number
}

/** config.json's shape (head_dim, absent in most Qwen configs, is hidden_size / heads). */
export function qwen2Shape(c: Qwen2Config): Qwen2Shape {
  return {
    hidden: c.hidden_size,
    intermediate: c.intermediate_size,
    layers: c.num_hidden_layers,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads,
    headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
    vocab: c.vocab_size,
    eps: c.rms_norm_eps,
    ropeTheta: c.rope_theta,
  }
}

const REQUIRED_INTS = [
  'vocab_size',
  'hidden_size',
  'intermediate_size',
  'num_hidden_layers',
  'num_attention_heads',
  'num_key_value_heads',
  'max_position_embeddings',
] as const

/**
 * Checks the fields of a Hugging Face `config.json` the engine relies on and returns the object
 * unchanged (every other key kept). Used by the manifest parser and the prepare script.
 */
export function parseQwen2Config(json: unknown, at = 'config'): Qwen2Config {
  try {
    return readQwen2Config(json, at)
  } catch (err) {
    if (err instanceof Invalid)
      throw new AppError('model_invalid', `Invalid model config: ${err.message}`)
    throw err
  }
}

export function readQwen2Config(json: unknown, at: string): Qwen2Config {
  const c = object(json, at)
  for (const k of REQUIRED_INTS) positiveInt(c[k], `${at}.${k}`)
  for (const k of ['rms_norm_eps', 'rope_theta'] as const) {
    if (typeof c[k] !== 'number' || !(c[k] > 0))
      throw new Invalid(`${at}.${k} must be a positive number`)
  }
  if (c.head_dim !== undefined && c.head_dim !== null) positiveInt(c.head_dim, `${at}.head_dim`)
  if ((c.num_attention_heads as number) % (c.num_key_value_heads as number) !== 0) {
    throw new Invalid(`${at}.num_attention_heads is not a multiple of num_key_value_heads`)
  }
  if (c.qwen_edge_synthetic !== undefined)
    object(c.qwen_edge_synthetic, `${at}.qwen_edge_synthetic`)
  return c as Qwen2Config
}
