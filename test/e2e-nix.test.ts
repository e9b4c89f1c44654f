// The greedy story on the Nix-store-URL backend, with real Nix and a real file:// binary cache.
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import {
  cachedWhileRunning, chainPaths, deleteFromStore, greedy, inFileCache, makeKeys, nixArgs, nixEnv, nixSync, readJsonFile, runCmd, tmpDir, uid, writeFlake,
} from './helpers.js'
import { parsePathInfoJson } from '../lib/nix.js'
import { startHttpCache, type Nginx } from './nginx.js'
import type { Summary } from '../lib/summary.js'

const servers: Nginx[] = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()))
})

/** A file:// cache, or nginx over HTTP (GET and PUT) serving the same kind of folder. */
async function setup(name: string, kind: 'file' | 'http' = 'file') {
  const dir = tmpDir(`greedy-${name}-`)
  let cache = path.join(dir, 'binary-cache')
  let url = `file://${cache}`
  if (kind === 'http') {
    const http = await startHttpCache(path.join(dir, 'nginx'))
    servers.push(http)
    cache = http.cacheDir
    url = http.url
  }
  const base = nixEnv(dir)
  const [secret, pub] = makeKeys(base, `test-${uid()}`)
  const job = (n: string) => {
    const project = path.join(dir, n)
    fs.mkdirSync(project, { recursive: true })
    // A fresh runner per pipeline: its own user config (nix.conf), state dir and project dir.
    const env = nixEnv(path.join(dir, `${n}-home`), { GREEDY_CACHE_URL: url, GREEDY_SIGNING_KEY: secret, CI_PROJECT_DIR: project })
    return { project, env, state: path.join(project, '.greedy-nix') }
  }
  return { dir, cache, url, pub, job, prefix: `${name}-${uid()}` }
}

describe('GREEDY_CACHE_URL end to end', () => {
  it.each(['file', 'http'] as const)('%s: pipeline A fails late with outputs already cached; pipeline B substitutes them and builds the rest', async (kind) => {
    const t = await setup(`nix${kind}`, kind)
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 6, failAt: 4, sleep: 1 })
    const links = chainPaths(a.env, a.project, 6)

    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0)
    // Greedy: link 1 is in the cache while links 2-4 are still building.
    const { early, result: built } = await cachedWhileRunning(greedy(a.env, a.project, 'build'), t.cache, links[0]!)
    expect(early).toBe(true)
    const plain = await runCmd('nix', nixArgs('build', '--keep-going', '--no-link'), { env: a.env, cwd: a.project })
    expect(plain.code).not.toBe(0)
    expect(built.code).toBe(plain.code) // Nix's own exit code, untouched
    expect(built.out).toContain('link 4 fails on purpose')
    // Greedy: the three links finished before the failure are in the cache when build returns.
    expect(links.slice(0, 3).map((p) => inFileCache(t.cache, p))).toEqual([true, true, true])

    const pushed = await greedy(a.env, a.project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.stdout).toMatch(/pushed 3 store paths incrementally/)
    const sa = readJsonFile<Summary>(path.join(a.state, 'summary.json'))
    expect(sa.backend).toBe('nix')
    expect(sa.build).toMatchObject({ exitCode: plain.code, built: 3, substituted: 0 })
    expect(sa.incremental).toMatchObject({ pushed: 3, failed: 0 })
    // Their NAR bytes, as the store records them.
    const infos = parsePathInfoJson(nixSync(a.env, ['path-info', '--json', ...links.slice(0, 3)]))
    expect(sa.incremental.bytes).toBe(infos.reduce((n, i) => n + i.narSize!, 0))
    expect(fs.readFileSync(path.join(a.state, 'metrics.txt'), 'utf8')).toMatch(new RegExp(`^greedy_nix_pushed_bytes ${sa.incremental.bytes}$`, 'm'))
    expect(fs.readFileSync(path.join(a.state, 'metrics.txt'), 'utf8')).toMatch(/^greedy_nix_pushed_incremental 3$/m)

    // Pipeline B: a fresh machine (the outputs are gone locally), the failure fixed.
    deleteFromStore(a.env, links.slice(0, 3))
    const b = t.job('b')
    writeFlake(b.project, { prefix: t.prefix, chain: 6, sleep: 1 })
    expect(chainPaths(b.env, b.project, 6).slice(0, 3)).toEqual(links.slice(0, 3))
    expect((await greedy(b.env, b.project, 'bootstrap')).code).toBe(0)
    const rebuilt = await greedy(b.env, b.project, 'build')
    expect(rebuilt.code).toBe(0)
    for (const p of links.slice(0, 3)) expect(rebuilt.out).toContain(`copying path '${p}' from '${t.url}'`)
    expect(rebuilt.out).not.toContain('building link 1')
    expect(rebuilt.out).toContain('building link 6')
    expect((await greedy(b.env, b.project, 'push')).code).toBe(0)
    const sb = readJsonFile<Summary>(path.join(b.state, 'summary.json'))
    expect(sb.build).toMatchObject({ exitCode: 0, built: 3, substituted: 3 })
    // Substituted paths carry the cache's signature: never pushed back.
    expect(sb.incremental.pushed).toBe(3)
  })

  it('push after the watcher was killed still pushes the result closure and reports honestly', async () => {
    const t = await setup('nixkill')
    const a = t.job('a')
    writeFlake(a.project, { prefix: t.prefix, chain: 3 })
    const links = chainPaths(a.env, a.project, 3)
    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0)
    const pid = Number(fs.readFileSync(path.join(a.state, 'watch.pid'), 'utf8').split('\n')[0])
    process.kill(pid, 'SIGKILL') // what the docker executor does at the end of a stage, only earlier
    const built = await greedy(a.env, a.project, 'build')
    expect(built.code).toBe(0)
    expect(links.map((p) => inFileCache(t.cache, p))).toEqual([false, false, false])
    const pushed = await greedy(a.env, a.project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.stdout).toMatch(/pushed 0 store paths incrementally, 3 in the final push, 0 failed/)
    expect(links.map((p) => inFileCache(t.cache, p))).toEqual([true, true, true])
    const s = readJsonFile<Summary>(path.join(a.state, 'summary.json'))
    expect(s).toMatchObject({ watcherAlive: false, final: { pushed: 3, failed: 0 } })
  })
})
