/** scripts/lib/onnx.ts: protobuf round trips, chunked encoding, external data. */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  DataLocation,
  DataType,
  decodeModel,
  deferredInitializer,
  encodeModel,
  encodeModelChunks,
  float,
  getExternalData,
  initializer,
  initializers,
  node,
  opset,
  setExternalData,
  setRawData,
  tensorRawData,
  tensorToFloat32,
  valueInfo,
  type ModelProto,
} from '../../scripts/lib/onnx/index.ts'
import { ensureModel } from '../helpers/models.ts'
import { emptyPast, runStep, type LoadedModel } from '../helpers/ort-session.ts'
import { maxAbsDiff } from '../helpers/numeric.ts'
import * as ort from 'onnxruntime-web'

const INT64_MAX = 9223372036854775807n

/** A model touching every kind of field the generator and the prepare script care about. */
function sampleModel(): ModelProto {
  const branch = {
    name: 'then',
    node: [node('Identity', ['c'], ['y'])],
    initializer: [initializer('c', Float32Array.of(7), [1])],
    output: [valueInfo('y', DataType.FLOAT, [1])],
  }
  return {
    ir_version: 8,
    opset_import: [opset('', 17), opset('com.microsoft', 1)],
    producer_name: 'test',
    metadata_props: [{ key: 'k', value: 'v' }],
    graph: {
      name: 'g',
      node: [
        node('Slice', ['x', 'starts', 'ends'], ['s'], {}, { name: 'slice' }),
        node(
          'Custom',
          ['s'],
          ['z'],
          {
            i: 3,
            f: 0.5,
            one: float(1),
            str: 'hello',
            ints: [1, -2],
            floats: [0.25, 1.5],
            strs: ['a', 'b'],
            t: initializer('attr', BigInt64Array.of(1n, INT64_MAX), [2]),
            g: branch,
          },
          { domain: 'com.microsoft' },
        ),
      ],
      initializer: [
        initializer('starts', BigInt64Array.of(-1n), [1]),
        { name: 'ends', dims: [1], data_type: DataType.INT64, int64_data: [INT64_MAX] },
        initializer('w', Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]),
        initializer('u8', Uint8Array.of(0, 128, 255), [3]),
      ],
      input: [valueInfo('x', DataType.FLOAT, ['batch_size', 'sequence_length', 4])],
      output: [valueInfo('z', DataType.FLOAT, ['batch_size', 1, 4])],
    },
  }
}

/** Decoded messages carry empty arrays for absent repeated fields; drop them to compare. */
function stripEmpty(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) return Array.from(v as Uint8Array)
  if (Array.isArray(v)) return v.map(stripEmpty)
  if (v && typeof v === 'object')
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => !(Array.isArray(x) && x.length === 0) && x !== undefined)
        .map(([k, x]) => [k, stripEmpty(x)]),
    )
  return v
}

describe('encodeModel / decodeModel', () => {
  it('round-trips every field used, int64 beyond 2^53 included', () => {
    const model = sampleModel()
    const bytes = encodeModel(model)
    const decoded = decodeModel(bytes)
    expect(stripEmpty(decoded)).toEqual(stripEmpty(model))
    expect(decoded.graph!.initializer![1].int64_data).toEqual([INT64_MAX])
    expect(encodeModel(decoded)).toEqual(bytes)
  })

  it('returns raw_data as views into the input, without copying', () => {
    const bytes = encodeModel(sampleModel())
    const w = decodeModel(bytes).graph!.initializer!.find((t) => t.name === 'w')!
    expect(w.raw_data!.buffer).toBe(bytes.buffer)
    expect(Array.from(tensorToFloat32(w))).toEqual([1, 2, 3, 4, 5, 6])
  })

  it('walks initializers of subgraphs too', () => {
    const names = [...initializers(sampleModel())].map((t) => t.name)
    expect(names).toEqual(['starts', 'ends', 'w', 'u8', 'c'])
  })

  it('converts typed data fields to little-endian raw bytes', () => {
    const ends = sampleModel().graph!.initializer![1]
    expect(new BigInt64Array(tensorRawData(ends).slice().buffer)[0]).toBe(INT64_MAX)
    const f = { name: 'f', dims: [2], data_type: DataType.FLOAT, float_data: [1.5, -2] }
    expect(Array.from(tensorToFloat32(f))).toEqual([1.5, -2])
  })
})

