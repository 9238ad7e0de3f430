/**
 * What the engine needs to build a model, whatever it was loaded from (a Hugging Face layout
 * folder in tests and scripts, a model package from a folder, HTTP or R2 in the servers).
 */
import type { DecoderWeights, GenerationConfig, Qwen2Config } from '../../format/index.ts'
import type { TokenizerJson } from '../text/tokenizer-json.ts'
import type { HeadWeights } from '../wasm/head.ts'

export interface ExternalDataFile {
  /** The location string the graph's initializers name (relative to the .onnx file). */
  path: string
  data: Uint8Array
}

export interface LoadedPackage {
  id: string
  config: Qwen2Config
  generationConfig: GenerationConfig
  /**
   * tokenizer.json, parsed or as its bytes (a model package: the tokenizer reads them without
   * parsing the vocabulary into JS objects, text/tokenizer-json.ts).
   */
  tokenizerJson: TokenizerJson
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
