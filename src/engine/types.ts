/**
 * The contract between the HTTP layer and the engine. The HTTP layer depends only on these
 * types, so tests can hand it a fake engine and each runtime can build the real one its own way.
 */

export type Role = 'system' | 'user' | 'assistant'
export interface ChatMessage {
  role: Role
  content: string
}

/** Sampling and stopping. Unset fields fall back to the model's generation_config. */
export interface GenerationOptions {
  maxNewTokens?: number
  /** 0 means greedy (argmax). */
  temperature?: number
  topP?: number
  /** 0 means no top-k cut. */
  topK?: number
  repetitionPenalty?: number
  /** Same seed + same prompt + same options = same text. */
  seed?: number
  /** Generation ends before any of these strings; they are not emitted. */
  stop?: string[]
  /** Aborting stops generation within one decode step. */
  signal?: AbortSignal
  /**
   * Report each generated token's log-probability and this many most likely alternatives
   * (0-20); undefined: none.
   */
  logprobs?: number
}

/** A token as logprobs show it: its text (U+FFFD where it ends inside a character) and bytes. */
export interface TokenText {
  token: string
  bytes: number[]
  /** log p of the token under the distribution the sampler saw, before temperature. */
  logprob: number
}

export interface TokenLogprob extends TokenText {
  /** The most likely tokens at that position, most likely first. */
  top: TokenText[]
}

export type FinishReason = 'stop' | 'length' | 'cancelled'

export interface Usage {
  promptTokens: number
  completionTokens: number
  /** Prompt tokens whose KV came from an earlier turn (not computed again). */
  cachedTokens?: number
}

/**
 * With `logprobs`, each generated token's entry rides on the first delta that carries its text
 * (held-back text waits), and entries of tokens whose text never came out (an unfinished
 * character at the end) on the end event. Tokens cut by a stop string have none, as their text.
 */
export type ChatEvent =
  | { type: 'text'; text: string; logprobs?: TokenLogprob[] } // never ends inside a character
  | { type: 'end'; finishReason: FinishReason; usage: Usage; logprobs?: TokenLogprob[] }

/**
 * A generation that passed validation and admission. Nothing runs until `events` is iterated;
 * breaking out of the loop (or aborting the signal) frees its place in the scheduler.
 */
export interface ChatRun {
  promptTokens: number
  maxNewTokens: number
  events: AsyncIterable<ChatEvent>
}

export interface ClassifyOptions {
  /** Candidate labels; default 正面/负面 for Chinese text, positive/negative otherwise. */
  labels?: string[]
  /**
   * Worked examples shown before the text (few-shot), each label one of `labels`. Absent: the
   * default labels get built-in examples, custom labels none. `[]`: none.
   */
  examples?: { text: string; label: string }[]
  signal?: AbortSignal
}

export interface ClassifyResult {
  label: string
  /** Probability of `label` renormalised over the label set. */
  score: number
  /** Every label's probability; they sum to 1. */
  scores: Record<string, number>
}

export interface ModelInfo {
  id: string
  /** True for the bundled random-weight model: its text is noise, not model quality. */
  synthetic: boolean
  contextLength: number
  vocabSize: number
  loadMs: number
  defaults: Required<Pick<GenerationOptions, 'temperature' | 'topP' | 'topK' | 'repetitionPenalty'>>
}

export interface EngineStats {
  /** Generations holding a place in the scheduler and classification texts computing. */
  active: number
  /** Generations waiting for a place and admitted classification texts not yet started. */
  queued: number
  /** Prompt tokens of admitted classifications not yet computed (bounded; see MAX_QUEUED_TOKENS). */
  queuedTokens?: number
  /** KV positions the running generations reserved (prompt + max_tokens each; see MAX_KV_TOKENS). */
  kvReservedTokens?: number
  /** What this isolate holds; the runtime adds its own process or heap numbers. */
  memory?: {
    /** Every WASM memory: onnxruntime-web's heap and the engine's kernels (never shrinks). */
    wasmBytes: number
    /** Streams' sequences holding KV cache memory in the engine's decoder. */
    kvSequences?: number
    /** Bytes of KV cache the decoder's sequences hold (streams' and kept turns'), in WASM memory. */
    kvBytes?: number
    /** How the decoder's KV cache stores a position (KV_FORMAT: 'f32' or 'q8'). */
    kvFormat?: string
    /** Turn cache entries kept in the decoder's memory rather than copied out (turn-cache.ts). */
    turnCacheResident?: number
    /** Tokens of KV cache kept across chat turns (bounded by KV_REUSE_TOKENS). */
    turnCacheTokens: number
  }
  /** Decode steps so far and the forward runs that computed them (batched: runs < tokens). */
  decode?: {
    runs: number
    tokens: number
    largestBatch: number
    /** Where decode steps run: the package's own WASM decoder, or the ONNX graph. */
    path?: 'decoder' | 'graph'
    /** The decoder's kernel build: 'simd128', 'relaxed', 'relaxed+vnni' or 'relaxed+looped' (kernel.ts). */
    kernels?: string
    /**
     * The decoder's q4 matrices, and how many take the symmetric kernels (every zero point 8,
     * as in exports without zero points: no zero point is read).
     */
    q4?: { matrices: number; symmetric: number }
  }
  /**
   * Where prompt chunks run: the engine's kernels (then no onnxruntime session holds the
   * weights: one copy), or the ONNX graph.
   */
  prefill?: {
    path: 'decoder' | 'graph'
    /** Forward runs so far that were not decode steps: prompt chunks and label steps. */
    runs: number
  }
  /**
   * A package split into stages (each its own isolate on Workers, all in this process on Node
   * and Deno): every stage as it last answered, in plan order.
   */
  stages?: StageReport[]
}

export interface StageReport {
  /** Decoder layers [start, end) of a layer stage. */
  layers?: [number, number]
  /** Head rows [start, end) of a row stage (a slice of the vocabulary). */
  rows?: [number, number]
  /** The isolate the stage runs in: stages naming the same one share its memory limit. */
  isolate?: string
  /** What the stage holds, as it counted on its last answer (undefined: not heard from yet). */
  residentBytes?: number
  budgetBytes?: number
  /** KV sequences the stage holds (layer stages). */
  sequences?: number
  /** How a layer stage's KV cache stores a position (KV_FORMAT). */
  kvFormat?: string
  status: 'ready' | 'unknown'
  /** Times the front saw the stage restart (a new load: evicted, or its isolate reset). */
  restarts?: number
  /** Calls the front made to the stage, and their milliseconds from sending to the answer. */
  calls?: number
  callMs?: number
  /** Of which computing, as the stage counted (since its load): the rest is the hop. */
  computeMs?: number
}

export interface Engine {
  readonly info: ModelInfo
  /** Validates, renders the chat template, tokenizes and takes a place in the queue. */
  chat(messages: ChatMessage[], options?: GenerationOptions): Promise<ChatRun>
  classify(text: string, options?: ClassifyOptions): Promise<ClassifyResult>
  /**
   * Several texts with the same labels and examples, admitted together (queue_full when the
   * queued classification work would pass its bound) and answered in order.
   */
  classifyAll(texts: readonly string[], options?: ClassifyOptions): Promise<ClassifyResult[]>
  stats(): EngineStats
  /**
   * A package split into stages: `rounds` empty round trips to each stage (no compute), their
   * median in milliseconds per stage in plan order: the hop cost, to set against the compute
   * per token. Undefined for a package that is one model.
   */
  probeStages?(rounds: number): Promise<number[]>
}
