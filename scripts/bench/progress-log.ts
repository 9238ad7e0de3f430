/** Progress lines on stderr, prefixed with the worker's name and the elapsed time. */
export function progressLog(name: string): (line: string) => void {
  const started = performance.now()
  return (line) => {
    const s = ((performance.now() - started) / 1000).toFixed(0).padStart(4)
    process.stderr.write(`[${name.padEnd(9)} ${s}s] ${line}\n`)
  }
}
