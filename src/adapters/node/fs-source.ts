/**
 * Model source over a local folder for Node (the repo's `model-shards/` is the local object
 * store: keys are paths below it).
 */
import { open, readFile } from 'node:fs/promises'
import { resolve, sep } from 'node:path'
import { type ModelSource, SourceError, type SourceObject } from '../../engine/index.ts'

const CHUNK = 1024 * 1024

export function fsSource(root: string): ModelSource {
  const base = resolve(root)
  const pathOf = (key: string) => {
    const path = resolve(base, key)
    if (!path.startsWith(base + sep))
      throw new SourceError(`key ${JSON.stringify(key)} leaves ${base}`, false)
    return path
  }
  return {
    async get(key) {
      try {
        const buf = await readFile(pathOf(key))
        return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength)
      } catch (err) {
        return missingOrThrow(err, key)
      }
    },
    async stream(key): Promise<SourceObject | null> {
      let handle
      try {
        handle = await open(pathOf(key), 'r')
      } catch (err) {
        return missingOrThrow(err, key)
      }
      const fh = handle
      try {
        const { size } = await fh.stat()
        let position = 0
        const body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            try {
              const chunk = new Uint8Array(CHUNK)
              const { bytesRead } = await fh.read(chunk, 0, CHUNK, position)
              if (bytesRead === 0) {
                await fh.close()
                controller.close()
                return
              }
              position += bytesRead
              controller.enqueue(chunk.subarray(0, bytesRead))
            } catch (err) {
              await fh.close().catch(() => {})
              controller.error(err)
            }
          },
          async cancel() {
            await fh.close()
          },
        })
        return { size, body }
      } catch (err) {
        await fh.close().catch(() => {})
        throw err
      }
    },
    describe: () => `folder ${base}`,
    // a shard buffer per read in flight, for no gain: files are read faster than hashed
    parallelReads: 1,
  }
}

function missingOrThrow(err: unknown, key: string): null {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOENT') return null
  // Retrying will not turn a directory into a file or grant permissions.
  const permanent = code === 'EISDIR' || code === 'EACCES' || code === 'EPERM' || code === 'ENOTDIR'
  if (err instanceof SourceError) throw err
  throw new SourceError(`reading ${key}: ${(err as Error).message}`, !permanent, { cause: err })
}
