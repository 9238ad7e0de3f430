/**
 * Downloads an ONNX export from the Hugging Face Hub and prepares it as a model package:
 *
 *   npm run model:fetch -- <repo id> [--file onnx/model_quantized.onnx] [--revision main]
 *                          [--id <id>] [--shard-mb 16] [--out model-shards] [--cache .cache/hub]
 *                          [--format keep|q8|q4] [--head wasm|graph] [--decoder wasm|graph]
 *
 * Files come from `${HF_ENDPOINT ?? 'https://huggingface.co'}/{repo}/resolve/{revision}/{path}`
 * (`Authorization: Bearer $HF_TOKEN` when set, for gated repos) into `<cache>/<repo>/<revision>/`
 * in the Hub's folder layout, then `prepare-model` turns that folder into `<out>/<id>/`.
 * Downloads resume: bytes go to `<file>.part`, a retry (same run or a later one) asks for the
 * rest with `Range: bytes=<have>-` and checks the answer's Content-Range before appending.
 */
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { isMain, parseCli, runMain, usageError } from './lib/cli.ts'
import { progressBar } from './lib/progress.ts'
import {
  PREPARE_CLI,
  preparePackage,
  type PrepareDecoder,
  type PrepareFormat,
  type PrepareHead,
  type PrepareResult,
} from './prepare-model.ts'

export const DEFAULT_ONNX_FILE = 'onnx/model_quantized.onnx'
export const DEFAULT_HF_ENDPOINT = 'https://huggingface.co'

export interface FetchModelOptions {
  repo: string
  /** The ONNX file inside the repo; default onnx/model_quantized.onnx. */
  file?: string
  revision?: string
  /** Package id; default derived from the repo and file (`qwen2.5-0.5b-instruct-quantized`). */
  id?: string
  /** Default `$HF_ENDPOINT` or https://huggingface.co. */
  endpoint?: string
  /** Default `$HF_TOKEN`. */
  token?: string
  cacheDir?: string
  out?: string
  shardBytes?: number
  /** Weights as exported ('keep', default) or converted to the fast q8 form (prepare-model.ts). */
  format?: PrepareFormat
  /** Where the lm_head runs (prepare-model.ts); default 'wasm' where the graph allows it. */
  head?: PrepareHead
  /** Whether the engine gets the decoder layers' tensors (prepare-model.ts); default 'wasm'. */
  decoder?: PrepareDecoder
  /** Attempts per file (a cut connection resumes on the next one); default 5. */
  attempts?: number
  retryDelayMs?: number
  quiet?: boolean
}

export interface FetchModelResult extends PrepareResult {
  /** The downloaded Hugging Face layout folder. */
  folder: string
}

