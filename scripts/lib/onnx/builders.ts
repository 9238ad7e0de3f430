/** Builders for graphs: initializers, value infos, attributes, nodes, opsets. */
import {
  type AttributeProto,
  AttributeType,
  DataType,
  type GraphProto,
  type NodeProto,
  type OperatorSetIdProto,
  type TensorProto,
  type ValueInfoProto,
} from './types.ts'
import { tensorByteLength } from './tensors.ts'

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
