// The bundles under Deno (npm's `deno` package), as people run Deno-style scripts: `deno run -A` on the
// file, and piped into `deno run -A -`. The watcher is started with the same runtime it was bootstrapped with.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  DIST, ROOT, chainPaths, deleteFromStore, inFileCache, makeKeys, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake,
} from './helpers.js'
import type { Summary } from '../lib/summary.js'

const DENO = path.join(ROOT, 'node_modules', '.bin', 'deno')
const deno = (env: NodeJS.ProcessEnv, cwd: string, args: string[], input?: string) => runCmd(DENO, ['run', '--allow-all', ...args], { env, cwd, input })

describe('the bundles under Deno', () => {
  it('deno is installed by npm ci (a devDependency), not skipped', async () => {
    const v = await runCmd(DENO, ['--version'])
    expect(v.code, v.out).toBe(0)
    expect(v.stdout).toMatch(/^deno \d+\.\d+/)
  })

  it.each(['bootstrap', 'watch', 'build', 'push'])('%s.mjs --help, from a file and piped into deno run -', async (name) => {
    const empty = tmpDir('greedy-deno-help-')
    const file = await deno(process.env, empty, [path.join(DIST, `${name}.mjs`), '--help'])
    expect(file.code, file.out).toBe(0)
    expect(file.stdout).toContain(`Usage: greedy-nix ${name}`)
    const piped = await deno(process.env, empty, ['-', '--help'], fs.readFileSync(path.join(DIST, `${name}.mjs`), 'utf8'))
    expect(piped.code, piped.out).toBe(0)
    expect(piped.stdout).toContain(`Usage: greedy-nix ${name}`)
  })

  it('pipeline A fails late with its finished outputs cached; pipeline B, piped, substitutes them (every phase under Deno)', async () => {
    const dir = tmpDir('greedy-deno-')
    const cache = path.join(dir, 'cache')
    const [secret] = makeKeys(nixEnv(dir), `deno-${uid()}`)
    const prefix = `deno-${uid()}`
    const bundle = path.join(DIST, 'greedy-nix.mjs')
    // Pipeline A runs the bundle from a file; pipeline B pipes it in, as `curl … | deno run -A - …` does.
    const job = (n: string, how: 'file' | 'piped', failAt?: number) => {
      const project = path.join(dir, n)
      writeFlake(project, { prefix, chain: 4, failAt, sleep: 1 })
      const env = nixEnv(path.join(dir, `${n}-home`), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${cache}`, GREEDY_SIGNING_KEY: secret })
      const run = (...args: string[]) =>
        how === 'file' ? deno(env, project, [bundle, ...args]) : deno(env, project, ['-', ...args], fs.readFileSync(bundle, 'utf8'))
      return { project, env, run, summary: () => readJsonFile<Summary>(path.join(project, '.greedy-nix', 'summary.json')) }
    }
    const a = job('a', 'file', 3)
    const links = chainPaths(a.env, a.project, 4)
    expect((await a.run('bootstrap')).code).toBe(0)
    expect(fs.readFileSync(path.join(a.project, '.greedy-nix', 'watch.log'), 'utf8')).toContain('watching /nix/store')
    const built = await a.run('build')
    expect(built.code).not.toBe(0)
    expect(links.slice(0, 2).map((p) => inFileCache(cache, p))).toEqual([true, true])
    expect((await a.run('push')).code).toBe(0)
    expect(a.summary().incremental).toMatchObject({ pushed: 2, failed: 0 })

    deleteFromStore(a.env, links.slice(0, 2))
    const b = job('b', 'piped')
    expect((await b.run('bootstrap')).code).toBe(0)
    // Piped, bootstrap has no file of its own: it writes the watcher into the state dir and starts it there, under Deno.
    expect(fs.readFileSync(path.join(b.project, '.greedy-nix', 'watch.log'), 'utf8')).toContain('watching /nix/store')
    const watcherPid = fs.readFileSync(path.join(b.project, '.greedy-nix', 'watch.pid'), 'utf8').split('\n')[0]!.trim()
    expect(path.basename(fs.readlinkSync(`/proc/${watcherPid}/exe`))).toBe('deno') // a Deno-only image has no node to start it with
    const rebuilt = await b.run('build')
    expect(rebuilt.code, rebuilt.out).toBe(0)
    for (const p of links.slice(0, 2)) expect(rebuilt.out).toContain(`copying path '${p}' from 'file://${cache}'`)
    expect((await b.run('push')).code).toBe(0)
    expect(b.summary().build).toMatchObject({ exitCode: 0, built: 2, substituted: 2 })
    expect(b.summary().incremental).toMatchObject({ pushed: 2, failed: 0 }) // the watcher pushed what B built
    // B's links 3 and 4 are not A's (A's link 3 failed on purpose): B built them and its watcher pushed them.
    expect(chainPaths(b.env, b.project, 4).map((p) => inFileCache(cache, p))).toEqual([true, true, true, true])
  })
})
