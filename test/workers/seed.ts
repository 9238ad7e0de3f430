/**
 * Puts a model package from the repo's model-shards/ into miniflare's local R2 binding, as
 * `npm run model:upload -- <id> --local` does for `wrangler dev`: every file the manifest names
 * under `<id>/<file>`, the manifest last. Runs inside workerd; the bytes come from Node through
 * the HOST_FILES service binding.
 */
import { env } from 'cloudflare:workers'
import { MANIFEST_FILE, listFiles, parseManifest } from '../../src/format/index.ts'

export interface SeedOptions {
  /** The host folder the package is in: model-shards/ (default) or the prepared packages/. */
  root?: 'model-shards' | 'packages'
  /** Store the package under another id (its manifest says so too). */
  as?: string
  /** Change one file's bytes on the way, e.g. to flip a byte in a shard. */
  alter?: (path: string, bytes: Uint8Array) => Uint8Array
}

export interface SeededPackage {
  id: string
  /** Every object key put, manifest last. */
  keys: string[]
  /** The files as they are in model-shards/, by path inside the package. */
  files: Map<string, Uint8Array>
}

export async function hostFile(path: string): Promise<Uint8Array> {
  const res = await env.HOST_FILES.fetch(`http://host/${path}`)
  if (!res.ok) throw new Error(`HOST_FILES ${path}: ${res.status} ${await res.text()}`)
  return new Uint8Array(await res.arrayBuffer())
}

export async function seedPackage(id: string, options: SeedOptions = {}): Promise<SeededPackage> {
  const target = options.as ?? id
  const root = options.root ?? 'model-shards'
  const manifestBytes = await hostFile(`${root}/${id}/${MANIFEST_FILE}`)
  const manifestJson = JSON.parse(new TextDecoder().decode(manifestBytes))
  const manifest = parseManifest(manifestJson)
  const files = new Map<string, Uint8Array>()
  const keys: string[] = []
  for (const file of listFiles(manifest)) {
    const bytes = await hostFile(`${root}/${id}/${file.path}`)
    files.set(file.path, bytes)
    await env.MODEL_BUCKET.put(`${target}/${file.path}`, options.alter?.(file.path, bytes) ?? bytes)
    keys.push(`${target}/${file.path}`)
  }
  const finalManifest =
    target === id ? manifestBytes : JSON.stringify({ ...manifestJson, id: target }, null, 2)
  await env.MODEL_BUCKET.put(`${target}/${MANIFEST_FILE}`, finalManifest)
  keys.push(`${target}/${MANIFEST_FILE}`)
  return { id: target, keys, files }
}

/** A view of an R2 bucket that counts `get` calls per key, for "exactly one load" checks. */
export function countingBucket(bucket: { get(key: string): Promise<TestR2Object | null> }) {
  const gets = new Map<string, number>()
  return {
    gets,
    get(key: string) {
      gets.set(key, (gets.get(key) ?? 0) + 1)
      return bucket.get(key)
    },
  }
}
