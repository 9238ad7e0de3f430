/** Shared bits of the model scripts' command lines. */
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** True when the module at `url` is the script node/tsx was started with (not an import). */
export function isMain(url: string): boolean {
  const entry = process.argv[1]
  if (!entry) return false
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(url))
  } catch {
    return false
  }
}

/** Runs a script's main: errors print their message (no stack) and exit 1. */
export function runMain(main: () => Promise<void>): void {
  main().catch((err) => {
    console.error(err instanceof Error ? err.message : String(err))
    if (process.env.DEBUG && err instanceof Error) console.error(err.stack)
    process.exit(1)
  })
}
