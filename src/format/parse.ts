/** Validation of a parsed `manifest.json`: the first bad field is named in the error. */
import { AppError } from '../core/errors.ts'
import { readQwen2Config, type Qwen2Config } from './config.ts'
import { array, Invalid, nonNegativeInt, object, positiveInt, string } from './json.ts'
import {
  DECODER_FORMATS,
  DECODER_TENSOR_BYTES,
  HEAD_FORMATS,
  HEAD_ROW_ALIGN,
  MANIFEST_FILE,
  MANIFEST_VERSION,
  KV_FORMATS,
  STAGE_IO,
  decoderTensorBytes,
  headLayout,
  headStride,
  isQ4Head,
  type DecoderEntry,
  type DecoderFormat,
  type DecoderTensorType,
  type HeadFormat,
  type KvFormat,
  type StageIo,
  type DecoderLayerRef,
  type DecoderMatrixRef,
  type DqmmMatrixRef,
  type NBitsMatrixRef,
  type DecoderTensorRef,
  type ExternalDataEntry,
  type HeadEntry,
  type ManifestFile,
  type Manifest,
  type Stage,
} from './manifest.ts'
import type { PipelineEntry, PipelineStage } from './manifest.ts'
import { isSafeRelativePath, isValidPackageId, listFiles, SHA256_RE } from './names.ts'

/**
 * Validates a parsed `manifest.json`. Throws AppError('model_invalid') naming the first bad
 * field; unknown top-level keys are ignored (so a later minor addition does not break readers),
 * an unknown `version` is not.
 */
export function parseManifest(json: unknown): Manifest {
  try {
    return readManifest(json)
  } catch (err) {
    if (err instanceof Invalid) {
      throw new AppError('model_invalid', `Invalid model manifest: ${err.message}`)
    }
    throw err
  }
}

function readManifest(json: unknown): Manifest {
  const m = object(json, 'manifest')
  if (m.version !== MANIFEST_VERSION) {
    throw new Invalid(
      `unsupported format version ${JSON.stringify(m.version)} ` +
        `(this build reads version ${MANIFEST_VERSION})`,
    )
  }
  const id = string(m.id, 'id')
  if (!isValidPackageId(id)) throw new Invalid(`id ${JSON.stringify(id)} is not a valid package id`)
  const config = readQwen2Config(m.config, 'config')
  const generationConfig =
    m.generationConfig === undefined ? {} : object(m.generationConfig, 'generationConfig')
  const tok = object(m.tokenizer, 'tokenizer')
  const tokenizer = {
    json: file(tok.json, 'tokenizer.json'),
    config: file(tok.config, 'tokenizer.config'),
  }
  const shardBytes = positiveInt(m.shardBytes, 'shardBytes')

  const stagesJson = array(m.stages, 'stages')
  if (stagesJson.length === 0) throw new Invalid('stages is empty')
  const stages = stagesJson.map((s, i) => readStage(s, `stages[${i}]`))
  const head = m.head === undefined ? undefined : readHead(m.head, config, 'head')
  checkStageChain(stages, config.num_hidden_layers, head)
  const decoder =
    m.decoder === undefined ? undefined : readDecoder(m.decoder, config, stages, head, 'decoder')

  const manifest: Manifest = {
    version: MANIFEST_VERSION,
    id,
    synthetic: config.qwen_edge_synthetic !== undefined,
    config,
    generationConfig,
    tokenizer,
    stages,
    shardBytes,
    totalBytes: nonNegativeInt(m.totalBytes, 'totalBytes'),
  }
  if (head) manifest.head = head
  if (decoder) manifest.decoder = decoder
  if (m.pipeline !== undefined) manifest.pipeline = readPipeline(m.pipeline, manifest, 'pipeline')
  if (m.synthetic !== undefined && m.synthetic !== manifest.synthetic) {
    throw new Invalid(`synthetic is ${String(m.synthetic)} but config says ${manifest.synthetic}`)
  }
  const files = listFiles(manifest)
  const seen = new Set<string>()
  for (const f of files) {
    if (seen.has(f.path)) throw new Invalid(`file ${f.path} is listed twice`)
    seen.add(f.path)
  }
  if (seen.has(MANIFEST_FILE)) throw new Invalid(`${MANIFEST_FILE} cannot be a package file`)
  const sum = files.reduce((n, f) => n + f.bytes, 0)
  if (sum !== manifest.totalBytes) {
    throw new Invalid(`totalBytes is ${manifest.totalBytes} but the files add up to ${sum}`)
  }
  if (m.source !== undefined) {
    const src = object(m.source, 'source')
    manifest.source = {}
    for (const k of ['onnxFile', 'repo', 'revision'] as const) {
      if (src[k] !== undefined) manifest.source[k] = string(src[k], `source.${k}`)
    }
  }
  if (m.createdAt !== undefined) manifest.createdAt = string(m.createdAt, 'createdAt')
  return manifest
}

