/**
 * Synthetic models for tests, generated once into `.cache/models/<preset>-<format>[-variant]/`.
 *
 * A folder counts as ready when its marker file (written last) names the same arguments and
 * the same generator sources; otherwise it is regenerated, so editing the generator never
 * leaves tests on stale models. Generation goes to a temporary folder renamed into place, so
 * parallel test files asking for the same model cannot see half-written files. Models the
 * suite uses are made up front by `test/global-setup.ts`.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { cp, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ModelDims, PresetName, WeightFormat } from '../../scripts/lib/model-presets.ts'
import { generatorHash, makeModel } from '../../scripts/lib/synth-model.ts'

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const MODELS_DIR = join(REPO_ROOT, '.cache', 'models')
const MARKER = '.qwen-edge-complete.json'

export interface EnsureModelOptions {
  /** Default 0. */
  seed?: number
  /** `num_logits_to_keep` input; default true. */
  logitsToKeep?: boolean
  /** The embedding as its own float table beside the quantized lm_head (q4 exports). */
  embeddingTable?: boolean
  /** Force weights into `<name>.onnx_data` (true) or into the .onnx (false). */
  externalData?: boolean
  overrides?: Partial<ModelDims>
  /** Folder suffix; by default derived from the options above (`seed7-nokeep-ext`, ...). */
  variant?: string
}

/** The folder name `ensureModel` uses. */
export function modelDirName(
  preset: PresetName,
  format: WeightFormat,
  o: EnsureModelOptions = {},
): string {
  const parts: string[] = []
  if (o.seed) parts.push(`seed${o.seed}`)
  if (o.logitsToKeep === false) parts.push('nokeep')
  if (o.embeddingTable) parts.push('table')
  if (o.externalData === true) parts.push('ext')
  if (o.externalData === false) parts.push('embedded')
  if (o.overrides && Object.keys(o.overrides).length)
    parts.push(sha256(JSON.stringify(sortKeys(o.overrides))).slice(0, 8))
  const variant = o.variant ?? parts.join('-')
  return `${preset}-${format}${variant ? `-${variant}` : ''}`
}

const pending = new Map<string, Promise<string>>()

/**
 * Path of a generated model folder (Hugging Face layout), generating it if missing or stale.
 */
export function ensureModel(
  preset: PresetName,
  format: WeightFormat,
  options: EnsureModelOptions = {},
): Promise<string> {
  const dir = join(MODELS_DIR, modelDirName(preset, format, options))
  let p = pending.get(dir)
  if (!p) {
    p = Promise.resolve().then(() => generateIfNeeded(dir, preset, format, options))
    p.catch(() => pending.delete(dir))
    pending.set(dir, p)
  }
  return p
}

function generateIfNeeded(
  dir: string,
  preset: PresetName,
  format: WeightFormat,
  options: EnsureModelOptions,
): string {
  const marker = JSON.stringify({
    preset,
    format,
    seed: options.seed ?? 0,
    logitsToKeep: options.logitsToKeep ?? true,
    embeddingTable: options.embeddingTable,
    externalData: options.externalData ?? null,
    overrides: sortKeys(options.overrides ?? {}),
    generator: generatorHash(),
  })
  if (readMarker(dir) === marker) return dir
  const tmp = `${dir}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`
  try {
    makeModel({ ...options, preset, format, outDir: tmp })
    writeFileSync(join(tmp, MARKER), marker)
    if (readMarker(dir) === marker) return dir // another process finished first
    rmSync(dir, { recursive: true, force: true })
    try {
      renameSync(tmp, dir)
    } catch (err) {
      if (readMarker(dir) !== marker) throw err // lost a race to an equal model: fine
    }
    return dir
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
}

function readMarker(dir: string): string | undefined {
  const path = join(dir, MARKER)
  return existsSync(path) ? readFileSync(path, 'utf8') : undefined
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

function sortKeys(o: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)))
}

/** The models the test suite uses; `test/global-setup.ts` makes them before any test file. */
export const SUITE_MODELS: [PresetName, WeightFormat, EnsureModelOptions?][] = [
  ['tiny', 'fp32'],
  ['tiny', 'q8'],
  ['tiny', 'q4'],
  ['tiny', 'q4', { embeddingTable: true }],
  ['tiny', 'fp32', { logitsToKeep: false }],
  ['tiny', 'fp32', { externalData: true }],
  ['tiny-mha', 'fp32'],
  ['tiny-mha', 'q8'],
  ['tiny-mha', 'q4'],
]

/**
 * A new export folder at `to` with `from`'s config, generation config and tokenizer files and
 * an empty `onnx/`: for a test that writes its own variant of a generated graph there.
 */
export async function copyModelFolderMeta(from: string, to: string): Promise<void> {
  await mkdir(join(to, 'onnx'), { recursive: true })
  for (const f of [
    'config.json',
    'generation_config.json',
    'tokenizer.json',
    'tokenizer_config.json',
  ])
    await cp(join(from, f), join(to, f))
}
