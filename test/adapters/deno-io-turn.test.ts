/**
 * Deno's loopback turn (src/adapters/deno/io-turn.ts), in Deno child processes running
 * fixtures/io-turn-probe.ts: a busy loop of 40 steps taking a turn after each, with an HTTP
 * request and a streamed response of the same process in flight. A turn of microtasks is the
 * control: it never polls the sockets, so the probe must tell the two apart.
 */
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const DENO = join(ROOT, 'node_modules', '.bin', 'deno')
const PROBE = join('test', 'adapters', 'fixtures', 'io-turn-probe.ts')

interface Probe {
  opened: boolean
  steps?: number
  both?: number
  ping?: { servedAt: number; readAt: number }
  reads?: number
  maxChunksPerRead?: number
  afterClose?: number
}

/** What the 'stall' mode prints. */
interface Stall {
  firstMs: number
  laterMs: number
  open: boolean
}

function probe<T = Probe>(
  permissions: string[],
  mode: 'open' | 'microtask' | 'stall' | 'blocked',
): T {
  const out = execFileSync(DENO, ['run', '--config', 'deno.json', ...permissions, PROBE, mode], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1' },
    timeout: 60_000,
  })
  return JSON.parse(out.toString().trim().split('\n').at(-1)!)
}

describe('the loopback turn (Deno)', () => {
  it('answers a request and writes a stream step by step while a busy loop takes its turns', () => {
    const r = probe(['--allow-net=127.0.0.1'], 'open')
    expect(r.opened).toBe(true)
    expect(r.both).toBe(2) // two callers asking at once both resume
    // the request was answered and read while the loop ran, not after it
    expect(r.ping!.readAt).toBeLessThan(r.steps!)
    // the chunks came a step at a time (a few may share a read on a loaded machine)
    expect(r.reads!).toBeGreaterThanOrEqual(r.steps! / 2)
    expect(r.maxChunksPerRead!).toBeLessThanOrEqual(4)
    expect(r.afterClose).toBe(3) // closed: the timer's turns
  }, 60_000)

  it('the control: turns that do not poll the sockets hold the request and the stream to the end', () => {
    const r = probe(['--allow-net=127.0.0.1'], 'microtask')
    expect(r.opened).toBe(true)
    expect(r.ping!.servedAt).toBeGreaterThan(r.steps!)
    expect(r.reads).toBe(1)
    expect(r.maxChunksPerRead).toBe(r.steps)
  }, 60_000)

  it('a turn whose byte never comes back gives up the loopback after 2 s for the timer', () => {
    const r = probe<Stall>(['--allow-net=127.0.0.1'], 'stall')
    expect(r.firstMs).toBeGreaterThanOrEqual(1900) // the watchdog, not the byte
    expect(r.firstMs).toBeLessThan(30_000)
    expect(r.laterMs).toBeLessThan(r.firstMs / 10) // then the timer's turns
    expect(r.open).toBe(false)
  }, 60_000)

  it('a loop blocked past the watchdog while a turn is on the wire keeps the loopback', () => {
    expect(probe(['--allow-net=127.0.0.1'], 'blocked')).toEqual({ open: true })
  }, 60_000)

  it('without net permission for 127.0.0.1 there is no loopback turn, and no prompt', () => {
    expect(probe(['--no-prompt'], 'open')).toEqual({ opened: false })
    expect(probe(['--no-prompt', '--allow-net=example.com'], 'open')).toEqual({ opened: false })
  }, 60_000)
})
