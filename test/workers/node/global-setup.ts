/**
 * globalSetup of the `workers` vitest project (runs in Node, once): answers the requests of
 * test/workers/fixtures.ts with the same Hono app and the same model package on Node, and hands
 * the answers to the tests inside workerd (`inject('nodeReference')`), which must get the very
 * same numbers from the Worker.
 */
import type { TestProject } from 'vitest/node'
import { createApp } from '../../../src/app.ts'
import { QwenEngine } from '../../../src/engine/engine.ts'
import { loadPackage, openPackage } from '../../../src/engine/package/loader.ts'
import { buildStageWorker } from '../../../scripts/build-stage-worker.ts'
import { preparePackage } from '../../../scripts/prepare-model.ts'
import { ensureModel } from '../../helpers/models.ts'
import { fsSource } from '../../../src/adapters/node/fs-source.ts'
import {
  CHAT_BODY,
  PACKAGE_ID,
  SENTIMENT_TEXTS,
  STAGED_BUDGET_BYTES,
  STAGED_PACKAGE,
  type ChatAnswer,
  type NodeReference,
  type SentimentAnswer,
} from '../fixtures.ts'
import { MODEL_SHARDS_DIR, TEST_PACKAGES_DIR } from './host-files.ts'

export default async function setup(project: TestProject): Promise<void> {
  await buildStageWorker() // the code the stage host hands to Worker Loader
  const whole = await answers(
    await QwenEngine.create(await loadPackage(fsSource(MODEL_SHARDS_DIR), PACKAGE_ID)),
  )
  // the staged package, its stages in this process (the front the Worker runs, the same stages);
  // its plan counts the KV cache in q8, so every stage runs q8 KV with no KV_FORMAT set (the
  // longer context keeps the layers in two stages)
  await preparePackage({
    folder: await ensureModel('tiny', 'q8', { overrides: { numLayers: 4 } }),
    id: STAGED_PACKAGE,
    out: TEST_PACKAGES_DIR,
    shardBytes: 256 * 1024,
    quiet: true,
    verify: false,
    stageBudgetBytes: STAGED_BUDGET_BYTES,
    stageContext: 16384,
    stageKvFormat: 'q8',
  })
  const handle = await openPackage(fsSource(TEST_PACKAGES_DIR), STAGED_PACKAGE)
  const stages = handle.manifest.pipeline!.stages.length
  const staged = await answers(await QwenEngine.create(handle))
  project.provide('nodeReference', { ...whole, staged: { ...staged, stages } })
}

/** The fixtures' requests, answered by `engine` through the app. */
async function answers(engine: QwenEngine): Promise<Omit<NodeReference, 'staged'>> {
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
  return { sentiment, chat: answer }
}
