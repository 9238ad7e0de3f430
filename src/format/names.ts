/** Naming rules of model packages: shard names, object keys, package ids, safe paths. */
import type { Manifest, ManifestFile } from './manifest.ts'

/** `model.onnx_data`, shard 3 of 31 → `model.onnx_data.003` (at least 3 digits, sorts right). */
export function shardName(location: string, index: number, count: number): string {
  const width = Math.max(3, String(count - 1).length)
  return `${location}.${String(index).padStart(width, '0')}`
}

/** The external-data file prepare writes for a graph: `model_q4.onnx` → `model_q4.onnx_data`. */
export function externalDataName(graphFile: string): string {
  return `${graphFile}_data`
}

/** Byte ranges of `total` bytes cut into shards of `shardBytes`: [offset, length] pairs. */
export function shardRanges(total: number, shardBytes: number): Array<[number, number]> {
  if (!(shardBytes > 0)) throw new RangeError(`shard size must be positive, got ${shardBytes}`)
  const ranges: Array<[number, number]> = []
  for (let offset = 0; offset < total; offset += shardBytes) {
    ranges.push([offset, Math.min(shardBytes, total - offset)])
  }
  return ranges
}

/** Object key of a package file: `<id>/<path>`. */
export function packageKey(id: string, path: string): string {
  return `${id}/${path}`
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/
const SEGMENT_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/
export const SHA256_RE = /^[0-9a-f]{64}$/

/** Package ids are one path segment: letters, digits, '.', '_', '-'. */
export function isValidPackageId(id: string): boolean {
  return ID_RE.test(id) && !id.includes('..')
}

/** A relative path without '..', empty or dot-leading segments (no way out of the package). */
export function isSafeRelativePath(path: string): boolean {
  return path.length > 0 && path.length <= 512 && path.split('/').every((s) => SEGMENT_RE.test(s))
}

/** Every file of the package (tokenizer, graphs, shards, decoder and head shards), in load order. */
export function listFiles(manifest: Manifest): ManifestFile[] {
  const files = [manifest.tokenizer.json, manifest.tokenizer.config]
  for (const stage of manifest.stages) {
    files.push(stage.graph)
    for (const ext of stage.externalData) files.push(...ext.shards)
  }
  if (manifest.decoder?.file) files.push(...manifest.decoder.file.shards)
  if (manifest.head) files.push(...manifest.head.file.shards)
  return files
}
