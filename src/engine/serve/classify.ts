/**
 * Sentiment (or any closed label set) by label scoring: one prefill of a fixed instruction
 * prompt plus the text, then the probability of each label as the model's next tokens.
 * No free text is generated or parsed.
 *
 * The prompt is a chat: the instruction as the system message, then worked examples as earlier
 * user/assistant turns (few-shot), then the text as the last user message. Everything before
 * the text is the same for every request with that label set and those examples, so its KV
 * cache is computed once and reused: the examples cost nothing per request.
 */
import { AppError } from '../../core/errors.ts'
import { detectLanguage, type Language } from '../../core/language.ts'
import { prefill, type StepRunner } from './generate.ts'
import type { ForwardModel } from '../forward.ts'
import { detachKvCache, type KvCache } from '../kv/kv-cache.ts'
import type { QwenTokenizer } from '../text/tokenizer.ts'
import type { ChatMessage, ClassifyResult } from '../types.ts'

export const DEFAULT_LABELS: Record<Language, readonly string[]> = {
  zh: ['正面', '负面'],
  en: ['positive', 'negative'],
}

/** A worked example: a text and the label it should get. */
export interface LabelExample {
  text: string
  label: string
}

/**
 * The examples that go with the default labels: two per label and language, balanced so the
 * examples themselves do not favour a label, the last two different. Small chat models answer
 * in the label format more reliably when shown it, and with the cached prefix they are free.
 */
export const DEFAULT_EXAMPLES: Record<Language, readonly LabelExample[]> = {
  zh: [
    { text: '服务很周到，菜也好吃，下次还来。', label: '正面' },
    { text: '等了一个小时才上菜，而且是凉的。', label: '负面' },
    { text: '用了两天就坏了，客服一直不回复。', label: '负面' },
    { text: '画面清晰，价格实惠，非常满意。', label: '正面' },
  ],
  en: [
    { text: 'The staff were friendly and the room was spotless.', label: 'positive' },
    { text: 'We waited an hour and the food came out cold.', label: 'negative' },
    { text: 'It broke after two days and support never replied.', label: 'negative' },
    { text: 'Sharp picture, fair price, very happy with it.', label: 'positive' },
  ],
}

const MAX_LABELS = 32
const MAX_LABEL_TOKENS = 16
export const MAX_EXAMPLES = 16
/** The instruction and examples together (the cached prefix), in tokens. */
export const MAX_PREFIX_TOKENS = 2048
/**
 * Prefix caches kept per isolate for caller-given labels or examples (one per label set and
 * examples), besides the default ones (one per language), which are never evicted.
 */
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

/** A request's prompt as the classifier splits it. */
export interface LabelPrompt {
  labels: string[]
  labelIds: number[][]
  /** Instruction and examples: the same for every text with these labels and examples. */
  prefixIds: number[]
  /** The text and the template's suffix: computed per request. */
  bodyIds: number[]
}

/** A validated, tokenized text ({@link LabelClassifier.prepare}). */
export interface PreparedText {
  prompt: LabelPrompt
  prefix: Prefix
  /** Tokens computed for this text alone: what admission counts. */
  tokens: number
}

interface Prefix {
  /** The prefix's token ids and the template's text after the user's text, computed once. */
  ids: number[]
  suffix: string
  /** The prefix's KV cache, computed on first use. */
  cache?: Promise<KvCache>
}

export class LabelClassifier {
  /** Caller-given label sets and examples, least recently used first. */
  private readonly prefixes = new Map<string, Prefix>()
  /** The default labels with the built-in examples, per language: kept for good. */
  private readonly defaults = new Map<string, Prefix>()
  /** Prefix caches computed so far (for tests and stats). */
  prefixComputations = 0

  constructor(
    private readonly model: ForwardModel,
    private readonly tokenizer: QwenTokenizer,
    private readonly step: StepRunner,
    private readonly options: ClassifierOptions,
  ) {}

  /**
   * Scores `labels` (default by language) for `text`. `examples` are worked examples shown to
   * the model before the text; absent, the default labels get DEFAULT_EXAMPLES and custom
   * labels none; `[]` asks for none. `usePrefixCache: false` recomputes the prefix; the result
   * must equal the cached path (tested).
   */
  async classify(
    text: string,
    labels?: readonly string[],
    opts: {
      signal?: AbortSignal
      usePrefixCache?: boolean
      examples?: readonly LabelExample[]
    } = {},
  ): Promise<ClassifyResult> {
    return (await this.run(this.prepare(text, labels, opts.examples), opts)).result
  }

