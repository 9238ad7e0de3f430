/**
 * What `MODEL` names, on Deno: a package id under `model-shards/` (or MODEL_STORE), a package
 * folder (with manifest.json), or an http(s) base URL of a package. Same rules as the Node
 * entry, minus Hugging Face export folders: package those with `npm run model:prepare` first.
 */
import { isValidPackageId } from '../../format/index.ts'
import { BY_PATH, named } from '../named-package.ts'
import { splitPackageUrl } from '../package-url.ts'
import { fsSource } from './fs-source.ts'
import {
  httpSource,
  type LoadedPackage,
  openPackage,
  type PackageHandle,
} from '../../engine/index.ts'

export const DEFAULT_MODEL = 'qwen2-tiny-random-q8'
export const DEFAULT_STORE = 'model-shards'

export interface ModelLocation {
  describe: string
  load(): Promise<LoadedPackage | PackageHandle>
}

declare const Deno: {
  stat(path: string): Promise<{ isFile: boolean; isDirectory: boolean }>
  cwd(): string
}

export async function resolveModelLocation(
  model = DEFAULT_MODEL,
  store = DEFAULT_STORE,
): Promise<ModelLocation> {
  const url = splitPackageUrl(model)
  if (url) {
    return {
      describe: model,
      load: () => named(openPackage(httpSource(url.base), url.id, BY_PATH), url.id),
    }
  }

  const folder = absolute(model).replace(/\/+$/, '')
  if (await isFile(`${folder}/manifest.json`)) {
    const cut = folder.lastIndexOf('/')
    const [parent, id] = [folder.slice(0, cut) || '/', folder.slice(cut + 1)]
    return { describe: folder, load: () => named(openPackage(fsSource(parent), id, BY_PATH), id) }
  }
  if ((await isFile(`${folder}/config.json`)) && (await isDirectory(`${folder}/onnx`))) {
    throw new Error(
      `MODEL=${model} is a Hugging Face export folder; the Deno entry serves model packages: ` +
        `run \`npm run model:prepare\` on it first (or serve the folder with \`npm start\`)`,
    )
  }
  if (!isValidPackageId(model)) {
    throw new Error(`MODEL=${model}: no manifest.json there, and not a package id either`)
  }
  const root = absolute(store).replace(/\/+$/, '')
  return { describe: `${root}/${model}`, load: () => openPackage(fsSource(root), model) }
}

function absolute(path: string): string {
  return path.startsWith('/') ? path : `${Deno.cwd()}/${path.replace(/^\.\//, '')}`
}

async function isFile(path: string): Promise<boolean> {
  return (await statOrNull(path))?.isFile ?? false
}

async function isDirectory(path: string): Promise<boolean> {
  return (await statOrNull(path))?.isDirectory ?? false
}

async function statOrNull(path: string) {
  try {
    return await Deno.stat(path)
  } catch {
    return null // missing or not readable: not this kind of location
  }
}
