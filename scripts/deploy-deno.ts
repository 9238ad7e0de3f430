/**
 * Deploys the Deno entry to Deno Deploy (the platform at console.deno.com) with Deno's own CLI,
 * `deno deploy`, from the project's `deno` npm package:
 *
 *   npm run deploy:deno -- --org <org> --app <app> --model https://<host>/<path>/<id> [--create]
 *
 * Deploy runs a whole Deno process per instance, with no per-request CPU limit, which is what
 * a generation needs; the model is not part of the upload but an HTTP(S) package URL read at
 * startup (a public R2 bucket: `npm run model:upload -- <id> --remote`). Before any deploy
 * command the script reads the package's manifest.json over that URL, so a typo or a private
 * bucket fails here and not in Deploy's logs. `--dry-run` prints the commands and reads nothing.
 *
 * `deno deploy` itself is downloaded from JSR on first use and logs in through the browser
 * unless DENO_DEPLOY_TOKEN is set (an organization token, for CI).
 */
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { MANIFEST_FILE, isValidPackageId, packageKey, parseManifest } from '../src/format/index.ts'
import { splitPackageUrl } from '../src/adapters/package-url.ts'
import { httpSource } from '../src/engine/index.ts'
import { isMain, parseCli, runMain, usageError } from './lib/cli.ts'
import { formatBytes } from './lib/progress.ts'

export const ENTRYPOINT = 'src/adapters/deno/main.ts'
/**
 * Deploy's builder installs the dependencies: only the production ones (the dev tools are
 * hundreds of MB the server never loads), into a node_modules folder that deno.json's
 * `"nodeModulesDir": "manual"` then reads as it does locally.
 */
export const INSTALL_COMMAND = 'deno install --prod --node-modules-dir=auto'
export const REGIONS = ['us', 'eu', 'global'] as const

export interface DenoDeployOptions {
  org: string
  app: string
  /** The package's URL: `https://<host>/<path>/<id>`. */
  model: string
  /** First deploy: create the app, then add its variables. Later: update them. */
  create: boolean
  region: string
  /** More of the server's variables, `KEY=VALUE`. */
  vars: readonly string[]
}

export interface DenoDeployPlan {
  /** The store the package is in, and its id there: what the server will read. */
  base: string
  id: string
  /** Where the package's manifest is read before deploying. */
  manifestUrl: string
  /** Arguments for `deno`, in order. */
  commands: string[][]
}

/** A command line mistake: main() turns it into a usage error (exit 2). */
export class PlanError extends Error {}

/** Pure: checks the options and lists the `deno deploy` commands that deploy the app. */
export function planDenoDeploy(o: DenoDeployOptions): DenoDeployPlan {
  if (!o.org) throw new PlanError('needs --org: the Deno Deploy organization')
  if (!o.app) throw new PlanError('needs --app: the Deno Deploy app')
  const url = checkModelUrl(o.model)
  if (!(REGIONS as readonly string[]).includes(o.region)) {
    throw new PlanError(`--region ${o.region}: one of ${REGIONS.join(', ')}`)
  }
  const vars: [string, string][] = [['MODEL', o.model.replace(/\/+$/, '')]]
  for (const v of o.vars) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/s.exec(v)
    if (!m) throw new PlanError(`--var ${v}: expected KEY=VALUE`)
    if (m[1] === 'MODEL') throw new PlanError('--var MODEL=…: give the package URL as --model')
    if (m[1] === 'API_KEY') {
      throw new PlanError(
        '--var API_KEY=…: a secret does not belong on a command line; set it once with ' +
          `\`npx deno deploy env add API_KEY <key> --secret --org ${o.org} --app ${o.app}\``,
      )
    }
    if (['PORT', 'HOST'].includes(m[1])) {
      throw new PlanError(`--var ${m[1]}=…: Deno Deploy decides where the server listens`)
    }
    vars.push([m[1], m[2]])
  }
  const target = ['--org', o.org, '--app', o.app]
  const commands: string[][] = []
  if (o.create) {
    commands.push([
      'deploy',
      'create',
      ...target,
      ...['--source', 'local', '--runtime-mode', 'dynamic'],
      ...['--entrypoint', ENTRYPOINT, '--install-command', INSTALL_COMMAND],
      ...['--build-timeout', '5', '--build-memory-limit', '3072', '--region', o.region],
      // the first build runs without MODEL: the deploy below, with the variables, replaces it
      '--no-wait',
    ])
  }
  for (const [key, value] of vars) {
    commands.push(['deploy', 'env', o.create ? 'add' : 'update-value', key, value, ...target])
  }
  commands.push(['deploy', ...target, '--prod'])
  const manifestUrl = new URL(`${encodeURIComponent(url.id)}/${MANIFEST_FILE}`, url.base).href
  return { base: url.base.href, id: url.id, manifestUrl, commands }
}

function checkModelUrl(model: string) {
  if (!model) {
    throw new PlanError(
      'needs --model (or MODEL): the https:// URL of a model package. Deno Deploy reads the ' +
        'model over HTTP(S) at startup; it is not part of the upload. Put the package into a ' +
        'bucket first, e.g. `npm run model:upload -- <id> --remote`, make the bucket public ' +
        '(r2.dev or a custom domain), and pass https://<that host>/<id>',
    )
  }
  const url = splitPackageUrl(model)
  if (!url) {
    throw new PlanError(
      `--model ${model}: not an http(s) URL. On Deno Deploy the model is read over HTTP(S), ` +
        `not from model-shards/: put the package into a bucket (\`npm run model:upload -- ` +
        `${model} --remote\`), make it public and pass https://<bucket host>/<id>`,
    )
  }
  if (!isValidPackageId(url.id)) {
    throw new PlanError(`--model ${model}: the last path segment must be the package id`)
  }
  const host = new URL(model).hostname
  if (host === 'localhost' || /^127\./.test(host) || host === '[::1]' || host === '0.0.0.0') {
    throw new PlanError(`--model ${model}: Deno Deploy cannot reach this machine`)
  }
  return url
}