  /**
   * Validates and tokenizes a text for {@link run}, and says what it will cost: the tokens
   * computed per request (the text, the template's suffix, and the steps over multi-token
   * labels; the cached prefix is shared).
   */
  prepare(
    text: string,
    labels?: readonly string[],
    examples?: readonly LabelExample[],
  ): PreparedText {
    const [prompt, prefix] = this.build(text, labels, examples)
    const { labelIds, prefixIds, bodyIds } = prompt
    const longest = Math.max(...labelIds.map((l) => l.length))
    const needed = prefixIds.length + bodyIds.length + longest
    if (needed > this.options.contextLength) {
      throw new AppError(
        'context_length_exceeded',
        `text is too long: ${needed} tokens with the instruction, examples and labels, the context holds ${this.options.contextLength}`,
        { details: { promptTokens: needed, contextLength: this.options.contextLength } },
      )
    }
    const labelSteps = labelIds.reduce((n, l) => n + l.length - 1, 0)
    return { prompt, prefix, tokens: bodyIds.length + labelSteps }
  }

  /**
   * Scores a prepared text. Every forward run goes through the scheduler with `signal`, so an
   * abandoned request's remaining runs are dropped before they reach the model. `computeMs` is
   * the time those runs took (not the time spent waiting for them).
   */
  async run(
    prepared: PreparedText,
    opts: { signal?: AbortSignal; usePrefixCache?: boolean } = {},
  ): Promise<{ result: ClassifyResult; computeMs: number }> {
    const { labels: set, labelIds, prefixIds, bodyIds } = prepared.prompt
    let computeMs = 0
    const run: StepRunner = (task, signal) =>
      this.step(async () => {
        const started = performance.now()
        try {
          return await task()
        } finally {
          computeMs += performance.now() - started
        }
      }, signal)
    const cancelled = () => new AppError('bad_request', 'classification was cancelled')

    let start: KvCache
    let ids: number[]
    if (opts.usePrefixCache === false) {
      start = this.model.emptyCache()
      ids = [...prefixIds, ...bodyIds]
    } else {
      start = await this.prefixCache(prepared.prefix)
      ids = bodyIds
    }
    // Only the labels' first tokens are scored at the text's last position: log p(label) there
    // is logit − logsumexp(all logits), and the logsumexp is the same for every label, so it
    // cancels when the scores are normalised over the label set below. With a split head
    // (head.ts) the other 150k rows of the lm_head are never read.
    const firsts = [...new Set(labelIds.map((tokens) => tokens[0]))]
    const chunk = this.options.prefillChunk
    const after = await prefill(this.model, run, ids, start, chunk, opts.signal, firsts)
    if (!after) throw cancelled()

    // every cache this text made is given back when it is scored (in the decoder they hold
    // arena memory until then)
    const made: KvCache[] = [after.cache]
    const vocab = this.model.shape.vocabSize
    let logp: number[]
    try {
      logp = await Promise.all(
        labelIds.map(async (tokens) => {
          let total = after.logits[firsts.indexOf(tokens[0])]
          if (tokens.length > 1) {
            // p(t1..tn | t0) from one more step over the label's own tokens
            const rest = tokens.slice(0, -1)
            const step = await run(
              () => this.model.forward(rest, after.cache, rest.length),
              opts.signal,
            ).catch((err) => {
              throw opts.signal?.aborted ? cancelled() : err
            })
            made.push(step.cache)
            for (let j = 1; j < tokens.length; j++) {
              total += logSoftmaxAt(step.logits, j - 1, vocab, tokens[j])
            }
          }
          return total
        }),
      )
    } finally {
      for (const c of made) this.model.releaseCache(c)
    }
    const max = Math.max(...logp)
    const weights = logp.map((l) => Math.exp(l - max))
    const sum = weights.reduce((a, b) => a + b, 0)
    const scores: Record<string, number> = {}
    let best = 0
    set.forEach((label, i) => {
      scores[label] = weights[i] / sum
      if (weights[i] > weights[best]) best = i
    })
    return { result: { label: set[best], score: scores[set[best]], scores }, computeMs }
  }

  /**
   * The token ids `classify` would run for `text`, split into the cached prefix and the part
   * computed per request. Validates the text, labels and examples.
   */
  prompt(
    text: string,
    labels?: readonly string[],
    examples?: readonly LabelExample[],
  ): LabelPrompt {
    return this.build(text, labels, examples)[0]
  }

