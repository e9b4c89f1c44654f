// A remote cache: every request 300 ms late (our proxy in front of a real nginx binary cache), as
// S3 or an attic server over the internet answer. Uploads go in parallel lanes, yet a cache never
// shows a path before what it references, and no path goes up twice. (How much faster: `npm run
// bench remote`; timings are not asserted here.)
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { NixCopySink, type Settled } from '../lib/pusher.js'
import { startFaultProxy, type FaultProxy } from './fault-proxy.js'
import { greedy, inFileCache, makeKeys, nixArgs, nixEnv, packagePaths, runCmd, tmpDir, uid, writeShFlake } from './helpers.js'
import { startHttpCache, type Nginx } from './nginx.js'

const stops: Array<Nginx | FaultProxy> = []
afterEach(async () => {
  await Promise.all(stops.splice(0).map((s) => s.stop()))
})

const LATENCY_MS = 300
const hashOf = (storePath: string) => path.basename(storePath).slice(0, 32)

describe('a cache 300 ms away', () => {
  it('uploads run side by side; a narinfo never appears before its references are complete; each path goes up once', async () => {
    const dir = tmpDir('greedy-remote-')
    const cache = await startHttpCache(path.join(dir, 'nginx'))
    stops.push(cache)
    const proxy = await startFaultProxy(cache.url, () => ({ kind: 'slow', ms: LATENCY_MS }))
    stops.push(proxy)
    const project = path.join(dir, 'project')
    const prefix = `remote-${uid()}`
    // 16 independent leaves, a chain of 3 on the first leaf, and a top that references them all.
    const leaves = Array.from({ length: 16 }, (_, i) => `    f${i} = mk "${prefix}-f${i}" "echo ${i} > $out";`)
    const chain = [
      `    c1 = mk "${prefix}-c1" "echo \${f0} > $out";`,
      `    c2 = mk "${prefix}-c2" "echo \${c1} > $out";`,
      `    c3 = mk "${prefix}-c3" "echo \${c2} > $out";`,
      `    top = mk "${prefix}-top" "echo \${c3} ${Array.from({ length: 16 }, (_, i) => `\${f${i}}`).join(' ')} > $out";`,
    ]
    fs.mkdirSync(project, { recursive: true })
    writeShFlake(project, [...leaves, ...chain], `default = top; ${[...Array.from({ length: 16 }, (_, i) => `f${i}`), 'c1', 'c2', 'c3', 'top'].map((n) => `${n} = ${n};`).join(' ')}`)
    const base = nixEnv(path.join(dir, 'home'))
    const [key] = makeKeys(base, `remote-${uid()}`)
    const env = { ...base, CI_PROJECT_DIR: project, GREEDY_CACHE_URL: proxy.url, GREEDY_SIGNING_KEY: key }
    const outs = Object.values(packagePaths(base, project)).filter((p, i, all) => all.indexOf(p) === i)

    expect((await greedy(env, project, 'bootstrap')).code).toBe(0)
    const b = await greedy(env, project, 'build')
    expect(b.code, b.out).toBe(0)
    // Everything is in the cache when build returns.
    expect(outs.filter((p) => !inFileCache(cache.cacheDir, p))).toEqual([])
    expect((await greedy(env, project, 'push')).code).toBe(0)

    const narinfoPuts = proxy.log.filter((l) => l.method === 'PUT' && l.path.endsWith('.narinfo'))
    // Each path's narinfo was uploaded exactly once: lanes never share a path or a reference.
    for (const p of outs) expect(narinfoPuts.filter((l) => l.path === `/${hashOf(p)}.narinfo`), p).toHaveLength(1)
    // Side by side: at some moment more than one upload was under way.
    const puts = proxy.log.filter((l) => l.method === 'PUT')
    const overlap = Math.max(...puts.map((a) => puts.filter((o) => o.start <= a.start && (o.end ?? Infinity) > a.start).length))
    expect(overlap).toBeGreaterThan(1)
    // A consumer that sees a narinfo finds its references' narinfos already complete.
    const done = new Map(narinfoPuts.map((l) => [l.path, l]))
    for (const p of outs) {
      const refs = (await runCmd('nix-store', ['--query', '--references', p], { env: base })).stdout.split('\n').filter(Boolean)
      const mine = done.get(`/${hashOf(p)}.narinfo`)!
      for (const r of refs) {
        if (r === p) continue
        const theirs = done.get(`/${hashOf(r)}.narinfo`)
        expect(theirs, `${r}, a reference of ${p}`).toBeDefined()
        expect(theirs!.end!, `${r} complete before ${p} appears`).toBeLessThanOrEqual(mine.start)
      }
    }
  })

  it("first uses of a cache its user's Nix never opened, in parallel: no push fails the others", async () => {
    // Nix 2.8 registers a cache in its narinfo disk cache (~/.cache/nix/binary-cache-v6.sqlite)
    // with `insert or replace`, which gives the row a new id and drops its NARs, so `nix copy`
    // processes that open the same new cache at once fail each other ("constraint failed";
    // nar-info-disk-cache.cc `createCache`, 2.8.0; 2.24 checks for the row in a transaction).
    // It happens in real jobs: with a nix-daemon, the build's substituter lookups register the
    // cache in root's disk cache, and the watcher's pushes run as the job's user.
    const dir = tmpDir('greedy-remote-first-')
    const cache = await startHttpCache(path.join(dir, 'nginx'))
    stops.push(cache)
    const proxy = await startFaultProxy(cache.url, () => ({ kind: 'slow', ms: 100 }))
    stops.push(proxy)
    const project = path.join(dir, 'project')
    const prefix = `first-${uid()}`
    const names = Array.from({ length: 64 }, (_, i) => `f${i}`)
    fs.mkdirSync(project, { recursive: true })
    writeShFlake(project, names.map((n) => `    ${n} = mk "${prefix}-${n}" "echo ${n} > $out";`), names.map((n) => `${n} = ${n};`).join(' '))
    const base = nixEnv(path.join(dir, 'home'))
    const built = await runCmd('nix', nixArgs('build', '--no-link', ...names.map((n) => `${project}#${n}`)), { env: base })
    expect(built.code, built.stderr).toBe(0)
    const all = packagePaths(base, project)
    const outs = names.map((n) => all[n]!)

    const settled: Settled[] = []
    const warnings: string[] = []
    const sink = new NixCopySink(proxy.url, { onSettled: (s) => settled.push(s), onWarn: (w) => warnings.push(w), runTimeoutMs: 120_000, lanes: 8 }, { ...base, XDG_CACHE_HOME: path.join(dir, 'fresh-cache') })
    sink.add(outs)
    await sink.flush()
    expect(warnings).toEqual([])
    expect(settled.filter((s) => s.status !== 'pushed')).toEqual([])
    expect(outs.filter((p) => !inFileCache(cache.cacheDir, p))).toEqual([])
  })
})
