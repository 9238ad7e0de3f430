/**
 * The benchmark's model: the synthetic `qwen2.5-0.5b` q8 export with external data, built once
 * into `.cache/models/` (outside git) and reused. Built into a temporary folder and renamed, so
 * an interrupted build never leaves a half-written model behind. The peers read that Hugging
 * Face layout folder; the engine reads the model package `model:prepare` makes of it (lm_head
 * split off into head.q8, as a server would load it), in `.cache/bench/packages/`.
 */
import {
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { preparePackage } from '../prepare-model.ts'
import { setAccuracyLevel } from '../lib/graph-rewrite.ts'
import { decodeModel, encodeModel } from '../lib/onnx/index.ts'
import { generatorHash, makeModel, type MakeModelOptions } from '../lib/synth-model.ts'

export const BENCH_MODEL_ID = 'qwen2.5-0.5b-q8-ext'
export const MODELS_DIR = join('.cache', 'models')

/** The file in a built model folder naming the generator that built it (`generatorHash`). */
const GENERATOR_MARKER = '.generator'

/**
 * Returns the folder of the model, building it first when missing or built by another version
 * of the generator (its packages are then prepared again: they are older than its config.json).
 */
export function ensureModel(
  id: string,
  options: Omit<MakeModelOptions, 'outDir'>,
  log: (line: string) => void,
): string {
  const dir = join(MODELS_DIR, id)
  const marker = join(dir, GENERATOR_MARKER)
  if (existsSync(marker) && readFileSync(marker, 'utf8') === generatorHash()) return dir
  const tmp = `${dir}.partial`
  rmSync(tmp, { recursive: true, force: true })
  log(`building ${dir} (once per generator version; cached outside git)…`)
  const started = performance.now()
  makeModel({ ...options, outDir: tmp })
  writeFileSync(join(tmp, GENERATOR_MARKER), generatorHash())
  rmSync(dir, { recursive: true, force: true })
  rmSync(`${dir}-acc4`, { recursive: true, force: true })
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

/** The synthetic `qwen2.5-0.5b` q4 export (MatMulNBits, block 32) the q4 columns run. */
export const BENCH_Q4_MODEL_ID = 'qwen2.5-0.5b-q4-ext'

export function ensureBenchQ4Model(log: (line: string) => void): string {
  return ensureModel(
    BENCH_Q4_MODEL_ID,
    { preset: 'qwen2.5-0.5b', format: 'q4', externalData: true },
    log,
  )
}

/** The engine's package of the q8 bench model (prepared again when the folder is newer). */
export function ensureBenchPackage(modelDir: string, log: (line: string) => void) {
  return ensurePackage(modelDir, BENCH_MODEL_ID, log)
}

/** The file in a prepared package naming the toolchain that prepared it (`toolchainHash`). */
const TOOLCHAIN_MARKER = '.prepared-by'

/**
 * A hash of what `model:prepare` writes a package with: prepare-model.ts, the toolchain's
 * scripts/lib and the package format (src/format). A package another version prepared is
 * prepared again, so a run never measures a layout the code no longer writes.
 */
export function toolchainHash(): string {
  const hash = createHash('sha256')
  const files = [
    join('scripts', 'prepare-model.ts'),
    ...['scripts/lib', 'scripts/lib/onnx', 'src/format'].flatMap((d) =>
      readdirSync(d)
        .filter((f) => f.endsWith('.ts'))
        .sort()
        .map((f) => join(d, f)),
    ),
  ]
  for (const f of files) hash.update(f).update('\0').update(readFileSync(f)).update('\0')
  return hash.digest('hex')
}

/**
 * The engine's package of `modelDir` as `model:prepare` makes it with no flags (prepared again
 * when the folder is newer or another toolchain prepared it), with its head split and decoder
 * map, or an error saying why not.
 */
export async function ensurePackage(
  modelDir: string,
  id: string,
  log: (line: string) => void,
): Promise<string> {
  const manifest = join(PACKAGES_DIR, id, 'manifest.json')
  const marker = join(PACKAGES_DIR, id, TOOLCHAIN_MARKER)
  const toolchain = toolchainHash()
  if (
    existsSync(manifest) &&
    statSync(manifest).mtimeMs > statSync(join(modelDir, 'config.json')).mtimeMs &&
    existsSync(marker) &&
    readFileSync(marker, 'utf8') === toolchain
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
  writeFileSync(marker, toolchain)
  log(`prepared in ${((performance.now() - started) / 1000).toFixed(0)} s`)
  return join(PACKAGES_DIR, id)
}

/** Files of a package that hold weights (not its manifest, graph, tokenizer or configs). */
export function packageWeightBytes(packageDir: string): number {
  const meta = /^(manifest|tokenizer|tokenizer_config|config|generation_config)\.json$|\.onnx$|^\./
  return readdirSync(packageDir)
    .filter((f) => !meta.test(f))
    .reduce((n, f) => n + statSync(join(packageDir, f)).size, 0)
}

/**
 * A copy of the model folder whose graph runs every MatMulNBits at `accuracy_level` `level`
 * (4: int8 activations per block, onnxruntime's fastest CPU path); the weights file is a hard
 * link to the original's, not a copy.
 */
export function ensureAccuracyLevel(modelDir: string, level: number, log: (l: string) => void) {
  const dir = `${modelDir}-acc${level}`
  if (existsSync(join(dir, 'config.json'))) return dir
  log(`writing ${dir} (accuracy_level ${level})…`)
  const tmp = `${dir}.partial`
  rmSync(tmp, { recursive: true, force: true })
  mkdirSync(join(tmp, 'onnx'), { recursive: true })
  for (const f of readdirSync(modelDir))
    if (f !== 'onnx') copyFileSync(join(modelDir, f), join(tmp, f))
  for (const f of readdirSync(join(modelDir, 'onnx'))) {
    const from = join(modelDir, 'onnx', f)
    if (!f.endsWith('.onnx')) {
      linkSync(from, join(tmp, 'onnx', f))
      continue
    }
    const model = decodeModel(new Uint8Array(readFileSync(from)))
    setAccuracyLevel(model, level)
    writeFileSync(join(tmp, 'onnx', f), encodeModel(model))
  }
  renameSync(tmp, dir)
  return dir
}
