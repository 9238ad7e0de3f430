/**
 * Back-to-back forward steps must leave the event loop a turn now and then: on Node an ORT wasm
 * run settles through promise jobs only, and without a turn streamed deltas are not written,
 * /health does not answer and a client disconnect is not seen until the reply ends.
 */
import { describe, expect, it } from 'vitest'
import { Scheduler, YIELD_EVERY_MS } from '../../../src/engine/serve/scheduler.ts'

/** A step that keeps the thread busy and settles without any macrotask, like an ORT run. */
const busyStep = (ms: number) => async () => {
  const until = performance.now() + ms
  while (performance.now() < until) {
    // spin
  }
}

describe('Scheduler event-loop turns', () => {
  it('lets a timer run while a long chain of steps is decoding', async () => {
    const s = new Scheduler({ maxActive: 1, maxQueued: 1 })
    let stepsDone = 0
    let stepsWhenTimerRan = -1
    setTimeout(() => (stepsWhenTimerRan = stepsDone), 0)
    for (let i = 0; i < 40; i++) {
      await s.step(busyStep(2))
      stepsDone++
    }
    expect(stepsWhenTimerRan).toBeGreaterThanOrEqual(0)
    // ~2 ms steps: a turn at least every YIELD_EVERY_MS, so the timer ran early in the chain
    expect(stepsWhenTimerRan).toBeLessThanOrEqual(Math.ceil(YIELD_EVERY_MS / 2) + 1)
  })
})
