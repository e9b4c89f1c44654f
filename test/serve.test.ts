// The watcher's store queries through one long-lived `nix-store --serve` (lib/serve.ts), against
// the real server of the Nix on PATH (.ci/run: Debian's 2.8, then 2.24.15).
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { NixCopySink, StoreWatcher } from '../lib/index.js'
import { ServeConnection } from '../lib/serve.js'
import { chainPaths, deleteFromStore, inFileCache, makeKeys, nixArgs, nixEnv, runCmd, tmpDir, uid, writeFlake } from './helpers.js'

// lib's nix calls read this process's environment, as the library's users' do.
let saved: NodeJS.ProcessEnv
beforeEach(() => {
  saved = { ...process.env }
})
afterEach(() => {
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k]
  Object.assign(process.env, saved)
})

describe('nix-store --serve', () => {
  it('answers valid paths with references and signatures, leaves invalid ones out, and sees a path valid again on the same connection', async () => {
    const dir = tmpDir('greedy-serve-')
    const env = nixEnv(dir)
    Object.assign(process.env, env)
    const flake = path.join(dir, 'flake')
    writeFlake(flake, { prefix: `serve-${uid()}`, chain: 2 })
    const [l1, l2] = chainPaths(env, flake, 2) as [string, string]
    const build = () => runCmd('nix', nixArgs('build', '--no-link', `${flake}#l2`), { env })
    expect((await build()).code).toBe(0)
    const [secret] = makeKeys(env, `serve-${uid()}`)
    fs.writeFileSync(path.join(dir, 'key'), secret)
    expect((await runCmd('nix', nixArgs('store', 'sign', '--key-file', path.join(dir, 'key'), l2), { env })).code).toBe(0)

    const serve = new ServeConnection()
    try {
      const bogus = `/nix/store/${'a'.repeat(32)}-greedy-not-there`
      const infos = await serve.pathInfos([l2, l1, bogus])
      expect(infos.map((i) => i.path).sort()).toEqual([l1, l2].sort())
      const two = infos.find((i) => i.path === l2)!
      expect(two.references).toContain(l1)
      expect(two.signatures).toEqual([expect.stringMatching(new RegExp(`^${secret.split(':')[0]}:`))])
      expect(two.narSize).toBeGreaterThan(0)

      // Gone, then built again: on one connection Nix would still say "valid" for 30 days, then "not
      // valid" for an hour (narinfo-cache-positive-ttl / -negative-ttl), had we not set both to 0.
      deleteFromStore(env, [l2])
      expect(await serve.pathInfos([l2])).toEqual([])
      expect((await build()).code).toBe(0)
      expect((await serve.pathInfos([l2])).map((i) => i.path)).toEqual([l2])
    } finally {
      serve.close()
    }
  })

  it('a path built here and signed at build time with the cache key (secret-key-files) is still pushed; only it costs a nix path-info', async () => {
    const dir = tmpDir('greedy-serve-signed-')
    const [secret] = makeKeys(nixEnv(path.join(dir, 'keys')), `serve-cache-${uid()}`)
    const keyName = secret.split(':')[0]!
    const keyFile = path.join(dir, 'cache-key')
    fs.writeFileSync(keyFile, secret, { mode: 0o600 })
    const env = nixEnv(dir)
    fs.appendFileSync(path.join(env.NIX_CONF_DIR!, 'nix.conf'), `secret-key-files = ${keyFile}\n`)
    Object.assign(process.env, env)
    const flake = path.join(dir, 'flake')
    writeFlake(flake, { prefix: `serve-signed-${uid()}`, chain: 2 })
    const links = chainPaths(env, flake, 2)

    const debug: string[] = []
    const sink = new NixCopySink(`file://${dir}/cache`, { onSettled: (s) => watcher.settle(s), onWarn: () => {}, runTimeoutMs: 120_000 })
    const watcher: StoreWatcher = new StoreWatcher({ storeDir: '/nix/store', sink, skipKeyNames: [keyName], debug: (m) => debug.push(m) })
    await watcher.start()
    try {
      expect((await runCmd('nix', nixArgs('build', '--no-link', `${flake}#l2`), { env })).code).toBe(0)
      await watcher.drain()
    } finally {
      watcher.close()
    }
    expect(watcher.counts).toMatchObject({ pushed: 2, skipped: 0, failed: 0 })
    expect(links.map((p) => inFileCache(path.join(dir, 'cache'), p))).toEqual([true, true])
    // Validity came from the serve connection; nix path-info ran only for the paths signed with a skipped key.
    expect(debug.filter((m) => m === 'nix-store --serve started')).toHaveLength(1)
    const oneOff = debug.filter((m) => m.startsWith('nix path-info:'))
    expect(oneOff.length).toBeGreaterThan(0)
    expect(oneOff.every((m) => m.endsWith('signed by a skipped key'))).toBe(true)
  })
})
