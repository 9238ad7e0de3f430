/**
 * Model shapes for the synthetic generator: named presets, overrides, and the Hugging Face
 * `config.json` / `generation_config.json` written next to the graph.
 */
import type { GenerationConfig, Qwen2Config } from '../../src/format/index.ts'

/** Everything that decides the graph and the weights' shapes. */
export interface ModelDims {
  vocabSize: number
  hiddenSize: number
  intermediateSize: number
  numLayers: number
  numHeads: number
  /** Fewer than `numHeads` = grouped-query attention; must divide `numHeads`. */
  numKvHeads: number
  headDim: number
  rmsNormEps: number
  ropeTheta: number
  /** Bias on the q/k/v projections (Qwen2 has it; o_proj and the MLP never do). */
  qkvBias: boolean
  /** lm_head shares the embedding matrix. */
  tieWordEmbeddings: boolean
  maxPositionEmbeddings: number
}

export type PresetName =
  | 'tiny'
  | 'tiny-mha'
  | 'tiny-outliers'
  | 'small'
  | 'small-outliers'
  | 'small-spread'
  | 'qwen2.5-0.5b'
  | 'qwen2.5-0.5b-outliers'
  | 'qwen2.5-0.5b-spread'
  | 'qwen1.5-0.5b'
export type WeightFormat = 'fp32' | 'q8' | 'q4'

export const WEIGHT_FORMATS: readonly WeightFormat[] = ['fp32', 'q8', 'q4']

/** The full Qwen vocabulary, so the real tokenizer's ids are all valid. */
export const QWEN_VOCAB_SIZE = 151936

const QWEN25_05B: ModelDims = {
  vocabSize: QWEN_VOCAB_SIZE,
  hiddenSize: 896,
  intermediateSize: 4864,
  numLayers: 24,
  numHeads: 14,
  numKvHeads: 2,
  headDim: 64,
  rmsNormEps: 1e-6,
  ropeTheta: 1_000_000,
  qkvBias: true,
  tieWordEmbeddings: true,
  maxPositionEmbeddings: 32768,
}

// A few MB beyond the embedding; GQA with 2 query heads per kv head.
const TINY: ModelDims = {
  ...QWEN25_05B,
  hiddenSize: 64,
  intermediateSize: 176, // not a multiple of the q4 block size (32): exercises padded blocks
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
}

// Big enough for quantization error to build up over layers, small enough to iterate on: a
// decode step is dominated by the 151936-row head. head_dim 64 as in Qwen2.5-0.5B.
const SMALL: ModelDims = {
  ...QWEN25_05B,
  hiddenSize: 256,
  intermediateSize: 1024,
  numLayers: 4,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 64,
}

export const PRESETS: Record<PresetName, ModelDims> = {
  tiny: TINY,
  // Plain multi-head attention, small head_dim, separate lm_head.
  'tiny-mha': {
    ...QWEN25_05B,
    hiddenSize: 32,
    intermediateSize: 96,
    numLayers: 3,
    numHeads: 4,
    numKvHeads: 4,
    headDim: 8,
    ropeTheta: 10_000,
    rmsNormEps: 1e-5,
    tieWordEmbeddings: false,
  },
  'tiny-outliers': TINY,
  small: SMALL,
  'small-outliers': SMALL,
  'small-spread': SMALL,
  'qwen2.5-0.5b': QWEN25_05B,
  'qwen2.5-0.5b-outliers': QWEN25_05B,
  'qwen2.5-0.5b-spread': QWEN25_05B,
  // Qwen1.5-0.5B(-Chat): no GQA, wider.
  'qwen1.5-0.5b': {
    ...QWEN25_05B,
    hiddenSize: 1024,
    intermediateSize: 2816,
    numHeads: 16,
    numKvHeads: 16,
  },
}

/**
 * How the random weights are drawn, beyond their shapes. The plain presets draw every matrix
 * uniform with std 1/sqrt(fan_in): no activation outliers, light tails, and logits so flat that
 * the next token is nearly uniform over the vocabulary, which flatters every quantized format's
 * error. The `-outliers` presets draw what trained checkpoints show instead.
 */
