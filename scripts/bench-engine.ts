/**
 * Engine benchmark on the `qwen2.5-0.5b` synthetic q8 model (random weights, exact
 * Qwen2.5-0.5B-Instruct shapes), onnxruntime-web wasm, one thread:
 * load time, 64-token prefill, decode tok/s of the engine against a bare onnxruntime-web greedy
 * loop over the same session (measured alternately in the same run), peak RSS, WASM memory.
 *
 *   npm run bench:engine [-- --tokens 128 --rounds 3 --preset qwen2.5-0.5b --format q8]
 */
import { existsSync, statSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { makeModel } from './lib/synth-model.ts'
import type { PresetName, WeightFormat } from './lib/model-presets.ts'
import type { Tensor } from '../src/engine/ort.ts'

const { values: args } = parseArgs({
  options: {
    preset: { type: 'string', default: 'qwen2.5-0.5b' },
    format: { type: 'string', default: 'q8' },
    tokens: { type: 'string', default: '128' },
    rounds: { type: 'string', default: '3' },
    dir: { type: 'string' },
  },
})
const tokens = Number(args.tokens)
const rounds = Number(args.rounds)

// Watch every WebAssembly.Memory ORT creates, before ORT is imported.
const memories: WebAssembly.Memory[] = []
const instantiate = WebAssembly.instantiate.bind(WebAssembly) as (
  ...a: unknown[]
) => Promise<{ instance: WebAssembly.Instance }>
;(WebAssembly as { instantiate: unknown }).instantiate = async (...a: unknown[]) => {
  const result = await instantiate(...a)
  const instance = 'instance' in result ? result.instance : (result as WebAssembly.Instance)
  for (const v of Object.values(instance.exports))
    if (v instanceof WebAssembly.Memory) memories.push(v)
  const imports = a[1] as Record<string, Record<string, unknown>> | undefined
  for (const ns of Object.values(imports ?? {}))
    for (const v of Object.values(ns)) if (v instanceof WebAssembly.Memory) memories.push(v)
  return result
}
const wasmBytes = () => [...new Set(memories)].reduce((n, m) => n + m.buffer.byteLength, 0)

const log = (s: string) => process.stderr.write(s + '\n')
const mb = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main() {
  const dir = args.dir ?? join('.cache', 'models', `${args.preset}-${args.format}`)
  if (!existsSync(join(dir, 'config.json'))) {
    log(`generating ${dir} (once)…`)
    makeModel({
      preset: args.preset as PresetName,
      format: args.format as WeightFormat,
      outDir: dir,
    })
  }
  const weightBytes = readdirSync(join(dir, 'onnx')).reduce(
    (n, f) => n + statSync(join(dir, 'onnx', f)).size,
    0,
  )
  const { loadHfFolder } = await import('../src/adapters/node/hf-folder.ts')
  const { QwenEngine } = await import('../src/engine/engine.ts')
  const { ort } = await import('../src/engine/ort.ts')

  log('loading…')
  const t0 = performance.now()
  const pkg = await loadHfFolder(dir)
  const readMs = performance.now() - t0
  const engine = await QwenEngine.create(pkg, { contextLength: 4096 })
  const loadMs = performance.now() - t0
  const wasmAfterLoad = wasmBytes()

  const model = engine.model
  const messages = [
    { role: 'user' as const, content: '请用一句话介绍一下你自己。Tell me about yourself.' },
  ]
  const prompt = engine.promptIds(messages)

  // 64-token prefill
  const ids64 = Array.from({ length: 64 }, (_, i) => prompt[i % prompt.length])
  const prefill: number[] = []
  for (let r = 0; r < rounds; r++) {
    const s = performance.now()
    await model.forward(ids64, model.emptyCache())
    prefill.push(performance.now() - s)
  }

  // Engine decode: greedy, eos ignored by asking for exactly `tokens` (random weights rarely
  // pick eos; the count is checked).
  async function engineDecode(): Promise<number> {
    const run = await engine.chat(messages, {
      temperature: 0,
      maxNewTokens: tokens,
      repetitionPenalty: 1,
    })
    let first = 0
    let n = 0
    let last = 0
    let completion = 0
    for await (const e of run.events) {
      if (e.type === 'end') completion = e.usage.completionTokens
      else {
        n++
        last = performance.now()
        if (n === 1) first = last
      }
    }
    void n
    // tokens after the first one, over the time after the first one (prefill excluded)
    return ((completion - 1) / (last - first)) * 1000
  }

  // Bare loop: the same session, hand-built feeds, argmax, nothing else.
  const session = model.session
  const cfg = { layers: model.shape.layers, kv: model.shape.kvHeads, hd: model.shape.headDim }
  async function bareDecode(): Promise<number> {
    let past: Record<string, Tensor> = {}
    for (let i = 0; i < cfg.layers; i++)
      for (const k of ['key', 'value'])
        past[`past_key_values.${i}.${k}`] = new ort.Tensor('float32', new Float32Array(0), [
          1,
          cfg.kv,
          0,
          cfg.hd,
        ])
    let ids = prompt
    let len = 0
    let start = 0
    for (let step = 0; step < tokens; step++) {
      if (step === 1) start = performance.now()
      const feeds: Record<string, Tensor> = {
        input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]),
        attention_mask: new ort.Tensor('int64', new BigInt64Array(len + ids.length).fill(1n), [
          1,
          len + ids.length,
        ]),
        position_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(ids, (_, i) => BigInt(len + i)),
          [1, ids.length],
        ),
        ...past,
      }
      if (session.inputNames.includes('num_logits_to_keep'))
        feeds.num_logits_to_keep = new ort.Tensor('int64', BigInt64Array.of(1n), [])
      const out = await session.run(feeds)
      const logits = out.logits.data as Float32Array
      const v = out.logits.dims[2]
      const base = logits.length - v
      let best = 0
      for (let j = 1; j < v; j++) if (logits[base + j] > logits[base + best]) best = j
      len += ids.length
      ids = [best]
      past = {}
      for (let i = 0; i < cfg.layers; i++)
        for (const k of ['key', 'value'])
          past[`past_key_values.${i}.${k}`] = out[`present.${i}.${k}`]
    }
    return ((tokens - 1) / (performance.now() - start)) * 1000
  }

  const eng: number[] = []
  const bare: number[] = []
  for (let r = 0; r < rounds; r++) {
    log(`round ${r + 1}/${rounds}…`)
    eng.push(await engineDecode())
    bare.push(await bareDecode())
  }
  const usage = process.resourceUsage()
  const result = {
    model: `${args.preset} ${args.format} (synthetic, random weights)`,
    weightBytes,
    readMs: Math.round(readMs),
    loadMs: Math.round(loadMs),
    prefill64Ms: Math.round(median(prefill)),
    engineDecodeTokS: +median(eng).toFixed(2),
    bareDecodeTokS: +median(bare).toFixed(2),
    engineOverBare: +(median(eng) / median(bare)).toFixed(3),
    engineRounds: eng.map((x) => +x.toFixed(2)),
    bareRounds: bare.map((x) => +x.toFixed(2)),
    wasmAfterLoadBytes: wasmAfterLoad,
    wasmOverWeights: +(wasmAfterLoad / weightBytes).toFixed(3),
    wasmPeakBytes: wasmBytes(),
    peakRssBytes: usage.maxRSS * 1024,
    node: process.version,
  }
  log(
    [
      `weights ${mb(weightBytes)}; load ${result.loadMs} ms (read ${result.readMs} ms)`,
      `prefill 64 tokens: ${result.prefill64Ms} ms`,
      `decode: engine ${result.engineDecodeTokS} tok/s, bare ORT loop ${result.bareDecodeTokS} tok/s (ratio ${result.engineOverBare})`,
      `WASM memory after load ${mb(wasmAfterLoad)} = ${result.wasmOverWeights}x weights; peak RSS ${mb(result.peakRssBytes)}`,
    ].join('\n'),
  )
  console.log(JSON.stringify(result, null, 2))
}

await main()
