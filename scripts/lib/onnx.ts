/**
 * ONNX `ModelProto` encode/decode with protobufjs, graph builders, and TensorProto external data.
 *
 * Messages are plain objects whose field names are exactly those of onnx.proto (snake_case), so
 * the official docs apply as written. Decoding drops fields outside the subset below
 * (`ModelProto.training_info`, `NodeProto.device_configurations`, ...); a plain inference
 * export uses none of them.
 *
 * int64 fields: `dims`, versions and shape dims are `number`; attribute `i`/`ints` and
 * `int64_data`/`uint64_data` are `number`, or `bigint` when the value is not a safe integer
 * (INT64_MAX in old Slice attributes), so a decode → encode round trip is lossless.
 *
 * Byte order: raw data is little-endian, as every platform ORT runs on; the helpers that view
 * raw bytes as typed arrays assume a little-endian host.
 *
 * Typical use (move the weights of an export to an external data file):
 * ```ts
 * const model = decodeModel(await readFile('onnx/model_quantized.onnx'))
 * let offset = 0
 * for (const t of initializers(model)) {
 *   const bytes = tensorRawData(t) // a view into the input buffer
 *   if (bytes.byteLength < 1024) continue // keep small constants inline (see below)
 *   chunks.push(bytes)
 *   setExternalData(t, { location: 'model.onnx_data', offset, length: bytes.byteLength })
 *   offset += bytes.byteLength
 * }
 * await writeFile('model.onnx', encodeModel(model)) // the graph alone: small
 * ```
 * Keep small tensors inline (onnx's own converter uses a 1 KiB threshold): ORT reads shape
 * and axes constants (Reshape / Unsqueeze / Slice inputs) during shape inference, before the
 * external data is attached, and fails with "Cannot parse data from external tensors".
 */
import protobuf from 'protobufjs'

// Field numbers follow onnx/onnx.proto (IR version 10). Only what inference graphs use.
const ONNX_PROTO = `
syntax = "proto2";
package onnx;

message AttributeProto {
  optional string name = 1;
  optional string ref_attr_name = 21;
  optional string doc_string = 13;
  optional int32 type = 20;
  optional float f = 2;
  optional int64 i = 3;
  optional bytes s = 4;
  optional TensorProto t = 5;
  optional GraphProto g = 6;
  optional SparseTensorProto sparse_tensor = 22;
  optional TypeProto tp = 14;
  repeated float floats = 7;
  repeated int64 ints = 8;
  repeated bytes strings = 9;
  repeated TensorProto tensors = 10;
  repeated GraphProto graphs = 11;
  repeated SparseTensorProto sparse_tensors = 23;
  repeated TypeProto type_protos = 15;
}

message ValueInfoProto {
  optional string name = 1;
  optional TypeProto type = 2;
  optional string doc_string = 3;
  repeated StringStringEntryProto metadata_props = 4;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  optional string domain = 7;
  optional string overload = 8;
  repeated AttributeProto attribute = 5;
  optional string doc_string = 6;
  repeated StringStringEntryProto metadata_props = 9;
}

message ModelProto {
  optional int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional string domain = 4;
  optional int64 model_version = 5;
  optional string doc_string = 6;
  optional GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
  repeated FunctionProto functions = 25;
}

message StringStringEntryProto {
  optional string key = 1;
  optional string value = 2;
}

message TensorAnnotation {
  optional string tensor_name = 1;
  repeated StringStringEntryProto quant_parameter_tensor_names = 2;
}

message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  repeated SparseTensorProto sparse_initializer = 15;
  optional string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
  repeated ValueInfoProto value_info = 13;
  repeated TensorAnnotation quantization_annotation = 14;
  repeated StringStringEntryProto metadata_props = 16;
}

message TensorProto {
  message Segment {
    optional int64 begin = 1;
    optional int64 end = 2;
  }
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  optional Segment segment = 3;
  repeated float float_data = 4 [packed = true];
  repeated int32 int32_data = 5 [packed = true];
  repeated bytes string_data = 6;
  repeated int64 int64_data = 7 [packed = true];
  optional string name = 8;
  optional string doc_string = 12;
  optional bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13;
  optional int32 data_location = 14;
  repeated double double_data = 10 [packed = true];
  repeated uint64 uint64_data = 11 [packed = true];
  repeated StringStringEntryProto metadata_props = 16;
}

message SparseTensorProto {
  optional TensorProto values = 1;
  optional TensorProto indices = 2;
  repeated int64 dims = 3;
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    }
    optional string denotation = 3;
  }
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  message Sequence {
    optional TypeProto elem_type = 1;
  }
  message Map {
    optional int32 key_type = 1;
    optional TypeProto value_type = 2;
  }
  message Optional {
    optional TypeProto elem_type = 1;
  }
  message SparseTensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  oneof value {
    Tensor tensor_type = 1;
    Sequence sequence_type = 4;
    Map map_type = 5;
    Optional optional_type = 9;
    SparseTensor sparse_tensor_type = 8;
  }
  optional string denotation = 6;
}

message OperatorSetIdProto {
  optional string domain = 1;
  optional int64 version = 2;
}

message FunctionProto {
  optional string name = 1;
  repeated string input = 4;
  repeated string output = 5;
  repeated string attribute = 6;
  repeated AttributeProto attribute_proto = 11;
  repeated NodeProto node = 7;
  optional string doc_string = 8;
  repeated OperatorSetIdProto opset_import = 9;
  optional string domain = 10;
  optional string overload = 13;
  repeated ValueInfoProto value_info = 12;
  repeated StringStringEntryProto metadata_props = 14;
}
`