  private build(
    text: string,
    labels?: readonly string[],
    examples?: readonly LabelExample[],
  ): [LabelPrompt, Prefix] {
    const body = text.trim() // leading whitespace would merge with the template's "\n" token
    if (body.length === 0) throw new AppError('bad_request', 'text must not be empty')
    const language = detectLanguage(body)
    const set = validateLabels(labels ?? DEFAULT_LABELS[language])
    const labelIds = set.map((label) => {
      const ids = this.tokenizer.encodeText(label)
      if (ids.length === 0 || ids.length > MAX_LABEL_TOKENS) {
        throw new AppError(
          'invalid_labels',
          `label "${label}" must be 1 to ${MAX_LABEL_TOKENS} tokens long`,
        )
      }
      return ids
    })
    const shots = validateExamples(examples ?? defaultExamplesFor(set, language), set)
    const instruction = instructionFor(set, language)
    const key = JSON.stringify([instruction, shots])
    const prefix = this.prefix(key, instruction, shots, !labels && !examples)
    const bodyIds = [
      ...this.tokenizer.encodeText(body),
      ...this.tokenizer.encodePrompt(prefix.suffix),
    ]
    return [{ labels: set, labelIds, prefixIds: prefix.ids, bodyIds }, prefix]
  }

  /**
   * The rendered prompt split around the user's text, tokenized once per label set and
   * examples (kept with the prefix's KV cache: for good when `builtIn`, else in an LRU map, so
   * callers' many label sets never evict the default one).
   */
  private prefix(
    key: string,
    instruction: string,
    shots: readonly LabelExample[],
    builtIn: boolean,
  ): Prefix {
    const pinned = this.defaults.get(key)
    if (pinned) return pinned
    const known = this.prefixes.get(key)
    if (known) {
      this.prefixes.delete(key) // re-insert: Map order is the LRU order
      this.prefixes.set(key, known)
      return known
    }
    const marker = '\u0000QWEN_EDGE_TEXT\u0000'
    const rendered = this.tokenizer.renderChat([
      { role: 'system', content: instruction },
      ...shots.flatMap((s): ChatMessage[] => [
        { role: 'user', content: s.text },
        { role: 'assistant', content: s.label },
      ]),
      { role: 'user', content: marker },
    ])
    const at = rendered.indexOf(marker)
    if (at === -1) throw new AppError('model_invalid', 'The chat template dropped the user message')
    const ids = this.tokenizer.encodePrompt(rendered.slice(0, at))
    if (ids.length > MAX_PREFIX_TOKENS) {
      throw new AppError(
        'bad_request',
        `the instruction and examples are ${ids.length} tokens long, at most ${MAX_PREFIX_TOKENS} are allowed`,
        { details: { param: 'examples' } },
      )
    }
    const entry: Prefix = { ids, suffix: rendered.slice(at + marker.length) }
    if (builtIn) {
      this.defaults.set(key, entry)
      return entry
    }
    this.prefixes.set(key, entry)
    if (this.prefixes.size > PREFIX_CACHE_SIZE) {
      this.prefixes.delete(this.prefixes.keys().next().value!)
    }
    return entry
  }

  /** The prefix's KV cache, computed once (an evicted entry's cache lives while in use). */
  private prefixCache(entry: Prefix): Promise<KvCache> {
    if (entry.cache) return entry.cache
    this.prefixComputations++
    const chunk = this.options.prefillChunk
    // kept as its own tensors: a cache resident in the decoder would be extended in place by the
    // first text and given back with it; each request starts from a copy instead
    entry.cache = prefill(this.model, this.step, entry.ids, this.model.emptyCache(), chunk)
      .then((r) => {
        const kept = detachKvCache(r!.cache)
        this.model.releaseCache(r!.cache)
        return kept
      })
      .catch((err) => {
        entry.cache = undefined // never cache a failure
        throw err
      })
    return entry.cache
  }
}

/** The built-in examples when the label set is the language's default set, else none. */
function defaultExamplesFor(labels: readonly string[], language: Language): LabelExample[] {
  const defaults = DEFAULT_LABELS[language]
  const same = labels.length === defaults.length && defaults.every((l) => labels.includes(l))
  return same ? [...DEFAULT_EXAMPLES[language]] : []
}

/** At most MAX_EXAMPLES examples, each a non-empty text with one of `labels`. */
export function validateExamples(
  examples: readonly unknown[],
  labels: readonly string[],
): LabelExample[] {
  const bad = (message: string) =>
    new AppError('bad_request', message, { details: { param: 'examples' } })
  if (!Array.isArray(examples)) throw bad('examples must be an array of {text, label}')
  if (examples.length > MAX_EXAMPLES) {
    throw bad(`examples may hold at most ${MAX_EXAMPLES} entries, got ${examples.length}`)
  }
  return examples.map((e: unknown, i) => {
    const { text, label } = (e ?? {}) as { text?: unknown; label?: unknown }
    if (typeof e !== 'object' || typeof text !== 'string' || typeof label !== 'string') {
      throw bad(`examples[${i}] must be an object {text, label} with two strings`)
    }
    if (text.trim() === '') throw bad(`examples[${i}].text must not be empty`)
    if (!labels.includes(label)) {
      throw bad(
        `examples[${i}].label "${label}" is not one of the labels (${labels.join(', ')}); give labels with examples`,
      )
    }
    return { text: text.trim(), label }
  })
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