/**
 * A stage plan (pipeline.ts): layer ranges that tile [0, layers) in order, then row ranges
 * that tile [0, vocab), each with its estimate; the package runs in the kernels.
 */
function readPipeline(json: unknown, m: Manifest, at: string): PipelineEntry {
  const p = object(json, at)
  if (!m.decoder || !m.head?.embedding)
    throw new Invalid(`${at} needs a decoder map and a head with the embedding`)
  const range = (v: unknown, where: string): [number, number] => {
    const r = array(v, where)
    if (r.length !== 2) throw new Invalid(`${where} must be [start, end)`)
    const out: [number, number] = [
      nonNegativeInt(r[0], `${where}[0]`),
      nonNegativeInt(r[1], `${where}[1]`),
    ]
    if (out[1] <= out[0]) throw new Invalid(`${where} [${out}] is empty`)
    return out
  }
  let layerEnd = 0
  let rowEnd = 0
  const stages = array(p.stages, `${at}.stages`).map((v, i): PipelineStage => {
    const where = `${at}.stages[${i}]`
    const s = object(v, where)
    const residentBytes = positiveInt(s.residentBytes, `${where}.residentBytes`)
    if ((s.layers === undefined) === (s.rows === undefined))
      throw new Invalid(`${where} holds either layers or rows`)
    if (s.layers !== undefined) {
      const layers = range(s.layers, `${where}.layers`)
      if (rowEnd > 0 || layers[0] !== layerEnd)
        throw new Invalid(`${where}.layers must start at ${layerEnd}, before any rows`)
      layerEnd = layers[1]
      return { layers, residentBytes }
    }
    const rows = range(s.rows, `${where}.rows`)
    if (rows[0] !== rowEnd) throw new Invalid(`${where}.rows must start at ${rowEnd}`)
    rowEnd = rows[1]
    return { rows, residentBytes }
  })
  if (layerEnd !== m.config.num_hidden_layers)
    throw new Invalid(
      `${at}: the layer stages end at ${layerEnd}, not ${m.config.num_hidden_layers}`,
    )
  if (rowEnd !== m.head.vocab)
    throw new Invalid(`${at}: the row stages end at ${rowEnd}, not ${m.head.vocab}`)
  return {
    budgetBytes: positiveInt(p.budgetBytes, `${at}.budgetBytes`),
    contextLength: positiveInt(p.contextLength, `${at}.contextLength`),
    sequences: positiveInt(p.sequences, `${at}.sequences`),
    chunkRows: positiveInt(p.chunkRows, `${at}.chunkRows`),
    ...(p.kvFormat !== undefined && { kvFormat: planKvFormat(p.kvFormat, `${at}.kvFormat`) }),
    stages,
  }
}

function planKvFormat(v: unknown, at: string): KvFormat {
  const f = string(v, at) as KvFormat
  if (!KV_FORMATS.includes(f))
    throw new Invalid(`${at} ${JSON.stringify(f)} is not one of ${KV_FORMATS.join(', ')}`)
  return f
}

