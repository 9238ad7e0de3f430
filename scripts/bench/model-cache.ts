/**
 * The benchmark's model: the synthetic `qwen2.5-0.5b` q8 package with external data, built once
 * into `.cache/models/` (outside git) and reused. Built into a temporary folder and renamed, so
 * an interrupted build never leaves a half-written model behind.
 */
import { existsSync, renameSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { makeModel, type MakeModelOptions } from '../lib/synth-model.ts'

export const BENCH_MODEL_ID = 'qwen2.5-0.5b-q8-ext'
export const MODELS_DIR = join('.cache', 'models')

/** Returns the folder of the model, building it first when missing. */
export function ensureModel(
  id: string,
  options: Omit<MakeModelOptions, 'outDir'>,
  log: (line: string) => void,
): string {
  const dir = join(MODELS_DIR, id)
  if (existsSync(join(dir, 'config.json'))) return dir
  const tmp = `${dir}.partial`
  rmSync(tmp, { recursive: true, force: true })
  log(`building ${dir} (once; cached outside git)…`)
  const started = performance.now()
  makeModel({ ...options, outDir: tmp })
  renameSync(tmp, dir)
  log(`built ${dir} in ${((performance.now() - started) / 1000).toFixed(0)} s`)
  return dir
}

export function ensureBenchModel(log: (line: string) => void): string {
  return ensureModel(
    BENCH_MODEL_ID,
    { preset: 'qwen2.5-0.5b', format: 'q8', externalData: true },
    log,
  )
}
