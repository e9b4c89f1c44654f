// A cancelled job: SIGTERM (GitLab's cancel) or SIGINT (Ctrl-C) reaches `build` mid-build.
// Nix stops, what was built is pushed within the budget, the watcher ends, the state files are
// complete, no process of ours is left, and the exit code is the one a shell would give.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DIST, chainPaths, processesWith, greedy, inFileCache, makeKeys, nixEnv, readJsonFile, tmpDir, uid, writeFlake } from './helpers.js'
import type { BuildSummary } from '../lib/summary.js'

describe('a cancelled build', () => {
  it.each([['SIGTERM', 143], ['SIGINT', 130]] as const)('%s: nix stopped, finished work pushed, watcher ended, nothing left, exit %i', async (signal, code) => {
    const dir = tmpDir('greedy-cancel-')
    const project = path.join(dir, 'project')
    const cache = path.join(dir, 'cache')
    const env = nixEnv(path.join(dir, 'home'), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${cache}` })
    const [key] = makeKeys(env, `cancel-${uid()}`)
    env.GREEDY_SIGNING_KEY = key
    const prefix = `cancel-${uid()}`
    writeFlake(project, { prefix, chain: 4, sleep: 2 })
    const links = chainPaths(env, project, 4)
    expect((await greedy(env, project, 'bootstrap')).code).toBe(0)

    const started = Date.now()
    const child = spawn(process.execPath, [path.join(DIST, 'greedy-nix.mjs'), 'build'], { cwd: project, env, stdio: 'ignore' })
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
    while (!inFileCache(cache, links[0]!) && Date.now() - started < 60_000) await new Promise((r) => setTimeout(r, 50))
    child.kill(signal) // link 2 is building now
    const exitCode = await exited
    const seconds = (Date.now() - started) / 1000

    expect(exitCode).toBe(code)
    expect(inFileCache(cache, links[0]!)).toBe(true)
    expect(inFileCache(cache, links[3]!)).toBe(false) // nix did stop
    const state = path.join(project, '.greedy-nix')
    expect(readJsonFile<BuildSummary>(path.join(state, 'build.json'))).toMatchObject({ runs: 1, built: 1 })
    expect(fs.existsSync(path.join(state, 'watch.pid'))).toBe(false)
    await new Promise((r) => setTimeout(r, 200)) // let the kernel reap
    expect(processesWith(prefix)).toEqual([])
    expect(processesWith(state)).toEqual([])
    console.log(`${signal}: build exited ${exitCode} ${seconds.toFixed(1)}s after it started; no process left`)

    const pushed = await greedy(env, project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.stdout).toMatch(/pushed 1 store paths incrementally/)
  })
})
