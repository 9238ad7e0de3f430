/**
 * MODEL names a package by id (looked up in the store: the manifest must say that id) or by its
 * location (a folder path: served under its manifest's id, even when the folder was renamed).
 */
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { resolveModelLocation } from '../../src/adapters/node/model-location.ts'
import { MODEL_ID, ROOT } from '../runtimes/runtimes.ts'

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qwen-edge-location-'))
  await cp(join(ROOT, 'model-shards', MODEL_ID), join(dir, `${MODEL_ID}-backup`), {
    recursive: true,
  })
})
afterAll(() => rm(dir, { recursive: true, force: true }))

describe('MODEL on Node', () => {
  it('serves a renamed package folder under its manifest id, and says so', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {})
    try {
      const pkg = await resolveModelLocation(join(dir, `${MODEL_ID}-backup`)).load()
      expect(pkg.id).toBe(MODEL_ID)
      expect(log).toHaveBeenCalledWith(
        `serving ${MODEL_ID}-backup as package ${MODEL_ID} (the id in its manifest.json)`,
      )
    } finally {
      log.mockRestore()
    }
  })

  it('still refuses a store lookup whose manifest names another package', async () => {
    const err = await resolveModelLocation(`${MODEL_ID}-backup`, dir)
      .load()
      .catch((e: unknown) => e)
    expect(err).toMatchObject({
      code: 'model_invalid',
      message: `${MODEL_ID}-backup/manifest.json describes package ${MODEL_ID}, not ${MODEL_ID}-backup`,
    })
  })
})
