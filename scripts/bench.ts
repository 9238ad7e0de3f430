/**
 * `npm run bench`: the engine against its peers on the synthetic `qwen2.5-0.5b` q8 model
 * (random weights, exact Qwen2.5-0.5B-Instruct shapes), one thread, in one run:
 *
 * - engine: QwenEngine on onnxruntime-web wasm (load, time to first token for 64- and 512-token
 *   prompts, decode tok/s, sentiment with and without the cached instruction prefix, peak RSS
 *   and WASM memory, 1 vs 4 concurrent streams, a sentiment request during a long chat);
 * - peers on the same graph: a bare onnxruntime-web greedy loop (the floor of engine overhead),
 *   a bare onnxruntime-node loop (CPU EP, one thread), transformers.js on its onnxruntime-web
 *   wasm and on onnxruntime-node;
 * - the bound: memcpy bandwidth ÷ weight bytes read per token;
 * - where the time goes: session options, per-layer vs lm_head, KV length, batching.
 *
 * Each measurement runs in its own child process (memory measured alone, no shared WASM heap),
 * one after another. A full run writes BENCHMARKS.md, bench/results.json and bench/decode.svg;
 * `--quick` (fewer rounds and tokens) and partial runs write to .cache/bench/ instead. Progress
 * goes to stderr, the report (or `--json` results) to stdout.
 *
 *   npm run bench [-- --quick] [--only engine,ort-web,...] [--no-explore] [--json]
 *   npm run bench -- --render    (BENCHMARKS.md and the chart again from bench/results.json)
 *
 * How close the quantized formats stay to fp32 (KL, top-1) is its own harness, on presets whose
 * weights look trained: `npm run bench:fidelity` (bench/fidelity.ts). Its table goes into
 * BENCHMARKS.md by hand, between `<!-- section:fidelity -->` markers, which a new report keeps.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { isMain, parseCli, runMain } from './lib/cli.ts'
import { runWorker } from './bench/child.ts'
import {
  SESSION_VARIANTS,
  type FormatProbe,
  type LayersProbe,
  type OptionsProbe,
  type ShapesProbe,
} from './bench/explore.ts'
import { describeMachine } from './bench/machine.ts'
import {
  BENCH_MODEL_ID,
  BENCH_Q4_MODEL_ID,
  ensureAccuracyLevel,
  ensureBenchModel,
  ensureBenchPackage,
  ensureBenchQ4Model,
  ensureModel,
  ensurePackage,
  packageWeightBytes,
} from './bench/model-cache.ts'
import { progressLog } from './bench/progress-log.ts'
import {
  chatPrompt,
  loadTokenizer,
  promptOfLength,
  SENTIMENT_TEXT,
  STREAM_QUESTIONS,
} from './bench/prompts.ts'
import {
  checkGoals,
  decodeChartSvg,
  keepSections,
  renderMarkdown,
  type BenchResults,
} from './bench/report.ts'
import type {
  BandwidthResult,
  BenchPlan,
  EngineResult,
  KernelsResult,
  LongResult,
  ServeResult,
} from './bench/types.ts'
import { decodeModel, getExternalData, tensorByteLength } from './lib/onnx/index.ts'

const ENGINES = [
  'engine',
  'engine-q4',
  'engine-q4-relaxed',
  'engine-graph',
  'engine-deno',
  'engine-q4-deno',
  'engine-graph-deno',
  'engine-node24',
  'engine-q4-node24',
  'engine-graph-node24',
  'ort-web',
  'tjs-web',
  'ort-node',
  'ort-node-q4',
  'tjs-node',
] as const
type EngineName = (typeof ENGINES)[number]
/** Parts besides the engines: the kernels alone, the servers on the q4 package, the probes. */
const PARTS = ['kernels', 'serve', 'long', 'explore'] as const
/** What needs the q4 export and its package. */
const NEEDS_Q4 = new Set([
  'engine-q4',
  'engine-q4-relaxed',
  'engine-q4-deno',
  'engine-q4-node24',
  'ort-node-q4',
  'serve',
  'long',
])

