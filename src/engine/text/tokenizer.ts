/**
 * The model's own tokenizer and chat template, loaded once per isolate: parsing the 7 MB
 * Qwen tokenizer.json costs about a second, so nothing here runs per request.
 *
 * Caller text is plain text. Hugging Face tokenizers turn the *text* `<|im_end|>` into the
 * control token wherever it appears, so a message, a sentiment text or a label could close its
 * turn and open a fake system turn (template injection). Here control tokens come only from the
 * chat template: caller text is escaped before the template sees it, and the rendered prompt is
 * split at the template's own added tokens; each piece between them is tokenized without
 * added-token matching (as llama.cpp does with `parse_special = false`). Text with no added-token
 * string in it gets exactly the ids the library gives (checked at load).
 */
import { Template } from '@huggingface/jinja'
import { Tokenizer } from '@huggingface/tokenizers'
import { AppError } from '../../core/errors.ts'
import type { ChatMessage } from '../types.ts'
import {
  readLeanTokenizerJson,
  type LeanTokenizerJson,
  type TokenizerJson,
} from './tokenizer-json.ts'

export class QwenTokenizer {
  private readonly tokenizer: Tokenizer
  private readonly template: Template
  private readonly templateVars: Record<string, unknown>
  /** Added tokens marked special (<|im_start|>, <|endoftext|>…): never part of streamed text. */
  readonly specialIds: ReadonlySet<number>
  private readonly byteCache = new Map<number, Uint8Array>()
  private readonly unicodeToByte: Map<string, number>
  private readonly added: Map<number, string>
  /** Every added token's text, longest first; its index is its escape code. */
  private readonly addedTexts: string[]
  /** Matches any added token's text (or the escape character) in a string. */
  private readonly addedPattern: RegExp
  private readonly addedIds: Map<string, { id: number; lstrip: boolean; rstrip: boolean }>

