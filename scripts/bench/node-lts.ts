/**
 * A current-LTS Node for the `*-node24` bench parts. The project runs on Node 20, whose V8
 * runs relaxed SIMD only behind a flag and lowers its 8-bit dot product without AVX-VNNI; a
 * user on a supported Node (22, 24) gets both by default. The binary comes from the npm
 * registry (the `node-<os>-<arch>` package of that release holds it), unpacked once into
 * `.cache/bench/` (outside git) through a temporary folder, so an interrupted fetch never
 * leaves half a binary behind.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'

/** The release the `*-node24` parts run: pinned, so that two runs compare the same V8. */
export const NODE_LTS_VERSION = '24.22.3'

const DIR = join('.cache', 'bench', `node-v${NODE_LTS_VERSION}`)

/** The npm package holding this platform's node binary, as the registry names them. */
function packageName(): string {
  const os = process.platform === 'win32' ? 'win' : process.platform
  return `node-${os}-${process.arch}@${NODE_LTS_VERSION}`
}

/** Path of the binary, fetched first when missing (`npm pack`, then `tar`). */
export function ensureNodeLts(log: (line: string) => void): string {
  const bin = join(DIR, 'bin', process.platform === 'win32' ? 'node.exe' : 'node')
  if (existsSync(bin)) return bin
  mkdirSync(dirname(DIR), { recursive: true })
  const tmp = mkdtempSync(`${DIR}.partial-`)
  try {
    log(`fetching ${packageName()} from the npm registry (once; cached outside git)…`)
    execFileSync('npm', ['pack', packageName(), '--pack-destination', tmp, '--silent'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    })
    const tgz = readdirSync(tmp).find((f) => f.endsWith('.tgz'))
    if (!tgz) throw new Error(`npm pack ${packageName()} wrote no tarball`)
    execFileSync('tar', ['xzf', tgz], { cwd: tmp })
    rmSync(DIR, { recursive: true, force: true })
    renameSync(join(tmp, 'package'), DIR)
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
  if (!existsSync(bin)) throw new Error(`${packageName()} holds no ${bin}`)
  return bin
}