export const BENCH_CLI = {
  name: 'bench',
  command: 'npm run bench --',
  usage: [
    'npm run bench [-- options]',
    'npm run bench:engine [-- options]   (= bench --only engine,ort-web)',
  ],
  summary: [
    'Measures the engine against its peers (bare onnxruntime-web and -node loops, transformers.js)',
    'on the synthetic qwen2.5-0.5b q8 model, one thread, each measurement in its own process. A',
    'full run (no options) writes BENCHMARKS.md, bench/results.json and bench/decode.svg (about',
    '50 minutes); other runs write to .cache/bench/. Progress goes to stderr, the report to stdout.',
  ],
  options: {
    quick: { type: 'boolean', default: false, help: 'fewer rounds and tokens' },
    only: {
      type: 'string',
      arg: '<list>',
      help: `comma-separated subset of ${[...ENGINES, ...PARTS].join(', ')}`,
      defaultHelp: 'all',
    },
    'no-explore': {
      type: 'boolean',
      default: false,
      help: 'skip the where-the-time-goes probes (session options, layers, KV length, batching)',
    },
    json: { type: 'boolean', default: false, help: 'print the results as JSON, not the report' },
    out: {
      type: 'string',
      arg: '<dir>',
      help: 'folder for results.json, decode.svg and BENCHMARKS.md',
      defaultHelp: 'bench/ for a full run, else .cache/bench/quick or .cache/bench/partial',
    },
    render: {
      type: 'boolean',
      default: false,
      help: 'measure nothing: BENCHMARKS.md and the chart again from bench/results.json',
    },
  },
  examples: [
    'npm run bench -- --quick',
    'npm run bench -- --only engine,ort-web --no-explore',
    'npm run bench -- --render',
  ],
  notes: [
    'Quantization fidelity (KL and top-1 against fp32, with and without outlier channels) is',
    'measured separately: npm run bench:fidelity -- --help',
  ],
} as const

/** Bytes of every initializer: a q8 decode step reads each weight once (the tied embedding is the lm_head). */
function weightBytesOf(onnxPath: string): number {
  const model = decodeModel(new Uint8Array(readFileSync(onnxPath)))
  let n = 0
  for (const t of model.graph?.initializer ?? [])
    n += getExternalData(t)?.length ?? tensorByteLength(t)
  return n
}

/**
 * scripts/bench/kernels.ts in Deno (the npm package's binary), whose V8 runs relaxed SIMD by
 * default and is newer than Node 20's: the kernels as Deno (and Deno Deploy) run them.
 */
function kernelsInDeno(quick: boolean): KernelsResult {
  const deno = join('node_modules', '.bin', 'deno')
  const args = ['run', '-A', '--v8-flags=--no-liftoff', join('scripts', 'bench', 'kernels.ts')]
  const out = execFileSync(deno, [...args, '--json', ...(quick ? ['--quick'] : [])], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 16 * 1024 * 1024,
  })
  return JSON.parse(out.trim().split('\n').at(-1)!) as KernelsResult
}

/** The engine's source: commit, and uncommitted changes under src/ (read-only git commands). */
function describeSource(): BenchResults['source'] {
  const git = (...a: string[]) => {
    try {
      return execFileSync('git', ['--no-optional-locks', ...a], { encoding: 'utf8' })
    } catch {
      return ''
    }
  }
  const changed = git('status', '--porcelain', '--', 'src')
    .split('\n')
    .map((l) => l.trimEnd())
    .filter(Boolean)
    .map((l) => l.slice(3))
  return { commit: git('rev-parse', '--short', 'HEAD').trim() || 'unknown', uncommitted: changed }
}

/** Writes the report and the chart; only a full run's results replace BENCHMARKS.md. */
function writeOutputs(results: BenchResults, outDir: string, writeReport: boolean, json: string) {
  writeFileSync(join(outDir, 'results.json'), json)
  writeFileSync(join(outDir, 'decode.svg'), decodeChartSvg(results))
  const path = writeReport ? 'BENCHMARKS.md' : join(outDir, 'BENCHMARKS.md')
  const md = keepSections(
    existsSync(path) ? readFileSync(path, 'utf8') : '',
    renderMarkdown(results),
  )
  writeFileSync(path, md)
  return md
}

/** `--render`: BENCHMARKS.md and the chart again from bench/results.json, nothing measured. */
function render() {
  const json = readFileSync(join('bench', 'results.json'), 'utf8')
  const md = writeOutputs(JSON.parse(json) as BenchResults, 'bench', true, json)
  console.log(md)
}

