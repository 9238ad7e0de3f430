/**
 * Deno's turn of the event loop for the engine's scheduler (engine/serve/macrotask.ts): one byte
 * sent to itself over a loopback TCP connection.
 *
 * Why a socket. The scheduler takes a turn between forward runs so that streamed deltas are
 * written, new requests come in and a client that left is seen. In Deno:
 * - `setTimeout(0)` takes 2.2-2.3 ms a turn, about a tenth of a 0.5B decode step;
 * - `setImmediate` and a `MessageChannel` message are fast, but do not poll the sockets;
 * - async ops that are ready at once (Web Crypto digests) need not wait for a poll: under the
 *   test suite's load, a stream's deltas reached its client in one burst and queued requests
 *   went unseen.
 *
 * A read of the loopback socket cannot finish until the runtime has polled its sockets: the read
 * leaves the socket marked not-ready, so the next read waits for the poller to see the byte. So
 * every turn writes the HTTP server's pending responses, accepts and reads requests, and fires
 * due timers. Two such polls a turn cost 0.2-0.4 ms (BENCHMARKS.md, "Deno: the event loop's
 * turn").
 *
 * Where loopback TCP is not allowed (no `--allow-net` for 127.0.0.1, or a host that refuses
 * `Deno.listen`), openLoopbackTurn returns undefined and the caller keeps the timer. A turn that
 * fails later closes the pair, and this and every later turn take the timer.
 */
type Schedule = (run: () => void) => void

// The few Deno APIs used here, so the project type-checks without Deno's types.
/** A Deno TCP connection, as far as the turn uses it. */
export interface Conn {
  readonly localAddr: { port: number }
  readonly remoteAddr: { port: number }
  read(buffer: Uint8Array): Promise<number | null>
  write(bytes: Uint8Array): Promise<number>
  setNoDelay(on?: boolean): void
  close(): void
}
interface DenoNet {
  listen(options: { hostname: string; port: number; transport?: 'tcp' }): {
    addr: { port: number }
    accept(): Promise<Conn>
    close(): void
  }
  connect(options: { hostname: string; port: number }): Promise<Conn>
  permissions: { querySync(d: { name: 'net'; host: string }): { state: string } }
}

export interface LoopbackTurn {
  /** Runs `run` after the next turn (the timer's once the loopback is closed). */
  schedule: Schedule
  close(): void
  /** Whether turns still go over the loopback. */
  isOpen(): boolean
}

const HOST = '127.0.0.1'
/** How long a turn may take before the loopback is given up for the timer. */
const STALL_MS = 2000
/**
 * Polls a turn takes (a byte there and back each). A request needs a few: its connection
 * accepted, its bytes read, its handler run. With one a turn, a request sent during 15 ms steps
 * was answered after 21-23 ms; with two, after 4-10 ms (the timer's turn: 3-19), for 0.24-0.40
 * ms a turn.
 */
const POLLS_PER_TURN = 2
/** How many of the watchdog's timers a turn may outlast, each after a poll of the sockets. */
const STALL_POLLS = 4

/** A loopback turn, or undefined where this Deno may not open one (no prompt is shown). */
export async function openLoopbackTurn(): Promise<LoopbackTurn | undefined> {
  const deno = (globalThis as { Deno?: DenoNet }).Deno
  if (!deno) return undefined
  try {
    if (deno.permissions.querySync({ name: 'net', host: HOST }).state !== 'granted')
      return undefined
    const [sender, receiver] = await loopbackPair()
    return loopbackTurn(sender, receiver)
  } catch {
    return undefined
  }
}

/**
 * Two ends of one TCP connection on 127.0.0.1, [the connecting end, the accepted end]: a
 * listener on a free port, closed once its one connection is accepted. Throws (closing what it
 * opened) where Deno may not listen or connect there.
 */
export async function loopbackPair(): Promise<[Conn, Conn]> {
  const deno = (globalThis as { Deno?: DenoNet }).Deno
  if (!deno) throw new Error('loopback TCP needs Deno')
  const listener = deno.listen({ hostname: HOST, port: 0, transport: 'tcp' })
  const accepted = listener.accept()
  // if the connect fails, closing the listener rejects the accept: not an unhandled rejection
  accepted.catch(() => {})
  let sender: Conn | undefined
  let receiver: Conn | undefined
  try {
    sender = await deno.connect({ hostname: HOST, port: listener.addr.port })
    receiver = await accepted
    // the connection accepted is this one (nobody else's, in the moment the port was open)
    if (receiver.remoteAddr.port !== sender.localAddr.port) throw new Error('not our peer')
    return [sender, receiver]
  } catch (err) {
    receiver?.close()
    sender?.close()
    throw err
  } finally {
    listener.close()
  }
}

/**
 * Turns over a connected pair: each writes one byte on `sender` and reads it from `receiver`,
 * POLLS_PER_TURN times.
 * The callers that ask while a turn is on the wire all resume after the next one: a
 * connection takes one read at a time, and one byte is in flight at most.
 */
export function loopbackTurn(sender: Conn, receiver: Conn): LoopbackTurn {
  sender.setNoDelay(true)
  const byte = new Uint8Array([1])
  const buffer = new Uint8Array(16)
  let waiting: Array<() => void> = []
  let onWire = false
  let closed = false
  const timer: Schedule = (run) => setTimeout(run, 0)

  const close = () => {
    if (closed) return
    closed = true
    for (const conn of [sender, receiver])
      try {
        conn.close()
      } catch {
        // closed already
      }
  }

  const pump = async () => {
    onWire = true
    let batch: Array<() => void> = []
    try {
      while (waiting.length > 0 && !closed) {
        batch = waiting
        waiting = []
        // a turn that never comes back (it should not happen on loopback) must not stall the
        // engine: after STALL_MS the pair is closed, the read fails, and the timer takes over.
        // A loop blocked past STALL_MS finds the byte and the timer due in the same poll, so the
        // watchdog fires STALL_POLLS times, a poll of the sockets between each, before it closes.
        let polls = 0
        const bark = () => {
          if (++polls < STALL_POLLS) watchdog = setTimeout(bark, 10)
          else close()
        }
        let watchdog = setTimeout(bark, STALL_MS)
        try {
          for (let i = 0; i < POLLS_PER_TURN; i++) {
            await sender.write(byte)
            if ((await receiver.read(buffer)) !== 1)
              throw new Error('the loopback turn lost its byte')
          }
        } finally {
          clearTimeout(watchdog)
        }
        for (const run of batch) run()
        batch = []
      }
    } catch {
      close()
    } finally {
      onWire = false
      // after a failure (or close), whoever still waits gets the timer's turn
      for (const run of [...batch, ...waiting.splice(0)]) timer(run)
    }
  }

  const schedule: Schedule = (run) => {
    if (closed) return timer(run)
    waiting.push(run)
    if (!onWire) void pump()
  }
  return { schedule, close, isOpen: () => !closed }
}
