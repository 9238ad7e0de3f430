/**
 * `POST /v1/sentiment`: `{text, labels?, examples?}` → `{label, score, scores}`, or
 * `{texts: [...], labels?, examples?}` → `{results: [{label, score, scores}, ...]}` (in order,
 * one at a time so a batch does not flood the scheduler). Default labels: 正面/负面 for Chinese
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
      const classify = (text: string) =>
        classifyText(engine, text, {
          labels: input.labels,
          examples: input.examples,
          signal: cancel.signal,
        })
      if (input.kind === 'single') return c.json(await classify(input.text))
      const results: ClassifyResult[] = []
      for (const text of input.texts) results.push(await classify(text))
      return c.json({ results })
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
