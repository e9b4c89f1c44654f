// Multi-user Nix, as self-hosted shell runners have it: a nix-daemon owned by root, and the job
// running as an unprivileged user with NIX_REMOTE=daemon. The daemon ignores the substituters of a
// user it does not trust (Nix's daemon.cc: "ignoring untrusted substituter"), so pushing works but
// the next pipeline would silently rebuild everything: bootstrap must say so and name the fix.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  DIST, IMAGE_NIX_CONF, chainPaths, deleteFromStore, inFileCache, makeKeys, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake, type Ran,
} from './helpers.js'
import { startHttpCache, type Nginx } from './nginx.js'
import type { Summary } from '../lib/summary.js'

const USER = 'greedy-job'
const SOCKET = '/nix/var/nix/daemon-socket/socket'

let uidGid: { uid: number; gid: number }
let daemon: ChildProcess | undefined
const servers: Nginx[] = []

beforeAll(() => {
  expect(process.getuid?.(), 'the multi-user tests start a nix-daemon: run them as root').toBe(0)
  if (spawnSync('id', ['-u', USER]).status !== 0) {
    const r = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/bin/sh', USER], { encoding: 'utf8' })
    expect(r.status, `useradd ${USER}: ${r.stderr}`).toBe(0)
  }
  const id = (flag: string) => Number(spawnSync('id', [flag, USER], { encoding: 'utf8' }).stdout.trim())
  uidGid = { uid: id('-u'), gid: id('-g') }
})
afterEach(async () => {
  await stopDaemon()
  await Promise.all(servers.splice(0).map((s) => s.stop()))
})
afterAll(stopDaemon)