const root = protobuf.parse(ONNX_PROTO, { keepCase: true }).root
const ModelType = root.lookupType('onnx.ModelProto')
const GraphType = root.lookupType('onnx.GraphProto')
const TensorType = root.lookupType('onnx.TensorProto')

// ---------------------------------------------------------------- types

/** `TensorProto.DataType`. */
export const DataType = {
  UNDEFINED: 0,
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E4M3FNUZ: 18,
  FLOAT8E5M2: 19,
  FLOAT8E5M2FNUZ: 20,
  UINT4: 21,
  INT4: 22,
} as const

/** `AttributeProto.AttributeType`. */
export const AttributeType = {
  UNDEFINED: 0,
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
  GRAPHS: 10,
  SPARSE_TENSOR: 11,
  SPARSE_TENSORS: 12,
  TYPE_PROTO: 13,
  TYPE_PROTOS: 14,
} as const

/** `TensorProto.DataLocation`. */
export const DataLocation = { DEFAULT: 0, EXTERNAL: 1 } as const

/** A safe integer as `number`, anything beyond 2^53 as `bigint`. */
export type Int64 = number | bigint

export interface StringStringEntryProto {
  key?: string
  value?: string
}

export interface TensorProto {
  name?: string
  /** Shape; `[]` is a scalar. */
  dims?: number[]
  data_type?: number
  segment?: { begin?: number; end?: number }
  float_data?: number[]
  int32_data?: number[]
  string_data?: Uint8Array[]
  int64_data?: Int64[]
  double_data?: number[]
  uint64_data?: Int64[]
  /** Little-endian element bytes. After `decodeModel` this is a view into the decoded buffer. */
  raw_data?: Uint8Array
  /** Keys `location`, `offset`, `length` (and `checksum`); see `getExternalData`. */
  external_data?: StringStringEntryProto[]
  /** `DataLocation.EXTERNAL` when the bytes live in `external_data.location`. */
  data_location?: number
  doc_string?: string
  metadata_props?: StringStringEntryProto[]
}

export interface TensorShapeDimension {
  dim_value?: number
  /** Symbolic dimension, e.g. `batch_size`. */
  dim_param?: string
  denotation?: string
}

export interface TypeProto {
  tensor_type?: { elem_type?: number; shape?: { dim?: TensorShapeDimension[] } }
  sequence_type?: { elem_type?: TypeProto }
  map_type?: { key_type?: number; value_type?: TypeProto }
  optional_type?: { elem_type?: TypeProto }
  sparse_tensor_type?: { elem_type?: number; shape?: { dim?: TensorShapeDimension[] } }
  denotation?: string
}

