/**
 * Twenty concurrent first requests to a fresh isolate load the package from R2 exactly once:
 * every object is read once, and all twenty get the same answer. Its own file, so its own
 * isolate: this Worker has loaded nothing yet.
 */
import { env } from 'cloudflare:workers'
import { createExecutionContext, waitOnExecutionContext } from 'cloudflare:test'
import { beforeAll, expect, it } from 'vitest'
import worker from '../../src/adapters/workers/index.ts'
import { PACKAGE_ID } from './fixtures.ts'
import { countingBucket, seedPackage, type SeededPackage } from './seed.ts'

const bucket = countingBucket(env.MODEL_BUCKET)
// wrangler.toml allows 2 active + 8 queued requests; twenty at once must not meet a 429 here
const testEnv = { ...env, MODEL_BUCKET: bucket, MAX_QUEUED: '32' }

let seeded: SeededPackage

beforeAll(async () => {
  seeded = await seedPackage(PACKAGE_ID)
})

it('twenty concurrent first requests cause one load: every object read once', async () => {
  expect(bucket.gets.size).toBe(0)
  const started = performance.now()
  const responses = await Promise.all(
    Array.from({ length: 20 }, async () => {
      const ctx = createExecutionContext()
      const res = await worker.fetch(
        new Request('http://worker/v1/sentiment', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ text: '今天天气很好' }),
        }),
        testEnv,
        ctx,
      )
      await waitOnExecutionContext(ctx)
      return { status: res.status, body: await res.text() }
    }),
  )
  const ms = Math.round(performance.now() - started)
  expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200))
  expect(new Set(responses.map((r) => r.body)).size).toBe(1)
  expect(Object.fromEntries(bucket.gets)).toEqual(
    Object.fromEntries(seeded.keys.map((key) => [key, 1])),
  )
  console.log(`20 concurrent first requests: one load from R2, all answered in ${ms} ms`)
})
