/** `ModelProto` ⇄ bytes with protobufjs; large initializers are written without copies. */
import protobuf from 'protobufjs'
import { type GraphProto, type ModelProto, type TensorProto } from './types.ts'
import { hasInlineData, isExternal, tensorByteLength } from './tensors.ts'

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
