/**
 * What the in-workerd tests (test/workers/*.test.ts) and their Node-side setup
 * (test/workers/node/global-setup.ts) agree on: the package, the requests, and the shape of
 * the answers Node computed for the same requests. Pure: imported on both sides.
 */
export const PACKAGE_ID = 'qwen2-tiny-random-q8'

/** Texts sent to POST /v1/sentiment: Chinese (正面/负面) and English (positive/negative). */
export const SENTIMENT_TEXTS = [
  '这部电影太好看了，我还想再看一遍！',
  'The food was cold and the waiter was rude.',
]

/** A greedy chat request: the same text on every runtime. */
export const CHAT_BODY = {
  messages: [{ role: 'user', content: '用一句话介绍你自己。' }],
  max_tokens: 12,
  temperature: 0,
}

export interface SentimentAnswer {
  label: string
  score: number
  scores: Record<string, number>
}

export interface ChatAnswer {
  content: string
  finish_reason: string
  usage: Record<string, number>
}

/** Computed by the same Hono app over the same package on Node (onnxruntime-web, wasm). */
export interface NodeReference {
  sentiment: SentimentAnswer[]
  chat: ChatAnswer
  /** The same requests over the staged package (STAGED_PACKAGE), its stages in one process. */
  staged: { sentiment: SentimentAnswer[]; chat: ChatAnswer; stages: number }
}

/**
 * A package split into stages (global-setup.ts prepares it from the tiny preset with 4 layers):
 * two layer stages and the head in two vocabulary slices. Served from `packages/` of the host.
 */
export const STAGED_PACKAGE = 'tiny-staged'
export const STAGED_BUDGET_BYTES = 22 * 1024 * 1024

declare module 'vitest' {
  export interface ProvidedContext {
    nodeReference: NodeReference
  }
}
