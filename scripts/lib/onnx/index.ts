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
export * from './builders.ts'
export * from './codec.ts'
export * from './tensors.ts'
export * from './types.ts'
