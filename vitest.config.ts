import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'node',
          include: ['test/**/*.test.ts', 'src/**/*.test.ts'],
          // test/workers/*.test.ts run inside workerd: the `workers` project below
          exclude: ['**/node_modules/**', 'test/workers/*.test.ts'],
          globalSetup: ['test/global-setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 300_000,
          pool: 'forks',
        },
      },
      'vitest.workers.config.ts',
    ],
  },
})
