import { describe, expect, it } from 'vitest'
import { Scheduler } from '../../src/engine/scheduler.ts'

const tick = () => new Promise((r) => setTimeout(r, 1))

describe('Scheduler', () => {
  it('runs steps one at a time, in arrival order, and survives a failing step', async () => {
    const s = new Scheduler({ maxActive: 4, maxQueued: 4 })
    let running = 0
    let maxRunning = 0
    const order: string[] = []
    const step = (name: string, fail = false) =>
      s.step(async () => {
        running++
        maxRunning = Math.max(maxRunning, running)
        await tick()
        order.push(name)
        running--
        if (fail) throw new Error(name)
      })
    const results = await Promise.allSettled([step('a'), step('b', true), step('c')])
    expect(order).toEqual(['a', 'b', 'c'])
    expect(maxRunning).toBe(1)
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled'])
  })

  it('interleaves two generations step by step', async () => {
    const s = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const order: string[] = []
    const gen = async (name: string) => {
      for (let i = 0; i < 3; i++) await s.step(async () => order.push(`${name}${i}`))
    }
    await Promise.all([gen('a'), gen('b')])
    expect(order).toEqual(['a0', 'b0', 'a1', 'b1', 'a2', 'b2'])
  })

  it('lets the decode batch overtake once after every other run', async () => {
    const s = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const order: string[] = []
    const step = (name: string, decode = false) =>
      s.step(async () => {
        await tick()
        order.push(name)
      }, decode)
    // three prompts' prefill chunks arrive, then a decode batch for the streams already decoding
    const prefills = ['p1', 'p2', 'p3'].map((n) => step(n))
    const decodes = (async () => {
      await step('d1', true)
      await step('d2', true)
      await step('d3', true)
    })()
    await Promise.all([...prefills, decodes])
    // nothing ran before, so the waiting batch goes first; then they alternate
    expect(order).toEqual(['d1', 'p1', 'd2', 'p2', 'd3', 'p3'])
  })

  it('a step that throws synchronously does not stall the queue', async () => {
    const s = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const bad = s.step((() => {
      throw new Error('sync')
    }) as unknown as () => Promise<void>)
    await expect(bad).rejects.toThrow('sync')
    await expect(s.step(async () => 42)).resolves.toBe(42)
  })

  it('queues beyond maxActive, refuses beyond maxQueued, and hands slots over', async () => {
    const s = new Scheduler({ maxActive: 1, maxQueued: 1 })
    const first = await s.acquire()
    const second = s.acquire()
    await tick()
    expect([s.active, s.queued]).toEqual([1, 1])
    await expect(s.acquire()).rejects.toMatchObject({ code: 'queue_full' })
    first.release()
    const slot = await second
    expect([s.active, s.queued]).toEqual([1, 0])
    slot.release()
    slot.release() // idempotent
    expect(s.active).toBe(0)
  })

  it('drops a queued request whose signal aborts', async () => {
    const s = new Scheduler({ maxActive: 1, maxQueued: 2 })
    const held = await s.acquire()
    const ac = new AbortController()
    const waiting = s.acquire(ac.signal)
    await tick()
    expect(s.queued).toBe(1)
    ac.abort(new Error('client left'))
    await expect(waiting).rejects.toThrow('client left')
    expect(s.queued).toBe(0)
    held.release()
    expect(s.active).toBe(0)
  })
})
