// The stage Worker's code (stage-worker.ts and what it imports, bundled), written by
// `npm run build:stage-worker` into stage-worker.js next to this file (not committed: it is
// built from the sources by the commands that need it: dev:worker, deploy and the tests).
export declare const STAGE_WORKER: {
  /** SHA-256 of everything below (hex, shortened): new code, new loader ids. */
  hash: string
  compatibilityDate: string
  mainModule: string
  /** JavaScript modules by name. */
  modules: Record<string, string>
  /** The kernels' wasm by module name, base64. */
  wasm: Record<string, string>
}
