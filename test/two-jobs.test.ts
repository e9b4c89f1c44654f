// Two jobs on one machine (a shell executor runs them side by side, each with its own project and
// state dir, one /nix/store): each pushes, counts and drains only its own work.
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { chainPaths, greedy, inFileCache, makeKeys, nixEnv, readJsonFile, tmpDir, uid, writeFlake } from './helpers.js'
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