export interface ValueInfoProto {
  name?: string
  type?: TypeProto
  doc_string?: string
  metadata_props?: StringStringEntryProto[]
}

export interface AttributeProto {
  name?: string
  ref_attr_name?: string
  doc_string?: string
  /** `AttributeType`; required by IR >= 2. */
  type?: number
  f?: number
  i?: Int64
  s?: Uint8Array
  t?: TensorProto
  g?: GraphProto
  sparse_tensor?: SparseTensorProto
  tp?: TypeProto
  floats?: number[]
  ints?: Int64[]
  strings?: Uint8Array[]
  tensors?: TensorProto[]
  graphs?: GraphProto[]
  sparse_tensors?: SparseTensorProto[]
  type_protos?: TypeProto[]
}

export interface NodeProto {
  input?: string[]
  output?: string[]
  name?: string
  op_type?: string
  /** '' (or absent) for the default ONNX domain, e.g. 'com.microsoft' for contrib ops. */
  domain?: string
  overload?: string
  attribute?: AttributeProto[]
  doc_string?: string
  metadata_props?: StringStringEntryProto[]
}

export interface SparseTensorProto {
  values?: TensorProto
  indices?: TensorProto
  dims?: number[]
}

export interface GraphProto {
  node?: NodeProto[]
  name?: string
  initializer?: TensorProto[]
  sparse_initializer?: SparseTensorProto[]
  doc_string?: string
  input?: ValueInfoProto[]
  output?: ValueInfoProto[]
  value_info?: ValueInfoProto[]
  quantization_annotation?: {
    tensor_name?: string
    quant_parameter_tensor_names?: StringStringEntryProto[]
  }[]
  metadata_props?: StringStringEntryProto[]
}

export interface OperatorSetIdProto {
  domain?: string
  version?: number
}

export interface FunctionProto {
  name?: string
  input?: string[]
  output?: string[]
  attribute?: string[]
  attribute_proto?: AttributeProto[]
  node?: NodeProto[]
  doc_string?: string
  opset_import?: OperatorSetIdProto[]
  domain?: string
  overload?: string
  value_info?: ValueInfoProto[]
  metadata_props?: StringStringEntryProto[]
}

export interface ModelProto {
  ir_version?: number
  opset_import?: OperatorSetIdProto[]
  producer_name?: string
  producer_version?: string
  domain?: string
  model_version?: number
  doc_string?: string
  graph?: GraphProto
  metadata_props?: StringStringEntryProto[]
  functions?: FunctionProto[]
}

// ---------------------------------------------------------------- encode / decode

/**
 * Decode a serialized model. Repeated fields are always arrays (possibly empty); absent
 * optional fields are absent. `raw_data` fields are views into `bytes` (no copy): keep `bytes`
 * alive and unmodified while the model is in use.
 */
export function decodeModel(bytes: Uint8Array): ModelProto {
  return toPlain(ModelType.decode(bytes)) as ModelProto
}

/** Serialize a model into one buffer. Same bytes as concatenating `encodeModelChunks(model)`. */
export function encodeModel(model: ModelProto): Uint8Array {
  const chunks = [...encodeModelChunks(model)]
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0))
  let at = 0
  for (const c of chunks) {
    out.set(c, at)
    at += c.byteLength
  }
  return out
}

/**
 * Serialize a model as a sequence of chunks, so a model of several hundred MB is never copied
 * into one buffer: write the chunks to a file as they come.
 *
 * Deferred weights: a top-level initializer with no data at all (no `raw_data`, no typed
 * `*_data`, not external) is filled by calling `fill(tensor)` when the writer reaches it, in
 * initializer order; `fill` must return exactly `tensorByteLength(tensor)` bytes. The graph's
 * length prefix is computed from the dims up front, which is what makes this possible.
 *
 * Layout: the ModelProto fields, then the graph with its initializers written after the
 * other graph fields (protobuf field order is free; every parser accepts it).
 */
