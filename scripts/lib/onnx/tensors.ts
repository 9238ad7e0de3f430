/** TensorProto data: element counts, raw bytes, external data references, float views. */
import {
  DataLocation,
  DataType,
  type GraphProto,
  type ModelProto,
  type TensorProto,
} from './types.ts'

const ELEMENT_BYTES: Record<number, number> = {
  [DataType.FLOAT]: 4,
  [DataType.UINT8]: 1,
  [DataType.INT8]: 1,
  [DataType.UINT16]: 2,
  [DataType.INT16]: 2,
  [DataType.INT32]: 4,
  [DataType.INT64]: 8,
  [DataType.BOOL]: 1,
  [DataType.FLOAT16]: 2,
  [DataType.DOUBLE]: 8,
  [DataType.UINT32]: 4,
  [DataType.UINT64]: 8,
  [DataType.COMPLEX64]: 8,
  [DataType.COMPLEX128]: 16,
  [DataType.BFLOAT16]: 2,
  [DataType.FLOAT8E4M3FN]: 1,
  [DataType.FLOAT8E4M3FNUZ]: 1,
  [DataType.FLOAT8E5M2]: 1,
  [DataType.FLOAT8E5M2FNUZ]: 1,
}

/** Number of elements (1 for a scalar). */
export function tensorElementCount(t: TensorProto): number {
  return (t.dims ?? []).reduce((n, d) => n * d, 1)
}

/** Size of the tensor's raw little-endian data, from dims and data_type (4-bit types packed). */
export function tensorByteLength(t: TensorProto): number {
  const type = t.data_type ?? DataType.UNDEFINED
  const count = tensorElementCount(t)
  if (type === DataType.UINT4 || type === DataType.INT4) return Math.ceil(count / 2)
  const size = ELEMENT_BYTES[type]
  if (size === undefined)
    throw new Error(`tensor ${t.name}: no fixed element size for type ${type}`)
  return count * size
}

export interface ExternalDataRef {
  /** Path relative to the .onnx file's folder, e.g. `model.onnx_data`. */
  location: string
  offset: number
  length: number
  checksum?: string
}

export function isExternal(t: TensorProto): boolean {
  return t.data_location === DataLocation.EXTERNAL
}

/** Where an external tensor's bytes are; `length` defaults to `tensorByteLength`. */
export function getExternalData(t: TensorProto): ExternalDataRef | undefined {
  if (!isExternal(t)) return undefined
  const entries = new Map((t.external_data ?? []).map((e) => [e.key, e.value]))
  const location = entries.get('location')
  if (!location) throw new Error(`tensor ${t.name}: external data without a location`)
  const ref: ExternalDataRef = {
    location,
    offset: Number(entries.get('offset') ?? 0),
    length: Number(entries.get('length') ?? tensorByteLength(t)),
  }
  const checksum = entries.get('checksum')
  if (checksum) ref.checksum = checksum
  return ref
}

/** Point the tensor at external bytes; drops its inline data (raw_data and typed fields). */
export function setExternalData(t: TensorProto, ref: ExternalDataRef): void {
  for (const key of INLINE_FIELDS) delete t[key]
  delete t.raw_data
  t.data_location = DataLocation.EXTERNAL
  t.external_data = [
    { key: 'location', value: ref.location },
    { key: 'offset', value: String(ref.offset) },
    { key: 'length', value: String(ref.length) },
  ]
  if (ref.checksum) t.external_data.push({ key: 'checksum', value: ref.checksum })
}

/** Put the bytes back into the model (the inverse of `setExternalData`). */
export function setRawData(t: TensorProto, bytes: Uint8Array): void {
  for (const key of INLINE_FIELDS) delete t[key]
  delete t.external_data
  delete t.data_location
  t.raw_data = bytes
}

const INLINE_FIELDS = [
  'float_data',
  'int32_data',
  'string_data',
  'int64_data',
  'double_data',
  'uint64_data',
] as const

export function hasInlineData(t: TensorProto): boolean {
  return INLINE_FIELDS.some((key) => (t[key]?.length ?? 0) > 0)
}

/**
 * The tensor's raw little-endian bytes wherever they are stored: `raw_data` (returned as is,
 * a view), the typed `*_data` fields (converted), or an external file, read through
 * `readExternal(location)` which returns the whole file.
 */
export function tensorRawData(
  t: TensorProto,
  readExternal?: (location: string) => Uint8Array,
): Uint8Array {
  const ext = getExternalData(t)
  if (ext) {
    if (!readExternal) throw new Error(`tensor ${t.name} is external (${ext.location})`)
    const file = readExternal(ext.location)
    if (ext.offset + ext.length > file.byteLength)
      throw new Error(`tensor ${t.name}: ${ext.location} is shorter than offset + length`)
    return file.subarray(ext.offset, ext.offset + ext.length)
  }
  if (t.raw_data) return t.raw_data
  const type = t.data_type
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
  if (t.float_data?.length) return bytes(Float32Array.from(t.float_data))
  if (t.double_data?.length) return bytes(Float64Array.from(t.double_data))
  if (t.int64_data?.length) return bytes(BigInt64Array.from(t.int64_data, (v) => BigInt(v)))
  if (t.uint64_data?.length) return bytes(BigUint64Array.from(t.uint64_data, (v) => BigInt(v)))
  if (t.int32_data?.length) {
    const v = t.int32_data
    if (type === DataType.INT32) return bytes(Int32Array.from(v))
    if (type === DataType.UINT8 || type === DataType.BOOL) return Uint8Array.from(v)
    if (type === DataType.INT8) return bytes(Int8Array.from(v))
    if (type === DataType.INT16) return bytes(Int16Array.from(v))
    if (type === DataType.UINT16 || type === DataType.FLOAT16 || type === DataType.BFLOAT16)
      return bytes(Uint16Array.from(v))
    throw new Error(`tensor ${t.name}: int32_data for data_type ${type} is not supported`)
  }
  if (tensorElementCount(t) === 0 || tensorByteLength(t) === 0) return new Uint8Array(0)
  throw new Error(`tensor ${t.name} has no data`)
}

/** View (or copy, when unaligned) of a FLOAT tensor's values. */
export function tensorToFloat32(
  t: TensorProto,
  readExternal?: (location: string) => Uint8Array,
): Float32Array {
  if (t.data_type !== DataType.FLOAT) throw new Error(`tensor ${t.name} is not FLOAT`)
  const raw = tensorRawData(t, readExternal)
  if (raw.byteOffset % 4 === 0)
    return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4)
  return new Float32Array(raw.slice().buffer)
}

/**
 * Every initializer of the model, the main graph first, then those of subgraphs (If/Loop/Scan
 * branches) in node order. The tensors are the model's own objects: edit them in place.
 */
export function* initializers(model: ModelProto): Generator<TensorProto> {
  if (model.graph) yield* graphInitializers(model.graph)
}

function* graphInitializers(graph: GraphProto): Generator<TensorProto> {
  yield* graph.initializer ?? []
  for (const n of graph.node ?? [])
    for (const a of n.attribute ?? []) {
      if (a.g) yield* graphInitializers(a.g)
      for (const g of a.graphs ?? []) yield* graphInitializers(g)
    }
}
