/** What the benchmark's parent hands its workers, and what they hand back. */
import type { ChatMessage } from '../../src/engine/types.ts'
import type { KvFormat } from '../../src/format/index.ts'

/**
 * Engines run in another runtime than the bench's Node: the kind's suffix and the runtime's
 * name. Deno (relaxed SIMD by default; the runtime of Deno Deploy) and the current LTS Node
 * (node-lts.ts; relaxed SIMD by default too).
 */
export const ENGINE_RUNTIMES = [
  ['-deno', 'Deno'],
  ['-node24', 'Node 24'],
] as const

export interface BenchPrompt {
  messages: ChatMessage[]
  /** The chat-templated prompt's token ids (what the engine feeds). */
  ids: number[]
}

export interface BenchPlan {
  /** The Hugging Face layout folder the peers read. */
  modelDir: string
  /** The engine's model package of it (lm_head split off: head.ts). */
  packageDir: string
  quick: boolean
  /** Repeats of each timed measurement (the median is reported). */
  rounds: number
  /** Repeats of the decode-rate run (the median is reported). */
  decodeRounds: number
  /** Greedy tokens for the decode rate. */
  decodeTokens: number
  /** New tokens per stream in the 1- and 4-stream throughput runs. */
  streamTokens: number
  prompts: { p64: BenchPrompt; p512: BenchPrompt; streams: BenchPrompt[] }
  sentimentText: string
  /** Weight bytes the graph reads per decode step (all initializers). */
  weightBytes: number
  /** The q4 side (issue 13): the MatMulNBits export, its package, its accuracy_level 4 copy. */
  q4?: {
    modelDir: string
    packageDir: string
    /** The export with every MatMulNBits at accuracy_level 4 (onnxruntime-node's peer). */
    acc4Dir: string
  }
  /** Weight bytes of each package's files (what the kernels hold): q8, and q4 when measured. */
  packageWeightBytes: { q8: number; q4?: number }
}

/** One engine's numbers; a metric an engine cannot do is left out. */
export interface EngineResult {
  name: string
  label: string
  /** The weights it ran: the q8 export or package (default), or the q4 one. */
  format?: 'q8' | 'q4'
  /** What it ran on: runtime, execution provider, threads, version. */
  backend: string
  loadMs?: number
  /** The first request after load (one-time allocations, JIT): not in the medians. */
  firstTtft64Ms?: number
  ttft64Ms?: number
  ttft512Ms?: number
  decodeTokS?: number
  decodeRounds?: number[]
  /** Tokens actually decoded in the decode run (eos can end it early). */
  decodedTokens?: number
  sentimentColdMs?: number
  sentimentCachedMs?: number
  peakRssBytes?: number
  wasmAfterLoadBytes?: number
  wasmPeakBytes?: number
  streams1TokS?: number
  streams4TokS?: number
  /** Most other streams' steps between two consecutive tokens of one stream (4 streams). */
  streams4MaxGapSteps?: number
  /** Longest wall time between two consecutive tokens of one stream (4 streams). */
  streams4MaxGapMs?: number
  /** Median decode step, 1 stream. */
  streams1StepMs?: number
  /** Median decode step with 4 streams interleaved. */
  streams4StepMs?: number
  /** Mean sequences per forward run in the 4-stream decode (1: no batching). */
  streams4MeanBatch?: number
  /** Time to first token of a conversation's second turn: kept KV vs computed from scratch. */
  turn2?: { promptTokens: number; cachedTokens: number; keptMs: number; recomputedMs: number }
  sentimentAloneMs?: number
  sentimentDuringChatMs?: number
  /** Chat steps run while the sentiment request was waiting or running. */
  sentimentDuringChatChatSteps?: number
  /** True when the chat was still decoding after the sentiment answer came back. */
  sentimentAnsweredBeforeChatEnd?: boolean
  /** First greedy ids of the decode run: the engines should agree on the same graph. */
  firstIds?: number[]
  notes?: string[]
  error?: string
  /** The engine's details (sentiment prompt sizes, event loop, proposed changes measured). */
  extra?: EngineExtra
}

