/**
 * Node entry: `npm start`. Serves the model named by MODEL (default: the bundled synthetic
 * model in model-shards/) on HOST:PORT (default 127.0.0.1:8787).
 */
import { serve } from '@hono/node-server'
import { createApp, readConfigFromEnv } from '../../app.ts'
import { resolveModelLocation } from './model-location.ts'
import {
  createEngineHost,
  engineOptionsFromEnv,
  installMacrotask,
  installSha256,
} from '../../engine/index.ts'
import { enableRelaxedSimd } from './relaxed-simd.ts'
import { nodeSha256 } from './sha256.ts'

// before any WebAssembly is compiled (relaxed-simd.ts)
enableRelaxedSimd(process.env)
// the engine's turns to the event loop without setTimeout's 1 ms clamp (engine/macrotask.ts)
installMacrotask(setImmediate)
// shards verified with node:crypto's native SHA-256 (5x the loader's own)
installSha256(nodeSha256)

const env = process.env
const location = resolveModelLocation(env.MODEL || undefined, env.MODEL_STORE || undefined)
const getEngine = createEngineHost(location.load, engineOptionsFromEnv(env))
const app = createApp({
  getEngine: () => getEngine(),
  loadAtStart: true,
  config: readConfigFromEnv(env),
  memory: () => {
    const m = process.memoryUsage()
    return { rssBytes: m.rss, heapUsedBytes: m.heapUsed }
  },
})

const port = Number(env.PORT ?? 8787)
const hostname = env.HOST ?? '127.0.0.1'
const server = serve({ fetch: app.fetch, port, hostname }, (info) => {
  console.log(
    `qwen-edge listening on http://${hostname}:${info.port} (model: ${location.describe})`,
  )
})

// The load started with the app (loadAtStart), so the first request does not pay for it; this
// logs its outcome. A failure is retried by the next request (/health says 503 until then).
getEngine().then(
  (engine) => {
    const synthetic = engine.info.synthetic ? ' (synthetic, random weights: output is noise)' : ''
    console.log(`model ${engine.info.id} ready in ${engine.info.loadMs} ms${synthetic}`)
  },
  (err: unknown) => console.error('model failed to load:', err),
)

const shutdown = () => server.close(() => process.exit(0))
process.on('SIGINT', shutdown)
process.on('SIGTERM', shutdown)
