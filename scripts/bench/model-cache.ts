/**
 * The benchmark's model: the synthetic `qwen2.5-0.5b` q8 export with external data, built once
 * into `.cache/models/` (outside git) and reused. Built into a temporary folder and renamed, so
 * an interrupted build never leaves a half-written model behind. The peers read that Hugging
 * Face layout folder; the engine reads the model package `model:prepare` makes of it (lm_head
 * split off into head.q8, as a server would load it), in `.cache/bench/packages/`.
 */
import { existsSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { preparePackage } from '../prepare-model.ts'
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

export const PACKAGES_DIR = join('.cache', 'bench', 'packages')

/** The engine's package of `modelDir` (prepared again when the folder is newer). */
export async function ensureBenchPackage(
  modelDir: string,
  log: (line: string) => void,
): Promise<string> {
  const id = BENCH_MODEL_ID
  const manifest = join(PACKAGES_DIR, id, 'manifest.json')
  if (
    existsSync(manifest) &&
    statSync(manifest).mtimeMs > statSync(join(modelDir, 'config.json')).mtimeMs &&
    // a package prepared before the decoder map existed is prepared again
    'decoder' in JSON.parse(readFileSync(manifest, 'utf8'))
  )
    return join(PACKAGES_DIR, id)
  log(`preparing the engine's package ${join(PACKAGES_DIR, id)} (once)…`)
  const started = performance.now()
  const { report } = await preparePackage({
    folder: modelDir,
    id,
    out: PACKAGES_DIR,
    head: 'wasm',
    quiet: true,
  })
  if (!report?.head?.applied)
    throw new Error(`the lm_head split was not applied: ${report?.head?.reason}`)
  if (!report.decoder?.applied)
    throw new Error(`the decoder map was not applied: ${report.decoder?.reason}`)
  log(`prepared in ${((performance.now() - started) / 1000).toFixed(0)} s`)
  return join(PACKAGES_DIR, id)
}