export function* encodeModelChunks(
  model: ModelProto,
  fill?: (tensor: TensorProto) => Uint8Array,
): Generator<Uint8Array> {
  const { graph, ...rest } = model
  yield ModelType.encode(toWire(rest) as object).finish()
  if (!graph) return
  const { initializer = [], ...graphRest } = graph
  const head = GraphType.encode(toWire(graphRest) as object).finish()
  const parts = initializer.map((t) => {
    const { raw_data, ...meta } = t
    const deferred = raw_data === undefined && !hasInlineData(t) && !isExternal(t)
    const rawLength = deferred ? tensorByteLength(t) : raw_data?.byteLength
    const metaBytes = TensorType.encode(toWire(meta) as object).finish()
    const body =
      metaBytes.byteLength + (rawLength === undefined ? 0 : fieldLength(RAW_DATA_TAG, rawLength))
    return { tensor: t, raw_data, deferred, rawLength, metaBytes, body }
  })
  const graphLength = parts.reduce(
    (n, p) => n + fieldLength(INITIALIZER_TAG, p.body),
    head.byteLength,
  )
  yield concatBytes(Uint8Array.of(GRAPH_TAG), varint(graphLength), head)
  for (const p of parts) {
    yield concatBytes(Uint8Array.of(INITIALIZER_TAG), varint(p.body), p.metaBytes)
    if (p.rawLength === undefined) continue
    yield concatBytes(Uint8Array.of(RAW_DATA_TAG), varint(p.rawLength))
    let data = p.raw_data
    if (p.deferred) {
      if (!fill) throw new Error(`initializer ${p.tensor.name} has no data and no fill() was given`)
      data = fill(p.tensor)
      if (data.byteLength !== p.rawLength)
        throw new Error(`fill(${p.tensor.name}) gave ${data.byteLength} bytes, not ${p.rawLength}`)
    }
    if (data!.byteLength > 0) yield data!
  }
}

// Tags (field number << 3 | wire type 2) of the fields the chunked encoder writes by hand.
const GRAPH_TAG = (7 << 3) | 2 // ModelProto.graph
const INITIALIZER_TAG = (5 << 3) | 2 // GraphProto.initializer
const RAW_DATA_TAG = (9 << 3) | 2 // TensorProto.raw_data

function varint(n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80)
    n = Math.floor(n / 0x80)
  }
  out.push(n)
  return Uint8Array.from(out)
}

function fieldLength(tag: number, length: number): number {
  return varint(tag).byteLength + varint(length).byteLength + length
}

function concatBytes(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.byteLength
  }
  return out
}

/** protobufjs decodes int64 as long.js `Long` (the `long` package is its dependency). */
const isLong = (v: object): v is { toNumber(): number; toString(): string } =>
  (protobuf.util.Long as unknown as { isLong(v: unknown): boolean }).isLong(v)

/** protobufjs message → plain object: own fields only, Long → number | bigint. */
function toPlain(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value
  if (ArrayBuffer.isView(value)) return value
  if (isLong(value)) {
    const n = value.toNumber()
    return Number.isSafeInteger(n) ? n : BigInt(value.toString())
  }
  if (Array.isArray(value)) {
    if (value.length === 0 || typeof value[0] !== 'object') return value
    return value.map(toPlain)
  }
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(value)) {
    const v = (value as Record<string, unknown>)[key]
    if (v !== undefined && v !== null) out[key] = toPlain(v)
  }
  return out
}

/** Plain object → what protobufjs encodes: bigint → decimal string (read back exactly). */
function toWire(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString()
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value)) return value
  if (Array.isArray(value))
    return value.some((v) => typeof v === 'object' || typeof v === 'bigint')
      ? value.map(toWire)
      : value
  const out: Record<string, unknown> = {}
  for (const [key, v] of Object.entries(value)) if (v !== undefined) out[key] = toWire(v)
  return out
}

// ---------------------------------------------------------------- tensors and external data

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