/** What a package URL serves, read the way the server will read it. */
export async function checkPackage(
  plan: Pick<DenoDeployPlan, 'base' | 'id' | 'manifestUrl'>,
): Promise<string> {
  let bytes: Uint8Array | null
  try {
    bytes = await httpSource(plan.base).get(packageKey(plan.id, MANIFEST_FILE))
  } catch (err) {
    throw new Error(`Cannot read ${plan.manifestUrl}: ${(err as Error).message}`, { cause: err })
  }
  if (!bytes) {
    throw new Error(
      `No package at ${plan.manifestUrl} (404). Is the bucket public, and is the package there ` +
        `(\`npm run model:upload -- ${plan.id} --remote\`)?`,
    )
  }
  let manifest
  try {
    manifest = parseManifest(JSON.parse(new TextDecoder().decode(bytes)))
  } catch (err) {
    throw new Error(`${plan.manifestUrl} is not a model manifest: ${(err as Error).message}`)
  }
  const synthetic = manifest.synthetic ? ', synthetic' : ''
  return `package ${manifest.id}: ${formatBytes(manifest.totalBytes)}${synthetic}`
}

/** For printing: a command line a POSIX shell runs as is. */
export function shellLine(args: readonly string[]): string {
  return args
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ')
}

export const DEPLOY_DENO_CLI = {
  name: 'deploy:deno',
  command: 'npm run deploy:deno --',
  usage: ['npm run deploy:deno -- --org <org> --app <app> --model <url> [--create] [options]'],
  summary: [
    'Deploys the Deno entry to Deno Deploy (console.deno.com) with `deno deploy` from the',
    "project's deno package: the app runs src/adapters/deno/main.ts, its builder installs the",
    'production dependencies, and the model comes from an HTTP(S) package URL (a public R2',
    'bucket, S3, any static host), read at startup. First reads <url>/manifest.json, as the',
    'server will, then sets MODEL (and --var settings) and deploys to production.',
  ],
  options: {
    org: { type: 'string', arg: '<org>', help: 'Deno Deploy organization' },
    app: { type: 'string', arg: '<app>', help: 'app name (its URL is <app>.<org>.deno.net)' },
    model: {
      type: 'string',
      arg: '<url>',
      help: 'package URL, https://<host>/<path>/<id>',
      defaultHelp: '$MODEL',
    },
    create: {
      type: 'boolean',
      default: false,
      help: 'first deploy: create the app (deno deploy create) and add its variables',
    },
    region: { type: 'string', arg: '<region>', default: 'global', help: 'us, eu or global' },
    var: {
      type: 'string',
      arg: '<KEY=VALUE>',
      multiple: true,
      help: 'another server variable (repeatable): CONTEXT_LENGTH=2048, MAX_ACTIVE=2 …',
    },
    'skip-check': {
      type: 'boolean',
      default: false,
      help: 'do not read the manifest first (a URL only Deploy can reach)',
    },
    'dry-run': {
      type: 'boolean',
      default: false,
      help: 'print the commands; read nothing, deploy nothing',
    },
  },
  notes: [
    'Environment: DENO_DEPLOY_TOKEN (an organization token) lets deno deploy run without the',
    'browser login; MODEL is the default of --model. Without --create, the variables must',
    'exist already (deno deploy env update-value). API_KEY is a secret: set it by hand,',
    '`npx deno deploy env add API_KEY <key> --secret --org <org> --app <app>`.',
  ],
  examples: [
    'npm run deploy:deno -- --org acme --app qwen-edge --create --model https://models.example.com/qwen2-tiny-random-q8',
    'npm run deploy:deno -- --org acme --app qwen-edge --model https://pub-xxxx.r2.dev/my-tiny --dry-run',
  ],
} as const

/** The project's Deno (npm package `deno`), run through its npm launcher. */
function runDeno(args: string[]): Promise<void> {
  const require = createRequire(import.meta.url)
  const bin = join(dirname(require.resolve('deno/package.json')), 'bin.cjs')
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { stdio: 'inherit' })
    child.on('error', reject)
    child.on('exit', (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`deno ${args.slice(0, 3).join(' ')} failed (${code ?? signal})`)),
    )
  })
}

async function main(): Promise<void> {
  const { values } = parseCli(DEPLOY_DENO_CLI)
  let plan: DenoDeployPlan
  try {
    plan = planDenoDeploy({
      org: values.org ?? '',
      app: values.app ?? '',
      model: values.model ?? process.env.MODEL ?? '',
      create: values.create,
      region: values.region,
      vars: values.var ?? [],
    })
  } catch (err) {
    if (err instanceof PlanError) usageError(DEPLOY_DENO_CLI, err.message)
    throw err
  }
  const lines = plan.commands.map((c) => `npx deno ${shellLine(c)}`)
  if (values['dry-run']) {
    if (!values['skip-check']) console.log(`# first reads ${plan.manifestUrl}`)
    console.log(lines.join('\n'))
    return
  }
  if (!values['skip-check']) console.error(await checkPackage(plan))
  if (!process.env.DENO_DEPLOY_TOKEN && !process.stdin.isTTY) {
    console.error('DENO_DEPLOY_TOKEN is not set: deno deploy will ask for a browser login')
  }
  for (const [i, args] of plan.commands.entries()) {
    console.error(`$ ${lines[i]}`)
    await runDeno(args)
  }
}

if (isMain(import.meta.url)) runMain(main)
