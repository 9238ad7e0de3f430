/**
 * The `workers` vitest project: tests that run inside workerd with the real Worker
 * (src/adapters/workers/index.ts, bindings and vars from wrangler.toml) and miniflare's local
 * R2. Part of `npm test` through vitest.config.ts; alone: `npx vitest run --project workers`.
 * Each test file gets its own runtime, so its own isolate and a Worker that has loaded nothing.
 */
import { cloudflareTest } from '@cloudflare/vitest-pool-workers'
import { fileURLToPath } from 'node:url'
import { defineProject } from 'vitest/config'
import { serveHostFile } from './test/workers/node/host-files.ts'

export default defineProject({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: './wrangler.toml' },
      remoteBindings: false, // never reach Cloudflare from the tests
      miniflare: {
        serviceBindings: { HOST_FILES: serveHostFile },
      },
    }),
  ],
  resolve: {
    alias: [
      {
        // see the file for why the tests swap how the wasm arrives
        find: /^onnxruntime-web\/ort-wasm-simd-threaded\.wasm$/,
        replacement: fileURLToPath(new URL('test/workers/ort-wasm-module.ts', import.meta.url)),
      },
    ],
  },
  test: {
    name: 'workers',
    include: ['test/workers/*.test.ts'],
    globalSetup: ['test/workers/node/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
})