function hasInlineData(t: TensorProto): boolean {
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

// ---------------------------------------------------------------- builders

/** Typed arrays `initializer()` maps to a data type on its own. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Uint8Array
  | Int8Array
  | Int16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array

function dataTypeOf(data: TensorData): number {
  if (data instanceof Float32Array) return DataType.FLOAT
  if (data instanceof Float64Array) return DataType.DOUBLE
  if (data instanceof Uint8Array) return DataType.UINT8
  if (data instanceof Int8Array) return DataType.INT8
  if (data instanceof Int16Array) return DataType.INT16
  if (data instanceof Int32Array) return DataType.INT32
  if (data instanceof Uint32Array) return DataType.UINT32
  if (data instanceof BigInt64Array) return DataType.INT64
  return DataType.UINT64
}

/**
 * A tensor holding `data` as raw_data (a view, not a copy). `dataType` overrides the type
 * inferred from the array (e.g. FLOAT16 or BOOL stored in a Uint16Array / Uint8Array).
 */
export function initializer(
  name: string,
  data: TensorData,
  dims: number[],
  dataType = dataTypeOf(data),
): TensorProto {
  const t: TensorProto = { name, dims, data_type: dataType }
  const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (raw.byteLength !== tensorByteLength(t))
    throw new Error(`initializer ${name}: ${raw.byteLength} bytes for dims [${dims}]`)
  t.raw_data = raw
  return t
}

/** A tensor with no data yet, filled when the model is written (see `encodeModelChunks`). */
export function deferredInitializer(name: string, dataType: number, dims: number[]): TensorProto {
  return { name, dims, data_type: dataType }
}

/** A graph input/output. String dims are symbolic (`'batch_size'`), numbers fixed. */
export function valueInfo(
  name: string,
  elemType: number,
  shape: (number | string)[],
): ValueInfoProto {
  const dim = shape.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d }))
  return { name, type: { tensor_type: { elem_type: elemType, shape: { dim } } } }
}

/** Force a FLOAT(S) attribute: a plain integer-valued number would become INT. */
export const float = (f: number) => ({ float: f }) as const
export const floats = (fs: number[]) => ({ floats: fs }) as const

export type AttributeValue =
  | number
  | bigint
  | string
  | number[]
  | string[]
  | TensorProto
  | GraphProto
  | { readonly float: number }
  | { readonly floats: readonly number[] }

/** Build an attribute: integers → INT(S), other numbers → FLOAT(S), strings → STRING(S). */
export function attribute(name: string, value: AttributeValue): AttributeProto {
  const enc = (s: string) => new TextEncoder().encode(s)
  if (typeof value === 'bigint') return { name, type: AttributeType.INT, i: value }
  if (typeof value === 'number')
    return Number.isInteger(value)
      ? { name, type: AttributeType.INT, i: value }
      : { name, type: AttributeType.FLOAT, f: value }
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: enc(value) }
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v === 'string'))
      return { name, type: AttributeType.STRINGS, strings: (value as string[]).map(enc) }
    const nums = value as number[]
    return nums.every(Number.isInteger)
      ? { name, type: AttributeType.INTS, ints: nums }
      : { name, type: AttributeType.FLOATS, floats: nums }
  }
  if ('float' in value) return { name, type: AttributeType.FLOAT, f: value.float }
  if ('floats' in value) return { name, type: AttributeType.FLOATS, floats: [...value.floats] }
  if ('node' in value || 'output' in value) return { name, type: AttributeType.GRAPH, g: value }
  return { name, type: AttributeType.TENSOR, t: value as TensorProto }
}

/** A node. `attrs` values follow `attribute()`; undefined entries are skipped. */
export function node(
  opType: string,
  inputs: string[],
  outputs: string[],
  attrs: Record<string, AttributeValue | undefined> = {},
  options: { name?: string; domain?: string } = {},
): NodeProto {
  const n: NodeProto = { op_type: opType, input: inputs, output: outputs }
  if (options.name) n.name = options.name
  if (options.domain) n.domain = options.domain
  const attribute_ = Object.entries(attrs).flatMap(([k, v]) =>
    v === undefined ? [] : [attribute(k, v)],
  )
  if (attribute_.length) n.attribute = attribute_
  return n
}

export function opset(domain: string, version: number): OperatorSetIdProto {
  return { domain, version }
}

/** The ONNX IR version that goes with an `ai.onnx` opset (onnx/docs/Versioning.md). */
export function irVersionForOpset(version: number): number {
  if (version <= 8) return 3
  if (version <= 10) return 5
  if (version <= 11) return 6
  if (version <= 14) return 7
  if (version <= 18) return 8
  if (version <= 20) return 9
  return 10
}
