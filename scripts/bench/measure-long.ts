/**
 * A long context in the engine: the q4 package with relaxed SIMD, one chat whose prompt is about
 * 3,000 tokens, then 64 greedy tokens: time to its first token, decode rate at that length, and
 * the KV cache it holds, with the KV cache in f32 (the default) or in q8 (KV_FORMAT=q8). Each
 * format in its own process; the two runs' greedy tokens are compared in the report.
 */
import { basename, dirname } from 'node:path'
import { decodeRate, runChat, StepRecorder } from './measure-engine.ts'
import { peakRssBytes, round } from './stats.ts'
import type { BenchPlan, LongResult } from './types.ts'
import type { KvFormat } from '../../src/format/index.ts'
import { wasmMemoryBytes } from './wasm-memory.ts'

/** About 3,000 tokens with the chat template (the bench's tokenizer). */
const LONG_CONTEXT_NOTES =
  'Read these notes and answer the question at the end. ' +
  Array.from(
    { length: 185 },
    (_, i) => `Note ${i}: the shipment to store ${i % 17} arrived late again.`,
  ).join(' ') +
  ' Question: which store had the most late shipments?'

const LONG_DECODE_TOKENS = 64

export async function measureLong(
  plan: BenchPlan,
  log: (line: string) => void,
  kvFormat: KvFormat,
): Promise<LongResult> {
  if (!plan.q4) throw new Error('the plan has no q4 package')
  const { fsSource } = await import('../../src/adapters/node/fs-source.ts')
  const { openPackage } = await import('../../src/engine/package/loader.ts')
  const { QwenEngine } = await import('../../src/engine/engine.ts')
  const { installMacrotask } = await import('../../src/engine/serve/macrotask.ts')
  const { pickVariant } = await import('../../src/engine/wasm/kernel.ts')
  installMacrotask(setImmediate)
  log(`loading (KV ${kvFormat})…`)
  const dir = plan.q4.packageDir
  const engine = await QwenEngine.create(await openPackage(fsSource(dirname(dir)), basename(dir)), {
    contextLength: 4096,
    session: { kvFormat },
  })
  const decoder = engine.model.decoder
  if (!decoder) throw new Error('the q4 package did not load into the kernels')
  const rec = new StepRecorder(engine.model)
  const messages = [{ role: 'user' as const, content: LONG_CONTEXT_NOTES }]
  const promptTokens = engine.promptIds(messages).length
  log(`${promptTokens}-token prompt, then ${LONG_DECODE_TOKENS} tokens…`)
  const kvBefore = decoder.kvBytes
  let kvDuring = 0
  rec.onStep = () => (kvDuring = Math.max(kvDuring, decoder.kvBytes - kvBefore))
  const started = performance.now()
  const chat = await runChat(engine, messages, LONG_DECODE_TOKENS)
  const decode = rec.steps.filter((s) => s.tokens === 1)
  return {
    kvFormat,
    isa: await pickVariant(),
    promptTokens,
    ttftMs: round(chat.firstEventAt - started, 0),
    decodeTokS: round(decodeRate(rec.steps)),
    decodedTokens: chat.completion,
    ids: decode.map((s) => s.ids[0]),
    kvPositionBytes: decoder.kvPositionBytes,
    kvPeakBytes: kvDuring,
    wasmPeakBytes: wasmMemoryBytes(),
    peakRssBytes: peakRssBytes(),
  }
}
