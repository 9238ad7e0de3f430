/**
 * Sentiment (or any closed label set) by label scoring: one prefill of a fixed instruction
 * prompt plus the text, then the probability of each label as the model's next tokens.
 * No free text is generated or parsed. The instruction prefix never changes for a label set,
 * so its KV cache is computed once and reused by every request.
 */
import { AppError } from '../core/errors.ts'
import { detectLanguage, type Language } from '../core/language.ts'
import { prefill, type StepRunner } from './generate.ts'
import type { KvCache, QwenModel } from './model.ts'
import type { QwenTokenizer } from './tokenizer.ts'
import type { ClassifyResult } from './types.ts'

export const DEFAULT_LABELS: Record<Language, readonly string[]> = {
  zh: ['正面', '负面'],
  en: ['positive', 'negative'],
}

const MAX_LABELS = 32
const MAX_LABEL_TOKENS = 16
/** Prefix caches kept per isolate (one per instruction prompt, i.e. per label set). */
const PREFIX_CACHE_SIZE = 16

/** The instruction: a cold analyst that answers with one label and nothing else. */
export function instructionFor(labels: readonly string[], language: Language): string {
  if (language === 'zh') {
    const list = labels.map((l) => `“${l}”`).join('或')
    return `你是一个冷酷的情感分析师。判断用户文本的情感倾向，只回答${list}，不要输出任何其他内容。`
  }
  const list = labels.map((l) => `"${l}"`).join(' or ')
  return `You are a cold, precise sentiment analyst. Classify the user's text. Answer with exactly one word, ${list}, and nothing else.`
}

export interface ClassifierOptions {
  prefillChunk: number
  contextLength: number
}

interface Prefix {
  ids: number[]
  cache: KvCache
}

export class LabelClassifier {
  private readonly prefixes = new Map<string, Promise<Prefix>>()
  /** Prefix caches computed so far (for tests and stats). */
  prefixComputations = 0

  constructor(
    private readonly model: QwenModel,
    private readonly tokenizer: QwenTokenizer,
    private readonly run: StepRunner,
    private readonly options: ClassifierOptions,
  ) {}

  /**
   * Scores `labels` (default by language) for `text`. `usePrefixCache: false` recomputes the
   * instruction prefix; the result must equal the cached path (tested).
   */
  async classify(
    text: string,
    labels?: readonly string[],
    opts: { signal?: AbortSignal; usePrefixCache?: boolean } = {},
  ): Promise<ClassifyResult> {
    const body = text.trim() // leading whitespace would merge with the template's "\n" token
    if (body.length === 0) throw new AppError('bad_request', 'text must not be empty')
    const language = detectLanguage(body)
    const set = validateLabels(labels ?? DEFAULT_LABELS[language])
    const labelIds = set.map((label) => {
      const ids = this.tokenizer.encode(label)
      if (ids.length === 0 || ids.length > MAX_LABEL_TOKENS) {
        throw new AppError(
          'invalid_labels',
          `label "${label}" must be 1 to ${MAX_LABEL_TOKENS} tokens long`,
        )
      }
      return ids
    })
    const [prefixText, suffixText] = this.splitPrompt(instructionFor(set, language))
    const bodyIds = [...this.tokenizer.encode(body), ...this.tokenizer.encode(suffixText)]
    const prefixIds = this.tokenizer.encode(prefixText)
    const longest = Math.max(...labelIds.map((l) => l.length))
    const needed = prefixIds.length + bodyIds.length + longest
    if (needed > this.options.contextLength) {
      throw new AppError(
        'context_length_exceeded',
        `text is too long: ${needed} tokens with the instruction and labels, the context holds ${this.options.contextLength}`,
        { details: { promptTokens: needed, contextLength: this.options.contextLength } },
      )
    }

    let start: KvCache
    let ids: number[]
    if (opts.usePrefixCache === false) {
      start = this.model.emptyCache()
      ids = [...prefixIds, ...bodyIds]
    } else {
      start = (await this.prefix(prefixText, prefixIds)).cache
      ids = bodyIds
    }
    // Only the labels' first tokens are scored at the text's last position: log p(label) there
    // is logit − logsumexp(all logits), and the logsumexp is the same for every label, so it
    // cancels when the scores are normalised over the label set below. With a split head
    // (head.ts) the other 150k rows of the lm_head are never read.
    const firsts = [...new Set(labelIds.map((tokens) => tokens[0]))]
    const chunk = this.options.prefillChunk
    const after = await prefill(this.model, this.run, ids, start, chunk, opts.signal, firsts)
    if (!after) throw new AppError('bad_request', 'classification was cancelled')

    const vocab = this.model.shape.vocabSize
    const logp = await Promise.all(
      labelIds.map(async (tokens) => {
        let total = after.logits[firsts.indexOf(tokens[0])]
        if (tokens.length > 1) {
          // p(t1..tn | t0) from one more step over the label's own tokens
          const rest = tokens.slice(0, -1)
          const step = await this.run(() => this.model.forward(rest, after.cache, rest.length))
          for (let j = 1; j < tokens.length; j++) {
            total += logSoftmaxAt(step.logits, j - 1, vocab, tokens[j])
          }
        }
        return total
      }),
    )
    const max = Math.max(...logp)
    const weights = logp.map((l) => Math.exp(l - max))
    const sum = weights.reduce((a, b) => a + b, 0)
    const scores: Record<string, number> = {}
    let best = 0
    set.forEach((label, i) => {
      scores[label] = weights[i] / sum
      if (weights[i] > weights[best]) best = i
    })
    return { label: set[best], score: scores[set[best]], scores }
  }