function readStage(json: unknown, at: string): Stage {
  const s = object(json, at)
  const io = string(s.io, `${at}.io`) as StageIo
  if (!STAGE_IO.includes(io))
    throw new Invalid(`${at}.io ${JSON.stringify(io)} is not one of ${STAGE_IO.join(', ')}`)
  const range = array(s.layers, `${at}.layers`)
  if (range.length !== 2) throw new Invalid(`${at}.layers must be [start, end)`)
  const layers: [number, number] = [
    nonNegativeInt(range[0], `${at}.layers[0]`),
    nonNegativeInt(range[1], `${at}.layers[1]`),
  ]
  if (layers[1] <= layers[0]) throw new Invalid(`${at}.layers [${layers}] is empty`)
  const graph = file(s.graph, `${at}.graph`)
  const externalData = array(s.externalData ?? [], `${at}.externalData`).map((e, i) =>
    readExternalData(e, `${at}.externalData[${i}]`),
  )
  const locations = new Set(externalData.map((e) => e.location))
  if (locations.size !== externalData.length)
    throw new Invalid(`${at}.externalData repeats a location`)
  return { io, layers, graph, externalData }
}

function readExternalData(json: unknown, at: string): ExternalDataEntry {
  const e = object(json, at)
  const location = string(e.location, `${at}.location`)
  if (!isSafeRelativePath(location))
    throw new Invalid(`${at}.location ${JSON.stringify(location)} is not a safe relative path`)
  const bytes = nonNegativeInt(e.bytes, `${at}.bytes`)
  const shards = array(e.shards, `${at}.shards`).map((f, i) => file(f, `${at}.shards[${i}]`))
  const sum = shards.reduce((n, f) => n + f.bytes, 0)
  if (sum !== bytes) throw new Invalid(`${at}: shards add up to ${sum} bytes, not ${bytes}`)
  return { location, bytes, shards }
}

/**
 * Stages must cover layers [0, num_hidden_layers) in order, ids first and logits last. With a
 * head the last stage returns hidden states instead (the head computes the logits), and the
 * first takes embeddings ('embeds') when the head holds the embedding.
 */
function checkStageChain(stages: Stage[], numLayers: number, head: HeadEntry | undefined): void {
  const first = head?.embedding ? 'embeds' : 'ids'
  let next = 0
  stages.forEach((s, i) => {
    const [start, end] = s.layers
    if (start !== next)
      throw new Invalid(`stages[${i}].layers starts at ${start}, expected ${next}`)
    const [input, output] = s.io.split('->')
    const at = `stages[${i}].io ${s.io}`
    if (input === 'embeds' && !head?.embedding)
      throw new Invalid(`${at}: takes embeds, but the package has no head holding the embedding`)
    if (i > 0 && input !== 'hidden') throw new Invalid(`${at}: only the first stage takes ${input}`)
    if (i === 0 && input !== first) {
      throw new Invalid(
        head
          ? `${at}: the first stage takes ${first} (head.embedding is ${head.embedding})`
          : `${at}: only the first stage takes ids`,
      )
    }
    if (head) {
      if (output !== 'hidden')
        throw new Invalid(
          `${at}: with a head every stage returns hidden (the head computes logits)`,
        )
    } else if ((i === stages.length - 1) !== (output === 'logits')) {
      throw new Invalid(`${at}: only the last stage returns logits`)
    }
    next = end
  })
  if (next !== numLayers) {
    throw new Invalid(`stages cover layers [0, ${next}) but the model has ${numLayers}`)
  }
}

function readHead(json: unknown, config: Qwen2Config, at: string): HeadEntry {
  const h = object(json, at)
  const format = string(h.format, `${at}.format`) as HeadFormat
  if (!HEAD_FORMATS.includes(format))
    throw new Invalid(
      `${at}.format ${JSON.stringify(format)} is not one of ${HEAD_FORMATS.join(', ')}`,
    )
  const vocab = positiveInt(h.vocab, `${at}.vocab`)
  const hidden = positiveInt(h.hidden, `${at}.hidden`)
  const stride = positiveInt(h.stride, `${at}.stride`)
  if (vocab !== config.vocab_size)
    throw new Invalid(`${at}.vocab is ${vocab} but config.vocab_size is ${config.vocab_size}`)
  if (hidden !== config.hidden_size)
    throw new Invalid(`${at}.hidden is ${hidden} but config.hidden_size is ${config.hidden_size}`)
  if (isQ4Head(format) && stride !== headStride(hidden, format))
    throw new Invalid(
      `${at}.stride ${stride}: a ${format} row of ${hidden} inputs has ${headStride(hidden, format)} bytes`,
    )
  if (format === 'q8-rows' && (stride % HEAD_ROW_ALIGN !== 0 || stride < hidden))
    throw new Invalid(
      `${at}.stride ${stride} must be a multiple of ${HEAD_ROW_ALIGN} and at least hidden (${hidden})`,
    )
  if (typeof h.embedding !== 'boolean') throw new Invalid(`${at}.embedding must be a boolean`)
  const file = readExternalData(h.file, `${at}.file`)
  const expected = headLayout(vocab, stride, format).bytes
  if (file.bytes !== expected)
    throw new Invalid(
      `${at}.file.bytes is ${file.bytes}, a ${format} head of ${vocab} x ${stride} has ${expected}`,
    )
  return { format, vocab, hidden, stride, embedding: h.embedding, file }
}