/** The system nix.conf of a multi-user install (the image's, plus what the admin adds), and a daemon reading it. */
async function startDaemon(confDir: string, adminLines: string[]): Promise<void> {
  await stopDaemon()
  fs.mkdirSync(confDir, { recursive: true })
  fs.writeFileSync(path.join(confDir, 'nix.conf'), [...IMAGE_NIX_CONF, ...adminLines, ''].join('\n'))
  fs.chmodSync(confDir, 0o755)
  fs.rmSync(SOCKET, { force: true })
  daemon = spawn('nix-daemon', [], { env: { ...process.env, NIX_CONF_DIR: confDir }, stdio: 'ignore' })
  const deadline = Date.now() + 10_000
  while (!(await canConnect(SOCKET))) {
    if (Date.now() > deadline || daemon.exitCode !== null) throw new Error('nix-daemon did not start')
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function stopDaemon(): Promise<void> {
  const d = daemon
  daemon = undefined
  if (!d || d.exitCode !== null) return
  await new Promise<void>((resolve) => {
    d.once('close', () => resolve())
    d.kill('SIGTERM')
  })
}

function canConnect(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socket)
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

/** The bundle where the job user can read it (the checkout may sit in a private folder). */
let bundle = ''
/** Run the bundle as the unprivileged job user, through the daemon. */
function asUser(env: NodeJS.ProcessEnv, cwd: string, ...args: string[]): Promise<Ran> {
  return runCmd('setpriv', [`--reuid=${uidGid.uid}`, `--regid=${uidGid.gid}`, '--clear-groups', process.execPath, bundle, ...args], { env, cwd })
}

describe('multi-user Nix: the job as an unprivileged user through a nix-daemon', () => {
  it('pushes and counts as the user; bootstrap names the trust fix; once the admin applies it, the next pipeline substitutes', async () => {
    const dir = tmpDir('greedy-multiuser-')
    fs.chmodSync(dir, 0o755)
    bundle = path.join(dir, 'greedy-nix.mjs')
    fs.copyFileSync(path.join(DIST, 'greedy-nix.mjs'), bundle)
    const http = await startHttpCache(path.join(dir, 'nginx'))
    servers.push(http)
    const [secret, pub] = makeKeys(nixEnv(path.join(dir, 'root')), `multiuser-${uid()}`)
    const prefix = `multiuser-${uid()}`
    const sysconf = path.join(dir, 'etc-nix')
    const job = (n: string) => {
      const home = path.join(dir, `${n}-home`)
      const project = path.join(home, 'project')
      fs.mkdirSync(project, { recursive: true })
      // The job reads the same system nix.conf as the daemon, like every user of a multi-user install.
      const env = { ...nixEnv(home), NIX_CONF_DIR: sysconf, NIX_REMOTE: 'daemon', USER, CI_PROJECT_DIR: project, GREEDY_CACHE_URL: http.url, GREEDY_SIGNING_KEY: secret }
      return { home, project, env, state: path.join(project, '.greedy-nix') }
    }
    const own = (p: string) => spawnSync('chown', ['-R', `${uidGid.uid}:${uidGid.gid}`, p])

    // Pipeline A: the admin has not trusted the cache.
    await startDaemon(sysconf, [])
    const a = job('a')
    writeFlake(a.project, { prefix, chain: 5, failAt: 4, sleep: 1 })
    const links = chainPaths(a.env, a.project, 5)
    own(a.home) // after the evaluation above: everything under the job's home is the job user's
    const boot = await asUser(a.env, a.project, 'bootstrap')
    expect(boot.code).toBe(0)
    // The URL as Nix knows it: bootstrap gives it to the job's Nix (NIX_CONFIG) with a trailing slash.
    const subUrl = `${http.url}/`
    expect(boot.out).toContain(`ignoring untrusted substituter '${subUrl}'`)
    expect(boot.out).toContain(`extra-trusted-substituters = ${subUrl}`)
    expect(boot.out).toContain(`extra-trusted-public-keys = ${pub}`)
    expect(boot.out).toContain(`extra-trusted-users = ${USER}`)
    expect(boot.out).not.toContain("this job's Nix substitutes from")
    // Strict mode makes a cache that will never be read a failure.
    const strictBoot = await asUser({ ...a.env, GREEDY_STRICT: '1' }, a.project, 'bootstrap')
    expect(strictBoot.code).toBe(1)
    expect((await asUser(a.env, a.project, 'bootstrap')).code).toBe(0)

    const built = await asUser(a.env, a.project, 'build')
    expect(built.code).not.toBe(0) // link 4 fails on purpose
    expect(links.slice(0, 3).map((p) => inFileCache(http.cacheDir, p))).toEqual([true, true, true])
    expect((await asUser(a.env, a.project, 'push')).code).toBe(0)
    const sa = readJsonFile<Summary>(path.join(a.state, 'summary.json'))
    expect(sa.build).toMatchObject({ built: 3, substituted: 0 })
    expect(sa.incremental).toMatchObject({ pushed: 3, failed: 0 })

    // The admin applies the fix bootstrap named; pipeline B on a fresh store substitutes.
    await startDaemon(sysconf, [`extra-trusted-substituters = ${subUrl}`, `extra-trusted-public-keys = ${pub}`])
    deleteFromStore(nixEnv(path.join(dir, 'root')), links.slice(0, 3))
    const b = job('b')
    writeFlake(b.project, { prefix, chain: 5, sleep: 1 })
    expect(chainPaths(b.env, b.project, 5).slice(0, 3)).toEqual(links.slice(0, 3))
    own(b.home)
    const bootB = await asUser(b.env, b.project, 'bootstrap')
    expect(bootB.code).toBe(0)
    expect(bootB.out).not.toContain('ignoring untrusted substituter')
    expect(bootB.out).toContain(`this job's Nix substitutes from ${subUrl}`) // NIX_CONFIG reaches the daemon as a user nix.conf would
    const rebuilt = await asUser(b.env, b.project, 'build')
    expect(rebuilt.code).toBe(0)
    for (const p of links.slice(0, 3)) expect(rebuilt.out).toContain(`copying path '${p}' from '${http.url}'`)
    expect((await asUser(b.env, b.project, 'push')).code).toBe(0)
    expect(readJsonFile<Summary>(path.join(b.state, 'summary.json')).build).toMatchObject({ exitCode: 0, built: 2, substituted: 3 })
  })
})
