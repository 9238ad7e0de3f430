import { describe, expect, it } from 'vitest'
import { generateTokens, type StepModel } from '../../../src/engine/serve/generate.ts'
import type { StepResult } from '../../../src/engine/forward.ts'
import type { KvCache } from '../../../src/engine/kv/kv-cache.ts'

const VOCAB = 151936 // Qwen's, so the real eos ids fit
const greedy = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 }

/** A model whose greedy continuation is `script`, one token per step; counts its steps. */
function scripted(script: number[]) {
  const calls: number[][] = []
  const model: StepModel = {
    emptyCache: () => ({ length: 0, tensors: {} }),
    async forward(ids: readonly number[], cache: KvCache): Promise<StepResult> {
      calls.push([...ids])
      const logits = new Float32Array(VOCAB)
      logits[script[calls.length - 1] ?? 0] = 10
      return { logits, rows: 1, cache: { length: cache.length + ids.length, tensors: {} } }
    },
  }
  return { model, calls }
}

const run = <T>(task: () => Promise<T>) => task()

async function collect(gen: AsyncGenerator<number, string>) {
  const ids: number[] = []
  for (;;) {
    const r = await gen.next()
    if (r.done) return { ids, finish: r.value }
    ids.push(r.value)
  }
}

const options = (o: object = {}) => ({
  maxNewTokens: 10,
  sampling: greedy,
  rng: () => 0,
  eosIds: new Set([15]),
  prefillChunk: 4,
  ...o,
})

describe('generateTokens', () => {
  it('stops on <|im_end|> (151645) without yielding it', async () => {
    const { model } = scripted([3, 4, 151645, 5])
    const r = await collect(
      generateTokens(model, run, [1, 2], options({ eosIds: new Set([151643, 151645]) })),
    )
    expect(r).toEqual({ ids: [3, 4], finish: 'stop' })
  })

  it('stops on an eos id without yielding it', async () => {
    const { model } = scripted([3, 4, 15, 5])
    const r = await collect(generateTokens(model, run, [1, 2], options()))
    expect(r).toEqual({ ids: [3, 4], finish: 'stop' })
  })

  it('stops on any of several eos ids (151643 and 151645 style)', async () => {
    const { model } = scripted([3, 14, 5])
    const r = await collect(generateTokens(model, run, [1], options({ eosIds: new Set([15, 14]) })))
    expect(r).toEqual({ ids: [3], finish: 'stop' })
  })

  it('reports length at max_new_tokens, without a wasted step', async () => {
    const { model, calls } = scripted([3, 4, 5, 6, 7])
    const r = await collect(generateTokens(model, run, [1], options({ maxNewTokens: 3 })))
    expect(r).toEqual({ ids: [3, 4, 5], finish: 'length' })
    expect(calls).toHaveLength(3) // prefill + 2 decode steps
  })

  it('asks a chunk-size function before every prefill chunk', async () => {
    const { model, calls } = scripted([9, 9, 9, 15]) // one entry per call: 4 prefill chunks
    const sizes = [3, 1, 4]
    const chunk = () => sizes.shift() ?? 2
    await collect(
      generateTokens(model, run, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], options({ prefillChunk: chunk })),
    )
    expect(calls).toEqual([[1, 2, 3], [4], [5, 6, 7, 8], [9, 10]])
  })

  it('prefills long prompts in chunks and decodes one token per step', async () => {
    const { model, calls } = scripted([9, 9, 9, 9, 3, 15])
    const r = await collect(generateTokens(model, run, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], options()))
    expect(calls.slice(0, 3)).toEqual([
      [1, 2, 3, 4],
      [5, 6, 7, 8],
      [9, 10],
    ])
    expect(calls.slice(3)).toEqual([[9], [9], [3]])
    expect(r).toEqual({ ids: [9, 9, 3], finish: 'stop' })
  })

  it('stops within one step of an abort', async () => {
    const { model, calls } = scripted(Array(50).fill(3))
    const ac = new AbortController()
    const gen = generateTokens(model, run, [1], options({ maxNewTokens: 50, signal: ac.signal }))
    await gen.next()
    await gen.next()
    const before = calls.length
    ac.abort()
    const r = await gen.next()
    expect(r).toEqual({ done: true, value: 'cancelled' })
    expect(calls.length - before).toBeLessThanOrEqual(1)
  })

  it('applies the repetition penalty to prompt and generated tokens', async () => {
    // logits: token 3 = 10 at every step, token 4 = 6; penalty 2 makes a seen 3 worth 5 < 6
    const model: StepModel = {
      emptyCache: () => ({ length: 0, tensors: {} }),
      async forward(ids, cache) {
        const logits = new Float32Array(VOCAB)
        logits[3] = 10
        logits[4] = 6
        return { logits, rows: 1, cache: { length: cache.length + ids.length, tensors: {} } }
      },
    }
    const sampling = { ...greedy, repetitionPenalty: 2 }
    const fresh = await collect(
      generateTokens(model, run, [1], options({ maxNewTokens: 3, sampling })),
    )
    expect(fresh.ids).toEqual([3, 4, 3]) // 3 seen: 5 < 6 → 4; then 4 seen too: 5 > 3 → 3
    const seen = await collect(
      generateTokens(model, run, [3], options({ maxNewTokens: 1, sampling })),
    )
    expect(seen.ids).toEqual([4])
  })

  it('gives back a start cache it owns when no prompt chunk ran: cancelled, max_tokens 0, an error', async () => {
    const start: KvCache = { length: 2, tensors: {} }
    const released: KvCache[] = []
    const withRelease = (model: StepModel): StepModel => ({
      ...model,
      releaseCache: (c: KvCache) => void released.push(c),
    })
    const cases: Array<[string, object, StepModel['forward'] | undefined]> = [
      ['cancelled before the prompt ran', { signal: AbortSignal.abort() }, undefined],
      ['max_tokens 0', { maxNewTokens: 0 }, undefined],
      ['the first chunk failed', {}, async () => Promise.reject(new Error('broken step'))],
    ]
    for (const [what, o, forward] of cases) {
      for (const ownsStart of [true, false]) {
        released.length = 0
        const { model } = scripted([3, 4, 5])
        const m = withRelease(forward ? { ...model, forward } : model)
        const gen = generateTokens(m, run, [1, 2, 3, 4], options({ ...o, ownsStart }), start)
        const r = await collect(gen).catch((err: Error) => ({ error: err.message }))
        // the precondition: it ended without a token
        expect(r, what).toMatchObject(
          forward
            ? { error: 'broken step' }
            : { ids: [], finish: what === 'max_tokens 0' ? 'length' : 'cancelled' },
        )
        expect(released.includes(start), `${what}, ownsStart ${ownsStart}`).toBe(ownsStart)
      }
    }
    // after a chunk ran, the start went on into that chunk's cache: only that one is released
    released.length = 0
    const { model } = scripted([3, 15])
    const r = await collect(
      generateTokens(withRelease(model), run, [1, 2, 3, 4], options({ ownsStart: true }), start),
    )
    expect(r.ids).toEqual([3])
    expect(released.includes(start)).toBe(false)
    expect(released.length).toBe(1)
  })
})
