/**
 * Validation of `POST /v1/sentiment` and `POST /analyze` bodies, as pure functions.
 */
import { AppError } from '../core/errors.ts'
import type { AppConfig } from './config.ts'
import { parseSamplingFields, type SamplingOptions } from './parse-chat-body.ts'
import { badRequest, expectObject, isAbsent, readText, type JsonObject } from './parse-fields.ts'

export const MAX_TEXTS = 32
export const MAX_LABELS = 32
export const MAX_LABEL_LENGTH = 64
export const MAX_EXAMPLES = 16

export interface LabelExample {
  text: string
  label: string
}

/** What a text is classified with: labels and worked examples, both optional. */
export interface LabelFields {
  labels?: string[]
  examples?: LabelExample[]
}

export type SentimentRequest =
  | ({ kind: 'single'; text: string } & LabelFields)
  | ({ kind: 'batch'; texts: string[] } & LabelFields)

export interface AnalyzeRequest extends LabelFields {
  text: string
  options: SamplingOptions
}

/** `{text}` or `{texts: [...]}` (1 to MAX_TEXTS), optional `labels` and `examples`. */
export function parseSentimentBody(body: unknown): SentimentRequest {
  const obj = expectObject(body)
  const fields = readLabelFields(obj)
  const hasText = !isAbsent(obj.text)
  const hasTexts = !isAbsent(obj.texts)
  if (hasText && hasTexts) throw badRequest('text', 'give either text or texts, not both')
  if (hasTexts) {
    if (!Array.isArray(obj.texts)) throw badRequest('texts', 'texts must be an array of strings')
    if (obj.texts.length === 0) throw badRequest('texts', 'texts must not be empty')
    if (obj.texts.length > MAX_TEXTS) {
      throw badRequest(
        'texts',
        `texts may hold at most ${MAX_TEXTS} entries, got ${obj.texts.length}`,
      )
    }
    const texts = obj.texts.map((t, i) => readText(t, `texts[${i}]`))
    return { kind: 'batch', texts, ...fields }
  }
  if (!hasText) throw badRequest('text', 'text is required (or texts, an array)')
  return { kind: 'single', text: readText(obj.text, 'text'), ...fields }
}

/** `{text, labels?, max_tokens?, temperature?, ...}`: the text is classified and answered. */
export function parseAnalyzeBody(
  body: unknown,
  limits: Pick<AppConfig, 'maxTokensDefault' | 'maxTokensCeiling'>,
): AnalyzeRequest {
  const obj = expectObject(body)
  return {
    text: readText(obj.text, 'text'),
    ...readLabelFields(obj),
    options: parseSamplingFields(obj, limits),
  }
}

function readLabelFields(obj: JsonObject): LabelFields {
  const labels = readLabels(obj.labels)
  const examples = readExamples(obj.examples)
  return { ...(labels && { labels }), ...(examples && { examples }) }
}

/**
 * `examples`: up to MAX_EXAMPLES `{text, label}` objects; `[]` asks for none. Whether each
 * label is one of the request's labels is checked by the engine, which knows the default set.
 */
export function readExamples(value: unknown): LabelExample[] | undefined {
  if (isAbsent(value)) return undefined
  const shape = 'examples must be an array of {"text": string, "label": string} objects'
  if (!Array.isArray(value)) throw badRequest('examples', shape)
  if (value.length > MAX_EXAMPLES) {
    throw badRequest(
      'examples',
      `examples may hold at most ${MAX_EXAMPLES} entries, got ${value.length}`,
    )
  }
  return value.map((item: unknown, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw badRequest('examples', shape)
    }
    const e = item as JsonObject
    if (typeof e.label !== 'string') throw badRequest('examples', shape)
    return { text: readText(e.text, `examples[${i}].text`), label: e.label }
  })
}

/** `labels`: 2 to MAX_LABELS distinct, non-empty strings; absent = the engine's defaults. */
export function readLabels(value: unknown): string[] | undefined {
  if (isAbsent(value)) return undefined
  if (!Array.isArray(value)) throw badRequest('labels', 'labels must be an array of strings')
  if (value.length < 2 || value.length > MAX_LABELS) {
    throw new AppError(
      'invalid_labels',
      `labels must hold 2 to ${MAX_LABELS} entries, got ${value.length}`,
      {
        details: { param: 'labels' },
      },
    )
  }
  const seen = new Set<string>()
  for (const label of value as unknown[]) {
    if (typeof label !== 'string') throw badRequest('labels', 'labels must be an array of strings')
    if (label.trim() === '' || label.length > MAX_LABEL_LENGTH) {
      throw new AppError(
        'invalid_labels',
        `each label must have 1 to ${MAX_LABEL_LENGTH} characters`,
        {
          details: { param: 'labels' },
        },
      )
    }
    if (seen.has(label)) {
      throw new AppError('invalid_labels', `label "${label}" appears twice`, {
        details: { param: 'labels' },
      })
    }
    seen.add(label)
  }
  return [...seen]
}
