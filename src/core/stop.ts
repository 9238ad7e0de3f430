/**
 * Stop strings in a stream of text deltas. Text that might be the start of a stop string is
 * held back until the next delta decides it, so a stop string is never half-emitted.
 */
export class StopMatcher {
  private pending = ''
  private readonly longest: number

  constructor(private readonly stops: readonly string[]) {
    this.longest = stops.reduce((n, s) => Math.max(n, s.length), 0)
  }

  /** Feed a delta; returns the text that is safe to emit and whether a stop string was hit. */
  push(delta: string): { text: string; stopped: boolean } {
    if (this.stops.length === 0) return { text: delta, stopped: false }
    const buf = this.pending + delta
    let hit = -1
    for (const s of this.stops) {
      const i = buf.indexOf(s)
      if (i !== -1 && (hit === -1 || i < hit)) hit = i
    }
    if (hit !== -1) {
      this.pending = ''
      return { text: buf.slice(0, hit), stopped: true }
    }
    const hold = this.heldSuffixLength(buf)
    this.pending = buf.slice(buf.length - hold)
    return { text: buf.slice(0, buf.length - hold), stopped: false }
  }

  /** End of generation: whatever was held back was not a stop string after all. */
  flush(): string {
    const text = this.pending
    this.pending = ''
    return text
  }

  /** Length of the longest suffix of `buf` that is a proper prefix of some stop string. */
  private heldSuffixLength(buf: string): number {
    for (let n = Math.min(this.longest - 1, buf.length); n > 0; n--) {
      const tail = buf.slice(buf.length - n)
      if (this.stops.some((s) => s.startsWith(tail))) return n
    }
    return 0
  }
}