  /** The rendered prompt split around the user's text: [instruction prefix, suffix]. */
  private splitPrompt(instruction: string): [string, string] {
    const marker = '\u0000QWEN_EDGE_TEXT\u0000'
    const rendered = this.tokenizer.renderChat([
      { role: 'system', content: instruction },
      { role: 'user', content: marker },
    ])
    const at = rendered.indexOf(marker)
    if (at === -1) throw new AppError('model_invalid', 'The chat template dropped the user message')
    return [rendered.slice(0, at), rendered.slice(at + marker.length)]
  }

  private prefix(text: string, ids: number[]): Promise<Prefix> {
    let entry = this.prefixes.get(text)
    if (entry) {
      this.prefixes.delete(text) // re-insert: Map order is the LRU order
      this.prefixes.set(text, entry)
      return entry
    }
    this.prefixComputations++
    entry = prefill(this.model, this.run, ids, this.model.emptyCache(), this.options.prefillChunk)
      .then((r) => ({ ids, cache: r!.cache }))
      .catch((err) => {
        this.prefixes.delete(text) // never cache a failure
        throw err
      })
    this.prefixes.set(text, entry)
    if (this.prefixes.size > PREFIX_CACHE_SIZE) {
      this.prefixes.delete(this.prefixes.keys().next().value!)
    }
    return entry
  }
}

export function validateLabels(labels: readonly unknown[]): string[] {
  if (!Array.isArray(labels) || labels.length < 2) {
    throw new AppError('invalid_labels', 'labels must be an array of at least 2 strings')
  }
  if (labels.length > MAX_LABELS) {
    throw new AppError('invalid_labels', `labels may hold at most ${MAX_LABELS} entries`)
  }
  const seen = new Set<string>()
  for (const l of labels) {
    if (typeof l !== 'string' || l.trim().length === 0) {
      throw new AppError('invalid_labels', 'every label must be a non-empty string')
    }
    if (seen.has(l)) throw new AppError('invalid_labels', `label "${l}" appears twice`)
    seen.add(l)
  }
  return [...seen]
}

/** log softmax(row)[id] for row `row` of a rows × vocab block. */
function logSoftmaxAt(logits: Float32Array, row: number, vocab: number, id: number): number {
  const base = row * vocab
  let max = -Infinity
  for (let i = 0; i < vocab; i++) if (logits[base + i] > max) max = logits[base + i]
  let sum = 0
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[base + i] - max)
  return logits[base + id] - max - Math.log(sum)
}
