import { describe, expect, it, onTestFinished } from 'vitest'
import { Scheduler } from '../../../src/engine/serve/scheduler.ts'

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

  it('admits classification work by tokens and refuses past the bound', () => {
    const s = new Scheduler({ maxActive: 1, maxQueued: 1, maxQueuedTokens: 100 })
    const a = s.admit([30, 30])
    expect([s.active, s.queued, s.queuedTokens]).toEqual([0, 2, 60])
    const b = s.admit([40]) // exactly at the bound
    expect(s.queuedTokens).toBe(100)
    let refused: unknown
    try {
      s.admit([1])
    } catch (err) {
      refused = err
    }
    expect(refused).toMatchObject({ code: 'queue_full', details: { retryAfterSeconds: 1 } })
    a.start(0)
    expect([s.active, s.queued]).toEqual([1, 2])
    a.finish(0, 3000) // 100 ms per token
    expect([s.active, s.queued, s.queuedTokens]).toEqual([0, 2, 70])
    // Retry-After is the queued tokens at the measured time per token: 70 × 0.1 s → 7 s
    expect(() => s.admit([31])).toThrow(/70 tokens/)
    try {
      s.admit([31])
    } catch (err) {
      expect(err).toMatchObject({ details: { retryAfterSeconds: 7 } })
    }
    a.drop() // text 1 was never started: its tokens go back; text 0 is done
    expect([s.queued, s.queuedTokens]).toEqual([1, 40])
    a.release()
    b.start(0)
    b.release() // abandoned mid-way
    a.release() // idempotent
    expect([s.active, s.queued, s.queuedTokens]).toEqual([0, 0, 0])
  })

  it('admits a request larger than the bound when nothing else is queued', () => {
    const s = new Scheduler({ maxActive: 1, maxQueued: 1, maxQueuedTokens: 10 })
    const big = s.admit([8, 8, 8])
    expect(s.queuedTokens).toBe(24)
    expect(() => s.admit([1])).toThrow(/busy/)
    big.release()
    expect(() => s.admit([1]).release()).not.toThrow()
  })

  it('drops a queued step whose signal aborted before its turn, without running it', async () => {
    const s = new Scheduler({ maxActive: 4, maxQueued: 4 })
    const ran: string[] = []
    let unblock!: () => void
    const blocker = s.step(() => new Promise<void>((r) => (unblock = r)))
    const ac = new AbortController()
    const dropped = s.step(async () => ran.push('dropped'), false, ac.signal)
    const kept = s.step(async () => ran.push('kept'))
    await tick()
    ac.abort(new Error('client left'))
    unblock()
    await blocker
    await expect(dropped).rejects.toThrow('client left')
    await kept
    expect(ran).toEqual(['kept'])
    // an already aborted signal never queues
    await expect(s.step(async () => ran.push('late'), false, ac.signal)).rejects.toThrow()
    expect(ran).toEqual(['kept'])
    // /health's prefill.runs: the prompt runs that ran (blocker, kept), not the dropped ones
    await s.step(async () => ran.push('decode'), true)
    expect(s.promptRuns).toBe(2)
  })

  it('reserves a place when a generation is admitted; cancel gives it back in any state', async () => {
    const s = new Scheduler({ maxActive: 1, maxQueued: 1 })
    const a = s.reserve()
    const b = s.reserve()
    expect([s.active, s.queued]).toEqual([1, 1])
    expect(() => s.reserve()).toThrow(expect.objectContaining({ code: 'queue_full' }))
    b.cancel() // admitted, never run: its queue place is free again
    await expect(b.slot).rejects.toThrow()
    expect([s.active, s.queued]).toEqual([1, 0])
    const c = s.reserve()
    a.cancel() // the running one gives its slot to the next in line
    const slot = await c.slot
    expect([s.active, s.queued]).toEqual([1, 0])
    slot.release()
    c.cancel() // idempotent after release
    expect([s.active, s.queued]).toEqual([0, 0])
  })

  it('bounds the KV positions running generations reserve: first come, first served', async () => {
    const s = new Scheduler({ maxActive: 4, maxQueued: 2, maxKvTokens: 100 })
    const granted: string[] = []
    const reserve = (name: string, positions: number, signal?: AbortSignal) => {
      const r = s.reserve(signal, positions)
      void r.slot.then(
        () => granted.push(name),
        () => {},
      )
      return r
    }
    const a = reserve('a', 60)
    const b = reserve('b', 50) // 110 > 100: waits, though slots are free
    const c = reserve('c', 10) // would fit, but waits behind b (no overtaking)
    await tick()
    expect(granted).toEqual(['a'])
    expect([s.active, s.queued, s.kvReservedTokens]).toEqual([1, 2, 60])
    expect(() => s.reserve(undefined, 1)).toThrow(expect.objectContaining({ code: 'queue_full' }))
    ;(await a.slot).release()
    await tick()
    expect(granted).toEqual(['a', 'b', 'c'])
    expect([s.active, s.queued, s.kvReservedTokens]).toEqual([2, 0, 60])
    // a waiter that leaves lets the ones behind it in when they fit
    const ac = new AbortController()
    const d = reserve('d', 90, ac.signal)
    const e = reserve('e', 20)
    await tick()
    expect(granted).toEqual(['a', 'b', 'c'])
    ac.abort(new Error('client left'))
    await expect(d.slot).rejects.toThrow('client left')
    await tick()
    expect(granted).toEqual(['a', 'b', 'c', 'e'])
    expect(s.kvReservedTokens).toBe(80)
    for (const r of [b, c, e]) r.cancel()
    expect([s.active, s.queued, s.kvReservedTokens]).toEqual([0, 0, 0])
    // larger than the bound alone: runs when nothing else does
    const big = reserve('big', 150)
    await tick()
    expect(granted.at(-1)).toBe('big')
    big.cancel()
    expect(s.kvReservedTokens).toBe(0)
  })

  it('survives its last queued step being dropped while it yields to the event loop', async () => {
    // a throw in the step loop is an unhandled rejection: it would take the server down
    const crashes: unknown[] = []
    const onCrash = (err: unknown) => crashes.push(err)
    process.on('unhandledRejection', onCrash)
    onTestFinished(() => void process.off('unhandledRejection', onCrash))
    const s = new Scheduler({ maxActive: 4, maxQueued: 4 })
    // a step long enough that the loop yields (a macrotask turn) before the next one
    const slow = s.step(async () => {
      const until = performance.now() + 20
      while (performance.now() < until);
    })
    const ac = new AbortController()
    const dropped = s.step(async () => 'ran', false, ac.signal)
    await slow // the loop now waits for a macrotask turn before taking the next step...
    await new Promise((r) => setTimeout(r, 0)) // (a timer queued before the loop's own)
    ac.abort(new Error('client left')) // ...and the step goes away meanwhile
    await expect(dropped).rejects.toThrow('client left')
    await new Promise((r) => setTimeout(r, 20))
    expect(crashes).toEqual([])
    await expect(s.step(async () => 'next')).resolves.toBe('next')
  })
})
