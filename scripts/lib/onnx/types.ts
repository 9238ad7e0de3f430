/** The ONNX messages as plain objects, field names as in onnx.proto (IR version 10). */

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