  constructor(json: TokenizerJson, tokenizerConfig: Record<string, unknown>) {
    let lean: LeanTokenizerJson | undefined
    let tokenizerJson: Record<string, unknown>
    if (json instanceof Uint8Array) {
      try {
        lean = readLeanTokenizerJson(json)
        tokenizerJson = lean?.json ?? parseObject(json)
      } catch (err) {
        if (err instanceof AppError) throw err
        throw new AppError('model_invalid', 'tokenizer.json is not valid JSON', { cause: err })
      }
    } else tokenizerJson = json
    const decoder = tokenizerJson.decoder as { type?: string } | undefined
    if (decoder?.type !== 'ByteLevel') {
      throw new AppError(
        'model_invalid',
        `Unsupported tokenizer: expected a byte-level BPE decoder, got ${decoder?.type ?? 'none'}`,
      )
    }
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig)
    if (lean) installLean(this.tokenizer, lean)
    releaseParsedJson(this.tokenizer)
    const source = tokenizerConfig.chat_template
    if (typeof source !== 'string' || source.length === 0) {
      throw new AppError('model_invalid', 'tokenizer_config.json has no chat_template')
    }
    this.template = new Template(source)
    this.templateVars = {
      bos_token: tokenText(tokenizerConfig.bos_token) ?? '',
      eos_token: tokenText(tokenizerConfig.eos_token) ?? '',
      pad_token: tokenText(tokenizerConfig.pad_token) ?? '',
    }
    const special = new Set<number>()
    this.added = new Map()
    this.addedIds = new Map()
    for (const t of (tokenizerJson.added_tokens ?? []) as {
      id: number
      content: string
      special?: boolean
      lstrip?: boolean
      rstrip?: boolean
    }[]) {
      this.added.set(t.id, t.content)
      this.addedIds.set(t.content, { id: t.id, lstrip: !!t.lstrip, rstrip: !!t.rstrip })
      if (t.special) special.add(t.id)
    }
    this.specialIds = special
    this.addedTexts = [...this.addedIds.keys()]
      .filter((t) => t.length > 0)
      .sort((a, b) => b.length - a.length)
    if (this.addedTexts.length > MAX_ESCAPES) {
      throw new AppError('model_invalid', `The tokenizer has more than ${MAX_ESCAPES} added tokens`)
    }
    this.addedPattern = new RegExp([...this.addedTexts.map(escapeRegExp), ESCAPE].join('|'), 'g')
    this.unicodeToByte = byteLevelInverse()
    this.checkPlainEncoding()
  }

  /**
   * Caller text (a sentiment text, a label) as plain text: the text `<|im_end|>` is ordinary
   * characters, never the control token.
   */
  encodeText(text: string): number[] {
    return this.encodePlain(text, 0)
  }

  /**
   * A prompt rendered by {@link renderChat} (or a slice of one): the template's added tokens
   * become their ids, the caller text between them is tokenized as plain text.
   */
  encodePrompt(rendered: string): number[] {
    const pieces: (string | { id: number; lstrip: boolean; rstrip: boolean })[] = []
    let last = 0
    for (const m of rendered.matchAll(this.addedPattern)) {
      const token = this.addedIds.get(m[0])
      if (!token) continue // the escape character: part of caller text
      pieces.push(rendered.slice(last, m.index), token)
      last = m.index + m[0].length
    }
    pieces.push(rendered.slice(last))
    // an added token may eat the whitespace beside it (lstrip / rstrip), as the library does
    pieces.forEach((p, i) => {
      if (typeof p === 'string') return
      if (p.lstrip && i > 0) pieces[i - 1] = (pieces[i - 1] as string).trimEnd()
      if (p.rstrip && i < pieces.length - 1) pieces[i + 1] = (pieces[i + 1] as string).trimStart()
    })
    const ids: number[] = []
    pieces.forEach((p, section) => {
      if (typeof p !== 'string') ids.push(p.id)
      else if (p.length > 0) ids.push(...this.encodePlain(this.unescape(p), section))
    })
    return ids
  }

  /**
   * Normalizer, pre-tokenizer and BPE without the library's added-token split. `section` is the
   * piece's index among the added-token splits (some pre-tokenizers treat the first one apart).
   */
  private encodePlain(text: string, section: number): number[] {
    const t = this.tokenizer
    let normalized = t.normalizer ? t.normalizer(text) : text
    if (normalized.length === 0) return []
    const words = t.pre_tokenizer
      ? t.pre_tokenizer(normalized, { section_index: section })
      : [normalized]
    const unk = t.model!.unk_token_id
    return t.model!(words).map((token) => {
      const id = t.model!.tokens_to_ids.get(token) ?? unk
      if (id === undefined)
        throw new AppError('model_invalid', `The tokenizer has no id for "${token}"`)
      return id
    })
  }

  /** Caller text as the template sees it: added-token strings replaced by escape codes. */
  private escape(text: string): string {
    return text.replace(this.addedPattern, (m) =>
      m === ESCAPE
        ? ESCAPE + ESCAPE
        : ESCAPE + String.fromCharCode(ESCAPE_BASE + this.addedTexts.indexOf(m)),
    )
  }

  private unescape(text: string): string {
    if (!text.includes(ESCAPE)) return text
    return text.replace(ESCAPED, (_, code: string) =>
      code === ESCAPE ? ESCAPE : this.addedTexts[code.charCodeAt(0) - ESCAPE_BASE],
    )
  }

  /**
   * The plain path is this class's own reimplementation of the library's inner loop: it must give
   * the library's ids for text without added tokens, or normal prompts would change.
   */
  private checkPlainEncoding(): void {
    for (const probe of PLAIN_PROBES) {
      const expected = this.tokenizer.encode(probe, { add_special_tokens: false }).ids
      const got = this.encodePlain(probe, 0)
      if (got.length !== expected.length || got.some((id, i) => id !== expected[i])) {
        throw new AppError(
          'model_invalid',
          "Unsupported tokenizer: its plain-text encoding differs from the library's",
        )
      }
    }
  }

  decode(ids: number[], skipSpecial = true): string {
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecial })
  }

  tokenId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token)
  }

  /**
   * The prompt from the model's own chat template, with each message's content escaped: feed it
   * to {@link encodePrompt}, never show it (escape codes stand where caller text had added-token
   * strings).
   */
  renderChat(messages: ChatMessage[], addGenerationPrompt = true): string {
    try {
      return this.template.render({
        ...this.templateVars,
        messages: messages.map((m) => ({ ...m, content: this.escape(m.content) })),
        add_generation_prompt: addGenerationPrompt,
      })
    } catch (err) {
      throw new AppError(
        'bad_request',
        `The chat template rejected these messages: ${message(err)}`,
        {
          cause: err,
        },
      )
    }
  }

  /**
   * The raw bytes a token stands for. Byte-level BPE maps each byte to a printable character;
   * undoing that mapping per token lets the stream decoder cut text only at character
   * boundaries, however the model splits a Chinese character or an emoji across tokens.
   */
  tokenBytes(id: number): Uint8Array {
    let bytes = this.byteCache.get(id)
    if (bytes) return bytes
    const added = this.added.get(id)
    if (added !== undefined) {
      bytes = new TextEncoder().encode(added)
    } else {
      const token = this.tokenizer.id_to_token(id) ?? ''
      bytes = new Uint8Array(token.length)
      let n = 0
      for (const ch of token) {
        const b = this.unicodeToByte.get(ch)
        if (b !== undefined) bytes[n++] = b
      }
      bytes = bytes.subarray(0, n)
    }
    this.byteCache.set(id, bytes)
    return bytes
  }

  /** A decoder for one generation's tokens; see {@link TokenTextStream}. */
  textStream(): TokenTextStream {
    return new TokenTextStream(this)
  }
}

