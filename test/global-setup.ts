/**
 * vitest globalSetup: generate the suite's synthetic models once, before any test file runs,
 * so parallel test files only read them. Already generated (and up to date) models are kept.
 */
import { buildStageWorker } from '../scripts/build-stage-worker.ts'
import { SUITE_MODELS, ensureModel } from './helpers/models.ts'

export default async function setup() {
  await buildStageWorker() // the Worker's bundle imports it (wrangler --dry-run, test/workers/node)
  for (const [preset, format, options] of SUITE_MODELS) await ensureModel(preset, format, options)
}
