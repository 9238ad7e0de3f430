/**
 * One macrotask turn: timers, I/O callbacks and socket writes run before it resolves. The
 * scheduler takes one between forward runs (at most every YIELD_EVERY_MS), the batcher one while
 * it gathers streams.
 *
 * The default, `setTimeout(0)`, works everywhere but waits for the timer clamp, a noticeable
 * share of every decode step on Node. The Node adapter installs `setImmediate`, which runs
 * right after Node's I/O phase. Deno's `setImmediate` does not let incoming requests in (tested:
 * test/runtimes), so the Deno adapter sends bytes to itself over loopback TCP, whose reads wait
 * for Deno to poll its sockets (adapters/deno/io-turn.ts); workerd keeps the default.
 */
type Schedule = (run: () => void) => void

let schedule: Schedule = (run) => setTimeout(run, 0)

/** Replaces how a macrotask turn is scheduled (a runtime adapter's choice). */
export function installMacrotask(next: Schedule): void {
  schedule = next
}

export function macrotask(): Promise<void> {
  return new Promise<void>((resolve) => schedule(resolve))
}
