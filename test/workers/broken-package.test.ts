/**
 * A package in R2 with one flipped byte in its weight shard: the Worker answers 503 JSON naming
 * the shard, caches nothing, and loads the package on the next request once the shard is
 * repaired. Its own file, so its own isolate: this Worker has loaded nothing yet.
 */
import { env } from 'cloudflare:workers'
import { beforeAll, expect, it } from 'vitest'
import { PACKAGE_ID } from './fixtures.ts'
import { workerWith } from './handler.ts'
import { countingBucket, seedPackage, type SeededPackage } from './seed.ts'

const BROKEN_ID = 'qwen2-tiny-broken'
const SHARD = 'model_quantized.onnx_data.000'

const bucket = countingBucket(env.MODEL_BUCKET)
// The real handler with this package's id; the bucket counts the reads of each load.
const testEnv = { ...env, MODEL: BROKEN_ID, MODEL_BUCKET: bucket }

const { call, post } = workerWith(testEnv)
const sentiment = () => post('/v1/sentiment', { text: 'good' })

let seeded: SeededPackage

beforeAll(async () => {
  seeded = await seedPackage(PACKAGE_ID, {
    as: BROKEN_ID,
    alter: (path, bytes) => {
      if (path !== SHARD) return bytes
      const flipped = bytes.slice()
      flipped[flipped.length >> 1] ^= 0x01
      return flipped
    },
  })
})

it('names the broken shard in a 503, and loads after the repair without a cached failure', async () => {
  const manifestKey = `${BROKEN_ID}/manifest.json`
  const res = await sentiment()
  expect(res.status).toBe(503)
  expect(res.headers.get('content-type')).toMatch(/^application\/json/)
  const body = await res.json()
  expect(body.error.code).toBe('model_invalid')
  expect(body.error.message).toContain(`${BROKEN_ID}/${SHARD}`)
  expect(body.error.message).toMatch(/checksum/i)
  expect(bucket.gets.get(manifestKey)).toBe(1)

  const health = await call('/health')
  expect(health.status).toBe(503)
  expect(await health.json()).toMatchObject({ status: 'failed' })

  // still broken: the next request tries again (and fails again) instead of replaying the error
  expect((await sentiment()).status).toBe(503)
  expect(bucket.gets.get(manifestKey)).toBe(2)

  await env.MODEL_BUCKET.put(`${BROKEN_ID}/${SHARD}`, seeded.files.get(SHARD)!)
  const repaired = await sentiment()
  expect(repaired.status).toBe(200)
  expect(await repaired.json()).toMatchObject({
    label: expect.stringMatching(/^(positive|negative)$/),
  })
  expect(bucket.gets.get(manifestKey)).toBe(3)
  expect((await call('/health')).status).toBe(200)
})