describe('encodeModelChunks', () => {
  it('fills deferred initializers in order and gives the same bytes as encodeModel', () => {
    const full = sampleModel()
    const deferred = sampleModel()
    const data = new Map<string, Uint8Array>()
    deferred.graph!.initializer = deferred.graph!.initializer!.map((t) => {
      if (!t.raw_data) return t
      data.set(t.name!, t.raw_data)
      return deferredInitializer(t.name!, t.data_type!, t.dims!)
    })
    const asked: string[] = []
    const chunks = [
      ...encodeModelChunks(deferred, (t) => {
        asked.push(t.name!)
        return data.get(t.name!)!
      }),
    ]
    expect(asked).toEqual(['starts', 'w', 'u8'])
    expect(Buffer.concat(chunks)).toEqual(Buffer.from(encodeModel(full)))
  })

  it('rejects a fill of the wrong size, or a missing fill', () => {
    const model: ModelProto = {
      graph: { initializer: [deferredInitializer('w', DataType.FLOAT, [2, 2])] },
    }
    expect(() => [...encodeModelChunks(model, () => new Uint8Array(12))]).toThrow(/not 16/)
    expect(() => [...encodeModelChunks(model)]).toThrow(/no fill/)
  })
})

describe('external data', () => {
  it('records location, offset and length and reads the bytes back', () => {
    const model = sampleModel()
    const w = model.graph!.initializer![2]
    const bytes = w.raw_data!.slice()
    setExternalData(w, { location: 'model.onnx_data', offset: 4096, length: 24 })
    expect(w.raw_data).toBeUndefined()
    const decoded = decodeModel(encodeModel(model)).graph!.initializer![2]
    expect(decoded.data_location).toBe(DataLocation.EXTERNAL)
    expect(getExternalData(decoded)).toEqual({
      location: 'model.onnx_data',
      offset: 4096,
      length: 24,
    })
    const file = new Uint8Array(4096 + 24)
    file.set(bytes, 4096)
    const read = tensorRawData(decoded, (loc) =>
      loc === 'model.onnx_data' ? file : new Uint8Array(),
    )
    expect(read).toEqual(bytes)
    setRawData(decoded, read)
    expect(getExternalData(decoded)).toBeUndefined()
    expect(Array.from(tensorToFloat32(decoded))).toEqual([1, 2, 3, 4, 5, 6])
  })

  it('moves an embedded export to external data that onnxruntime-web loads', async () => {
    const dir = await ensureModel('tiny', 'q8')
    const bytes = readFileSync(join(dir, 'onnx', 'model_quantized.onnx'))
    const model = decodeModel(bytes)
    const chunks: Uint8Array[] = []
    let offset = 0
    for (const t of initializers(model)) {
      const raw = tensorRawData(t)
      if (raw.byteLength < 1024) continue // shape constants must stay inline for ORT
      chunks.push(raw)
      setExternalData(t, { location: 'model.onnx_data', offset, length: raw.byteLength })
      offset += raw.byteLength
    }
    const graph = encodeModel(model)
    expect(graph.byteLength).toBeLessThan(bytes.byteLength / 20)
    const open = async (b: Uint8Array, ext?: Uint8Array): Promise<LoadedModel> => ({
      session: await ort.InferenceSession.create(b, {
        externalData: ext ? [{ path: 'model.onnx_data', data: ext }] : undefined,
      }),
      config: JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')),
      kvHeads: 2,
      headDim: 16,
      external: !!ext,
    })
    const before = await open(bytes)
    const after = await open(graph, Buffer.concat(chunks))
    const ids = [[151644, 872, 198, 9707]]
    const a = await runStep(before, { ids, past: emptyPast(before) })
    const b = await runStep(after, { ids, past: emptyPast(after) })
    expect(maxAbsDiff(a.logits, b.logits)).toBe(0)
  })
})
