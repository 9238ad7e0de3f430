/**
 * Test fixtures for the package loader: a small package built in memory (random bytes standing
 * in for the graph and weights; the loader never looks inside them) and sources that count
 * reads and can misbehave.
 */
import { createHash, randomBytes } from 'node:crypto'
import {
  MANIFEST_FILE,
  MANIFEST_VERSION,
  externalDataName,
  shardName,
  shardRanges,
  type Manifest,
  type ManifestFile,
} from '../../../src/format/index.ts'
import type { ModelSource, SourceObject } from '../../../src/engine/package/sources/model-source.ts'

export const TINY_CONFIG = {
  model_type: 'qwen2',
  vocab_size: 64,
  hidden_size: 16,
  intermediate_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

export interface FakePackage {
  id: string
  manifest: Manifest
  /** Object key → bytes (including `<id>/manifest.json`). */
  objects: Map<string, Uint8Array>
  /** The unsplit external data. */
  data: Uint8Array
  graph: Uint8Array
}

export function makeFakePackage(
  id = 'fake',
  dataBytes = 100_000,
  shardBytes = 16_384,
): FakePackage {
  const file = (path: string, bytes: Uint8Array): ManifestFile => ({
    path,
    bytes: bytes.byteLength,
    sha256: sha256(bytes),
  })
  const enc = new TextEncoder()
  const tokenizerJson = enc.encode(JSON.stringify({ model: { type: 'BPE' } }))
  const tokenizerConfig = enc.encode(JSON.stringify({ chat_template: '{{ messages }}' }))
  const graph = new Uint8Array(randomBytes(3000))
  const data = new Uint8Array(randomBytes(dataBytes))
  const location = externalDataName('model.onnx')
  const ranges = shardRanges(data.byteLength, shardBytes)
  const objects = new Map<string, Uint8Array>()
  const shards = ranges.map(([offset, length], i) => {
    const bytes = data.slice(offset, offset + length)
    const f = file(shardName(location, i, ranges.length), bytes)
    objects.set(`${id}/${f.path}`, bytes)
    return f
  })
  const manifest: Manifest = {
    version: MANIFEST_VERSION,
    id,
    synthetic: false,
    config: TINY_CONFIG,
    generationConfig: { eos_token_id: 2 },
    tokenizer: {
      json: file('tokenizer.json', tokenizerJson),
      config: file('tokenizer_config.json', tokenizerConfig),
    },
    stages: [
      {
        io: 'ids->logits',
        layers: [0, TINY_CONFIG.num_hidden_layers],
        graph: file('model.onnx', graph),
        externalData: [{ location, bytes: data.byteLength, shards }],
      },
    ],
    shardBytes,
    totalBytes:
      tokenizerJson.byteLength + tokenizerConfig.byteLength + graph.byteLength + data.byteLength,
  }
  objects.set(`${id}/tokenizer.json`, tokenizerJson)
  objects.set(`${id}/tokenizer_config.json`, tokenizerConfig)
  objects.set(`${id}/model.onnx`, graph)
  objects.set(`${id}/${MANIFEST_FILE}`, enc.encode(JSON.stringify(manifest)))
  return { id, manifest, objects, data, graph }
}

export interface CountingSource extends ModelSource {
  /** Reads per key (get and stream both count). */
  reads: Map<string, number>
  /** Reads running right now, and the most seen at once. */
  inFlight: number
  maxInFlight: number
  /** Bytes a byte stream (`bytes` option) wrote into its reader's buffers, and enqueued as chunks. */
  intoReader: number
  enqueued: number
}

export interface MemorySourceOptions {
  /** Offer `stream` (default) or only `get`. */
  streaming?: boolean
  /** Called before each read; may throw (a transport error) or wait. */
  before?: (key: string, attempt: number) => void | Promise<void>
  /** Stream chunk size. */
  chunk?: number
  /** Report this size instead of the real one (undefined: the real size). */
  size?: (key: string, real: number) => number | undefined
  /** Byte streams, as files and R2 bodies are: they fill a BYOB reader's buffers. */
  bytes?: boolean
}

/** A source over a Map that counts reads; the map can be edited between loads. */
export function memorySource(
  objects: Map<string, Uint8Array>,
  options: MemorySourceOptions = {},
): CountingSource {
  const chunk = options.chunk ?? 4096
  const src: CountingSource = {
    reads: new Map(),
    inFlight: 0,
    maxInFlight: 0,
    intoReader: 0,
    enqueued: 0,
    describe: () => 'memory',
    async get(key) {
      return (await read(key)) ?? null
    },
  }
  async function read(key: string): Promise<Uint8Array | undefined> {
    const attempt = (src.reads.get(key) ?? 0) + 1
    src.reads.set(key, attempt)
    src.inFlight++
    src.maxInFlight = Math.max(src.maxInFlight, src.inFlight)
    try {
      await new Promise((r) => setTimeout(r, 1))
      await options.before?.(key, attempt)
      const bytes = objects.get(key)
      return bytes && bytes.slice()
    } finally {
      src.inFlight--
    }
  }
  if (options.streaming !== false) {
    src.stream = async (key): Promise<SourceObject | null> => {
      const bytes = await read(key)
      if (!bytes) return null
      let offset = 0
      const body = options.bytes
        ? new ReadableStream({
            type: 'bytes',
            pull(controller) {
              if (offset >= bytes.byteLength) {
                controller.close()
                return controller.byobRequest?.respond(0)
              }
              const view = controller.byobRequest?.view
              if (!view) {
                const piece = bytes.slice(offset, (offset += chunk))
                src.enqueued += piece.byteLength
                return controller.enqueue(piece)
              }
              const piece = bytes.subarray(offset, offset + Math.min(chunk, view.byteLength))
              new Uint8Array(view.buffer, view.byteOffset, piece.byteLength).set(piece)
              offset += piece.byteLength
              src.intoReader += piece.byteLength
              controller.byobRequest!.respond(piece.byteLength)
            },
          })
        : new ReadableStream<Uint8Array>({
            pull(controller) {
              if (offset >= bytes.byteLength) return controller.close()
              controller.enqueue(bytes.subarray(offset, (offset += chunk)))
            },
          })
      const size = options.size ? options.size(key, bytes.byteLength) : bytes.byteLength
      return { size, body }
    }
  }
  return src
}
