import { describe, expect, it } from 'vitest'
import { splitPackageUrl } from '../../src/adapters/package-url.ts'

describe('splitPackageUrl', () => {
  it('names the package by the last segment, read from the folder above', () => {
    const at = splitPackageUrl('https://cdn.example/models/qwen2.5-0.5b-q8/')
    expect([at?.base.href, at?.id]).toEqual(['https://cdn.example/models/', 'qwen2.5-0.5b-q8'])
    const root = splitPackageUrl('http://127.0.0.1:8080/tiny')
    expect([root?.base.href, root?.id]).toEqual(['http://127.0.0.1:8080/', 'tiny'])
  })

  it('keeps percent-encoded ids apart from the base', () => {
    const at = splitPackageUrl('http://host/store/my%20model')
    expect([at?.base.href, at?.id]).toEqual(['http://host/store/', 'my model'])
  })

  it('leaves ids and folders alone', () => {
    expect(splitPackageUrl('qwen2-tiny-random-q8')).toBeUndefined()
    expect(splitPackageUrl('./model-shards/x')).toBeUndefined()
  })
})