export async function fetchModel(options: FetchModelOptions): Promise<FetchModelResult> {
  const { repo } = options
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repo) || repo.includes('..')) {
    throw new Error(`Not a Hub repo id: ${JSON.stringify(repo)} (expected owner/name)`)
  }
  const file = options.file ?? DEFAULT_ONNX_FILE
  if (!/^[\w.-]+(\/[\w.-]+)*\.onnx$/.test(file) || file.includes('..')) {
    throw new Error(`--file must be a relative path to an .onnx file, got ${JSON.stringify(file)}`)
  }
  const revision = options.revision ?? 'main'
  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_HF_ENDPOINT).replace(
    /\/+$/,
    '',
  )
  const token = options.token ?? process.env.HF_TOKEN
  const folder = resolve(
    options.cacheDir ?? '.cache/hub',
    repo,
    revision.replace(/[^\w.-]+/g, '--'),
  )
  const headers: Record<string, string> = { 'accept-encoding': 'identity' }
  if (token) headers.authorization = `Bearer ${token}`
  const urlOf = (path: string) => {
    const encoded = path.split('/').map(encodeURIComponent).join('/')
    return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${encoded}`
  }
  const get = (path: string, optional = false) =>
    downloadFile(urlOf(path), join(folder, path), {
      headers,
      optional,
      attempts: options.attempts,
      retryDelayMs: options.retryDelayMs,
      quiet: options.quiet,
      label: path,
    })

  for (const path of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) await get(path)
  await get('generation_config.json', true)
  await get(file)
  // Exports over 2 GB keep weights next to the graph: model.onnx_data, model.onnx_data_1, …
  if (await get(`${file}_data`, true)) {
    for (let i = 1; await get(`${file}_data_${i}`, true); i++);
  }

  const result = await preparePackage({
    folder,
    id: options.id ?? defaultPackageId(repo, file),
    file,
    out: options.out,
    shardBytes: options.shardBytes,
    quiet: options.quiet,
    source: { repo, revision },
    format: options.format,
    head: options.head,
    decoder: options.decoder,
    // an export that computes logits for every position gets the last-position rewrite
    logitsRewrite: true,
  })
  return { ...result, folder }
}

/**
 * `onnx-community/Qwen2.5-0.5B-Instruct` + `onnx/model_quantized.onnx`
 * → `qwen2.5-0.5b-instruct-quantized`.
 */
export function defaultPackageId(repo: string, file: string): string {
  const name = basename(repo).toLowerCase()
  const stem = basename(file, '.onnx').replace(/^model_?/, '')
  return `${name}${stem ? `-${stem}` : ''}`.replace(/[^a-z0-9._-]+/g, '-')
}

export interface DownloadOptions {
  headers?: Record<string, string>
  /** A 404 returns false instead of failing. */
  optional?: boolean
  attempts?: number
  retryDelayMs?: number
  quiet?: boolean
  label?: string
}

interface PartInfo {
  url: string
  total?: number
  etag?: string
}

/**
 * Downloads `url` to `dest` through `dest.part`, resuming with a Range request after a cut
 * connection (this run) or an interrupted run (a later one). Returns false for an optional
 * file the server does not have; an existing `dest` is kept as is.
 */
export async function downloadFile(
  url: string,
  dest: string,
  options: DownloadOptions = {},
): Promise<boolean> {
  if (
    await stat(dest).then(
      (s) => s.isFile(),
      () => false,
    )
  )
    return true
  await mkdir(dirname(dest), { recursive: true })
  const part = `${dest}.part`
  const infoFile = `${dest}.part.json`
  const attempts = options.attempts ?? 5
  const retryDelayMs = options.retryDelayMs ?? 500
  let info: PartInfo = await readFile(infoFile, 'utf8')
    .then((s) => JSON.parse(s) as PartInfo)
    .catch(() => ({ url }))
  if (info.url !== url) info = { url }
  let lastError: unknown
  for (let attempt = 0; attempt < attempts; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, retryDelayMs * 2 ** (attempt - 1)))
    const have = await stat(part).then(
      (s) => s.size,
      () => 0,
    )
    const headers: Record<string, string> = { ...options.headers }
    if (have > 0) headers.range = `bytes=${have}-`
    let res: Response
    try {
      res = await fetch(url, { headers, redirect: 'follow' })
    } catch (err) {
      lastError = err
      continue
    }
    if (res.status === 404 && options.optional) {
      await res.body?.cancel()
      return false
    }
    if (res.status === 416 && have > 0) {
      // Nothing left to send: complete if the server's size is what we have, else start over.
      await res.body?.cancel()
      const total = Number(/\/(\d+)$/.exec(res.headers.get('content-range') ?? '')?.[1])
      if (total === have && (info.total === undefined || info.total === have)) {
        lastError = undefined
        break
      }
      await rm(part, { force: true })
      continue
    }
    if (!res.ok) {
      await res.body?.cancel()
      lastError = new Error(`GET ${url} answered ${res.status} ${res.statusText}`)
      if (res.status >= 500 || res.status === 429 || res.status === 408) continue
      throw lastError
    }
    const etag = res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? undefined
    let start = 0
    let total: number | undefined
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '')
      const sameFile = (info.etag === undefined || etag === undefined || info.etag === etag) && m
      if (
        !m ||
        Number(m[1]) !== have ||
        !sameFile ||
        (info.total !== undefined && m[3] !== String(info.total))
      ) {
        // A range we did not ask for, or a different file behind the URL: start from scratch.
        await res.body?.cancel()
        await rm(part, { force: true })
        lastError = new Error(
          `GET ${url}: unexpected Content-Range ${res.headers.get('content-range')}`,
        )
        continue
      }
      start = have
      total = m[3] === '*' ? undefined : Number(m[3])
    } else {
      const length = res.headers.get('content-length')
      total = length === null ? undefined : Number(length)
    }
    info = { url, total, etag }
    await writeFile(infoFile, JSON.stringify(info))
    const bar = progressBar(`download ${options.label ?? basename(dest)}`, total ?? 0, options)
    bar.set(start)
    const fh = await open(part, start > 0 ? 'a' : 'w')
    let written = start
    try {
      if (res.body) {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          await fh.write(chunk)
          written += chunk.byteLength
          bar.set(written)
        }
      }
    } catch (err) {
      lastError = err // keep what arrived; the next attempt asks for the rest
      continue
    } finally {
      await fh.close()
    }
    if (total !== undefined && written !== total) {
      lastError = new Error(`GET ${url}: got ${written} of ${total} bytes`)
      continue
    }
    bar.finish()
    lastError = undefined
    break
  }
  if (lastError !== undefined) {
    throw new Error(
      `Download of ${url} failed after ${attempts} attempts: ${String((lastError as Error).message ?? lastError)}`,
      {
        cause: lastError,
      },
    )
  }
  await rename(part, dest)
  await rm(infoFile, { force: true })
  return true
}

const PREPARE_OPTIONS = PREPARE_CLI.options

export const FETCH_CLI = {
  name: 'model:fetch',
  command: 'npm run model:fetch --',
  usage: ['npm run model:fetch -- <repo id> [options]'],
  summary: [
    'Downloads an ONNX export from the Hugging Face Hub into <cache>/<repo>/<revision>/ (resuming',
    'cut downloads from .part files), then prepares it as a model package in <out>/<id>/, as',
    'model:prepare does (with the logits rewrite and its check). Progress goes to stderr.',
  ],
  allowPositionals: true,
  arguments: [['<repo id>', 'the Hub repository, e.g. onnx-community/Qwen2.5-0.5B-Instruct']],
  options: {
    file: {
      type: 'string',
      arg: '<onnx/name.onnx>',
      default: DEFAULT_ONNX_FILE,
      help: 'the ONNX file in the repo',
    },
    revision: { type: 'string', arg: '<rev>', default: 'main', help: 'branch, tag or commit' },
    id: {
      type: 'string',
      arg: '<id>',
      help: 'package id',
      defaultHelp: 'from the repo and file, e.g. qwen2.5-0.5b-instruct-quantized',
    },
    'shard-mb': PREPARE_OPTIONS['shard-mb'],
    out: PREPARE_OPTIONS.out,
    cache: { type: 'string', arg: '<dir>', default: '.cache/hub', help: 'download folder' },
    format: PREPARE_OPTIONS.format,
    head: PREPARE_OPTIONS.head,
    decoder: PREPARE_OPTIONS.decoder,
  },
  notes: [
    'Environment: HF_ENDPOINT (a mirror; default https://huggingface.co), HF_TOKEN (sent as a',
    'bearer token, for gated repos).',
  ],
  examples: [
    'npm run model:fetch -- onnx-community/Qwen2.5-0.5B-Instruct --file onnx/model_quantized.onnx --id qwen2.5-0.5b-instruct-q8',
    'npm run model:fetch -- onnx-community/Qwen2.5-0.5B-Instruct --file onnx/model.onnx --format q8',
  ],
} as const

async function main(): Promise<void> {
  const { values, positionals } = parseCli(FETCH_CLI)
  if (positionals.length !== 1) usageError(FETCH_CLI, 'needs one <repo id>')
  const shardMb = values['shard-mb'] === undefined ? undefined : Number(values['shard-mb'])
  if (shardMb !== undefined && !(shardMb > 0))
    throw new Error('--shard-mb must be a positive number')
  const result = await fetchModel({
    repo: positionals[0],
    file: values.file,
    revision: values.revision,
    id: values.id,
    out: values.out,
    cacheDir: values.cache,
    format: values.format as PrepareFormat,
    head: values.head as PrepareHead,
    decoder: values.decoder as PrepareDecoder,
    shardBytes: shardMb === undefined ? undefined : Math.round(shardMb * 1024 * 1024),
  })
  console.error(`downloaded to ${result.folder}\npackage ${result.id} → ${result.dir}`)
}

if (isMain(import.meta.url)) runMain(main)
