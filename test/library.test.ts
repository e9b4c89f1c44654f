// The library as users import it: the package's own name, resolved through package.json exports
// to dist/index.js. The code below is the README's library example.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { chainPaths, inFileCache, nixEnv, tmpDir, uid, writeFlake } from './helpers.js'

describe("import { ... } from 'greedy-nix'", () => {
  it('watches the store and pushes what a build makes, with types', async () => {
    const dir = tmpDir('greedy-lib-')
    const env = nixEnv(dir)
    writeFlake(path.join(dir, 'flake'), { prefix: `lib-${uid()}`, chain: 2 })
    const links = chainPaths(env, path.join(dir, 'flake'), 2)
    const saved = { ...process.env }
    Object.assign(process.env, env) // the library's nix calls read this process's environment
    try {
      const { build, NixCopySink, StoreWatcher } = await import('greedy-nix')
      const cache = `file://${dir}/cache?compression=zstd`
      const flakeDir = path.join(dir, 'flake')

      // --- README example ---
      const sink = new NixCopySink(cache, {
        onSettled: (s) => watcher.settle(s),
        onWarn: (msg) => console.warn(msg),
        runTimeoutMs: 600_000,
      })
      const watcher = new StoreWatcher({ storeDir: '/nix/store', sink, skipKeyNames: ['cache.nixos.org-1'] })
      await watcher.start()
      const result = await build({ args: [flakeDir, '--no-link'], onLine: (line) => console.error(line) })
      await watcher.drain() // every path seen so far is pushed or failed for good
      watcher.close()
      // --- end ---

      expect(result).toMatchObject({ exitCode: 0, built: 2, substituted: 0, failed: 0 })
      expect(watcher.counts).toMatchObject({ pushed: 2, failed: 0, pending: 0 })
      expect(links.map((p) => inFileCache(`${dir}/cache`, p))).toEqual([true, true])
      expect(fs.existsSync(path.join(dir, 'cache', 'nix-cache-info'))).toBe(true)
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k]
      Object.assign(process.env, saved)
    }
  })
})
