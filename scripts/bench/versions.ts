/** Versions of the installed packages the benchmark compares, read from their package.json. */
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))

/** `name`'s version under node_modules (a nested path such as `a/node_modules/b` works too). */
export function packageVersion(name: string): string {
  try {
    const pkg = JSON.parse(readFileSync(`${ROOT}node_modules/${name}/package.json`, 'utf8'))
    return String(pkg.version)
  } catch {
    return 'not installed'
  }
}

/** Where transformers.js keeps its own onnxruntime-web (it pins a different one). */
export const TRANSFORMERS_ORT_WEB = '@huggingface/transformers/node_modules/onnxruntime-web'

export function repoRoot(): string {
  return ROOT
}
