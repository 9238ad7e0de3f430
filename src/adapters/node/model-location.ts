/**
 * What `MODEL` names, on Node: a package id under `model-shards/` (the local object store), a
 * folder (a model package with manifest.json, or a Hugging Face export folder), or an HTTP(S)
 * base URL of a package (`https://cdn.example/models/qwen2.5-0.5b-q8`).
 */
import { existsSync } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { BY_PATH, named } from '../named-package.ts'
import { splitPackageUrl } from '../package-url.ts'
import { fsSource } from './fs-source.ts'
import { loadHfFolder } from './hf-folder.ts'
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

export function resolveModelLocation(model = DEFAULT_MODEL, store = DEFAULT_STORE): ModelLocation {
  const url = splitPackageUrl(model)
  if (url) {
    return {
      describe: model,
      load: () => named(openPackage(httpSource(url.base), url.id, BY_PATH), url.id),
    }
  }
  const asFolder = resolve(model)
  if (existsSync(join(asFolder, 'manifest.json'))) {
    const id = basename(asFolder)
    return {
      describe: asFolder,
      load: () => named(openPackage(fsSource(dirname(asFolder)), id, BY_PATH), id),
    }
  }
  if (existsSync(join(asFolder, 'config.json')) && existsSync(join(asFolder, 'onnx'))) {
    return { describe: `${asFolder} (Hugging Face layout)`, load: () => loadHfFolder(asFolder) }
  }
  const root = resolve(store)
  return { describe: join(root, model), load: () => openPackage(fsSource(root), model) }
}
