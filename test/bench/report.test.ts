import { describe, expect, it } from 'vitest'
import {
  boundOf,
  checkGoals,
  checkQ4Goals,
  decodeChartSvg,
  keepSections,
  renderMarkdown,
  type BenchResults,
} from '../../scripts/bench/report.ts'
import { barChart, escapeXml, niceMax } from '../../scripts/bench/svg-chart.ts'
import type { EngineResult, LongResult } from '../../scripts/bench/types.ts'

const engine: EngineResult = {
  name: 'engine',
  label: 'qwen-edge engine',
  backend: 'onnxruntime-web wasm',
  decodeTokS: 12,
  ttft64Ms: 1000,
  sentimentColdMs: 900,
  sentimentCachedMs: 300,
  streams1TokS: 10,
  streams4TokS: 9,
  streams4MaxGapSteps: 3,
  firstIds: [1, 2, 3],
}
const tjs: EngineResult = {
  name: 'tjs-web',
  label: 'transformers.js <wasm>',
  backend: 'onnxruntime-web wasm',
  decodeTokS: 8,
  ttft64Ms: 2000,
  firstIds: [1, 2, 4],
}

function results(engines: EngineResult[]): BenchResults {
  return {
    generatedAt: '2026-01-02T03:04:05.000Z',
    command: 'npm run bench',
    quick: false,
    durationS: 600,
    loadAverage: { start: [0.5, 0.5, 0.5], end: [1, 1, 1] },
    machine: {
      cpu: 'Test CPU',
      cores: 2,
      simd: ['avx2'],
      memoryBytes: 2 ** 34,
      os: 'Linux',
      node: 'v20.0.0',
      versions: { 'onnxruntime-web': '1.30.0' },
    },
    model: {
      id: 'm',
      description: 'test model',
      weightBytesPerToken: 500e6,
      promptTokens: { p64: 64, p512: 512, streams: [20, 20, 20, 20] },
    },
    plan: { rounds: 3, decodeTokens: 128, streamTokens: 48, sentimentText: 'ok' },
    engines,
    bandwidth: { bufferBytes: 2 ** 28, copyBytesPerS: 13e9, rounds: 10, boundTokS: 26 },
    chartPath: 'bench/decode.svg',
  }
}

describe('svg chart', () => {
  it('rounds the axis up to a round number', () => {
    expect([niceMax(7.2), niceMax(26), niceMax(0.3), niceMax(100), niceMax(0)]).toEqual([
      8, 30, 0.3, 100, 1,
    ])
  })

  it('escapes text and draws one bar per value plus its markers', () => {
    const svg = barChart({
      title: 'a < b & c',
      unit: 'tok/s',
      bars: [
        { label: 'x', value: 5, group: 'ours' },
        { label: '"y"', value: 10, group: 'peer' },
      ],
      markers: [{ label: '40%', value: 4 }],
    })
    expect(escapeXml('<a href="x">&</a>')).toBe('&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;')
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true)
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true)
    expect(svg).toContain('a &lt; b &amp; c')
    expect(svg).toContain('&quot;y&quot;')
    expect(svg.match(/<rect /g)).toHaveLength(3) // background + 2 bars
    expect(svg.match(/stroke-dasharray/g)).toHaveLength(1)
    // the 10 tok/s bar spans the whole plot (axis max 10), the 5 tok/s bar half of it
    const widths = [...svg.matchAll(/<rect x="\d+" y="\d+" width="([\d.]+)"/g)].map((m) => +m[1])
    expect(widths[1]).toBeCloseTo(widths[0] * 2, 0)
  })
})

describe('report', () => {
  it('checks the goals from the ratios', () => {
    const goals = checkGoals(results([engine, tjs]))
    expect(goals.map((g) => g.met)).toEqual([true, true, true, false])
    expect(goals[0].measured).toContain('1.50x')
    expect(goals[1].measured).toContain('46%')
  })

  it('leaves a goal open when its peer did not run', () => {
    expect(checkGoals(results([engine]))[0].met).toBeUndefined()
  })

  it('renders the table, the ratios and the chart from the numbers', () => {
    const r = results([engine, tjs])
    const md = renderMarkdown(r)
    expect(md).toContain('| **decode, tok/s** (128 tokens) | **12.00** | **8.00** |')
    expect(md).toContain('| decode tok/s | 1.50x | 46% |')
    expect(md).toContain('| first 16 greedy tokens = the engine’s on the same format | yes | 2/3 |')
    expect(md).toContain('![decode tokens per second](bench/decode.svg)')
    expect(md).toContain('Test CPU, 2 cores')
    const svg = decodeChartSvg(r)
    expect(svg).toContain('transformers.js &lt;wasm&gt;')
    expect(svg).toContain('bandwidth bound')
  })
})

