/**
 * tokenizer.json read from its bytes without parsing the vocabulary and merges into JS objects.
 *
 * `JSON.parse` of Qwen's 11 MB tokenizer.json makes a 151k-key object and 151k two-string
 * arrays, and `@huggingface/tokenizers` then builds its maps from them through 151k entry
 * arrays, `JSON.stringify` and copies: the JS heap reaches ~130 MB for ~30 MB that stays, and
 * the runtime keeps much of what the collector frees (Deno's RSS stayed ~170 MiB). Here the
 * bytes are scanned once and only the strings the library's maps keep are made: the token
 * strings of its `tokens_to_ids` / `vocab` and the `JSON.stringify([a, b])` keys of its
 * `bpe_ranks`, exactly as it would have made them. Everything else in the file (normalizer,
 * pre-tokenizer, added tokens…) is a few KB and goes through `JSON.parse` as usual, with the
 * vocabulary and merges left empty.
 *
 * Anything outside what Qwen's (and GPT-2-style) files hold — a model that is not BPE, merges
 * that are neither all "a b" strings nor all [a, b] pairs, two tokens with one id — returns
 * undefined: the caller parses the whole file as before, so the result is never different.
 */

/** tokenizer.json parsed, or its bytes (then read leanly when they allow). */
export type TokenizerJson = Record<string, unknown> | Uint8Array

/** The parts of a BPE tokenizer.json, the large ones prebuilt as the library builds them. */
export interface LeanTokenizerJson {
  /** The whole file with `model.vocab` = {} and `model.merges` = []. */
  json: Record<string, unknown>
  /** token → id, in file order (the library's `tokens_to_ids` before added tokens). */
  tokensToIds: Map<string, number>
  /** id → token (the library's `vocab` before added tokens). */
  vocab: string[]
  /** `JSON.stringify([a, b])` → rank (the library's `bpe_ranks`). */
  bpeRanks: Map<string, number>
}

const QUOTE = 0x22
const BACKSLASH = 0x5c

export function readLeanTokenizerJson(bytes: Uint8Array): LeanTokenizerJson | undefined {
  try {
    return new Scanner(bytes).read()
  } catch (err) {
    if (err instanceof Unsupported) return undefined
    throw err
  }
}

/** The file is valid JSON but not in the shape this reader takes: parse it whole instead. */
class Unsupported extends Error {}

class Scanner {
  private readonly utf8 = new TextDecoder('utf-8')
  private readonly units: number[] = []

  constructor(private readonly b: Uint8Array) {}

  read(): LeanTokenizerJson {
    const b = this.b
    let i = this.ws(0)
    if (b[i] !== 0x7b) throw new Unsupported()
    let vocab: [number, number] | undefined
    let merges: [number, number] | undefined
    this.members(i, (key, at) => {
      if (key !== 'model' || b[at] !== 0x7b) return this.skip(at)
      return this.members(at, (k, v) => {
        const end = this.skip(v)
        if (k === 'vocab') vocab = [v, end]
        if (k === 'merges') merges = [v, end]
        return end
      })
    })
    if (!vocab || !merges) throw new Unsupported()
    const json = this.withEmpty(vocab, merges)
    const model = json.model as Record<string, unknown> | undefined
    if (model?.type !== 'BPE') throw new Unsupported()
    const tokensToIds = new Map<string, number>()
    const byId: string[] = []
    this.members(vocab[0], (key, at) => {
      i = this.ws(at)
      const id = this.integer(i)
      if (byId[id] !== undefined || tokensToIds.has(key)) throw new Unsupported()
      tokensToIds.set(key, id)
      byId[id] = key
      return this.skip(i)
    })
    // the library's `new Array(size)` filled by id
    const vocabArray = new Array<string>(tokensToIds.size)
    byId.forEach((token, id) => (vocabArray[id] = token))
    return { json, tokensToIds, vocab: vocabArray, bpeRanks: this.ranks(merges[0]) }
  }

  /** The merges as the library keys them: JSON.stringify of each [a, b] (split(" ", 2) of "a b"). */
  private ranks(at: number): Map<string, number> {
    const b = this.b
    const ranks = new Map<string, number>()
    let format: 'pairs' | 'strings' | undefined
    let rank = 0
    this.elements(at, (v) => {
      let pair: string[]
      if (b[v] === QUOTE) {
        if ((format ??= 'strings') !== 'strings') throw new Unsupported()
        const [s, end] = this.string(v)
        pair = s.split(' ', 2)
        ranks.set(JSON.stringify(pair), rank++)
        return end
      }
      if (b[v] !== 0x5b || (format ??= 'pairs') !== 'pairs') throw new Unsupported()
      pair = []
      const end = this.elements(v, (e) => {
        if (b[e] !== QUOTE) throw new Unsupported()
        const [s, after] = this.string(e)
        pair.push(s)
        return after
      })
      if (pair.length !== 2) throw new Unsupported()
      ranks.set(JSON.stringify(pair), rank++)
      return end
    })
    return ranks
  }

