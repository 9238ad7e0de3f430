/** Shared bits of the model scripts' command lines. */
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs, type ParseArgsConfig } from 'node:util'

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

type OptionConfig = NonNullable<ParseArgsConfig['options']>[string]

/** A parseArgs option plus what --help says about it. */
export interface CliOption extends OptionConfig {
  /** One line (wrapped if long) for --help. */
  help: string
  /** The value's placeholder in --help, e.g. '<dir>' (string options; default '<value>'). */
  arg?: string
  /** The default as --help shows it, for options whose default is decided later by the script. */
  defaultHelp?: string
}

/**
 * A script's command line: the parseArgs config itself (so --help is generated from the table
 * the parser reads, and cannot drift from it) plus the text around the option list.
 */
export interface CliSpec extends ParseArgsConfig {
  /** Prefix of error messages, e.g. 'model:prepare'. */
  name: string
  /** How it is run, without --help: 'npm run model:prepare --'. */
  command: string
  /** Usage lines, each a full command. */
  usage: readonly string[]
  /** What it does: a few lines. */
  summary: readonly string[]
  options: Record<string, CliOption>
  /** Positional arguments: [name, description]. */
  arguments?: readonly (readonly [string, string])[]
  /** Lines after the options (environment, pass-through arguments). */
  notes?: readonly string[]
  examples: readonly string[]
}

/** Every script's -h/--help: looked for before parsing (so before any work), listed by helpText. */
export const HELP_OPTION: CliOption = { type: 'boolean', short: 'h', help: 'show this help' }

const WIDTH = 100

export function helpText(spec: CliSpec): string {
  const rows: [string, string][] = []
  for (const [name, o] of Object.entries({ ...spec.options, help: HELP_OPTION })) {
    const negatable = spec.allowNegative && o.type === 'boolean' && o !== HELP_OPTION
    let left = `--${negatable ? '[no-]' : ''}${name}`
    if (o.type === 'string') left += ` ${o.arg ?? '<value>'}`
    if (o.short) left = `-${o.short}, ${left}`
    const shown =
      o.defaultHelp ??
      (o.default === undefined || o.default === false
        ? undefined
        : o.default === true
          ? 'on'
          : String(o.default))
    rows.push([left, shown === undefined ? o.help : `${o.help} (default: ${shown})`])
  }
  const out = [`Usage: ${spec.usage[0]}`, ...spec.usage.slice(1).map((u) => `       ${u}`), '']
  out.push(...spec.summary, '')
  const args = spec.arguments ?? []
  // one column for both tables, so arguments and options line up
  const col = Math.min(30, Math.max(...[...args, ...rows].map(([l]) => l.length)) + 4)
  if (args.length) out.push('Arguments:', ...table(args, col), '')
  out.push('Options:', ...table(rows, col), '')
  if (spec.notes?.length) out.push(...spec.notes, '')
  out.push('Examples:', ...spec.examples.map((e) => `  ${e}`), '')
  return out.join('\n')
}

/** Two columns, the second wrapped to WIDTH with a hanging indent. */
function table(rows: readonly (readonly [string, string])[], col: number): string[] {
  const lines: string[] = []
  for (const [left, text] of rows) {
    let line = `  ${left}`.padEnd(col)
    // a left column wider than the indent gets its text on the next line
    if (line.length > col) {
      lines.push(line)
      line = ''.padEnd(col)
    }
    let fresh = true
    for (const word of text.split(' ')) {
      if (!fresh && line.length + 1 + word.length > WIDTH) {
        lines.push(line)
        line = ''.padEnd(col)
        fresh = true
      }
      line += fresh ? word : ` ${word}`
      fresh = false
    }
    lines.push(line)
  }
  return lines
}

/** True when -h or --help is among `args`, wherever (read leniently: other options may be unknown). */
export function wantsHelp(args: readonly string[]): boolean {
  const { tokens } = parseArgs({
    args,
    options: { help: HELP_OPTION },
    strict: false,
    allowPositionals: true,
    tokens: true,
  })
  return tokens.some((t) => t.kind === 'option' && t.name === 'help')
}

/** Prints the help and exits 0 when -h or --help is among `args`. */
export function exitWithHelpIfAsked(spec: CliSpec, args: readonly string[]): void {
  if (!wantsHelp(args)) return
  process.stdout.write(helpText(spec))
  process.exit(0)
}

/** A command line error: the message, the usage and where the options are; exit code 2. */
export function usageError(spec: CliSpec, message: string): never {
  console.error(`${spec.name}: ${message}`)
  console.error(`Usage: ${spec.usage.join('\n       ')}`)
  console.error(`Run '${spec.command} --help' for the options.`)
  process.exit(2)
}

/**
 * parseArgs over `spec`: prints the help and exits 0 when asked (before anything else, so a
 * script does no work), and turns parse errors into `usageError`s instead of stack traces.
 */
export function parseCli<const T extends CliSpec>(
  spec: T,
  args: readonly string[] = process.argv.slice(2),
): ReturnType<typeof parseArgs<T>> {
  exitWithHelpIfAsked(spec, args)
  try {
    return parseArgs({
      args,
      options: spec.options,
      allowPositionals: spec.allowPositionals,
      allowNegative: spec.allowNegative,
    }) as ReturnType<typeof parseArgs<T>>
  } catch (err) {
    const { code, message } = err as { code?: string; message: string }
    if (!code?.startsWith('ERR_PARSE_ARGS')) throw err
    // parseArgs goes on about `--` and positionals starting with '-': no use to these scripts
    usageError(spec, message.replace(/\. To specify a positional argument.*$/s, ''))
  }
}
