/**
 * Deno entry: `npm run start:deno`. Serves the model named by MODEL (default: the bundled
 * synthetic model in model-shards/) on HOST:PORT (default 127.0.0.1:8787). Same variables as
 * the Node entry; needs --allow-read (model and node_modules), --allow-net, --allow-env.
 *
 * Packages come from the project's node_modules (deno.json: `"nodeModulesDir": "manual"`), so
 * Deno needs no registry access of its own: run `npm install` first.
 *
 * Deno Deploy (`npm run deploy:deno`) starts this file itself, with --allow-all and no other
 * flags, so whatever else Deno must know lives in deno.json: `"unstable": ["no-legacy-abort"]`,
 * without which Deno.serve aborts request.signal after every successful response too and a
 * client that left could not be told from a reply that finished. Deploy sets DENO_DEPLOY=true;
 * without PORT and HOST the server then takes Deno.serve's own defaults, as Deploy's examples
 * do.
 */
import { createApp, readConfigFromEnv } from '../../app.ts'
import { resolveModelLocation } from './model-location.ts'
import {
  createEngineHost,
  engineOptionsFromEnv,
  installMacrotask,
  installSha256,
} from '../../engine/index.ts'
// Deno implements node:crypto natively: the Node adapter's SHA-256 serves here too
import { nodeSha256 } from '../node/sha256.ts'
import { openLoopbackTurn } from './io-turn.ts'

// The few Deno APIs used here, so the project type-checks without Deno's types.
interface DenoServer {
  shutdown(): Promise<void>
}
declare const Deno: {
  env: { toObject(): Record<string, string> }
  serve(
    options: {
      port: number
      hostname: string
      onListen?: (addr: { hostname?: string; port?: number; path?: string }) => void
    },
    handler: (request: Request) => Response | Promise<Response>,
  ): DenoServer
  addSignalListener(signal: 'SIGINT' | 'SIGTERM', handler: () => void): void
  exit(code?: number): never
  memoryUsage(): { rss: number; heapUsed: number }
}

// shards verified with node:crypto's native SHA-256 (5x the loader's own)
installSha256(nodeSha256)
// the engine's turns of the event loop: bytes over loopback TCP, 0.2-0.4 ms where setTimeout(0)
// takes 2.2 (io-turn.ts); the timer where loopback TCP is not allowed
const loopback = await openLoopbackTurn()
if (loopback) installMacrotask(loopback.schedule)
console.log(
  loopback
    ? 'event-loop turns: loopback TCP'
    : 'event-loop turns: setTimeout(0) (loopback TCP on 127.0.0.1 not allowed here)',
)

const env = Deno.env.toObject()
const location = await resolveModelLocation(env.MODEL || undefined, env.MODEL_STORE || undefined)
const getEngine = createEngineHost(location.load, engineOptionsFromEnv(env))
const app = createApp({
  getEngine: () => getEngine(),
  loadAtStart: true,
  config: readConfigFromEnv(env),
  memory: () => {
    const m = Deno.memoryUsage()
    return { rssBytes: m.rss, heapUsedBytes: m.heapUsed }
  },
})

const onDeploy = env.DENO_DEPLOY === 'true'
const port = Number(env.PORT ?? (onDeploy ? 8000 : 8787))
const hostname = env.HOST || (onDeploy ? '0.0.0.0' : '127.0.0.1')
const server = Deno.serve(
  {
    port,
    hostname,
    // the address Deno actually bound: DENO_SERVE_ADDRESS overrides the one asked for
    onListen: (addr) =>
      console.log(
        `qwen-edge listening on ${addr.path ?? `http://${addr.hostname}:${addr.port}`} ` +
          `(model: ${location.describe})`,
      ),
  },
  // Only the request: Hono would take Deno's second argument (connection info) for bindings.
  (request) => app.fetch(request),
)

// The load started with the app (loadAtStart), so the first request does not pay for it; this
// logs its outcome. A failure is retried by the next request (/health says 503 until then).
getEngine().then(
  (engine) => {
    const synthetic = engine.info.synthetic ? ' (synthetic, random weights: output is noise)' : ''
    console.log(`model ${engine.info.id} ready in ${engine.info.loadMs} ms${synthetic}`)
  },
  (err: unknown) => console.error('model failed to load:', err),
)

const shutdown = () =>
  server.shutdown().then(() => {
    loopback?.close()
    Deno.exit(0)
  })
Deno.addSignalListener('SIGINT', shutdown)
Deno.addSignalListener('SIGTERM', shutdown)
