// Cache faults, injected by our own proxy in front of a real nginx binary cache (and by the attic
// test double's knobs): the job's result stays the build's, nothing hangs, every failed path is
// named and counted. Each test prints its figures (time taken, paths pushed/failed).
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { atticSetup } from './attic-setup.js'
import { chainPaths, greedy, inFileCache, processesWith, makeKeys, nixArgs, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake } from './helpers.js'
import { startFaultProxy, type Fault, type FaultProxy, type RequestInfo } from './fault-proxy.js'
import { freePort, startHttpCache, type AtticFaults, type Nginx } from './nginx.js'
import type { Summary } from '../lib/summary.js'

const stops: Array<Nginx | FaultProxy> = []
afterEach(async () => {
  await Promise.all(stops.splice(0).map((s) => s.stop()))
})

const seconds = (t: number) => Number(((Date.now() - t) / 1000).toFixed(1))

/** A job pushing to nginx through the fault proxy, with a chain of `chain` links. */
async function faultyJob(name: string, chain: number, decide: (req: RequestInfo, links: string[]) => Fault, extra: NodeJS.ProcessEnv = {}) {
  const dir = tmpDir(`greedy-fault-${name}-`)
  const cache = await startHttpCache(path.join(dir, 'nginx'))
  stops.push(cache)
  const project = path.join(dir, 'project')
  writeFlake(project, { prefix: `fault-${name}-${uid()}`, chain, sleep: 1 })
  const base = nixEnv(path.join(dir, 'home'))
  const links = chainPaths(base, project, chain)
  const proxy = await startFaultProxy(cache.url, (req) => decide(req, links))
  stops.push(proxy)
  const [key] = makeKeys(base, `fault-${uid()}`)
  const env = { ...base, CI_PROJECT_DIR: project, GREEDY_CACHE_URL: proxy.url, GREEDY_SIGNING_KEY: key, ...extra }
  const run = async (cmd: string, ...args: string[]) => {
    const t = Date.now()
    const r = await greedy(env, project, cmd, ...args)
    return { ...r, seconds: seconds(t) }
  }
  const summary = () => readJsonFile<Summary>(path.join(project, '.greedy-nix', 'summary.json'))
  const watchLog = () => fs.readFileSync(path.join(project, '.greedy-nix', 'watch.log'), 'utf8')
  return { links, proxy, cacheDir: cache.cacheDir, run, summary, watchLog }
}

const narinfo = (storePath: string) => `/${path.basename(storePath).slice(0, 32)}.narinfo`