function readDecoder(
  json: unknown,
  config: Qwen2Config,
  stages: Stage[],
  head: HeadEntry | undefined,
  at: string,
): DecoderEntry {
  const d = object(json, at)
  const format = string(d.format, `${at}.format`) as DecoderFormat
  if (!DECODER_FORMATS.includes(format))
    throw new Invalid(
      `${at}.format ${JSON.stringify(format)} is not one of ${DECODER_FORMATS.join(', ')}`,
    )
  if (!head) throw new Invalid(`${at} needs a head (the decoder layers end in hidden states)`)
  if (stages.length !== 1)
    throw new Invalid(`${at} needs a package of one stage, this one has ${stages.length}`)
  const file = d.file === undefined ? undefined : readExternalData(d.file, `${at}.file`)
  const files = stages[0].externalData
  const H = config.hidden_size
  const I = config.intermediate_size
  const headDim = config.head_dim ?? H / config.num_attention_heads
  const qDim = config.num_attention_heads * headDim
  const kvDim = config.num_key_value_heads * headDim

  const tensor = (v: unknown, where: string, types: readonly DecoderTensorType[]) => {
    const t = object(v, where)
    let ref: DecoderTensorRef['file']
    if (t.file === 'decoder') {
      if (!file) throw new Invalid(`${where}.file is 'decoder' but ${at}.file is absent`)
      ref = 'decoder'
    } else {
      ref = nonNegativeInt(t.file, `${where}.file`)
      if (ref >= files.length)
        throw new Invalid(
          `${where}.file ${ref} is not an index of stages[0].externalData (${files.length} files)`,
        )
    }
    const type = string(t.type, `${where}.type`) as DecoderTensorType
    if (!types.includes(type))
      throw new Invalid(`${where}.type ${JSON.stringify(type)} is not one of ${types.join(', ')}`)
    const dims = array(t.dims, `${where}.dims`).map((x, i) =>
      nonNegativeInt(x, `${where}.dims[${i}]`),
    )
    const offset = nonNegativeInt(t.offset, `${where}.offset`)
    const size = ref === 'decoder' ? file!.bytes : files[ref].bytes
    const bytes = decoderTensorBytes({ dims, type })
    if (offset + bytes > size)
      throw new Invalid(
        `${where}: ${bytes} bytes at offset ${offset} run past the end of its file (${size} bytes)`,
      )
    return { file: ref, offset, dims, type }
  }
  const shape = (ref: DecoderTensorRef, where: string, ...allowed: number[][]) => {
    if (!allowed.some((dims) => sameDims(ref.dims, dims)))
      throw new Invalid(
        `${where}.dims [${ref.dims.join(', ')}] are not ` +
          allowed.map((dims) => `[${dims.join(', ')}]`).join(' or '),
      )
    return ref
  }
  const norm = (v: unknown, where: string) => shape(tensor(v, where, ['float32']), where, [H])
  const bias = (m: Record<string, unknown>, where: string, n: number) =>
    m.bias === undefined
      ? undefined
      : shape(tensor(m.bias, `${where}.bias`, ['float32']), `${where}.bias`, [n])
  const dqmm = (m: Record<string, unknown>, where: string, k: number, n: number) => {
    const weight = tensor(m.weight, `${where}.weight`, ['int8', 'uint8'])
    shape(weight, `${where}.weight`, [k, n])
    const scale = tensor(m.scale, `${where}.scale`, ['float32'])
    shape(scale, `${where}.scale`, [n], [1], [])
    const zeroPoint = tensor(m.zeroPoint, `${where}.zeroPoint`, [weight.type])
    shape(zeroPoint, `${where}.zeroPoint`, [n], [1], [])
    const out: DqmmMatrixRef = { weight, scale, zeroPoint }
    const b = bias(m, where, n)
    if (b) out.bias = b
    return out
  }
  const nbits = (m: Record<string, unknown>, where: string, k: number, n: number) => {
    if (m.bits !== 4) throw new Invalid(`${where}.bits ${JSON.stringify(m.bits)} is not 4`)
    const blockSize = nonNegativeInt(m.blockSize, `${where}.blockSize`)
    if (blockSize < 32 || blockSize % 32 !== 0)
      throw new Invalid(`${where}.blockSize ${blockSize} is not a multiple of 32`)
    const blocks = Math.ceil(k / blockSize)
    const weight = tensor(m.weight, `${where}.weight`, ['uint8'])
    shape(weight, `${where}.weight`, [n, blocks, blockSize / 2])
    const scale = tensor(m.scale, `${where}.scale`, ['float32', 'float16'])
    shape(scale, `${where}.scale`, [n * blocks], [n, blocks])
    if (m.k !== k || m.n !== n)
      throw new Invalid(`${where}: k ${String(m.k)} and n ${String(m.n)}, expected ${k} and ${n}`)
    const out: NBitsMatrixRef = { kind: 'nbits', bits: 4, k, n, blockSize, weight, scale }
    if (m.zeroPoint !== undefined) {
      const zpBytes = Math.ceil(blocks / 2)
      out.zeroPoint = tensor(m.zeroPoint, `${where}.zeroPoint`, ['uint8'])
      shape(out.zeroPoint, `${where}.zeroPoint`, [n * zpBytes], [n, zpBytes])
    }
    const b = bias(m, where, n)
    if (b) out.bias = b
    return out
  }
  const matrix = (v: unknown, where: string, k: number, n: number): DecoderMatrixRef => {
    const m = object(v, where)
    const kind = m.kind ?? 'dqmm'
    if (kind !== (format === 'nbits' ? 'nbits' : 'dqmm'))
      throw new Invalid(`${where}.kind ${JSON.stringify(kind)} in a decoder of format ${format}`)
    return format === 'nbits' ? nbits(m, where, k, n) : dqmm(m, where, k, n)
  }

  const layersJson = array(d.layers, `${at}.layers`)
  if (layersJson.length !== config.num_hidden_layers)
    throw new Invalid(
      `${at}.layers has ${layersJson.length} entries but the model has ${config.num_hidden_layers}`,
    )
  const layers = layersJson.map((l, i): DecoderLayerRef => {
    const w = `${at}.layers[${i}]`
    const o = object(l, w)
    return {
      inputNorm: norm(o.inputNorm, `${w}.inputNorm`),
      q: matrix(o.q, `${w}.q`, H, qDim),
      k: matrix(o.k, `${w}.k`, H, kvDim),
      v: matrix(o.v, `${w}.v`, H, kvDim),
      o: matrix(o.o, `${w}.o`, qDim, H),
      postNorm: norm(o.postNorm, `${w}.postNorm`),
      gate: matrix(o.gate, `${w}.gate`, H, I),
      up: matrix(o.up, `${w}.up`, H, I),
      down: matrix(o.down, `${w}.down`, I, H),
    }
  })
  const entry: DecoderEntry = { format, layers, finalNorm: norm(d.finalNorm, `${at}.finalNorm`) }
  if (file) entry.file = file
  return entry
}

function sameDims(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

function file(json: unknown, at: string): ManifestFile {
  const f = object(json, at)
  const path = string(f.path, `${at}.path`)
  if (!isSafeRelativePath(path))
    throw new Invalid(`${at}.path ${JSON.stringify(path)} is not a safe relative path`)
  const sha256 = string(f.sha256, `${at}.sha256`)
  if (!SHA256_RE.test(sha256)) throw new Invalid(`${at}.sha256 must be 64 lowercase hex digits`)
  return { path, bytes: nonNegativeInt(f.bytes, `${at}.bytes`), sha256 }
}
