/**
 * The parts of workerd's and vitest-pool-workers' modules that test/workers uses, typed
 * against the DOM lib of the root tsconfig, so `tsc -p .` checks these tests without
 * @cloudflare/workers-types (whose globals clash with the DOM lib).
 */
declare module 'cloudflare:workers' {
  /** Bindings of the test Worker: wrangler.toml's, plus those of vitest.workers.config.ts. */
  export const env: WorkersTestEnv
  /** The main Worker's exports (src/adapters/workers/index.ts), called as a service. */
  export const exports: {
    default: { fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> }
  }
}

declare module 'cloudflare:test' {
  export function createExecutionContext(): WorkersExecutionContext
  export function waitOnExecutionContext(ctx: WorkersExecutionContext): Promise<void>
}

interface WorkersExecutionContext {
  waitUntil(promise: Promise<unknown>): void
  passThroughOnException(): void
  /** Hono's ExecutionContext type requires it (wrangler 4). */
  props: unknown
}

interface WorkersTestEnv {
  MODEL_BUCKET: TestR2Bucket
  MODEL?: string
  [variable: string]: unknown
  /** A staged package's stages: its host objects (with LOADER) and stage objects (wrangler.toml). */
  STAGE_HOST: import('../../src/adapters/workers/stage-object.ts').StageNamespace
  STAGES: import('../../src/adapters/workers/stage-object.ts').StageNamespace
  LOADER?: import('../../src/adapters/workers/stage-host.ts').WorkerLoader
  /** Node-side service binding (test/workers/node/host-files.ts). */
  HOST_FILES: { fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> }
  /** vitest-pool-workers' own unsafe-eval binding (internal to 0.15.1). */
  __VITEST_POOL_WORKERS_UNSAFE_EVAL?: { newWasmModule?(bytes: Uint8Array): WebAssembly.Module }
}

interface TestR2Bucket {
  get(key: string): Promise<TestR2Object | null>
  put(key: string, value: ArrayBuffer | Uint8Array | string): Promise<unknown>
  delete(keys: string | string[]): Promise<void>
}

interface TestR2Object {
  readonly size: number
  readonly body: ReadableStream<Uint8Array>
  arrayBuffer(): Promise<ArrayBuffer>
}