describe('an HTTP cache that misbehaves', () => {
  it('503 on the first try of every upload: retried with backoff, everything pushed', async () => {
    const j = await faultyJob('503', 3, (r) => (r.method === 'PUT' && r.attempt === 0 ? { kind: 'status', status: 503 } : { kind: 'pass' }))
    expect((await j.run('bootstrap')).code).toBe(0)
    const b = await j.run('build')
    expect(b.code).toBe(0)
    expect(j.links.map((p) => inFileCache(j.cacheDir, p))).toEqual([true, true, true])
    expect(j.watchLog()).toMatch(/HTTP error 503.*; try 2 of 3/)
    const p = await j.run('push')
    expect(p.code).toBe(0)
    expect(j.summary().incremental).toMatchObject({ pushed: 3, failed: 0 })
    console.log(`503 first try: build ${b.seconds}s, push ${p.seconds}s, ${j.proxy.log.filter((l) => l.fault === 'status').length} uploads refused then retried`)
  })

  it('a dropped connection mid-upload: retried, everything pushed', async () => {
    const j = await faultyJob('drop', 2, (r) => (r.method === 'PUT' && r.path.startsWith('/nar/') && r.attempt === 0 ? { kind: 'drop' } : { kind: 'pass' }))
    expect((await j.run('bootstrap')).code).toBe(0)
    const b = await j.run('build')
    expect(b.code).toBe(0)
    expect(j.links.map((p) => inFileCache(j.cacheDir, p))).toEqual([true, true])
    expect((await j.run('push')).code).toBe(0)
    expect(j.summary().incremental).toMatchObject({ pushed: 2, failed: 0 })
    console.log(`drop mid-upload: build ${b.seconds}s, ${j.proxy.log.filter((l) => l.fault === 'drop').length} uploads cut off then retried`)
  })

  it('413 for one path: not retried, named and counted; the others pushed; the job result is the build result', async () => {
    const j = await faultyJob('413', 3, (r, links) => (r.method === 'PUT' && r.path === narinfo(links[2]!) ? { kind: 'status', status: 413 } : { kind: 'pass' }))
    expect((await j.run('bootstrap')).code).toBe(0)
    expect((await j.run('build')).code).toBe(0)
    const p = await j.run('push')
    expect(p.code).toBe(0)
    expect(j.links.map((q) => inFileCache(j.cacheDir, q))).toEqual([true, true, false])
    expect(p.out).toMatch(new RegExp(`not pushed: ${j.links[2]}: nix copy failed \\(exit 1\\): .*HTTP error 413`))
    expect(p.stdout).toMatch(/pushed 2 store paths incrementally, 0 in the final push, 1 failed/)
    expect(j.summary().failures.map((f) => f.path)).toEqual([j.links[2]])
    expect(j.watchLog()).not.toMatch(/413.*try 2 of 3/) // permanent: no backoff retries
    const refused = j.proxy.log.filter((l) => l.method === 'PUT' && l.path === narinfo(j.links[2]!)).length
    expect(refused).toBeLessThanOrEqual(3) // its batch, itself alone, the final push
    console.log(`413: ${refused} uploads of the refused path, 1 failed, 2 pushed`)
  })

  it('a server that accepts and never answers: build returns within the drain timeout, push within its budget', async () => {
    const j = await faultyJob('hang', 2, (r) => (r.method === 'PUT' ? { kind: 'hang' } : { kind: 'pass' }), { GREEDY_DRAIN_TIMEOUT: '5' })
    const boot = await j.run('bootstrap')
    expect(boot.code).toBe(0)
    const b = await j.run('build')
    expect(b.code).toBe(0) // Nix's code: the build itself succeeded
    expect(b.out).toMatch(/drain timed out after 5s/)
    const p = await j.run('push')
    expect(p.code).toBe(0)
    expect(p.stdout).toMatch(/pushed 0 store paths incrementally/)
    expect(b.seconds).toBeLessThan(5 + 2 * 2 + 20) // drain budget + the builds + slack: bounded, not hung
    expect(p.seconds).toBeLessThan(300) // GitLab's after_script default
    expect(processesWith(j.proxy.url)).toEqual([]) // no nix copy left waiting on the server
    console.log(`hang: bootstrap ${boot.seconds}s, build ${b.seconds}s (drain timeout 5s), push ${p.seconds}s`)
  })

  it.each([
    ['a refused connection', async () => `http://127.0.0.1:${await freePort()}`, 'ECONNREFUSED'],
    ['a name that does not resolve', async () => 'http://cache.invalid', 'ENOTFOUND'], // RFC 6761: never resolves
  ])('%s: every command goes on at once, the cause named', async (what, url, cause) => {
    const dir = tmpDir('greedy-fault-refused-')
    const project = path.join(dir, 'project')
    writeFlake(project, { prefix: `fault-refused-${uid()}`, chain: 2 })
    const cacheUrl = await url()
    const env = nixEnv(path.join(dir, 'home'), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: cacheUrl })
    const t = Date.now()
    const runs = [await greedy(env, project, 'bootstrap'), await greedy(env, project, 'build'), await greedy(env, project, 'push')]
    const withCache = seconds(t)
    const plainT = Date.now()
    await runCmd('nix', nixArgs('build', '--rebuild', '--no-link'), { env, cwd: project })
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0])
    expect(runs[0]!.out).toContain(`${cacheUrl} did not answer (${cause})`)
    console.log(`${what}: bootstrap + build + push ${withCache}s; a plain nix build --rebuild ${seconds(plainT)}s`)
  })

  it('a slow server (every answer 1.5 s late): build waits for the drain, everything pushed', async () => {
    const j = await faultyJob('slow', 2, (r) => (r.method === 'PUT' ? { kind: 'slow', ms: 1500 } : { kind: 'pass' }))
    expect((await j.run('bootstrap')).code).toBe(0)
    const b = await j.run('build')
    expect(b.code).toBe(0)
    expect(j.links.map((p) => inFileCache(j.cacheDir, p))).toEqual([true, true]) // in the cache when build returns
    expect(b.out).toMatch(/cache up to date in [\d.]+s: 2 pushed so far, 0 failed, 0 pending/)
    expect((await j.run('push')).code).toBe(0)
    expect(j.summary().incremental).toMatchObject({ pushed: 2, failed: 0 })
    console.log(`slow: build ${b.seconds}s, ${j.proxy.log.filter((l) => l.fault === 'slow').length} uploads answered 1.5 s late`)
  })
})