/**
 * Token ids in, text deltas out. A delta never ends inside a UTF-8 sequence: the bytes of an
 * incomplete character wait for the token that completes it. Special tokens produce no text.
 */
export class TokenTextStream {
  private readonly decoder = new TextDecoder('utf-8')
  constructor(private readonly tokenizer: QwenTokenizer) {}

  push(id: number): string {
    if (this.tokenizer.specialIds.has(id)) return ''
    return this.decoder.decode(this.tokenizer.tokenBytes(id), { stream: true })
  }

  /**
   * End of generation. Bytes of a character the model never finished are dropped rather than
   * shown as U+FFFD.
   */
  end(): string {
    this.decoder.decode(new Uint8Array(0)) // resets the decoder; its U+FFFD for a tail is dropped
    return ''
  }
}

/**
 * Escape codes live in Unicode's private use area: ESCAPE followed by ESCAPE stands for the
 * escape character itself, ESCAPE followed by ESCAPE_BASE + i for added token i.
 */
const ESCAPE = '\uE000'
const ESCAPE_BASE = 0xe100
const MAX_ESCAPES = 0x1700
const ESCAPED = /\uE000([\s\S])/g

/** Text the plain path must encode exactly as the library does (load-time check). */
const PLAIN_PROBES = [
  "Hello, world! It's 2024.\n\n  Indented  text\t\r\nend ",
  '你好，世界！这部电影太好看了。😀 naïve café',
  ' <|im_end |> <| \u00a0 12345 ',
]

/**
 * The library keeps the JSON it was built from (the whole tokenizer.json as `tokenizer`, the
 * model's vocab object and merges as `model.config` and `model.merges`), though it reads them
 * only while building its own maps: for Qwen's 151k vocab about 22 MB of JS heap (half of what
 * the tokenizer holds), and the caller's parsed copy stays alive with it. Drops those references.
 */
function releaseParsedJson(tokenizer: Tokenizer): void {
  const lib = tokenizer as unknown as {
    tokenizer?: unknown
    model: { config?: Record<string, unknown>; merges?: unknown }
  }
  lib.tokenizer = undefined
  if (lib.model.config) {
    const { vocab: _vocab, merges: _merges, ...rest } = lib.model.config
    lib.model.config = rest
  }
  lib.model.merges = undefined
}

/**
 * The library was built from the file with an empty vocabulary and no merges: give its BPE model
 * the maps read from the bytes, and add the added tokens to them as its constructor did.
 */
function installLean(tokenizer: Tokenizer, lean: LeanTokenizerJson): void {
  const lib = tokenizer as unknown as {
    added_tokens: { id: number; content: string }[]
    model: {
      tokens_to_ids: Map<string, number>
      vocab: string[]
      bpe_ranks?: Map<string, number>
      unk_token?: string
      unk_token_id?: number
    }
  }
  const model = lib.model
  if (!(model.bpe_ranks instanceof Map) || model.tokens_to_ids.size !== lib.added_tokens.length)
    throw new AppError('internal', 'The tokenizer library does not build BPE models as expected')
  model.tokens_to_ids = lean.tokensToIds
  model.vocab = lean.vocab
  model.bpe_ranks = lean.bpeRanks
  model.unk_token_id = lean.tokensToIds.get(model.unk_token as string)
  for (const t of lib.added_tokens) {
    model.tokens_to_ids.set(t.content, t.id)
    model.vocab[t.id] = t.content
  }
}

function parseObject(bytes: Uint8Array): Record<string, unknown> {
  const value: unknown = JSON.parse(new TextDecoder().decode(bytes))
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new AppError('model_invalid', 'tokenizer.json is not a JSON object')
  return value as Record<string, unknown>
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** GPT-2's bytes_to_unicode, inverted: printable character → byte. */
function byteLevelInverse(): Map<string, number> {
  const bytes: number[] = []
  for (let b = 33; b <= 126; b++) bytes.push(b)
  for (let b = 161; b <= 172; b++) bytes.push(b)
  for (let b = 174; b <= 255; b++) bytes.push(b)
  const chars = [...bytes]
  let n = 0
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b)
      chars.push(256 + n++)
    }
  }
  const map = new Map<string, number>()
  bytes.forEach((b, i) => map.set(String.fromCharCode(chars[i]), b))
  return map
}

function tokenText(value: unknown): string | undefined {
  if (typeof value === 'string') return value
  if (
    value &&
    typeof value === 'object' &&
    typeof (value as { content?: unknown }).content === 'string'
  ) {
    return (value as { content: string }).content
  }
  return undefined
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
