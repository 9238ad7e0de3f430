/**
 * What the engine needs to build a model, whatever it was loaded from (a Hugging Face layout
 * folder in tests and scripts, a model package from a folder, HTTP or R2 in the servers).
 */
import type { DecoderWeights } from '../wasm/decoder-weights.ts'
import type { HeadWeights } from '../wasm/head.ts'

/** The fields of a Hugging Face Qwen2 `config.json` the engine reads. */
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

export interface ExternalDataFile {
  /** The location string the graph's initializers name (relative to the .onnx file). */
  path: string
  data: Uint8Array
}

export interface LoadedPackage {
  id: string
  config: Qwen2Config
  generationConfig: GenerationConfig
  /** Parsed tokenizer.json. */
  tokenizerJson: Record<string, unknown>
  /** Parsed tokenizer_config.json (holds `chat_template`). */
  tokenizerConfig: Record<string, unknown>
  /** The ONNX graph bytes (weights embedded or external). */
  graph: Uint8Array
  externalData: ExternalDataFile[]
  /** The lm_head split off the graph (manifest `head`), run by head.ts. */
  head?: HeadWeights
  /**
   * The decoder layers' weights (manifest `decoder`), for the engine's own decode steps: views
   * into `externalData` (and the decoder file), so they keep those buffers alive.
   */
  decoder?: DecoderWeights
}
