/**
 * The engine's turn of Deno's event loop (engine/serve/macrotask.ts): between forward runs the
 * scheduler gives the event loop a turn, so that streamed deltas are written, /health answers
 * and a client's disconnect is seen while a reply decodes; the batcher takes one while it
 * gathers streams.
 *
 * Deno's `setTimeout(0)`, the engine's default, lets all of that in but waits 1-2 ms (2.2-2.3 ms
 * a turn here, between 15 ms busy loops), and the scheduler takes a turn at most every 8 ms, so
 * about every decode step of the 0.5B package (15-17 ms): 10% of decoding (a 128-token chat in
 * Deno: 50-55 tok/s with the timer, 60-63 with no turn at all). Neither a MessageChannel
 * message nor Deno's setImmediate polls I/O: an HTTP request sent during 1.5 s of such turns
 * was answered only after them. An async op does: Deno completes it on its event loop, which
 * polls the sockets on the way. One op is one poll, and a request needs a few (accept, read,
 * the handler's body, the reply): with one op a turn, the request above was answered after
 * 65-100 ms and two concurrent chats of the tiny test model did not meet in a batch. So a turn
 * is four ops in a row, each a SHA-256 of one byte through Web Crypto (an async op everywhere
 * Deno runs, Deno Deploy included, with no permission needed): 0.2 ms, and the request answered
 * within 1-4 ms (the timer: 5-19 ms).
 */
const ONE_BYTE = new Uint8Array(1)
const POLLS = 4

export function denoTurn(run: () => void): void {
  let left = POLLS
  const next = (): void => {
    if (left-- === 0) run()
    else crypto.subtle.digest('SHA-256', ONE_BYTE).then(next, next)
  }
  next()
}
