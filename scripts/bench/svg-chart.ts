/**
 * A horizontal bar chart as plain SVG text, no dependencies: one bar per engine, plus dashed
 * vertical markers (the bandwidth bound and a fraction of it).
 */
export interface Bar {
  label: string
  value: number
  /** Bars with the same group share a color. */
  group: 'ours' | 'peer' | 'bound'
  /** Small text after the value, e.g. "38% of bound". */
  note?: string
}

export interface Marker {
  label: string
  value: number
}

const COLORS = { ours: '#2f6fdd', peer: '#9aa4b2', bound: '#e0a030' } as const

export function escapeXml(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
}

/** Round maximum for the axis (1, 1.5, 2, 3, 4, 5, 6, 8 or 10 times a power of ten), at least `max`. */
export function niceMax(max: number): number {
  if (!(max > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(max))
  for (const m of [1, 1.5, 2, 3, 4, 5, 6, 8, 10]) {
    const v = Number((m * p).toPrecision(12)) // 3 * 0.1 is 0.30000000000000004
    if (v >= max * (1 - 1e-9)) return v
  }
  return 10 * p
}

export function barChart(options: {
  title: string
  unit: string
  bars: Bar[]
  markers?: Marker[]
  width?: number
}): string {
  const { title, unit, bars, markers = [] } = options
  const width = options.width ?? 760
  const labelW = 250
  const noteW = 170
  const top = 62
  const barH = 22
  const gap = 10
  const plotW = width - labelW - noteW - 20
  const height = top + bars.length * (barH + gap) + 40
  const max = niceMax(Math.max(...bars.map((b) => b.value), ...markers.map((m) => m.value)))
  const x = (v: number) => labelW + (Math.max(0, v) / max) * plotW
  const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2))
  const tick = (v: number) => String(Number(v.toPrecision(3)))
  const out: string[] = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="12" y="22" font-size="15" font-weight="600">${escapeXml(title)}</text>`,
  )
  const ticks = 5
  for (let i = 0; i <= ticks; i++) {
    const v = (max / ticks) * i
    const tx = x(v).toFixed(1)
    const y0 = top - 6
    const y1 = top + bars.length * (barH + gap)
    out.push(
      `<line x1="${tx}" y1="${y0}" x2="${tx}" y2="${y1}" stroke="#e5e7eb"/>`,
      `<text x="${tx}" y="${y1 + 16}" text-anchor="middle" fill="#6b7280">${tick(v)}</text>`,
    )
  }
  out.push(
    `<text x="${labelW + plotW / 2}" y="${height - 6}" text-anchor="middle" fill="#6b7280">${escapeXml(unit)}</text>`,
  )
  bars.forEach((b, i) => {
    const y = top + i * (barH + gap)
    const w = Math.max(1, x(b.value) - labelW)
    out.push(
      `<text x="${labelW - 8}" y="${y + barH / 2 + 4}" text-anchor="end">${escapeXml(b.label)}</text>`,
      `<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" rx="3" fill="${COLORS[b.group]}"/>`,
      `<text x="${(labelW + w + 6).toFixed(1)}" y="${y + barH / 2 + 4}">${fmt(b.value)}${b.note ? ` <tspan fill="#6b7280">${escapeXml(b.note)}</tspan>` : ''}</text>`,
    )
  })
  for (const m of markers) {
    const mx = x(m.value).toFixed(1)
    const y1 = top + bars.length * (barH + gap)
    out.push(
      `<line x1="${mx}" y1="${top - 10}" x2="${mx}" y2="${y1}" stroke="#d97706" stroke-dasharray="4 3"/>`,
      `<text x="${mx}" y="${top - 14}" text-anchor="middle" fill="#b45309" font-size="11">${escapeXml(m.label)}</text>`,
    )
  }
  out.push('</svg>')
  return out.join('\n') + '\n'
}