export interface DuringChat {
  /** From when the request was due to its answer. */
  latencyMs: number
  /** How late the timer that issues the request fired (the event loop was busy). */
  timerLateMs: number
  /** Steps of the chat that ran between the request being issued and answered. */
  chatSteps: number
  beforeChatEnd: boolean
  /** Longest the event loop was blocked while the chat ran. */
  eventLoopMaxDelayMs: number
}

export interface SentimentTokens {
  /** Instruction prefix: computed once and cached. */
  prefix: number
  /** The text and the template's suffix: computed for every request. */
  uncached: number
}

export interface EngineExtra {
  /**
   * Medians over the decode run. In the engine's own decoder (decoder.ts): the whole `decode()`
   * call; in the graph: session.run and the rest of forward(). Both: the gap between steps.
   */
  decodeStep: {
    /** The package's decoder ran the steps: decode() per step. */
    decoderMs?: number
    runMs?: number
    /** Part of decoderMs or forwardExtraMs: the split lm_head (head.ts) when there is one. */
    headMs?: number
    forwardExtraMs?: number
    betweenStepsMs: number
  }
  prefixComputations: number
  sentimentPromptTokens: SentimentTokens
  sentimentDuringChat: DuringChat
  shortSentiment: SentimentVariant
  /** The bench text with no examples in the prefix (`examples: []`): the instruction alone. */
  zeroShotSentiment?: SentimentVariant
}

export interface SentimentVariant {
  text: string
  tokens: SentimentTokens
  coldMs: number
  cachedMs: number
}

export interface BandwidthResult {
  bufferBytes: number
  /** Bytes copied per second (TypedArray.set), best of `rounds`. */
  copyBytesPerS: number
  rounds: number
}

/** The engine's kernels alone at Qwen2.5-0.5B shapes (scripts/bench/kernels.ts). */
export interface KernelsResult {
  runtime: string
  relaxedUsable: boolean
  /** Whether its q4 tiles of 4 rows take the i32 dot product (AVX-VNNI); absent in older runs. */
  dotAdd?: boolean
  /** A WASM SIMD loop reading 256 MiB: what a decode step's weight stream can reach. */
  readBytesPerS: number
  copyBytesPerS: number
  rows: Array<{
    kernel: string
    variant: 'simd128' | 'relaxed'
    ms: number
    /** Weight bytes read per second (quant_b32, silu_mul: f32 bytes). */
    bytesPerS: number
    macsPerS: number
  }>
}

/** One long chat in the engine, q4 package (measure-long.ts). */
export interface LongResult {
  kvFormat: KvFormat
  /** The kernel build that ran (relaxed where the runtime has it). */
  isa: string
  promptTokens: number
  ttftMs: number
  /** Decode rate after the prompt (its first token to its last). */
  decodeTokS: number
  decodedTokens: number
  /** The greedy tokens decoded (compared between the formats). */
  ids: number[]
  kvPositionBytes: number
  /** Most KV bytes the chat held at once. */
  kvPeakBytes: number
  wasmPeakBytes: number
  peakRssBytes: number
}

/** A server process serving a package through load and concurrent chats (measure-serve.ts). */
export interface ServeResult {
  runtime: 'node' | 'deno'
  /** Which chats (measure-serve.ts SERVE_SCENARIOS); undefined in older results: short. */
  scenario?: 'short' | 'long' | 'long-bounded' | 'long-q8kv'
  command: string
  packageId: string
  /** VmHWM of the server process (the runtime binary, not npm's wrapper). */
  peakRssBytes: number
  /** VmRSS once /health first answered 200. */
  rssAfterLoadBytes: number
  rssAfterChatsBytes: number
  /** The peak seen by sampling VmRSS every 100 ms: while loading / while chatting. */
  sampledPeakLoadBytes: number
  sampledPeakChatsBytes: number
  loadMs: number
  chats: number
  tokensPerChat: number[]
  /** Prompt tokens of each chat, and when each ended (seconds after they were sent). */
  promptTokens?: number[]
  chatsEndedS?: number[]
  /** /health's memory fields after the chats (wasm_bytes and the like), as reported. */
  health?: Record<string, unknown>
  /** /health's decode.kernels (simd128, relaxed, relaxed+vnni, relaxed+looped); undefined in older results. */
  kernels?: string
  /** One chat alone after the four: (tokens − 1) / (its end − its first delta), tokens/s. */
  aloneDecodeTokS?: number
}
