/**
 * The layout's rules, checked on the import graph (every `import`/`export … from`, type-only
 * ones included):
 * - no import cycles in src/; nothing in src/ imports scripts/;
 * - src/core/ imports nothing of the project; src/format/ only core and itself;
 * - only src/adapters/node/ touches node:* (the rest runs on workerd and Deno); the Deno adapter
 *   borrows its SHA-256 (node:crypto, which Deno implements natively) and nothing else of it;
 * - the adapters reach the engine through src/engine/index.ts, the HTTP layer through the
 *   engine's contract (types.ts, limits.ts) or that index; nothing imports the adapters but themselves;
 * - the model toolchain (scripts/lib and the model:* scripts) reads the runtime only through
 *   the package format, src/format/index.ts, and the tokenizer (src/engine/text/tokenizer.ts):
 *   model:prepare's AWQ calibrates on chat prompts exactly as the server tokenizes them.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { ROOT } from '../runtimes/runtimes.ts'

interface Edge {
  from: string
  to: string
}

function walk(dir: string, out: string[] = []): string[] {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry)
    if (statSync(path).isDirectory()) walk(path, out)
    else if (path.endsWith('.ts')) out.push(path)
  }
  return out
}

const SPEC = /^\s*(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|^\s*import\s+['"]([^'"]+)['"]/gm

/** Imports of each file, as repository-relative paths (or bare specifiers like `node:fs`). */
function edgesOf(files: string[]): Edge[] {
  const edges: Edge[] = []
  for (const file of files) {
    for (const m of readFileSync(file, 'utf8').matchAll(SPEC)) {
      const spec = m[1] ?? m[2]
      const to = spec.startsWith('.') ? relative(ROOT, resolve(dirname(file), spec)) : spec
      edges.push({ from: relative(ROOT, file), to })
    }
  }
  return edges
}

const src = edgesOf(walk(join(ROOT, 'src')))
const TOOLCHAIN = ['make-model', 'prepare-model', 'fetch-model', 'upload-model', 'build-kernels']
const toolchain = edgesOf([
  ...walk(join(ROOT, 'scripts', 'lib')),
  ...TOOLCHAIN.map((name) => join(ROOT, 'scripts', `${name}.ts`)),
])

const under = (dir: string) => (path: string) => path.startsWith(dir)
const project = (e: Edge) => e.to.startsWith('src/') || e.to.startsWith('scripts/')
const bad = (edges: Edge[]) => edges.map((e) => `${e.from} → ${e.to}`)

/** Every cycle found by a depth-first walk, as a list of files. */
function cycles(edges: Edge[]): string[][] {
  const next = new Map<string, string[]>()
  for (const e of edges) next.set(e.from, [...(next.get(e.from) ?? []), e.to])
  const state = new Map<string, 'open' | 'done'>()
  const stack: string[] = []
  const found: string[][] = []
  const visit = (n: string) => {
    state.set(n, 'open')
    stack.push(n)
    for (const d of next.get(n) ?? []) {
      if (state.get(d) === 'open') found.push([...stack.slice(stack.indexOf(d)), d])
      else if (!state.has(d) && next.has(d)) visit(d)
    }
    stack.pop()
    state.set(n, 'done')
  }
  for (const n of next.keys()) if (!state.has(n)) visit(n)
  return found
}

describe('the layout', () => {
  it('has an import graph to check (precondition)', () => {
    expect(src.length).toBeGreaterThan(150)
    expect(toolchain.some((e) => e.to === 'src/format/index.ts')).toBe(true)
  })

  it('has no import cycles in src/', () => {
    expect(cycles(src.filter(project)).map((c) => c.join(' → '))).toEqual([])
  })

  it('keeps src/ free of the toolchain', () => {
    expect(bad(src.filter((e) => under('scripts/')(e.to)))).toEqual([])
  })

  it('keeps core pure and the format on core alone', () => {
    const core = src.filter((e) => under('src/core/')(e.from) && project(e))
    expect(bad(core.filter((e) => !under('src/core/')(e.to)))).toEqual([])
    const format = src.filter((e) => under('src/format/')(e.from) && project(e))
    const outside = format.filter((e) => !under('src/format/')(e.to) && !under('src/core/')(e.to))
    expect(bad(outside)).toEqual([])
  })

  it('lets only the Node adapter use node:*, and the Deno adapter only its SHA-256 of it', () => {
    const node = src.filter((e) => e.to.startsWith('node:'))
    expect(node.length).toBeGreaterThan(0)
    expect(bad(node.filter((e) => !under('src/adapters/node/')(e.from)))).toEqual([])
    const borrowed = src.filter(
      (e) => under('src/adapters/node/')(e.to) && !under('src/adapters/node/')(e.from),
    )
    expect(bad(borrowed.filter((e) => e.to !== 'src/adapters/node/sha256.ts'))).toEqual([])
    expect(borrowed.map((e) => e.from)).toEqual(['src/adapters/deno/main.ts'])
  })

  it('has the adapters use the engine through its index, the routes through its contract', () => {
    const engine = (e: Edge) => under('src/engine/')(e.to) && !e.to.endsWith('.wasm')
    const adapters = src.filter((e) => under('src/adapters/')(e.from) && engine(e))
    expect(bad(adapters.filter((e) => e.to !== 'src/engine/index.ts'))).toEqual([])
    const http = src.filter(
      (e) => (under('src/http/')(e.from) || e.from === 'src/app.ts') && engine(e),
    )
    const contract = ['src/engine/types.ts', 'src/engine/limits.ts', 'src/engine/index.ts']
    expect(bad(http.filter((e) => !contract.includes(e.to)))).toEqual([])
    const intoAdapters = src.filter(
      (e) => under('src/adapters/')(e.to) && !under('src/adapters/')(e.from),
    )
    expect(bad(intoAdapters)).toEqual([])
  })

  it('has the model toolchain read the runtime only through src/format/index.ts and the tokenizer', () => {
    const allowed = new Set(['src/format/index.ts', 'src/engine/text/tokenizer.ts'])
    const runtime = toolchain.filter((e) => under('src/')(e.to))
    expect(bad(runtime.filter((e) => !allowed.has(e.to)))).toEqual([])
    // precondition: the toolchain does read the runtime (the walk found its imports)
    expect(runtime.some((e) => e.to === 'src/format/index.ts')).toBe(true)
  })
})