async function main() {
  const { values: args } = parseCli(BENCH_CLI)
  if (args.render) return render()
  const log = progressLog('bench')
  const started = performance.now()
  const source = describeSource() // the code the engines load now, not what the tree holds later
  const loadStart = os.loadavg()
  if (loadStart[0] > 1.5)
    log(`warning: load average ${loadStart[0].toFixed(2)}: numbers will be low`)
  const quick = args.quick
  const only = new Set<string>(args.only ? args.only.split(',') : [...ENGINES, ...PARTS])
  for (const name of only)
    if (![...ENGINES, ...PARTS].includes(name as EngineName))
      throw new Error(`--only: no part named ${name} (${[...ENGINES, ...PARTS].join(', ')})`)
  const explore = !args['no-explore'] && only.has('explore')
  // Only a full run of everything replaces the committed report; other runs go to .cache/.
  const writeReport = !quick && !args.out && !args.only && !args['no-explore']
  const outDir =
    args.out ?? (writeReport ? 'bench' : join('.cache', 'bench', quick ? 'quick' : 'partial'))

  const modelDir = ensureBenchModel(log)
  const packageDir = await ensureBenchPackage(modelDir, log)
  let q4: BenchPlan['q4']
  if ([...only].some((x) => NEEDS_Q4.has(x))) {
    const q4Dir = ensureBenchQ4Model(log)
    q4 = {
      modelDir: q4Dir,
      packageDir: await ensurePackage(q4Dir, BENCH_Q4_MODEL_ID, log),
      acc4Dir: ensureAccuracyLevel(q4Dir, 4, log),
    }
  }
  log('preparing prompts…')
  const tok = await loadTokenizer(modelDir)
  const streams = STREAM_QUESTIONS.map((q) => chatPrompt(tok, q))
  const plan: BenchPlan = {
    modelDir,
    packageDir,
    quick,
    rounds: quick ? 1 : 3,
    decodeRounds: quick ? 1 : 5,
    decodeTokens: quick ? 32 : 128,
    streamTokens: quick ? 16 : 48,
    prompts: { p64: promptOfLength(tok, 64), p512: promptOfLength(tok, 512), streams },
    sentimentText: SENTIMENT_TEXT,
    weightBytes: weightBytesOf(join(modelDir, 'onnx', 'model_quantized.onnx')),
    q4,
    packageWeightBytes: {
      q8: packageWeightBytes(packageDir),
      ...(q4 && { q4: packageWeightBytes(q4.packageDir) }),
    },
  }
  mkdirSync(outDir, { recursive: true })
  mkdirSync(join('.cache', 'bench'), { recursive: true })
  const planPath = join('.cache', 'bench', 'plan.json')
  writeFileSync(planPath, JSON.stringify(plan))

  const engines: EngineResult[] = []
  for (const name of ENGINES.filter((e) => only.has(e))) {
    log(`— ${name}`)
    try {
      engines.push(await runWorker<EngineResult>(name as EngineName, planPath))
    } catch (err) {
      const message = (err as Error).message
      log(`${name} failed: ${message.split('\n')[0]}`)
      engines.push({ name, label: name, backend: '–', error: message })
    }
  }
  log('— memory bandwidth')
  const bw = await runWorker<BandwidthResult>('bandwidth', planPath)
  const bandwidth = { ...bw, boundTokS: bw.copyBytesPerS / plan.weightBytes }

  let kernels: KernelsResult | undefined
  let kernelsDeno: KernelsResult | undefined
  if (only.has('kernels')) {
    log('— kernels')
    kernels = await runWorker<KernelsResult>('kernels', planPath)
    log('— kernels: deno')
    try {
      kernelsDeno = kernelsInDeno(plan.quick)
    } catch (err) {
      log(`kernels in deno failed: ${(err as Error).message.split('\n')[0]}`)
    }
  }
  const long: LongResult[] = []
  if (only.has('long'))
    for (const kind of ['long:f32', 'long:q8'] as const) {
      log(`— ${kind}`)
      try {
        long.push(await runWorker<LongResult>(kind, planPath))
      } catch (err) {
        log(`${kind} failed: ${(err as Error).message.split('\n')[0]}`)
      }
    }
  const serve: ServeResult[] = []
  if (only.has('serve'))
    for (const kind of [
      'serve:node',
      'serve:deno',
      'serve-long:deno',
      'serve-long-bounded:deno',
      'serve-long-q8kv:deno',
    ] as const) {
      log(`— ${kind}`)
      try {
        serve.push(await runWorker<ServeResult>(kind, planPath))
      } catch (err) {
        log(`${kind} failed: ${(err as Error).message.split('\n')[0]}`)
      }
    }

  let exploreResults: BenchResults['explore']
  if (explore) {
    exploreResults = { options: [], layers: [] }
    for (const variant of Object.keys(SESSION_VARIANTS)) {
      log(`— session options: ${variant}`)
      exploreResults.options.push(
        await runWorker<OptionsProbe>(`explore:options:${variant}`, planPath),
      )
    }
    // fewer layers, and one layer with a 64-token vocabulary (no lm_head to speak of)
    for (const [layers, vocabSize] of [
      [1, undefined],
      [4, undefined],
      [1, 64],
    ] as const) {
      const id = `${BENCH_MODEL_ID}-${layers}l${vocabSize ? `-v${vocabSize}` : ''}`
      const overrides = vocabSize ? { numLayers: layers, vocabSize } : { numLayers: layers }
      const dir = ensureModel(
        id,
        { preset: 'qwen2.5-0.5b', format: 'q8', externalData: true, overrides },
        log,
      )
      log(`— ${id}`)
      exploreResults.layers.push(await runWorker<LayersProbe>(`explore:layers:${dir}`, planPath))
    }
    const baseline = exploreResults.options.find((o) => o.variant === 'baseline' && o.stepMs)
    if (baseline) exploreResults.layers.push({ layers: 24, stepMs: baseline.stepMs! })
    exploreResults.formats = []
    if (!quick) {
      for (const format of ['q4', 'fp32'] as const) {
        const dir = ensureModel(
          `qwen2.5-0.5b-${format}-ext`,
          { preset: 'qwen2.5-0.5b', format, externalData: true },
          log,
        )
        log(`— ${format} weights`)
        try {
          exploreResults.formats.push(
            await runWorker<FormatProbe>(`explore:format:${dir}`, planPath),
          )
        } catch (err) {
          log(`${format} failed: ${(err as Error).message.split('\n')[0]}`)
        }
      }
    }
    log('— step shapes')
    exploreResults.shapes = await runWorker<ShapesProbe>('explore:shapes', planPath)
  }

  const results: BenchResults = {
    generatedAt: new Date().toISOString(),
    command: `npm run bench${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`,
    quick,
    durationS: Math.round((performance.now() - started) / 1000),
    loadAverage: { start: loadStart, end: os.loadavg() },
    machine: describeMachine(),
    source,
    model: {
      id: BENCH_MODEL_ID,
      description:
        'synthetic `qwen2.5-0.5b` (random weights; Qwen2.5-0.5B-Instruct shapes: 24 layers, hidden 896, 14/2 heads, vocab 151936, tied lm_head), q8 = `DynamicQuantizeMatMul` with uint8 weights, weights as external data' +
        (q4 ? '; the q4 columns run its q4 export (`MatMulNBits`, blocks of 32, same seed)' : ''),
      weightBytesPerToken: plan.weightBytes,
      promptTokens: {
        p64: plan.prompts.p64.ids.length,
        p512: plan.prompts.p512.ids.length,
        streams: streams.map((s) => s.ids.length),
      },
    },
    plan: {
      rounds: plan.rounds,
      decodeRounds: plan.decodeRounds,
      decodeTokens: plan.decodeTokens,
      streamTokens: plan.streamTokens,
      sentimentText: plan.sentimentText,
    },
    engines,
    bandwidth,
    packageWeightBytes: plan.packageWeightBytes,
    kernels,
    kernelsDeno,
    serve: serve.length ? serve : undefined,
    long: long.length ? long : undefined,
    explore: exploreResults,
    chartPath: `${outDir}/decode.svg`,
  }
  // formatted as `prettier --check .` expects, so the committed results pass `npm run check`
  const resultsPath = join(outDir, 'results.json')
  const prettier = await import('prettier')
  const style = (await prettier.resolveConfig(resultsPath)) ?? {}
  const json = await prettier.format(JSON.stringify(results), { ...style, parser: 'json' })
  const md = writeOutputs(results, outDir, writeReport, json)
  log(`wrote ${writeReport ? 'BENCHMARKS.md, ' : ''}${outDir}/results.json, ${outDir}/decode.svg`)
  for (const g of checkGoals(results)) log(`${g.met ? 'met ' : 'MISS'} ${g.goal}: ${g.measured}`)
  if (args.json) console.log(JSON.stringify(results, null, 2))
  else console.log(md)
}

if (isMain(import.meta.url)) runMain(main)
