import { type ModelSource, SourceError, type SourceObject } from '../../engine/index.ts'
/**
 * Model source over a local folder for Deno (`--allow-read` on the folder). Declares the few
 * Deno APIs it uses so the project type-checks without Deno's types.
 */

interface DenoFsFile {
  readonly readable: ReadableStream<Uint8Array>
  stat(): Promise<{ size: number }>
  close(): void
}
declare const Deno: {
  readFile(path: string): Promise<Uint8Array>
  open(path: string, options?: { read?: boolean }): Promise<DenoFsFile>
  realPath(path: string): Promise<string>
  cwd(): string
  errors: {
    NotFound: new (...args: never[]) => Error
    PermissionDenied: new (...args: never[]) => Error
  }
}

export function fsSource(root: string): ModelSource {
  const base = (root.startsWith('/') ? root : `${Deno.cwd()}/${root}`).replace(/\/+$/, '')
  const pathOf = (key: string) => {
    const segments = key.split('/')
    if (segments.some((s) => s === '' || s === '.' || s === '..' || s.includes('\\'))) {
      throw new SourceError(`key ${JSON.stringify(key)} is not a plain relative path`, false)
    }
    return `${base}/${key}`
  }
  return {
    async get(key) {
      try {
        return await Deno.readFile(pathOf(key))
      } catch (err) {
        return missingOrThrow(err, key)
      }
    },
    async stream(key): Promise<SourceObject | null> {
      let file: DenoFsFile
      try {
        file = await Deno.open(pathOf(key), { read: true })
      } catch (err) {
        return missingOrThrow(err, key)
      }
      try {
        const { size } = await file.stat()
        return { size, body: file.readable } // the stream closes the file when done or cancelled
      } catch (err) {
        file.close()
        throw err
      }
    },
    describe: () => `folder ${base}`,
    // a shard buffer per read in flight, for no gain: files are read faster than hashed
    parallelReads: 1,
  }
}

function missingOrThrow(err: unknown, key: string): null {
  if (err instanceof Deno.errors.NotFound) return null
  if (err instanceof SourceError) throw err
  const permanent = err instanceof Deno.errors.PermissionDenied
  throw new SourceError(`reading ${key}: ${(err as Error).message}`, !permanent, { cause: err })
}
