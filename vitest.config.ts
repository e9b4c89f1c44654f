import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The e2e tests build the bundles once, then run them as users do.
    globalSetup: ['test/global-setup.ts'],
    // Every watcher sees the whole /nix/store: e2e files run one at a time.
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 180_000,
  },
})
