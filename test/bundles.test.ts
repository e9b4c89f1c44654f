// The bundles are the product: copied alone into an empty folder, run with plain node, and piped
// into node as `curl … | node --input-type=module -` does.
import fs from 'node:fs'
import path from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { DIST, chainPaths, inFileCache, makeKeys, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake } from './helpers.js'

const COMMANDS = ['bootstrap', 'watch', 'build', 'push'] as const
const version = readJsonFile<{ version: string }>(path.join(DIST, '..', 'package.json')).version
let alone: string

beforeAll(() => {
  alone = tmpDir('greedy-bundles-')
  for (const f of [...COMMANDS, 'greedy-nix']) fs.copyFileSync(path.join(DIST, `${f}.mjs`), path.join(alone, `${f}.mjs`))
})

const node = (args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {}) =>
  runCmd(process.execPath, args, { cwd: opts.cwd ?? alone, env: opts.env ?? { PATH: process.env.PATH, HOME: alone }, input: opts.input })
const piped = (name: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) =>
  node(['--input-type=module', '-', ...args], { ...opts, input: fs.readFileSync(path.join(alone, `${name}.mjs`), 'utf8') })

describe('bundles, alone in an empty folder', () => {
  it('has no node_modules to lean on', () => {
    expect(fs.readdirSync(alone).sort()).toEqual(['bootstrap.mjs', 'build.mjs', 'greedy-nix.mjs', 'push.mjs', 'watch.mjs'])
    for (let d = alone; d !== path.dirname(d); d = path.dirname(d)) expect(fs.existsSync(path.join(d, 'node_modules'))).toBe(false)
  })

  it.each(COMMANDS)('%s.mjs answers --help and --version', async (name) => {
    const help = await node([`${name}.mjs`, '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain(`Usage: greedy-nix ${name}`)
    expect(help.stdout).toContain('GREEDY_STRICT')
    for (const line of help.stdout.split('\n')) expect(line.length, line).toBeLessThanOrEqual(100)
    const v = await node([`${name}.mjs`, '--version'])
    expect(v.stdout.trim()).toBe(`greedy-nix ${version}`)
  })

  it('greedy-nix.mjs dispatches to every command and rejects an unknown one', async () => {
    for (const name of [...COMMANDS, 'prune']) expect((await node(['greedy-nix.mjs', name, '--help'])).stdout).toContain(`Usage: greedy-nix ${name}`)
    const config = await node(['greedy-nix.mjs', 'help', 'config'])
    for (const v of ['ATTIC_SERVER', 'GREEDY_CACHE_URL', 'GREEDY_WATCH_MAX_AGE', 'GREEDY_DEBUG']) expect(config.stdout).toContain(v)
    expect((await node(['greedy-nix.mjs', 'help', 'prune'])).stdout).toContain('Usage: greedy-nix prune')
    // Each command's help names only the settings it reads.
    expect((await node(['greedy-nix.mjs', 'prune', '--help'])).stdout).not.toContain('ATTIC_SERVER')
    expect((await node(['greedy-nix.mjs', 'build', '--help'])).stdout).not.toContain('--cache-url')
    const bad = await node(['greedy-nix.mjs', 'deploy'])
    expect(bad.code).toBe(2)
    expect(bad.stdout).toContain('Commands (one per phase')
  })

  it.each(COMMANDS)('%s.mjs piped into node answers --help', async (name) => {
    const r = await piped(name, ['--help'])
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`Usage: greedy-nix ${name}`)
  })

  it('a whole job with every phase piped into node pushes to a file:// cache', async () => {
    const dir = tmpDir('greedy-piped-')
    const project = path.join(dir, 'project')
    const cache = path.join(dir, 'cache')
    const base = nixEnv(dir)
    const [secret] = makeKeys(base, `piped-${uid()}`)
    const env = { ...base, CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${cache}`, GREEDY_SIGNING_KEY: secret }
    writeFlake(project, { prefix: `piped-${uid()}`, chain: 2 })
    const links = chainPaths(env, project, 2)
    expect((await piped('bootstrap', [], { cwd: project, env })).code).toBe(0)
    const built = await piped('build', [], { cwd: project, env })
    expect(built.code).toBe(0)
    expect(links.map((p) => inFileCache(cache, p))).toEqual([true, true])
    const pushed = await piped('push', [], { cwd: project, env })
    expect(pushed.code).toBe(0)
    expect(pushed.stdout).toMatch(/pushed 2 store paths incrementally/)
    expect(pushed.out).not.toContain(secret)
  })
})