  /** The file with the two values replaced by {} and [], parsed. */
  private withEmpty(vocab: [number, number], merges: [number, number]): Record<string, unknown> {
    const [first, second] = vocab[0] < merges[0] ? [vocab, merges] : [merges, vocab]
    const empty = (range: [number, number]) => (range === vocab ? '{}' : '[]')
    const text =
      this.utf8.decode(this.b.subarray(0, first[0])) +
      empty(first) +
      this.utf8.decode(this.b.subarray(first[1], second[0])) +
      empty(second) +
      this.utf8.decode(this.b.subarray(second[1]))
    const value: unknown = JSON.parse(text)
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Unsupported()
    return value as Record<string, unknown>
  }

  /** Calls `member(key, valueStart)` for each member of the object at `at`; returns its end. */
  private members(at: number, member: (key: string, value: number) => number): number {
    const b = this.b
    let i = this.ws(at + 1)
    if (b[i] === 0x7d) return i + 1
    for (;;) {
      if (b[i] !== QUOTE) throw new SyntaxError(`tokenizer.json: expected a key at byte ${i}`)
      const [key, end] = this.string(i)
      i = this.ws(end)
      if (b[i] !== 0x3a) throw new SyntaxError(`tokenizer.json: expected ':' at byte ${i}`)
      i = this.ws(member(key, this.ws(i + 1)))
      if (b[i] === 0x2c) i = this.ws(i + 1)
      else if (b[i] === 0x7d) return i + 1
      else throw new SyntaxError(`tokenizer.json: expected ',' or '}' at byte ${i}`)
    }
  }

  /** Calls `element(valueStart)` for each element of the array at `at`; returns its end. */
  private elements(at: number, element: (value: number) => number): number {
    const b = this.b
    let i = this.ws(at + 1)
    if (b[i] === 0x5d) return i + 1
    for (;;) {
      i = this.ws(element(i))
      if (b[i] === 0x2c) i = this.ws(i + 1)
      else if (b[i] === 0x5d) return i + 1
      else throw new SyntaxError(`tokenizer.json: expected ',' or ']' at byte ${i}`)
    }
  }

  /** The end of the value at `at`. */
  private skip(at: number): number {
    const b = this.b
    const c = b[at]
    if (c === QUOTE) return this.stringEnd(at)
    if (c === 0x7b) return this.members(at, (_, v) => this.skip(v))
    if (c === 0x5b) return this.elements(at, (v) => this.skip(v))
    let i = at
    while (i < b.length && !isDelimiter(b[i])) i++
    if (i === at) throw new SyntaxError(`tokenizer.json: expected a value at byte ${at}`)
    return i
  }

  /** A non-negative integer id at `at` (anything else: unsupported). */
  private integer(at: number): number {
    const b = this.b
    let i = at
    let n = 0
    while (i < b.length && b[i] >= 0x30 && b[i] <= 0x39) n = n * 10 + b[i++] - 0x30
    if (i === at || !isDelimiter(b[i] ?? 0x20) || (b[at] === 0x30 && i > at + 1) || n > 2 ** 31)
      throw new Unsupported()
    return n
  }

  /** End (after the closing quote) of the string at `at`. */
  private stringEnd(at: number): number {
    const b = this.b
    for (let i = at + 1; i < b.length; i++) {
      if (b[i] === BACKSLASH) i++
      else if (b[i] === QUOTE) return i + 1
    }
    throw new SyntaxError('tokenizer.json: unterminated string')
  }

  /**
   * The string at `at` and its end. UTF-8 without escapes is decoded here (no intermediate
   * strings); one with escapes or invalid bytes goes through TextDecoder and JSON.parse, which
   * give what JSON.parse of the whole file would.
   */
  private string(at: number): [string, number] {
    const b = this.b
    const units = this.units
    units.length = 0
    let i = at + 1
    for (;;) {
      const c = b[i]
      if (c === QUOTE) break
      if (c === BACKSLASH || c === undefined || c < 0x20) return this.slowString(at)
      if (c < 0x80) {
        units.push(c)
        i++
        continue
      }
      let cp: number
      let n: number
      if (c >= 0xc2 && c <= 0xdf) [cp, n] = [c & 0x1f, 1]
      else if (c >= 0xe0 && c <= 0xef) [cp, n] = [c & 0x0f, 2]
      else if (c >= 0xf0 && c <= 0xf4) [cp, n] = [c & 0x07, 3]
      else return this.slowString(at)
      for (let k = 1; k <= n; k++) {
        const d = b[i + k]
        if (d === undefined || (d & 0xc0) !== 0x80) return this.slowString(at)
        cp = (cp << 6) | (d & 0x3f)
      }
      // overlong forms, surrogates and past U+10FFFF are invalid: TextDecoder's U+FFFD rules
      if (
        (n === 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n === 3 && (cp < 0x10000 || cp > 0x10ffff))
      )
        return this.slowString(at)
      if (cp >= 0x10000) units.push(0xd800 + ((cp - 0x10000) >> 10), 0xdc00 + (cp & 0x3ff))
      else units.push(cp)
      i += n + 1
    }
    if (units.length > 4096) return this.slowString(at)
    return [String.fromCharCode.apply(null, units), i + 1]
  }

  private slowString(at: number): [string, number] {
    const end = this.stringEnd(at)
    return [JSON.parse(this.utf8.decode(this.b.subarray(at, end))) as string, end]
  }

  private ws(at: number): number {
    const b = this.b
    let i = at
    while (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09) i++
    return i
  }
}

function isDelimiter(c: number): boolean {
  return (
    c === 0x2c || c === 0x7d || c === 0x5d || c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09
  )
}
