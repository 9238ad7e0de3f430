/**
 * scripts/worker.ts (`npm run dev:worker`, `npm run deploy`): which package goes where, and
 * what wrangler is called with. Pure parts only: deploying needs a Cloudflare account.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { planWorkerCommand, readTomlModel } from '../../../scripts/worker.ts'
import { REPO_ROOT } from '../../helpers/models.ts'

describe('scripts/worker.ts', () => {
  it("reads the default package from wrangler.toml's [vars]", () => {
    expect(readTomlModel(readFileSync(join(REPO_ROOT, 'wrangler.toml'), 'utf8'))).toBe(
      'qwen2-tiny-random-q8',
    )
    expect(readTomlModel('[vars]\nFOO = "1"\n[env.x.vars]\nMODEL = "other"\n')).toBeUndefined()
    expect(readTomlModel('MODEL = "top-level"\n[vars]\nMODEL = "in-vars"\n')).toBe('in-vars')
  })

  it('dev: uploads into the --persist-to folder wrangler dev will read, and passes every option on', () => {
    expect(planWorkerCommand('dev', [], {}, 'tiny')).toEqual({
      mode: 'dev',
      model: 'tiny',
      persistTo: '.wrangler/state',
      wranglerArgs: ['dev'],
    })
    const args = ['--port', '8788', '--persist-to', '/tmp/r2', '--var', 'API_KEY:k', 'MODEL:big']
    expect(planWorkerCommand('dev', args, { MODEL: 'ignored' }, 'tiny')).toEqual({
      mode: 'dev',
      model: 'big',
      persistTo: '/tmp/r2',
      wranglerArgs: ['dev', ...args],
    })
    expect(
      planWorkerCommand('dev', ['--persist-to=/x', '--var=MODEL:m'], {}, 'tiny'),
    ).toMatchObject({ model: 'm', persistTo: '/x' })
  })

  it('makes the Worker read the uploaded package when MODEL overrides wrangler.toml', () => {
    expect(planWorkerCommand('deploy', ['--minify'], { MODEL: 'real-q8' }, 'tiny')).toEqual({
      mode: 'deploy',
      model: 'real-q8',
      persistTo: '.wrangler/state',
      wranglerArgs: ['deploy', '--minify', '--var', 'MODEL:real-q8'],
    })
    expect(planWorkerCommand('deploy', [], { MODEL: 'tiny' }, 'tiny').wranglerArgs).toEqual([
      'deploy',
    ])
  })
})
