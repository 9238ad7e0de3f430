/**
 * Reads a request body as JSON without trusting the runtime's parser: the size is checked from
 * Content-Length and again while reading (a client can lie or send chunked), the bytes must be
 * valid UTF-8, and the JSON must parse. Bad input is a 400/413 AppError, never a 500.
 */
import { AppError } from '../core/errors.ts'

export async function readJsonBody(request: Request, maxBytes: number): Promise<unknown> {
  const declared = request.headers.get('content-length')
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > maxBytes) {
    throw tooLarge(maxBytes)
  }
  const bytes = await readBytes(request, maxBytes)
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    throw new AppError('bad_request', 'Request body is not valid UTF-8')
  }
  if (text.trim() === '')
    throw new AppError('bad_request', 'Request body is empty: send a JSON object')
  try {
    return JSON.parse(text)
  } catch (err) {
    const detail = err instanceof Error ? `: ${err.message.slice(0, 200)}` : ''
    throw new AppError('bad_request', `Request body is not valid JSON${detail}`)
  }
}

async function readBytes(request: Request, maxBytes: number): Promise<Uint8Array> {
  if (request.body === null) return new Uint8Array(0)
  const reader = request.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > maxBytes) {
      await reader.cancel().catch(() => {}) // stop receiving the rest
      throw tooLarge(maxBytes)
    }
    chunks.push(value)
  }
  const bytes = new Uint8Array(size)
  let at = 0
  for (const chunk of chunks) {
    bytes.set(chunk, at)
    at += chunk.byteLength
  }
  return bytes
}

function tooLarge(maxBytes: number): AppError {
  return new AppError('payload_too_large', `Request body is larger than ${maxBytes} bytes`)
}
