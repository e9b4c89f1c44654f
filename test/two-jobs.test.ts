// Two jobs on one machine (a shell executor runs them side by side, each with its own project and
// state dir, one /nix/store): each pushes, counts and drains only its own work.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DIST, chainPaths, greedy, inFileCache, makeKeys, nixArgs, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake } from './helpers.js'
import { processAlive } from '../lib/state.js'
import type { Summary } from '../lib/summary.js'

function job(dir: string, name: string, chain: number) {
  const project = path.join(dir, name)
  const cache = path.join(dir, `${name}-cache`)
  const env = nixEnv(path.join(dir, `${name}-home`), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${cache}` })
  env.GREEDY_SIGNING_KEY = makeKeys(env, `${name}-${uid()}`)[0]
  writeFlake(project, { prefix: `two-${name}-${uid()}`, chain, sleep: 1 })
  return { project, cache, env, links: chainPaths(env, project, chain), summary: () => readJsonFile<Summary>(path.join(project, '.greedy-nix', 'summary.json')) }
}

describe('two jobs on one machine', () => {
  it('each pushes, counts and drains only its own paths', async () => {
    const dir = tmpDir('greedy-two-')
    const a = job(dir, 'a', 3)
    const b = job(dir, 'b', 2)
    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0)
    expect((await greedy(b.env, b.project, 'bootstrap')).code).toBe(0)
    const [ba, bb] = await Promise.all([greedy(a.env, a.project, 'build'), greedy(b.env, b.project, 'build')])
    expect([ba.code, bb.code]).toEqual([0, 0])
    const [pa, pb] = await Promise.all([greedy(a.env, a.project, 'push'), greedy(b.env, b.project, 'push')])
    expect(pa.stdout).toMatch(/pushed 3 store paths incrementally, 0 in the final push, 0 failed/)
    expect(pb.stdout).toMatch(/pushed 2 store paths incrementally, 0 in the final push, 0 failed/)
    expect(a.links.map((p) => inFileCache(a.cache, p))).toEqual([true, true, true])
    expect(b.links.map((p) => inFileCache(b.cache, p))).toEqual([true, true])
    // Neither cache received the other job's work.
    expect(b.links.map((p) => inFileCache(a.cache, p))).toEqual([false, false])
    expect(a.links.map((p) => inFileCache(b.cache, p))).toEqual([false, false, false])
    expect(a.summary().incremental).toMatchObject({ pushed: 3, skipped: 0 })
    expect(b.summary().incremental).toMatchObject({ pushed: 2, skipped: 0 })
  })
})

/** The watcher's pid, from its pid file. */
const watcherPid = (project: string) => Number(fs.readFileSync(path.join(project, '.greedy-nix', 'watch.pid'), 'utf8').split('\n')[0])

/** Resolves true once `pid` has ended, false after `ms`. */
async function endsWithin(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (!processAlive(pid)) return true
    await new Promise((r) => setTimeout(r, 100))
  }
  return !processAlive(pid)
}

describe('a watcher never outlives its job on a shared runner', () => {
  it('ends itself within seconds when its state dir is removed (the job\'s folder cleaned up)', async () => {
    const a = job(tmpDir('greedy-gone-'), 'a', 1)
    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0)
    const pid = watcherPid(a.project)
    fs.rmSync(path.join(a.project, '.greedy-nix'), { recursive: true, force: true })
    expect(await endsWithin(pid, 10_000)).toBe(true)
  })

  it('a new job\'s bootstrap in the same folder takes over: the earlier watcher ends, the new one pushes with the new settings', async () => {
    const dir = tmpDir('greedy-takeover-')
    const a = job(dir, 'a', 2)
    expect((await greedy(a.env, a.project, 'bootstrap')).code).toBe(0) // a job that crashed: no build, no push
    const first = watcherPid(a.project)
    const otherCache = path.join(dir, 'next-cache')
    const next = { ...a.env, GREEDY_CACHE_URL: `file://${otherCache}` }
    const boot = await greedy(next, a.project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toContain(`stopped the watcher an earlier job left running in ${path.join(a.project, '.greedy-nix')} (pid ${first})`)
    expect(await endsWithin(first, 10_000)).toBe(true)
    expect(watcherPid(a.project)).not.toBe(first)
    expect((await greedy(next, a.project, 'build')).code).toBe(0)
    expect((await greedy(next, a.project, 'push')).code).toBe(0)
    expect(a.links.map((p) => inFileCache(otherCache, p))).toEqual([true, true])
  })

  it('a watcher whose job crashed does not change what the next job pushes: its plain nix build is pushed as it builds', async () => {
    const dir = tmpDir('greedy-stale-')
    const stale = job(dir, 'stale', 1)
    // The crashed job: its shell ran bootstrap and is gone; its watcher lives on (its folder is still there).
    const sh = await runCmd('sh', ['-c', `"${process.execPath}" "${path.join(DIST, 'greedy-nix.mjs')}" bootstrap`], { env: stale.env, cwd: stale.project })
    expect(sh.code).toBe(0)
    const stalePid = watcherPid(stale.project)
    try {
      const b = job(dir, 'b', 2)
      expect((await greedy(b.env, b.project, 'bootstrap')).code).toBe(0)
      expect((await runCmd('nix', nixArgs('build', '--no-link'), { env: b.env, cwd: b.project })).code).toBe(0)
      expect((await greedy(b.env, b.project, 'watch', 'drain')).code).toBe(0)
      expect(b.links.map((p) => inFileCache(b.cache, p))).toEqual([true, true])
      expect((await greedy(b.env, b.project, 'push')).stdout).toMatch(/pushed 2 store paths incrementally/)
    } finally {
      process.kill(stalePid, 'SIGTERM')
    }
  })

  it('ends itself after GREEDY_WATCH_MAX_AGE; a bad value is named and does not block', async () => {
    const a = job(tmpDir('greedy-age-'), 'a', 1)
    expect((await greedy({ ...a.env, GREEDY_WATCH_MAX_AGE: '1' }, a.project, 'bootstrap')).code).toBe(0)
    const pid = watcherPid(a.project)
    expect(await endsWithin(pid, 10_000)).toBe(true)
    expect(fs.readFileSync(path.join(a.project, '.greedy-nix', 'watch.log'), 'utf8')).toContain('older than GREEDY_WATCH_MAX_AGE (1s)')
    const bad = await greedy({ ...a.env, GREEDY_WATCH_MAX_AGE: '2h' }, a.project, 'bootstrap')
    expect(bad.code).toBe(0)
    expect(bad.out).toContain('GREEDY_WATCH_MAX_AGE: "2h" expected a whole number of seconds (1 or more); using the default, 2678400')
    // A tuning typo leaves the cache on: the watcher runs, with the default, until the job's push ends it.
    const again = watcherPid(a.project)
    expect((await greedy(a.env, a.project, 'push')).code).toBe(0)
    expect(await endsWithin(again, 10_000)).toBe(true)
  })
})
