/**
 * `npm run deploy:deno` cannot deploy from here (no Deno Deploy account, no network): what is
 * tested is everything before the first `deno deploy` command. The options are checked, the
 * commands are the ones Deno's CLI reference documents, `--dry-run` prints them without reading
 * anything, and a real run reads the package's manifest over HTTP (a local file server here)
 * before it deploys anything.
 */
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  ENTRYPOINT,
  INSTALL_COMMAND,
  checkPackage,
  planDenoDeploy,
  shellLine,
  type DenoDeployOptions,
} from '../../scripts/deploy-deno.ts'
import { startFileServer, type FileServer } from '../helpers/file-server.ts'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const ID = 'qwen2-tiny-random-q8'
const URL_ = `https://models.example.com/packages/${ID}`
const base: DenoDeployOptions = {
  org: 'acme',
  app: 'qwen-edge',
  model: URL_,
  create: false,
  region: 'global',
  vars: [],
}
const target = ['--org', 'acme', '--app', 'qwen-edge']

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const tsx = join(ROOT, 'node_modules', '.bin', 'tsx')
    const env = { ...process.env, MODEL: '', DENO_DEPLOY_TOKEN: '' }
    execFile(
      tsx,
      ['scripts/deploy-deno.ts', ...args],
      { cwd: ROOT, env, timeout: 30_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number(err.code) : 0, stdout, stderr }),
    )
  })
}

describe('planDenoDeploy', () => {
  it('creates the app, adds MODEL and the other variables, then deploys to production', () => {
    const plan = planDenoDeploy({
      ...base,
      create: true,
      region: 'eu',
      vars: ['CONTEXT_LENGTH=2048'],
    })
    expect(plan.manifestUrl).toBe(`${URL_}/manifest.json`)
    expect(plan.commands).toEqual([
      [
        'deploy',
        'create',
        ...target,
        ...['--source', 'local', '--runtime-mode', 'dynamic'],
        ...['--entrypoint', ENTRYPOINT, '--install-command', INSTALL_COMMAND],
        ...['--build-timeout', '5', '--build-memory-limit', '3072', '--region', 'eu'],
        '--no-wait',
      ],
      ['deploy', 'env', 'add', 'MODEL', URL_, ...target],
      ['deploy', 'env', 'add', 'CONTEXT_LENGTH', '2048', ...target],
      ['deploy', ...target, '--prod'],
    ])
  })

  it('later deploys update the variables instead of adding them', () => {
    const plan = planDenoDeploy({ ...base, model: `${URL_}/` })
    expect(plan.commands).toEqual([
      ['deploy', 'env', 'update-value', 'MODEL', URL_, ...target],
      ['deploy', ...target, '--prod'],
    ])
  })

  it.each([
    [{ org: '' }, 'needs --org'],
    [{ app: '' }, 'needs --app'],
    [{ model: '' }, 'npm run model:upload -- <id> --remote'],
    [{ model: ID }, `not an http(s) URL. On Deno Deploy the model is read over HTTP(S)`],
    [{ model: `http://127.0.0.1:8080/${ID}` }, 'Deno Deploy cannot reach this machine'],
    [{ model: 'http://localhost/x/' + ID }, 'Deno Deploy cannot reach this machine'],
    [{ model: 'https://models.example.com/' }, 'the last path segment must be the package id'],
    [{ region: 'asia' }, '--region asia: one of us, eu, global'],
    [{ vars: ['CONTEXT_LENGTH'] }, 'expected KEY=VALUE'],
    [{ vars: ['API_KEY=sk-1'] }, 'env add API_KEY <key> --secret'],
    [{ vars: ['PORT=80'] }, 'Deno Deploy decides where the server listens'],
    [{ vars: [`MODEL=${URL_}`] }, 'give the package URL as --model'],
  ] as const)('refuses %o', (change, message) => {
    expect(() => planDenoDeploy({ ...base, ...change })).toThrow(message)
  })

  it('quotes what a shell would split', () => {
    expect(shellLine(['env', 'add', 'X', "it's a b", 'https://h/p?q=1'])).toBe(
      `env add X 'it'\\''s a b' 'https://h/p?q=1'`,
    )
  })
})

describe('checkPackage', () => {
  let server: FileServer
  beforeAll(async () => {
    server = await startFileServer(join(ROOT, 'model-shards'), {
      // /broken/manifest.json is a JSON file that is not a manifest
      route: (p) =>
        p === '/broken/manifest.json' ? `${ID}/tokenizer_config.json` : p.replace(/^\/+/, ''),
    })
  })
  afterAll(() => server?.close())

  // the file server is on 127.0.0.1, which planDenoDeploy refuses: the plan's fields by hand
  function planFor(url: string) {
    const id = url.split('/').pop()!
    return { base: url.slice(0, -id.length), id, manifestUrl: `${url}/manifest.json` }
  }

  it('reads the manifest over HTTP as the server will', async () => {
    expect(await checkPackage(planFor(`${server.url}/${ID}`))).toMatch(
      new RegExp(`^package ${ID}: [\\d.]+ MiB, synthetic$`),
    )
    expect(server.requests.at(-1)).toMatchObject({ path: `/${ID}/manifest.json`, status: 200 })
  })

  it('says what is wrong with a URL that does not serve a package', async () => {
    await expect(checkPackage(planFor(`${server.url}/absent`))).rejects.toThrow(
      `No package at ${server.url}/absent/manifest.json (404). Is the bucket public`,
    )
    await expect(checkPackage(planFor(`${server.url}/broken`))).rejects.toThrow(
      `${server.url}/broken/manifest.json is not a model manifest: `,
    )
  })
})

describe('npm run deploy:deno', () => {
  const args = ['--org', 'acme', '--app', 'qwen-edge', '--model']

  it('--dry-run prints the commands and reads nothing (the host does not exist)', async () => {
    const model = `https://models.invalid/p/${ID}`
    const { code, stdout, stderr } = await run([...args, model, '--create', '--dry-run'])
    expect([code, stderr]).toEqual([0, ''])
    expect(stdout.trim().split('\n')).toEqual([
      `# first reads ${model}/manifest.json`,
      `npx deno deploy create --org acme --app qwen-edge --source local --runtime-mode dynamic --entrypoint ${ENTRYPOINT} --install-command '${INSTALL_COMMAND}' --build-timeout 5 --build-memory-limit 3072 --region global --no-wait`,
      `npx deno deploy env add MODEL ${model} --org acme --app qwen-edge`,
      `npx deno deploy --org acme --app qwen-edge --prod`,
    ])
  })

  it('reads the package before any deploy command, and stops when it cannot', async () => {
    const { code, stderr } = await run([...args, `https://models.invalid/p/${ID}`])
    expect(code).toBe(1)
    expect(stderr).toContain(`Cannot read https://models.invalid/p/${ID}/manifest.json`)
    expect(stderr).not.toContain('$ npx deno')
  })

  it('a command line mistake exits 2 with the usage', async () => {
    const { code, stderr } = await run([...args, ID, '--dry-run'])
    expect(code).toBe(2)
    expect(stderr).toContain(`deploy:deno: --model ${ID}: not an http(s) URL`)
    expect(stderr).toContain("Run 'npm run deploy:deno -- --help' for the options.")
  })
})
