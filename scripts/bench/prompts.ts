/**
 * The benchmark's prompts, rendered with the model's chat template and tokenized once by the
 * parent, so every engine gets the same token ids.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { QwenTokenizer } from '../../src/engine/text/tokenizer.ts'
import type { ChatMessage } from '../../src/engine/types.ts'
import type { BenchPrompt } from './types.ts'

const FILLER =
  'Edge runtimes run small language models close to their users. A request arrives, the ' +
  'isolate wakes, the weights are already in memory, and the first token should follow within ' +
  'a second. 边缘计算让模型离用户更近，延迟更低。 Every decode step streams all the weights ' +
  'through the processor once, so memory bandwidth, not arithmetic, sets the pace. Caches, ' +
  'quantization and careful scheduling decide how close an engine gets to that limit. '

export const STREAM_QUESTIONS = [
  'Write a short poem about the sea at night.',
  '用三句话解释什么是量子计算。',
  'List five uses of a paperclip, one per line.',
  'Summarize the plot of a heist movie you invent.',
]

export const SENTIMENT_TEXT =
  'The battery lasts two full days and the screen is gorgeous, but the speaker crackles at high volume.'

export async function loadTokenizer(modelDir: string): Promise<QwenTokenizer> {
  const json = async (name: string) => JSON.parse(await readFile(join(modelDir, name), 'utf8'))
  return new QwenTokenizer(await json('tokenizer.json'), await json('tokenizer_config.json'))
}

/** A one-message chat whose templated prompt is exactly `n` tokens (or the closest above). */
export function promptOfLength(tok: QwenTokenizer, n: number): BenchPrompt {
  const words = FILLER.repeat(Math.ceil((n * 2) / 60) + 2).split(/(?<= )/)
  const render = (content: string) => {
    const messages: ChatMessage[] = [{ role: 'user', content }]
    return { messages, ids: tok.encodePrompt(tok.renderChat(messages)) }
  }
  // the longest prefix of words that fits, then single-token pads up to n
  let lo = 1
  let hi = words.length
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1
    if (render(words.slice(0, mid).join('')).ids.length <= n) lo = mid
    else hi = mid - 1
  }
  let content = words.slice(0, lo).join('').trimEnd()
  let p = render(content)
  while (p.ids.length < n) {
    content += ' x'
    p = render(content)
  }
  return p
}

export function chatPrompt(tok: QwenTokenizer, content: string): BenchPrompt {
  const messages: ChatMessage[] = [{ role: 'user', content }]
  return { messages, ids: tok.encodePrompt(tok.renderChat(messages)) }
}
