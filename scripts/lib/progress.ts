/**
 * A one-line progress bar on stderr for the model scripts. On a terminal it redraws in place
 * (at most 10 times a second); otherwise (CI, tests, pipes) it prints only the final line.
 */
export interface Progress {
  /** Sets the done amount. */
  set(done: number): void
  add(delta: number): void
  /** Prints the final line. */
  finish(note?: string): void
}

export function progressBar(
  label: string,
  total: number,
  options: { quiet?: boolean } = {},
): Progress {
  const out = process.stderr
  const tty = out.isTTY === true && !options.quiet
  const started = performance.now()
  let done = 0
  let drawn = 0
  const line = () => {
    const frac = total > 0 ? Math.min(1, done / total) : 1
    const width = 28
    const bar = '█'.repeat(Math.round(frac * width)).padEnd(width, '░')
    const secs = (performance.now() - started) / 1000
    const rate = secs > 0 ? formatBytes(done / secs) + '/s' : ''
    return `${label} ${bar} ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(done)}/${formatBytes(total)} ${rate}`
  }
  const draw = (force = false) => {
    if (!tty) return
    const now = performance.now()
    if (!force && now - drawn < 100) return
    drawn = now
    out.write(`\r${line()}\x1b[K`)
  }
  return {
    set(n) {
      done = n
      draw()
    },
    add(delta) {
      done += delta
      draw()
    },
    finish(note) {
      if (options.quiet) return
      const text = `${line()}${note ? ` ${note}` : ''}`
      out.write(tty ? `\r${text}\x1b[K\n` : `${text}\n`)
    },
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${Math.round(n)} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`
}
