/**
 * Reads a Hugging Face layout folder (config.json, generation_config.json, tokenizer files,
 * onnx/*.onnx [+ external data]) straight into a LoadedPackage: for tests, scripts and local
 * development with an export that was not packaged.
 */
import { existsSync } from 'node:fs'
import { readFile, readdir } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { type LoadedPackage } from '../../engine/index.ts'

/** Preferred ONNX file names, fastest on WASM first. */
const ONNX_ORDER = ['model_quantized.onnx', 'model.onnx', 'model_q4.onnx']

export async function loadHfFolder(dir: string, file?: string): Promise<LoadedPackage> {
  const json = async (name: string, fallback?: unknown) => {
    const path = join(dir, name)
    if (!existsSync(path) && fallback !== undefined) return fallback
    return JSON.parse(await readFile(path, 'utf8'))
  }
  const onnxPath = join(dir, file ?? (await pickOnnx(dir)))
  const externalData = []
  for (const candidate of [`${onnxPath}_data`, `${onnxPath}.data`]) {
    if (existsSync(candidate)) {
      externalData.push({
        path: basename(candidate),
        data: new Uint8Array(await readFile(candidate)),
      })
    }
  }
  return {
    id: basename(dir),
    config: await json('config.json'),
    generationConfig: await json('generation_config.json', {}),
    tokenizerJson: await json('tokenizer.json'),
    tokenizerConfig: await json('tokenizer_config.json'),
    graph: new Uint8Array(await readFile(onnxPath)),
    externalData,
  }
}

async function pickOnnx(dir: string): Promise<string> {
  const files = await readdir(join(dir, 'onnx'))
  const pick = ONNX_ORDER.find((f) => files.includes(f)) ?? files.find((f) => f.endsWith('.onnx'))
  if (!pick) throw new Error(`no .onnx file under ${join(dir, 'onnx')}`)
  return join('onnx', pick)
}
