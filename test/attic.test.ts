// attic as it really is, through the double written from attic's source (test/fixtures/attic and
// test/fixtures/attic-server.mjs): a server under a path, attic's cache-name rule, its error names,
// tokens that may pull but not push, api_endpoint, the upstream filter, and where the client comes
// from when the project has none. Each case broke the first release against a real attic.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { atticEnv, writeClientConfig } from '../lib/attic.js'
import { AtticSink, type Settled } from '../lib/pusher.js'
import type { Session } from '../lib/session.js'
import type { Summary } from '../lib/summary.js'
import { atticSetup } from './attic-setup.js'
import {
  ATTIC_DOUBLE, chainPaths, deleteFromStore, greedy, inFileCache, makeKeys, nixArgs, nixEnv, nixSync, readJsonFile, tmpDir, uid, writeFlake,
  writeShFlake,
} from './helpers.js'
import { startAtticServer, type Nginx } from './nginx.js'

const servers: Nginx[] = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()))
})

/** Paths really built (no cache involved), for the sink tests. */
function buildChain(env: NodeJS.ProcessEnv, dir: string, n: number): string[] {
  const prefix = `sink-${uid()}`
  writeFlake(dir, { prefix, chain: n })
  const links = chainPaths(env, dir, n)
  nixSync(env, ['build', '--no-link', ...links.map((_, i) => `${dir}#l${i + 1}`)])
  return links
}

/** An AtticSink on the double, configured the way bootstrap configures it. */
async function sinkFor(dir: string, server: { url: string }, token: string, env: NodeJS.ProcessEnv) {
  const home = path.join(dir, 'attic-xdg')
  const tokenFile = path.join(dir, 'token')
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(tokenFile, token, { mode: 0o600 })
  await writeClientConfig(home, server.url, tokenFile)
  const settled: Settled[] = []
  const warnings: string[] = []
  const sink = new AtticSink(ATTIC_DOUBLE, 'main', atticEnv(home, env), {
    onSettled: (s) => settled.push(s),
    onWarn: (m) => warnings.push(m),
    runTimeoutMs: 60_000,
  })
  return { sink, settled, warnings }
}

