/**
 * Pure, shared by the Node and Deno entries: `MODEL` given as an http(s) URL names a package by
 * its last path segment, read from the folder above it. No runtime APIs here.
 *
 *   splitPackageUrl('https://cdn.example/models/qwen2.5-0.5b-q8/')
 *   // → { base: URL('https://cdn.example/models/'), id: 'qwen2.5-0.5b-q8' }
 */
export interface PackageUrl {
  /** The store: `${base}${id}/manifest.json` is the package's manifest. */
  base: URL
  id: string
}

/** `undefined` when `model` is not an http(s) URL (then it is a package id or a folder). */
export function splitPackageUrl(model: string): PackageUrl | undefined {
  if (!/^https?:\/\//i.test(model)) return undefined
  const url = new URL(model.replace(/\/+$/, ''))
  const segment = url.pathname.split('/').pop() ?? '' // still percent-encoded
  const base = new URL(url.pathname.slice(0, url.pathname.length - segment.length) || '/', url)
  return { base, id: decodeURIComponent(segment) }
}