describe('an attic server that misbehaves (the attic test double)', () => {
  const attic = async (name: string, env: NodeJS.ProcessEnv, faults: AtticFaults) => {
    const t = await atticSetup(stops as Nginx[], name, { clientOnPath: true, env, ...faults })
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 2, sleep: 1 })
    const links = chainPaths(a.env, a.project, 2)
    const run = async (cmd: string) => {
      const started = Date.now()
      const r = await greedy(a.env, a.project, cmd)
      return { ...r, seconds: seconds(started) }
    }
    return { ...t, ...a, links, run }
  }

  it('❌ InternalServerError (500) on the first try of each path: retried, everything pushed', async () => {
    const t = await attic('attic500', {}, { failFirst: 1 })
    expect((await t.run('bootstrap')).code).toBe(0)
    const b = await t.run('build')
    expect(b.code).toBe(0)
    expect(t.links.map((p) => inFileCache(t.server.cacheDir, p))).toEqual([true, true])
    const log = fs.readFileSync(path.join(t.state, 'watch.log'), 'utf8')
    expect(log).toContain('InternalServerError: The server encountered an internal error or misconfiguration.')
    expect(log).toMatch(/try 2 of 3 for 1 path\(s\) in \d+\.\ds/) // only the path that failed, after a backoff
    expect((await t.run('push')).stdout).toMatch(/pushed 2 store paths incrementally, 0 in the final push, 0 failed/)
    console.log(`attic 500 first try: build ${b.seconds}s`)
  })

  it('uploads that never finish: build returns within the drain timeout, push within its budget, nothing left running', async () => {
    const t = await attic('attichang', { GREEDY_DRAIN_TIMEOUT: '5' }, { hang: true })
    expect((await t.run('bootstrap')).code).toBe(0)
    const b = await t.run('build')
    expect(b.code).toBe(0)
    expect(b.out).toMatch(/drain timed out after 5s/)
    const p = await t.run('push')
    expect(p.code).toBe(0)
    expect(p.seconds).toBeLessThan(300)
    expect(fs.existsSync(path.join(t.state, 'watch.pid'))).toBe(false)
    expect(processesWith(t.server.root)).toEqual([]) // no attic client left hanging
    console.log(`attic hang: build ${b.seconds}s (drain timeout 5s), push ${p.seconds}s`)
  })
})

describe('the machine misbehaves', () => {
  it('a lock removed for a path that is not valid: skipped, logged at debug, the watcher carries on', async () => {
    const dir = tmpDir('greedy-fault-lock-')
    const project = path.join(dir, 'project')
    const cache = path.join(dir, 'cache')
    writeFlake(project, { prefix: `fault-lock-${uid()}`, chain: 1 })
    const env = nixEnv(path.join(dir, 'home'), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${cache}`, GREEDY_DEBUG: '1' })
    expect((await greedy(env, project, 'bootstrap')).code).toBe(0)
    const alphabet = '0123456789abcdfghijklmnpqrsvwxyz'
    const hash = Array.from({ length: 32 }, () => alphabet[Math.floor(Math.random() * 32)]).join('')
    const fake = path.join('/nix/store', `${hash}-greedy-not-valid`)
    fs.mkdirSync(fake) // on disk, never registered: not a valid store path
    fs.writeFileSync(`${fake}.lock`, '')
    fs.rmSync(`${fake}.lock`)
    try {
      await new Promise((r) => setTimeout(r, 500))
      const built = await greedy(env, project, 'build')
      expect(built.code).toBe(0)
      const log = fs.readFileSync(path.join(project, '.greedy-nix', 'watch.log'), 'utf8')
      expect(log).toContain(`not valid (yet), skipped: ${fake}`)
      expect(log).toMatch(/pushed \/nix\/store\/\w+-fault-lock-/) // and it went on pushing
      expect((await greedy(env, project, 'push')).stdout).toMatch(/pushed 1 store paths incrementally/)
    } finally {
      fs.rmSync(fake, { recursive: true, force: true })
    }
  })

  it('a state dir that cannot be written: warnings, and the build still runs and returns its code', async () => {
    const dir = tmpDir('greedy-fault-state-')
    const project = path.join(dir, 'project')
    writeFlake(project, { prefix: `fault-state-${uid()}`, chain: 2, failAt: 2 })
    fs.writeFileSync(path.join(dir, 'a-file'), '')
    const env = nixEnv(path.join(dir, 'home'), {
      CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${dir}/cache`, GREEDY_STATE_DIR: path.join(dir, 'a-file', 'state'),
    })
    const boot = await greedy(env, project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toMatch(/warning: cannot create the state dir .*a-file\/state/)
    const plain = await runCmd('nix', nixArgs('build', '--keep-going', '--no-link'), { env, cwd: project })
    const b = await greedy(env, project, 'build')
    expect(b.code).toBe(plain.code)
    expect(b.out).toContain('link 2 fails on purpose')
    expect(b.out).toMatch(/warning: cannot record build counts/)
    const p = await greedy(env, project, 'push')
    expect(p.code).toBe(0)
    expect(p.out).toMatch(/warning: no final push: cannot create the state dir .*a-file\/state/)
    expect((await greedy({ ...env, GREEDY_STRICT: '1' }, project, 'bootstrap')).code).toBe(1)
  })
})