describe('attic as it really is', () => {
  it('a server under a path (ATTIC_SERVER without its trailing slash) and a cache named with attic\'s "+"', async () => {
    // Behind a proxy at /attic/, a real server needs its api-endpoint set, or it names http://host/ (attic server/src/lib.rs).
    const t = await atticSetup(servers, 'atticpath', { clientOnPath: true, cache: 'team+ci', basePath: '/attic/', apiEndpoint: '127.0.0.1' })
    const a = t.job('a')
    const server = `http://127.0.0.1:${t.server.port}/attic`
    const env = { ...a.env, ATTIC_SERVER: server, ATTIC_CACHE: 'team+ci' }
    writeFlake(a.project, { prefix: t.prefix, chain: 3 })
    const links = chainPaths(env, a.project, 3)
    const boot = await greedy(env, a.project, 'bootstrap')
    expect(boot.code, boot.out).toBe(0)
    expect(boot.out).not.toContain('warning')
    // The client joins API paths with Url::join: the endpoint it is given must end with "/".
    expect(fs.readFileSync(path.join(a.state, 'attic-xdg', 'attic', 'config.toml'), 'utf8')).toContain(`endpoint = "${server}/"`)
    expect((await greedy(env, a.project, 'build')).code).toBe(0)
    expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, true])
    const pushed = await greedy(env, a.project, 'push')
    expect(pushed.stdout).toMatch(/pushed 3 store paths incrementally, 0 in the final push, 0 failed/)
  })

  it.each([
    ['ATTIC_TOKEN', false],
    ['ATTIC_TOKEN_FILE', true],
  ] as const)('a token that may pull but not push: bootstrap says so naming %s; strict fails; each path is counted with attic\'s words', async (name, fromFile) => {
    const t = await atticSetup(servers, 'atticpull', { clientOnPath: true })
    const a = t.job('a')
    const tokenEnv: NodeJS.ProcessEnv = fromFile ? { ATTIC_TOKEN: undefined, ATTIC_TOKEN_FILE: path.join(t.dir, 'pull-token') } : { ATTIC_TOKEN: t.pullToken }
    if (fromFile) fs.writeFileSync(path.join(t.dir, 'pull-token'), `${t.pullToken}\n`, { mode: 0o600 })
    const env = { ...a.env, ...tokenEnv }
    writeFlake(a.project, { prefix: t.prefix, chain: 3 })
    const links = chainPaths(env, a.project, 3)

    const strict = await greedy({ ...env, GREEDY_STRICT: '1' }, a.project, 'bootstrap')
    expect(strict.code).toBe(1)
    const boot = await greedy(env, a.project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toContain(`the token in ${name} can pull from "main" but cannot push to it`)
    expect(boot.out).toContain('AccessError: Access error: User does not have permission to complete this action.')
    // Pulling still works: Nix substitutes from the cache.
    expect(boot.out).toContain('Nix substitutes from')

    expect((await greedy(env, a.project, 'build')).code).toBe(0) // the build result, untouched
    expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([false, false, false])
    const pushed = await greedy(env, a.project, 'push')
    expect(pushed.code).toBe(0)
    const s = readJsonFile<Summary>(path.join(a.state, 'summary.json'))
    expect(s.incremental.failed + s.final.failed).toBe(3)
    expect(s.failures.map((f) => f.path).sort()).toEqual([...links].sort())
    for (const f of s.failures) expect(f.error).toContain('AccessError: Access error: User does not have permission to complete this action.')
    // The first refusal stops the watcher's attempts: no client run per path.
    const watcherRuns = fs.readFileSync(path.join(a.state, 'watch.log'), 'utf8').match(/attic refused the cache/g) ?? []
    expect(watcherRuns.length).toBeLessThanOrEqual(1)
  })

  it('one refused path in a batch fails alone; attic\'s InternalServerError is retried; what the cache has counts as cached', async () => {
    const dir = tmpDir('greedy-atticsink-')
    const env = nixEnv(dir)
    const links = buildChain(env, path.join(dir, 'flake'), 4)
    const [secret, pub] = makeKeys(env, `sink-${uid()}`)
    const keyFile = path.join(dir, 'key')
    fs.writeFileSync(keyFile, secret, { mode: 0o600 })
    const token = `tok-${uid()}`

    // A proxy in front of attic refuses link 3 (attic itself has no "too large" error).
    const refusing = await startAtticServer(path.join(dir, 's1'), { cache: 'main', token, publicKey: pub, signingKeyFile: keyFile, fail: links[2]! })
    servers.push(refusing)
    const one = await sinkFor(path.join(dir, 'c1'), refusing, token, env)
    one.sink.add(links)
    await one.sink.flush()
    const by = (s: Settled[], status: Settled['status']) => s.filter((x) => x.status === status).map((x) => x.path).sort()
    expect(by(one.settled, 'failed')).toEqual([links[2]])
    expect(one.settled.find((x) => x.status === 'failed')).toMatchObject({ error: expect.stringContaining('HTTP 413 Payload Too Large') })
    // Link 4 depends on link 3: a closure push still uploads link 4 itself.
    expect(by(one.settled, 'pushed')).toEqual([links[0], links[1], links[3]].sort())
    expect(one.warnings.filter((w) => /try \d of/.test(w))).toEqual([]) // a refusal is not retried

    // The server fails each first upload with its InternalServerError: retried, then all land.
    const flaky = await startAtticServer(path.join(dir, 's2'), { cache: 'main', token, publicKey: pub, signingKeyFile: keyFile, failFirst: 1 })
    servers.push(flaky)
    const two = await sinkFor(path.join(dir, 'c2'), flaky, token, env)
    two.sink.add(links.slice(0, 2))
    await two.sink.flush()
    expect(by(two.settled, 'pushed')).toEqual(links.slice(0, 2).sort())
    expect(two.warnings.join('\n')).toContain('InternalServerError: The server encountered an internal error or misconfiguration.')
    // Already there: the client plans nothing for them; they are cached, not failed.
    two.settled.length = 0
    two.sink.add(links.slice(0, 2))
    await two.sink.flush()
    expect(two.settled.map((x) => x.status)).toEqual(['cached', 'cached'])
  })

  it('an empty upstream_cache_key_names means no upstream filter; a delegated api_endpoint is named and used', async () => {
    const t = await atticSetup(servers, 'atticcfg', { clientOnPath: true, upstreamKeyNames: [], apiEndpoint: 'localhost' })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 2 })
    const boot = await greedy(a.env, a.project, 'bootstrap')
    expect(boot.code, boot.out).toBe(0)
    expect(boot.out).toContain(`pushes go to http://localhost:${t.server.port}/ (api_endpoint), not ${t.server.url}`)
    const session = readJsonFile<Session>(path.join(a.state, 'session.json'))
    expect(session.skipKeyNames).toEqual([t.server.publicKey.split(':')[0]])
    expect((await greedy(a.env, a.project, 'build')).code).toBe(0)
    expect(chainPaths(a.env, a.project, 2).map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true])
    expect((await greedy(a.env, a.project, 'push')).code).toBe(0)
  })

  it('no client in the project: nixpkgs#attic-client comes from a substituter; with none at all, push says nothing was pushed', async () => {
    const t = await atticSetup(servers, 'atticnixpkgs', { clientOnPath: false })
    // A stand-in nixpkgs (the project's nixpkgs input, or the registry entry "nixpkgs") whose attic-client is in an upstream binary cache.
    const standIn = (name: string) => {
      const dir = path.join(t.dir, name)
      fs.mkdirSync(dir)
      fs.copyFileSync(ATTIC_DOUBLE, path.join(dir, 'attic'))
      writeShFlake(dir, [
        `    client = derivation { name = "attic-client-${uid()}"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; src = ./attic; args = [ "-c" "mkdir -p $out/bin; cp $src $out/bin/attic; chmod +x $out/bin/attic" ]; };`,
      ], 'attic-client = client;')
      return dir
    }
    const nixpkgs = standIn('nixpkgs')
    const upstream = path.join(t.dir, 'upstream-cache')
    const base = nixEnv(path.join(t.dir, 'upstream-home'))
    const [secret, pub] = makeKeys(base, `upstream-${uid()}`)
    fs.writeFileSync(path.join(t.dir, 'upstream-key'), secret, { mode: 0o600 })
    const client = nixSync(base, ['eval', '--raw', `path:${nixpkgs}#attic-client.outPath`])
    nixSync(base, ['build', '--no-link', `path:${nixpkgs}#attic-client`])
    nixSync(base, ['copy', '--to', `file://${upstream}?secret-key=${path.join(t.dir, 'upstream-key')}`, client])
    deleteFromStore(base, [client])

    // Nix reads the global flake registry from the network; here a local empty one stands in for it. Nix 2.24
    // ignores this line (flakes are not on yet when it reads nix.conf) and goes to the network anyway.
    const registry = path.join(t.dir, 'global-registry.json')
    fs.writeFileSync(registry, JSON.stringify({ version: 2, flakes: [] }))
    const offline = `flake-registry = ${registry}\n`
    const a = t.job('a')
    // The runner's Nix knows the upstream cache (the image's nix.conf, plus that substituter).
    fs.appendFileSync(path.join(a.env.NIX_CONF_DIR!, 'nix.conf'), `${offline}extra-substituters = file://${upstream}\nextra-trusted-public-keys = ${pub}\n`)
    // The project's flake has no attic-client output, and a nixpkgs input (locked): bootstrap takes the
    // client from that pinned nixpkgs (`--inputs-from .`).
    writeFlake(a.project, { prefix: t.prefix, chain: 2 })
    const flakeNix = path.join(a.project, 'flake.nix')
    fs.writeFileSync(flakeNix, fs.readFileSync(flakeNix, 'utf8').replace('outputs = { self }:', `inputs.nixpkgs.url = "path:${nixpkgs}";\n  outputs = { self, ... }:`))
    nixSync(a.env, ['flake', 'lock'], a.project)
    const links = chainPaths(a.env, a.project, 2)
    // Nix 2.24 reads the global flake registry from the network even for `--inputs-from .`: with no network
    // here it cannot resolve nixpkgs#…, and bootstrap must say so plainly (Nix 2.8 resolves it).
    const resolves = spawnSync('nix', nixArgs('eval', '--raw', '--inputs-from', '.', 'nixpkgs#attic-client.outPath'), { env: a.env, cwd: a.project, encoding: 'utf8' })
    const offlineRegistry = /unable to download '[^']*flake-registry\.json'/.test(resolves.stderr)
    console.log(`nixpkgs#attic-client via --inputs-from: ${offlineRegistry ? 'this Nix needs the network registry' : 'resolved offline'}`)
    const boot = await greedy(a.env, a.project, 'bootstrap')
    expect(boot.code, boot.out).toBe(0)
    if (offlineRegistry) {
      expect(boot.out).toMatch(/no attic client \(the flake has no attic-client output, no attic on PATH, and nixpkgs#attic-client could not be substituted: error: unable to download '[^']*flake-registry\.json'/)
    } else {
      expect(resolves.status, resolves.stderr).toBe(0)
      expect(boot.out).toContain('attic client from the cache: nixpkgs#attic-client (the project’s nixpkgs input)')
      expect((await greedy(a.env, a.project, 'build')).code).toBe(0)
      expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true])
    }
    expect((await greedy(a.env, a.project, 'push')).code).toBe(0)

    // A nixpkgs whose client is in no cache: it would have to be built, and is not.
    const b = t.job('b')
    fs.appendFileSync(path.join(b.env.NIX_CONF_DIR!, 'nix.conf'), offline)
    nixSync(b.env, ['registry', 'add', 'nixpkgs', `path:${standIn('nixpkgs-b')}`])
    writeFlake(b.project, { prefix: `${t.prefix}-b`, chain: 1 })
    const bootB = await greedy(b.env, b.project, 'bootstrap')
    expect(bootB.code).toBe(0)
    expect(bootB.out).toContain('no attic client (the flake has no attic-client output, no attic on PATH, and nixpkgs#attic-client could not be substituted: error:')
    expect((await greedy({ ...b.env, GREEDY_STRICT: '1' }, b.project, 'bootstrap')).code).toBe(1)
    expect((await greedy(b.env, b.project, 'bootstrap')).code).toBe(0)
    expect((await greedy(b.env, b.project, 'build')).code).toBe(0)
    const pushed = await greedy(b.env, b.project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.out).toContain('no attic client in this job: nothing was pushed; put attic on PATH')
  })

  it('a cache the server refuses at bootstrap: the cause and the setting to fix are named, not "no server answered"', async () => {
    // atticd answers Unauthorized for a missing token, a wrong token, and a cache the token may not see (without
    // discovery permission NoSuchCache becomes Unauthorized: server/src/error.rs); a token for "*" sees NoSuchCache.
    const t = await atticSetup(servers, 'atticrefused', { clientOnPath: true, tokenCaches: ['*'] })
    const a = t.job('a')
    const boot = (env: NodeJS.ProcessEnv) => greedy({ ...a.env, ATTIC_SERVER: t.server.url, ...env }, a.project, 'bootstrap')
    const cases: Array<[string, NodeJS.ProcessEnv, string]> = [
      ['no token', { ATTIC_TOKEN: undefined }, `${t.server.url} answered, but cache "main" is not public and no ATTIC_TOKEN or ATTIC_TOKEN_FILE is set (Unauthorized: Unauthorized. (HTTP 401)): set ATTIC_TOKEN`],
      ['a wrong token', { ATTIC_TOKEN: 'not-the-token' }, `${t.server.url} refused the token in ATTIC_TOKEN for cache "main" (Unauthorized: Unauthorized. (HTTP 401)): it is expired, from another server, or not for "main" (check ATTIC_CACHE too); make one with atticadm make-token`],
      ['a misspelt cache', { ATTIC_CACHE: 'mian' }, `${t.server.url} has no cache "mian" (NoSuchCache: The requested cache does not exist. (HTTP 404)): check ATTIC_CACHE`],
    ]
    for (const [what, env, message] of cases) {
      const r = await boot(env)
      expect(r.code, what).toBe(0)
      expect(r.out, what).toContain(message)
      expect(r.out, what).not.toContain('no attic server answered')
      expect(r.out, what).not.toContain(t.token)
      const strict = await boot({ ...env, GREEDY_STRICT: 'true' })
      expect(strict.code, what).toBe(1)
    }
  })
})