describe('issue 13 goals', () => {
  const MiB = 2 ** 20
  const q8: EngineResult = {
    ...engine,
    format: 'q8',
    decodeTokS: 10,
    ttft512Ms: 3000,
    sentimentCachedMs: 200,
    wasmAfterLoadBytes: 500 * MiB,
  }
  const q4: EngineResult = {
    name: 'engine-q4',
    label: 'q4',
    backend: 'kernels',
    format: 'q4',
    decodeTokS: 15,
    ttft512Ms: 2900,
    sentimentCachedMs: 190,
    wasmAfterLoadBytes: 340 * MiB,
    firstIds: [7, 8],
  }
  const graph: EngineResult = {
    name: 'engine-graph',
    label: 'graph',
    backend: 'ort-web',
    ttft512Ms: 5000,
    sentimentCachedMs: 300,
  }
  const ortQ4: EngineResult = {
    name: 'ort-node-q4',
    label: 'ort q4',
    backend: 'ort-node',
    format: 'q4',
    decodeTokS: 12,
    firstIds: [7, 9],
  }
  const withServe = (engines: EngineResult[], denoPeakMiB: number): BenchResults => ({
    ...results(engines),
    packageWeightBytes: { q8: 480 * MiB, q4: 300 * MiB },
    serve: (['node', 'deno'] as const).map((runtime) => ({
      runtime,
      command: 'npm start',
      packageId: 'p',
      peakRssBytes: denoPeakMiB * MiB,
      rssAfterLoadBytes: 0,
      rssAfterChatsBytes: 0,
      sampledPeakLoadBytes: 0,
      sampledPeakChatsBytes: 0,
      loadMs: 1,
      chats: 4,
      tokensPerChat: [128, 128, 128, 128],
    })),
  })

  it('checks each goal from the engines, packages and servers of one run', () => {
    const goals = checkQ4Goals(withServe([q8, q4, graph, ortQ4], 500))
    expect(goals.map((g) => [g.goal.slice(0, 24), g.met])).toEqual([
      ['q4 decode (SIMD128) vs t', true], // 1.5x ≥ 1.4x
      ['q4 decode (SIMD128) vs o', false], // 1.25x < 1.5x
      ['time to first token, 512', false], // 1.67x < 2x
      ['q4 prefill vs q8 (time t', true], // 2900 ≤ 3000
      ['sentiment with the cache', false], // 0.67x > 0.5x
      ['WASM memory after load v', true], // 500 / 480
      ['WASM memory after load v', false], // 340 / 300 = 1.13x
      ['Deno serving the q4 pack', false], // 500 MiB
      ['Node serving the q4 pack', true],
    ])
    expect(goals[0].measured).toContain('1.50x')
    expect(goals[6].measured).toContain('1.13x')
    expect(checkQ4Goals(withServe([q8, q4, graph, ortQ4], 450))[7].met).toBe(true)
  })

  it('checks the prompt goals for the q4 package, and every engine goal in Deno and Node 24 when they ran there', () => {
    const relaxed = { ...q4, name: 'engine-q4-relaxed', ttft512Ms: 2400, sentimentCachedMs: 140 }
    const inRuntime =
      (suffix: string) =>
      (e: EngineResult, over: Partial<EngineResult>): EngineResult => ({
        ...e,
        ...over,
        name: `${e.name}${suffix}`,
      })
    const inDeno = inRuntime('-deno')
    const deno = [
      inDeno(q8, { decodeTokS: 8, ttft512Ms: 4000, sentimentCachedMs: 250 }),
      inDeno(q4, { decodeTokS: 19, ttft512Ms: 2200, sentimentCachedMs: 140 }),
      inDeno(graph, { ttft512Ms: 4500, sentimentCachedMs: 300 }),
    ]
    const inNode24 = inRuntime('-node24')
    const node24 = [
      inNode24(q8, { decodeTokS: 10, ttft512Ms: 3000, sentimentCachedMs: 200 }),
      inNode24(q4, { decodeTokS: 13, ttft512Ms: 1900, sentimentCachedMs: 120 }),
      inNode24(graph, { ttft512Ms: 3600, sentimentCachedMs: 230 }),
    ]
    const nodeOnly = checkQ4Goals(withServe([q8, q4, relaxed, graph, ortQ4], 450))
    // not measured: no rows
    expect(nodeOnly.some((g) => g.goal.startsWith('Deno:') || g.goal.startsWith('Node 24:'))).toBe(
      false,
    )
    const goals = checkQ4Goals(withServe([q8, q4, relaxed, graph, ortQ4, ...deno, ...node24], 450))
    const byGoal = (start: string) => goals.filter((g) => g.goal.startsWith(start))
    // a runtime's goals: 24 characters of each after `<runtime>: `, measured, met
    const runtimeRows = (runtime: string) =>
      byGoal(`${runtime}:`).map((g) => {
        const from = runtime.length + 2
        return [g.goal.slice(from, from + 24), g.measured.slice(0, 5), g.met]
      })
    expect(byGoal('Node 20, relaxed SIMD:').map((g) => [g.measured.slice(0, 5), g.met])).toEqual([
      ['2.08x', true], // 5000 / 2400 ≥ 2
      ['0.47x', true], // 140 / 300 ≤ 0.5
    ])
    expect(runtimeRows('Deno')).toEqual([
      ['q4 decode vs the engine’', '2.38x', true], // 19 / 8
      ['q4 decode vs onnxruntime', '1.58x', true], // 19 / 12
      ['time to first token, 512', '1.13x', false], // q8: 4500 / 4000
      ['q4 prefill vs q8 (time t', '1.82x', true], // 4000 / 2200
      ['sentiment with the cache', '0.83x', false], // q8: 250 / 300
      ['time to first token, 512', '2.05x', true], // q4: 4500 / 2200
      ['sentiment with the cache', '0.47x', true], // q4: 140 / 300
    ])
    expect(runtimeRows('Node 24')).toEqual([
      ['q4 decode vs the engine’', '1.30x', false], // 13 / 10
      ['q4 decode vs onnxruntime', '1.08x', false], // 13 / 12
      ['time to first token, 512', '1.20x', false], // q8: 3600 / 3000
      ['q4 prefill vs q8 (time t', '1.58x', true], // 3000 / 1900
      ['sentiment with the cache', '0.87x', false], // q8: 200 / 230
      ['time to first token, 512', '1.89x', false], // q4: 3600 / 1900
      ['sentiment with the cache', '0.52x', false], // q4: 120 / 230
    ])
  })

  it('judges the Deno goal on the short chats; the long ones are reported beside them', () => {
    const r = withServe([q8, q4, graph, ortQ4], 450)
    const long = {
      ...r.serve![1],
      scenario: 'long' as const,
      command: 'npm run start:deno',
      peakRssBytes: 600 * MiB,
      promptTokens: [1359, 1359, 1359, 1359],
      chatsEndedS: [83, 83.2, 83.3, 83.3],
    }
    const bounded = { ...long, scenario: 'long-bounded' as const, peakRssBytes: 470 * MiB }
    const all = { ...r, serve: [long, bounded, ...r.serve!] }
    const deno = (x: BenchResults) => checkQ4Goals(x).find((g) => g.goal.startsWith('Deno'))!
    expect(deno(r).met).toBe(true) // precondition: the short chats alone meet it
    expect(deno(all).met).toBe(true)
    expect(deno({ ...r, serve: [long] }).met).toBeUndefined()
    const md = renderMarkdown(all)
    expect(md).toContain('| deno | long (prompts 1359 tokens) |')
    expect(md).toContain('| deno | long-bounded (prompts 1359 tokens) |')
    expect(md).toContain('| 83, 83.2, 83.3, 83.3 |')
  })

  it('reports the long context in f32 and q8 KV, and how many greedy tokens agree', () => {
    const f32: LongResult = {
      kvFormat: 'f32',
      isa: 'relaxed',
      promptTokens: 2965,
      ttftMs: 62366,
      decodeTokS: 12.4,
      decodedTokens: 64,
      ids: [5, 6, 7, 8, 9, 10],
      kvPositionBytes: 24576,
      kvPeakBytes: 71 * MiB,
      wasmPeakBytes: 393 * MiB,
      peakRssBytes: 579 * MiB,
    }
    const q8: LongResult = {
      ...f32,
      kvFormat: 'q8',
      ids: [5, 6, 7, 1, 9, 10],
      kvPositionBytes: 6528,
      kvPeakBytes: 19 * MiB,
    }
    const md = renderMarkdown({ ...results([]), long: [f32, q8] })
    expect(md).toContain('## A long context, KV cache in f32 and in q8')
    expect(md).toContain('| `f32` | 2965 | 62,366 ms | 12.4 | 24576 | 71 MiB |')
    expect(md).toContain('| `q8` | 2965 | 62,366 ms | 12.4 | 6528 | 19 MiB |')
    expect(md).toContain('| 3 of 6 |') // up to the first token that differs
    expect(md).toContain('| 6 of 6 |')
  })

  it('leaves a goal open when a side did not run', () => {
    const goals = checkQ4Goals(results([q8]))
    expect(goals.every((g) => g.met === undefined)).toBe(true)
  })

  it('bounds q4 decode by the q4 package’s bytes, and compares q4 ids with the q4 engine', () => {
    const r = withServe([q8, q4, graph, ortQ4], 450)
    expect(boundOf(r, q8)).toBe(26)
    expect(boundOf(r, q4)).toBeCloseTo(13e9 / (300 * MiB), 6)
    const md = renderMarkdown(r)
    expect(md).toContain(
      '| first 16 greedy tokens = the engine’s on the same format | yes | yes | – | 1/2 |',
    )
    expect(md).toContain('## Goals (issue #13')
    expect(md).toContain('## Serving the q4 package')
  })
})

