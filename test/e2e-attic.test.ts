// The greedy story on the attic backend: real Nix and the attic test double (client
// test/fixtures/attic, server test/fixtures/attic-server.mjs), which stores paths for real with `nix copy`.
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { atticSetup } from './attic-setup.js'
import { cachedWhileRunning, chainPaths, deleteFromStore, greedy, inFileCache, nixArgs, outPath, readJsonFile, runCmd, writeFlake } from './helpers.js'
import type { Nginx } from './nginx.js'
import type { Summary } from '../lib/summary.js'

const servers: Nginx[] = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()))
})
const setup = (name: string, opts: { clientOnPath: boolean; env?: NodeJS.ProcessEnv }) => atticSetup(servers, name, opts)

describe('ATTIC_SERVER end to end (attic client test double)', () => {
  it('pipeline A fails late with outputs already in attic; pipeline B substitutes them from the private cache', async () => {
    const t = await setup('atticab', { clientOnPath: true })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 6, failAt: 4, sleep: 1 })
    const links = chainPaths(a.env, a.project, 6)

    const boot = await greedy(a.env, a.project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toContain(`probe http://127.0.0.1:${t.closed}: ECONNREFUSED`)
    expect(boot.out).toContain(`attic cache "main" at ${t.server.url}`)
    expect(boot.out).toContain('attic client from PATH')
    // The token reaches the client through a private file only.
    const clientConf = path.join(a.state, 'attic-xdg', 'attic', 'config.toml')
    expect(fs.statSync(clientConf).mode & 0o077).toBe(0)
    expect(fs.readFileSync(clientConf, 'utf8')).not.toContain(t.token)

    const built = await greedy(a.env, a.project, 'build')
    const plain = await runCmd('nix', nixArgs('build', '--keep-going', '--no-link'), { env: a.env, cwd: a.project })
    expect(plain.code).not.toBe(0)
    expect(built.code).toBe(plain.code)
    expect(links.slice(0, 3).map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, true])

    const pushed = await greedy(a.env, a.project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.stdout).toMatch(/pushed 3 store paths incrementally, 0 in the final push, 0 failed/)
    expect(readJsonFile<Summary>(path.join(a.state, 'summary.json'))).toMatchObject({
      backend: 'attic', incremental: { pushed: 3, failed: 0 }, build: { exitCode: plain.code, built: 3 },
    })
    const calls = fs.readFileSync(t.doubleLog, 'utf8')
    // One short `attic push main <paths>` per burst: `push --stdin` would hold each path 2-10 s.
    expect(calls).toContain('"push","main","/nix/store/')
    expect(calls).not.toContain('--stdin')
    expect(calls).not.toContain(t.token)
    expect(fs.existsSync(path.join(a.state, 'secrets'))).toBe(false) // push cleans the secrets up

    // Pipeline B: a fresh runner; the cache is private, so substitution needs the token (netrc).
    deleteFromStore(a.env, links.slice(0, 3))
    const b = t.job('b')
    writeFlake(b.project, { prefix: t.prefix, chain: 6, sleep: 1 })
    const linksB = chainPaths(b.env, b.project, 6) // 4-6 differ: the failure is fixed
    expect(linksB.slice(0, 3)).toEqual(links.slice(0, 3))
    expect((await greedy(b.env, b.project, 'bootstrap')).code).toBe(0)
    const rebuilt = await greedy(b.env, b.project, 'build')
    expect(rebuilt.code).toBe(0)
    for (const p of links.slice(0, 3)) expect(rebuilt.out).toContain(`copying path '${p}' from '${t.server.url}/main'`)
    expect(rebuilt.out).not.toContain('building link 1')
    expect((await greedy(b.env, b.project, 'push')).code).toBe(0)
    const sb = readJsonFile<Summary>(path.join(b.state, 'summary.json'))
    expect(sb.build).toMatchObject({ exitCode: 0, built: 3, substituted: 3 })
    expect(sb.incremental).toMatchObject({ pushed: 3, failed: 0 })
    expect(linksB.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, true, true, true, true])
  })

  it('late bootstrap: with no client at start, the backlog is pushed the moment the build realises the client', async () => {
    const t = await setup('atticlate', { clientOnPath: false })
    const a = t.job('a')
    // Link 1 is built before the client exists; link 3 takes long enough to watch the cache meanwhile.
    writeFlake(a.project, { prefix: t.prefix, chain: 3, clientAt: 2, sleep: 1 })
    const links = chainPaths(a.env, a.project, 3)
    const boot = await greedy(a.env, a.project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toContain('no attic client yet')

    // Link 1 reaches the cache while the build is still running: pushed from the backlog, not at the end.
    const building = greedy(a.env, a.project, 'build', '.#l3', '--', '--option', 'max-jobs', '1')
    const { early, result } = await cachedWhileRunning(building, t.server.cacheDir, links[0]!)
    expect(early).toBe(true)
    expect(result.code).toBe(0)
    expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, true])
    const client = outPath(a.env, a.project, 'attic-client')
    expect(inFileCache(t.server.cacheDir, client)).toBe(true)
    expect(fs.readFileSync(path.join(a.state, 'watch.log'), 'utf8')).toContain(`attic client appeared in the store: ${client}/bin/attic`)
    expect((await greedy(a.env, a.project, 'push')).code).toBe(0)

    // The next pipeline gets the client from the cache at bootstrap (--max-jobs 0: never built there).
    fs.rmSync(path.join(a.project, 'result')) // the out-link is a GC root
    deleteFromStore(a.env, [...links.reverse(), client])
    const b = t.job('b')
    writeFlake(b.project, { prefix: t.prefix, chain: 3, clientAt: 2, sleep: 1 })
    const bootB = await greedy(b.env, b.project, 'bootstrap')
    expect(bootB.code).toBe(0)
    expect(bootB.out).toContain('attic client from the cache: .#attic-client')
    expect((await greedy(b.env, b.project, 'push')).code).toBe(0)
  })

  it("pipeline B on the runner pipeline A ran on (its HOME kept): substitutes what A pushed, though A's lookups left \"not in the cache\" in Nix's disk cache", async () => {
    // Nix remembers a missing narinfo for narinfo-cache-negative-ttl (3600 s) in ~/.cache/nix
    // (nar-info-disk-cache.cc; HTTP caches only, http-binary-cache-store.cc), and A's build asked
    // the cache for every path before building it. The attic client's uploads do not refresh it.
    const t = await setup('attichome', { clientOnPath: true })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 4 })
    const links = chainPaths(a.env, a.project, 4)
    const userConf = path.join(a.env.XDG_CONFIG_HOME!, 'nix', 'nix.conf')
    for (const phase of ['bootstrap', 'build', 'push']) expect((await greedy(a.env, a.project, phase)).code).toBe(0)
    expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, true, true])
    expect(fs.existsSync(userConf)).toBe(false) // nothing of the job outlives it in the runner's config

    // Pipeline B: the same runner (HOME, project folder); the store lost the paths.
    fs.rmSync(path.join(a.project, 'result'))
    deleteFromStore(a.env, [...links].reverse())
    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0)
    // Nix as it is, without the job's setting: it trusts A's "not there" and would build (refused by --max-jobs 0).
    const shell = (cmd: string) => runCmd('sh', ['-c', `. .greedy-nix/env.sh && ${cmd}`], { env: a.env, cwd: a.project })
    const stale = await shell(`nix ${nixArgs('build', '--no-link', '--max-jobs', '0', '--option', 'narinfo-cache-negative-ttl', '3600').map((x) => `'${x}'`).join(' ')}`)
    expect(stale.code, stale.out).not.toBe(0)
    const built = await greedy(a.env, a.project, 'build')
    expect(built.code, built.out).toBe(0)
    expect(built.out).toContain('0 built, 4 substituted')
    // The job's own nix commands get the same settings from .greedy-nix/env.sh.
    fs.rmSync(path.join(a.project, 'result'))
    deleteFromStore(a.env, [...links].reverse())
    const own = await shell(`nix ${nixArgs('build', '--no-link', '--max-jobs', '0').map((x) => `'${x}'`).join(' ')}`)
    expect(own.code, own.out).toBe(0)
    expect(own.out).toContain(`copying path '${links[3]}' from '${t.server.url}/main'`)
    expect((await greedy(a.env, a.project, 'push')).code).toBe(0)
    expect(fs.existsSync(userConf)).toBe(false)
  })

  it("late bootstrap, then pipeline B on the same runner: bootstrap gets the project's client from the cache, though A looked it up before it built it", async () => {
    const t = await setup('attichomelate', { clientOnPath: false })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 2, clientAt: 1 })
    const client = outPath(a.env, a.project, 'attic-client')
    const boot = await greedy(a.env, a.project, 'bootstrap') // asks the cache for .#attic-client: not there yet
    expect(boot.out).toContain('no attic client yet')
    for (const phase of ['build', 'push']) expect((await greedy(a.env, a.project, phase)).code).toBe(0)
    expect(inFileCache(t.server.cacheDir, client)).toBe(true)
    fs.rmSync(path.join(a.project, 'result'))
    deleteFromStore(a.env, [...chainPaths(a.env, a.project, 2).reverse(), client])
    const bootB = await greedy(a.env, a.project, 'bootstrap') // the same HOME: Nix's disk cache still says "not there"
    expect(bootB.out).toContain('attic client from the cache: .#attic-client')
    expect((await greedy(a.env, a.project, 'push')).code).toBe(0)
  })

  it('a client from before push --stdin (2024-10) pushes during the build as well: no option of ours needs a newer one', async () => {
    const t = await setup('atticold', { clientOnPath: true, env: { ATTIC_DOUBLE_NO_STDIN: '1' } })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 4, sleep: 1 })
    const links = chainPaths(a.env, a.project, 4)
    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0)
    const { early, result } = await cachedWhileRunning(greedy(a.env, a.project, 'build'), t.server.cacheDir, links[0]!)
    expect(early).toBe(true)
    expect(result.code).toBe(0)
    expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, true, true])
    expect(fs.readFileSync(path.join(a.state, 'watch.log'), 'utf8')).not.toContain('unexpected argument')
    const pushed = await greedy(a.env, a.project, 'push')
    expect(pushed.stdout).toMatch(/pushed 4 store paths incrementally, 0 in the final push, 0 failed/)
  })

  it('a path the server refuses is named and counted, and the job result stays the build result', async () => {
    const t = await setup('atticrefuse', { clientOnPath: true })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 3 })
    const links = chainPaths(a.env, a.project, 3)
    const env = a.env
    t.server.setFaults({ fail: links[2]! }) // the proxy in front of the server answers 413 for link 3
    expect((await greedy(env, a.project, 'bootstrap')).code).toBe(0)
    expect((await greedy(env, a.project, 'build')).code).toBe(0)
    expect(links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true, false])
    const pushed = await greedy(env, a.project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.out).toContain(`not pushed: ${links[2]}: HTTP 413 Payload Too Large`)
    // Refused by the watcher and again by the final push: one path, counted once.
    expect(pushed.stdout).toMatch(/pushed 2 store paths incrementally, 0 in the final push, 1 failed/)
    const s = readJsonFile<Summary>(path.join(a.state, 'summary.json'))
    expect(s.failures).toEqual([{ path: links[2], error: expect.stringContaining('HTTP 413 Payload Too Large') }]) // + the proxy's page
    expect(s.incremental.failed + s.final.failed).toBe(1)
    // Strict mode: the same refusal fails after_script loudly.
    const strict = await greedy({ ...env, GREEDY_STRICT: '1' }, a.project, 'push')
    expect(strict.code).toBe(1)
    expect(strict.out).toContain('failed to push (GREEDY_STRICT is on)')
  })
})
