import { describe, expect, it } from 'vitest'
import { StopMatcher } from '../../src/core/stop.ts'

function run(stops: string[], deltas: string[]) {
  const m = new StopMatcher(stops)
  const out: string[] = []
  for (const d of deltas) {
    const r = m.push(d)
    if (r.text) out.push(r.text)
    if (r.stopped) return { out, stopped: true }
  }
  const rest = m.flush()
  if (rest) out.push(rest)
  return { out, stopped: false }
}

describe('StopMatcher', () => {
  it('stops before a stop string split across deltas and never emits part of it', () => {
    const r = run(['END'], ['hello E', 'N', 'D and more'])
    expect(r).toEqual({ out: ['hello ', ''].filter(Boolean), stopped: true })
    expect(r.out.join('')).toBe('hello ')
  })

  it('releases held text that turned out not to be a stop string', () => {
    const r = run(['END'], ['hello E', 'NX', '!'])
    expect(r.out.join('')).toBe('hello ENX!')
    expect(r.stopped).toBe(false)
  })

  it('picks the earliest of several stop strings, Chinese included', () => {
    const r = run(['。', 'STOP'], ['你好', 'STO', 'P世界。'])
    expect(r.out.join('')).toBe('你好')
    expect(r.stopped).toBe(true)
  })

  it('flushes a held prefix at the end', () => {
    const r = run(['###'], ['a#', '#'])
    expect(r.out.join('')).toBe('a##')
  })

  it('passes everything through with no stop strings', () => {
    expect(run([], ['a', 'b']).out).toEqual(['a', 'b'])
  })
})