describe('keepSections', () => {
  it('renders the kernels of each runtime that ran them, each with its own runtime and numbers', () => {
    const kernels = (runtime: string, ms: number) => ({
      runtime,
      relaxedUsable: true,
      readBytesPerS: 20e9,
      copyBytesPerS: 10e9,
      rows: [
        { kernel: 'q4 gemv', variant: 'relaxed' as const, ms, bytesPerS: 1e10, macsPerS: 3e10 },
      ],
    })
    const node = renderMarkdown({ ...results([engine]), kernels: kernels('Node v20', 0.125) })
    expect(node).toContain('## The kernels alone (Qwen2.5-0.5B shapes)')
    expect(node).not.toContain('in Deno')
    const both = renderMarkdown({
      ...results([engine]),
      kernels: kernels('Node v20', 0.125),
      kernelsDeno: kernels('Deno 2.9.6 (V8 15)', 0.0625),
    })
    const deno = both.slice(both.indexOf('## The kernels alone in Deno'))
    expect(both.indexOf('## The kernels alone in Deno')).toBeGreaterThan(0)
    expect(deno).toContain('Deno 2.9.6 (V8 15) with `--v8-flags=--no-liftoff`')
    expect(deno).toContain('| `q4 gemv` | 0.063 |')
    expect(both.slice(0, both.indexOf('in Deno'))).toContain('| `q4 gemv` | 0.125 |')
  })

  it('carries the sections other tools wrote over to a new report, and nothing else', () => {
    const a = '<!-- section:fidelity -->\n## Fidelity\n\n| a |\n<!-- /section:fidelity -->'
    const b = '<!-- section:other -->\nx\n<!-- /section:other -->'
    const previous = `# Benchmarks\n\nold numbers\n\n${a}\n\nstale text\n\n${b}\n`
    const md = keepSections(previous, '# Benchmarks\n\nnew numbers\n')
    expect(md).toBe(`# Benchmarks\n\nnew numbers\n\n${a}\n\n${b}\n`)
    expect(keepSections(md, '# Benchmarks\n\nnewer\n')).toBe(
      `# Benchmarks\n\nnewer\n\n${a}\n\n${b}\n`,
    )
    expect(keepSections('# old, no sections\n', 'new\n')).toBe('new\n')
    // an unclosed or mismatched marker keeps nothing
    expect(keepSections('<!-- section:a -->\nx\n<!-- /section:b -->', 'new\n')).toBe('new\n')
  })
})
