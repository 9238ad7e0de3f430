/**
 * `POST /v1/sentiment`: `{text, labels?, examples?}` → `{label, score, scores}`, or
 * `{texts: [...], labels?, examples?}` → `{results: [{label, score, scores}, ...]}` (in order,
 * one at a time so a batch does not flood the scheduler; admitted as a whole by its tokens, or
 * 429 `queue_full` when too much classification work is queued). Default labels: 正面/负面 for Chinese
 * text, positive/negative otherwise (the engine decides, per text), with built-in examples.
 */
import { Hono, type Env } from 'hono'
import type { ClassifyResult, Engine } from '../engine/types.ts'
import { linkClientSignal } from './chat-run.ts'
import { parseSentimentBody, type LabelFields } from './parse-sentiment-body.ts'
import { readJsonBody } from './read-json-body.ts'
import type { RouteDeps } from './route-deps.ts'

export function sentimentRoute<E extends Env>(deps: RouteDeps<E>): Hono<E> {
  return new Hono<E>().post('/', async (c) => {
    const config = deps.config(c)
    const input = parseSentimentBody(await readJsonBody(c.req.raw, config.maxBodyBytes))
    const engine = await deps.engine(c)
    const cancel = linkClientSignal(c.req.raw)
    try {
      const texts = input.kind === 'single' ? [input.text] : input.texts
      const answers = await engine.classifyAll(texts, {
        ...(input.labels && { labels: input.labels }),
        ...(input.examples && { examples: input.examples }),
        signal: cancel.signal,
      })
      const results = answers.map(({ label, score, scores }) => ({ label, score, scores }))
      return c.json(input.kind === 'single' ? results[0] : { results })
    } finally {
      cancel.dispose()
    }
  })
}

/** The engine's answer reduced to the documented fields. */
export async function classifyText(
  engine: Engine,
  text: string,
  options: LabelFields & { signal: AbortSignal },
): Promise<ClassifyResult> {
  const { label, score, scores } = await engine.classify(text, {
    ...(options.labels && { labels: options.labels }),
    ...(options.examples && { examples: options.examples }),
    signal: options.signal,
  })
  return { label, score, scores }
}