export interface WeightDistribution {
  /**
   * Student-t degrees of freedom of the linear and embedding weights, at the uniform draw's
   * std; undefined: uniform. Trained weights are heavy-tailed, and the few values far out set
   * the scale of their row (q8) or block (q4).
   */
  tailDof?: number
  /**
   * `count` hidden channels, the same in every layer, whose input_layernorm and
   * post_attention_layernorm weights are `gain` times larger, so the normalised activations
   * entering q/k/v and gate/up carry a few channels tens of times above the rest (LLM.int8()
   * found such fixed outlier dimensions in every large model). The matrix columns reading them
   * are divided by sqrt(gain): those channels then carry a large but not dominant share of each
   * projection's input, so quantizing them badly costs accuracy, as it does in real models.
   */
  outliers?: { count: number; gain: number }
  /**
   * The final norm's weights times this: logits spread like a trained model's (next-token
   * entropy of a few nats) instead of a random model's near-uniform ~ln(vocab).
   */
  logitScale?: number
}

/**
 * What the `-outliers` presets draw: Student-t(5) matrices (kurtosis 9), three outlier channels
 * at 40x (the measurement), and a logit scale per preset measured with the TS reference
 * to give a next-token entropy of a few nats: heavy-tailed head rows spread the logits more the
 * narrower the hidden size, so the smaller presets need less.
 */
const trainedLike = (logitScale: number): WeightDistribution => ({
  tailDof: 5,
  outliers: { count: 3, gain: 40 },
  logitScale,
})

/**
 * The `-spread` presets: the `-outliers` ones without their outlier channels (heavy tails and a
 * trained model's logit spread), the control that isolates what the outlier channels cost.
 */
const spreadLike = (logitScale: number): WeightDistribution => ({ tailDof: 5, logitScale })

export const PRESET_DISTRIBUTIONS: Record<PresetName, WeightDistribution> = {
  tiny: {},
  'tiny-mha': {},
  'tiny-outliers': trainedLike(2.25),
  small: {},
  'small-outliers': trainedLike(2.25),
  'small-spread': spreadLike(2.25),
  'qwen2.5-0.5b': {},
  'qwen2.5-0.5b-outliers': trainedLike(4),
  'qwen2.5-0.5b-spread': spreadLike(4),
  'qwen1.5-0.5b': {},
}

/** The preset's distribution with overrides applied, checked. */
export function resolveDistribution(
  preset: PresetName,
  overrides: WeightDistribution = {},
): WeightDistribution {
  const d = { ...PRESET_DISTRIBUTIONS[preset], ...overrides }
  if (d.tailDof !== undefined && !(d.tailDof > 2))
    throw new Error(`tailDof must be above 2 (finite variance), got ${d.tailDof}`)
  if (d.outliers) {
    const { count, gain } = d.outliers
    if (!Number.isInteger(count) || count < 0) throw new Error(`outlier count: ${count}`)
    if (!(gain > 0)) throw new Error(`outlier gain must be positive, got ${gain}`)
  }
  if (d.logitScale !== undefined && !(d.logitScale > 0))
    throw new Error(`logitScale must be positive, got ${d.logitScale}`)
  return d
}

export function isPresetName(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name)
}

/** A preset with overrides applied, checked for consistency. */
export function resolveDims(preset: PresetName, overrides: Partial<ModelDims> = {}): ModelDims {
  const base = PRESETS[preset]
  if (!base) throw new Error(`unknown preset ${preset}; one of ${Object.keys(PRESETS).join(', ')}`)
  const dims = { ...base, ...overrides }
  // A head count change without an explicit head_dim keeps hidden = heads * head_dim.
  if (overrides.headDim === undefined && (overrides.hiddenSize || overrides.numHeads))
    dims.headDim = dims.hiddenSize / dims.numHeads
  checkDims(dims)
  return dims
}

