/**
 * globalSetup of the `workers` vitest project (runs in Node, once): answers the requests of
 * test/workers/fixtures.ts with the same Hono app and the same model package on Node, and hands
 * the answers to the tests inside workerd (`inject('nodeReference')`), which must get the very
 * same numbers from the Worker.
 */
import type { TestProject } from 'vitest/node'
import { createApp } from '../../../src/app.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import { loadPackage } from '../../../src/engine/package/loader.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import {
  CHAT_BODY,
  PACKAGE_ID,
  SENTIMENT_TEXTS,
  type ChatAnswer,
  type SentimentAnswer,
} from '../fixtures.ts'
import { MODEL_SHARDS_DIR } from './host-files.ts'

export default async function setup(project: TestProject): Promise<void> {
  const engine = await QwenEngine.create(await loadPackage(fsSource(MODEL_SHARDS_DIR), PACKAGE_ID))
  const app = createApp({ getEngine: async () => engine })
  const post = async (path: string, body: unknown) => {
    const res = await app.request(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    if (res.status !== 200) throw new Error(`Node ${path}: ${res.status} ${await res.text()}`)
    return res.json()
  }
  const sentiment: SentimentAnswer[] = []
  for (const text of SENTIMENT_TEXTS) sentiment.push(await post('/v1/sentiment', { text }))
  const chat = await post('/v1/chat', { ...CHAT_BODY, stream: false })
  const answer: ChatAnswer = {
    content: chat.message.content,
    finish_reason: chat.finish_reason,
    usage: chat.usage,
  }
  project.provide('nodeReference', { sentiment, chat: answer })
}
