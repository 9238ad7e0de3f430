/**
 * `describeMatrix()` after h3's: one suite, run once per runtime against a real server. Each
 * runtime gets a `describe` whose beforeAll starts its server (a failure to start fails every
 * test of that runtime, loudly) and whose afterAll stops it. Runtimes marked `early` start when
 * the file starts, so the slow one (Workers: local R2 upload, wrangler dev) gets ready while
 * the others are tested. Durations are printed at the end.
 */
import { afterAll, afterEach, beforeAll, describe } from 'vitest'
import type { Runtime, RuntimeName } from './runtimes.ts'
import type { ServerProcess } from './servers.ts'

export interface MatrixContext {
  runtime: RuntimeName
  base: string
  server: ServerProcess
}

export interface MatrixOptions {
  /** Runtimes whose servers start as soon as the file's tests begin. */
  early?: RuntimeName[]
}

export function describeMatrix(
  title: string,
  runtimes: Runtime[],
  suite: (ctx: MatrixContext) => void,
  options: MatrixOptions = {},
): void {
  const starts = new Map<RuntimeName, { promise: Promise<ServerProcess>; began: number }>()
  const timings: string[] = []
  const start = (runtime: Runtime) => {
    let entry = starts.get(runtime.name)
    if (!entry) {
      const began = Date.now()
      const promise = runtime.start()
      promise.then(
        () => timings.push(`${runtime.name}: ready ${Date.now() - began} ms after its start`),
        () => timings.push(`${runtime.name}: failed to start after ${Date.now() - began} ms`),
      )
      entry = { promise, began }
      starts.set(runtime.name, entry)
    }
    return entry.promise
  }
  const stopAll = () =>
    Promise.all([...starts.values()].map((s) => s.promise.then((server) => server.stop(), noop)))

  describe(title, () => {
    beforeAll(() => {
      for (const runtime of runtimes) if (options.early?.includes(runtime.name)) start(runtime)
    })
    afterAll(async () => {
      await stopAll()
      console.log(`${title}, runtime timings:\n  ${timings.join('\n  ')}`)
    })

    for (const runtime of runtimes) {
      describe(runtime.name, () => {
        const ctx = { runtime: runtime.name } as MatrixContext
        let began = 0
        beforeAll(async () => {
          began = Date.now()
          ctx.server = await start(runtime)
          ctx.base = ctx.server.base
        })
        afterAll(async () => {
          if (ctx.server) {
            timings.push(
              `${runtime.name}: suite ${Date.now() - began} ms (incl. waiting for start)`,
            )
            await ctx.server.stop() // free the CPU for the next runtime
          }
        })
        afterEach(({ task }) => {
          if (task.result?.state === 'fail' && ctx.server) {
            console.error(
              `--- ${ctx.server.name}, last output ---\n${ctx.server.logs().slice(-6000)}`,
            )
          }
        })
        suite(ctx)
      })
    }
  })
}

function noop() {}
