/**
 * The model's own tokenizer and chat template, loaded once per isolate: parsing the 7 MB
 * Qwen tokenizer.json costs about a second, so nothing here runs per request.
 */
import { Template } from '@huggingface/jinja'
import { Tokenizer } from '@huggingface/tokenizers'
import { AppError } from '../core/errors.ts'
import type { ChatMessage } from './types.ts'

export class QwenTokenizer {
  private readonly tokenizer: Tokenizer
  private readonly template: Template
  private readonly templateVars: Record<string, unknown>
  /** Added tokens marked special (<|im_start|>, <|endoftext|>…): never part of streamed text. */
  readonly specialIds: ReadonlySet<number>
  private readonly byteCache = new Map<number, Uint8Array>()
  private readonly unicodeToByte: Map<string, number>
  private readonly added: Map<number, string>

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown>) {
    const decoder = tokenizerJson.decoder as { type?: string } | undefined
    if (decoder?.type !== 'ByteLevel') {
      throw new AppError(
        'model_invalid',
        `Unsupported tokenizer: expected a byte-level BPE decoder, got ${decoder?.type ?? 'none'}`,
      )
    }
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig)
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
    for (const t of (tokenizerJson.added_tokens ?? []) as {
      id: number
      content: string
      special?: boolean
    }[]) {
      this.added.set(t.id, t.content)
      if (t.special) special.add(t.id)
    }
    this.specialIds = special
    this.unicodeToByte = byteLevelInverse()
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids
  }

  decode(ids: number[], skipSpecial = true): string {
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecial })
  }

  tokenId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token)
  }

  /** The prompt text from the model's own chat template. */
  renderChat(messages: ChatMessage[], addGenerationPrompt = true): string {
    try {
      return this.template.render({
        ...this.templateVars,
        messages,
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
