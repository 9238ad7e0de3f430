/**
 * A staged package in R2 with one flipped byte in a shard of the head: the stages that hold
 * those rows fail to load, the front answers 503 JSON naming the stage and the shard, nothing
 * failed is kept, and once the shard is repaired the next request loads every stage. Its own
 * file, so its own isolate and Durable Objects that have loaded nothing.
 */
import { env } from 'cloudflare:workers'
import { beforeAll, expect, it } from 'vitest'
import { parseManifest } from '../../src/format/index.ts'
import { STAGED_PACKAGE } from './fixtures.ts'
import { workerWith } from './handler.ts'
import { hostFile, seedPackage, type SeededPackage } from './seed.ts'

const BROKEN_ID = 'tiny-staged-broken'
const testEnv = { ...env, MODEL: BROKEN_ID }

const { call, post } = workerWith(testEnv)
const sentiment = () => post('/v1/sentiment', { text: 'good' })

let seeded: SeededPackage
let shard: string

beforeAll(async () => {
  const manifest = parseManifest(
    JSON.parse(
      new TextDecoder().decode(await hostFile(`packages/${STAGED_PACKAGE}/manifest.json`)),
    ),
  )
  // the first shard of the head: rows of the first row stage only
  shard = manifest.head!.file.shards[0].path
  seeded = await seedPackage(STAGED_PACKAGE, {
    root: 'packages',
    as: BROKEN_ID,
    alter: (path, bytes) => {
      if (path !== shard) return bytes
      const flipped = bytes.slice()
      flipped[flipped.length >> 1] ^= 0x01
      return flipped
    },
  })
})

it('names the stage and the shard in a 503, and loads every stage after the repair', async () => {
  const res = await sentiment()
  expect(res.status).toBe(503)
  const body = await res.json()
  expect(body.error.code).toBe('model_invalid')
  expect(body.error.message).toMatch(/^Stage \d+: /)
  expect(body.error.message).toContain(`${BROKEN_ID}/${shard}`)
  expect(body.error.message).toMatch(/checksum/i)
  expect((await call('/health')).status).toBe(503)

  await env.MODEL_BUCKET.put(`${BROKEN_ID}/${shard}`, seeded.files.get(shard)!)
  const repaired = await sentiment()
  expect(repaired.status).toBe(200)
  const health = await call('/health')
  expect(health.status).toBe(200)
  const stages: Array<{ status: string }> = (await health.json()).stages
  expect(stages.length).toBeGreaterThanOrEqual(3)
  expect(stages.every((s) => s.status === 'ready')).toBe(true)
})