export function checkDims(d: ModelDims): void {
  const ints: (keyof ModelDims)[] = [
    'vocabSize',
    'hiddenSize',
    'intermediateSize',
    'numLayers',
    'numHeads',
    'numKvHeads',
    'headDim',
  ]
  for (const k of ints)
    if (!Number.isInteger(d[k]) || (d[k] as number) < 1)
      throw new Error(`${k} must be a positive integer, got ${d[k]}`)
  if (d.numHeads % d.numKvHeads !== 0)
    throw new Error(`numHeads (${d.numHeads}) must be a multiple of numKvHeads (${d.numKvHeads})`)
  if (d.headDim % 2 !== 0) throw new Error(`headDim must be even for RoPE, got ${d.headDim}`)
  if (!(d.rmsNormEps > 0) || !(d.ropeTheta > 0)) throw new Error('rmsNormEps and ropeTheta > 0')
}

// ---------------------------------------------------------------- Hugging Face files

/** Special token ids of the Qwen tokenizer. */
export const TOKENS = { endoftext: 151643, imStart: 151644, imEnd: 151645 } as const

/** `config.json` as transformers writes it for Qwen2ForCausalLM. */
export function hfConfig(
  preset: PresetName,
  dims: ModelDims,
  synthetic: { seed: number; format: WeightFormat; distribution?: WeightDistribution },
): Qwen2Config & Record<string, unknown> {
  const config: Qwen2Config & Record<string, unknown> = {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: TOKENS.endoftext,
    // Qwen1.5-Chat's config names <|endoftext|>, although chat turns end with <|im_end|>.
    eos_token_id: preset === 'qwen1.5-0.5b' ? TOKENS.endoftext : TOKENS.imEnd,
    hidden_act: 'silu',
    hidden_size: dims.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: dims.intermediateSize,
    max_position_embeddings: dims.maxPositionEmbeddings,
    max_window_layers: dims.numLayers,
    model_type: 'qwen2',
    num_attention_heads: dims.numHeads,
    num_hidden_layers: dims.numLayers,
    num_key_value_heads: dims.numKvHeads,
    rms_norm_eps: dims.rmsNormEps,
    rope_theta: dims.ropeTheta,
    sliding_window: dims.maxPositionEmbeddings,
    tie_word_embeddings: dims.tieWordEmbeddings,
    torch_dtype: 'float32',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: dims.vocabSize,
  }
  // transformers reads head_dim when present; Qwen configs omit it when it is hidden / heads.
  if (dims.headDim * dims.numHeads !== dims.hiddenSize) config.head_dim = dims.headDim
  // Not a transformers field: lets readers know q/k/v carry a bias (always true in Qwen2).
  if (!dims.qkvBias) config.qwen_edge_qkv_bias = false
  const { distribution } = synthetic
  config.qwen_edge_synthetic = {
    seed: synthetic.seed,
    format: synthetic.format,
    preset,
    ...(distribution && Object.keys(distribution).length ? { distribution } : {}),
    note: 'random weights: output is noise, not model quality',
  }
  return config
}

/** `generation_config.json`: Qwen2.5-Instruct's, or Qwen1.5-Chat's for that preset. */
export function hfGenerationConfig(preset: PresetName): GenerationConfig & Record<string, unknown> {
  if (preset === 'qwen1.5-0.5b')
    return {
      bos_token_id: TOKENS.endoftext,
      pad_token_id: TOKENS.endoftext,
      do_sample: true,
      eos_token_id: [TOKENS.imEnd, TOKENS.endoftext],
      repetition_penalty: 1.1,
      top_p: 0.8,
      top_k: 20,
    }
  return {
    bos_token_id: TOKENS.endoftext,
    pad_token_id: TOKENS.endoftext,
    do_sample: true,
    eos_token_id: [TOKENS.imEnd, TOKENS.endoftext],
    repetition_penalty: 1.05,
    temperature: 0.7,
    top_p: 0.8,
    top_k: 20,
  }
}

/**
 * ChatML as Qwen2 / Qwen1.5 ship it: a default system turn when the first message is not one,
 * `<|im_start|>role\ncontent<|im_end|>\n` per message, `<|im_start|>assistant\n` to prompt.
 */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

/** `tokenizer_config.json` derived from the tokenizer package's one. */
export function hfTokenizerConfig(base: Record<string, unknown>, dims: ModelDims) {
  return {
    ...base,
    bos_token: null,
    chat_template: CHATML_TEMPLATE,
    eos_token: '<|im_end|>',
    pad_token: '<|endoftext|>',
    model_max_length: dims.maxPositionEmbeddings,
  }
}
