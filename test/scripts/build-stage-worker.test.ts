/**
 * The stage Worker's bundle is imported by the front Worker, so a running `wrangler dev`
 * restarts on every write to it and fails its requests in flight; every `npm run dev:worker`
 * (the test servers' too) builds it first. A build that changes nothing must leave it alone.
 */
import { statSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { buildStageWorker, STAGE_WORKER_FILE } from '../../scripts/build-stage-worker.ts'

describe('build:stage-worker', () => {
  it('leaves the file untouched when the build is the same (a running wrangler dev would restart)', async () => {
    const first = await buildStageWorker() // the suite's global setup built it: no change either
    const before = statSync(STAGE_WORKER_FILE).mtimeMs
    const again = await buildStageWorker()
    expect(again.hash).toBe(first.hash)
    expect(again.written).toBe(false)
    expect(statSync(STAGE_WORKER_FILE).mtimeMs).toBe(before)
  })
})
