// What a CI user sees from the commands when something is off: the non-blocking rule, strict
// mode, the watcher's status codes, the pid-file guard. Runs the bundle as built.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { DIST, NIX_SYSTEM, chainPaths, greedy, inFileCache, isValid, makeKeys, nixArgs, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake, writeShFlake } from './helpers.js'
import { freePort } from './nginx.js'
import { formatPidFile, processStartTime } from '../lib/state.js'
import type { Summary } from '../lib/summary.js'

const children: Array<ReturnType<typeof spawn>> = []
afterEach(() => children.splice(0).forEach((c) => c.kill('SIGKILL')))

function job(extra: NodeJS.ProcessEnv = {}) {
  const dir = tmpDir('greedy-cli-')
  const project = path.join(dir, 'project')
  fs.mkdirSync(project)
  return { dir, project, state: path.join(project, '.greedy-nix'), env: nixEnv(dir, { CI_PROJECT_DIR: project, ...extra }) }
}

describe('without a cache', () => {
  it('bootstrap says so in one line and does nothing else', async () => {
    const j = job()
    const r = await greedy(j.env, j.project, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out.trim().split('\n')).toEqual(['greedy-nix: no cache configured (set ATTIC_SERVER or GREEDY_CACHE_URL): building without a cache'])
    expect(fs.existsSync(j.state)).toBe(false)
  })

  it('build still returns Nix exit code, and push reports without failing', async () => {
    const j = job()
    writeFlake(j.project, { prefix: `nocache-${uid()}`, chain: 2, failAt: 2 })
    const plain = await runCmd('nix', nixArgs('build', '--no-link'), { env: j.env, cwd: j.project })
    const r = await greedy(j.env, j.project, 'build')
    expect(r.code).toBe(plain.code)
    expect(r.code).not.toBe(0)
    expect(r.out).toContain('link 2 fails on purpose')
    expect(r.out).not.toContain('warning')
    const p = await greedy(j.env, j.project, 'push')
    expect(p.code).toBe(0)
  })
})

describe("a new user's mistakes: each is named with its fix, and nothing is lost", () => {
  it('an unknown option is named, never swallowed with the next word; Nix options are pointed after --', async () => {
    const j = job()
    writeFlake(j.project, { prefix: `flags-${uid()}`, chain: 1 })
    const dry = await greedy(j.env, j.project, 'build', '--dry-run', '.#l1')
    expect(dry.code).toBe(2)
    expect(dry.out).toContain('greedy-nix build: unknown option --dry-run')
    expect(dry.out).toContain("nix build's own options go after --, e.g. greedy-nix build .#default -- --dry-run")
    expect(dry.out).not.toContain('nix build exited') // nothing was built in its place
    expect(fs.existsSync(path.join(j.project, 'result'))).toBe(false)
    const jobs = await greedy(j.env, j.project, 'build', '--max-jobs', '2')
    expect([jobs.code, jobs.out.includes('unknown option --max-jobs')]).toEqual([2, true])
    const typo = await greedy(j.env, j.project, 'push', '--cache-ulr', 'file:///tmp/x')
    expect(typo.code).toBe(2)
    expect(typo.out).toContain('greedy-nix push: unknown option --cache-ulr (did you mean --cache-url?)')
    const missing = await greedy(j.env, j.project, 'build', '--installables')
    expect(missing.out).toContain('greedy-nix build: --installables needs a value')
    const command = await greedy(j.env, j.project, 'biuld')
    expect(command.code).toBe(2)
    expect(command.out).toContain('unknown command "biuld" (did you mean build?)')
    expect(command.out).toContain('Usage: greedy-nix <command>')
    // And the same build, written as the message says, works.
    const right = await greedy(j.env, j.project, 'build', '.#l1', '--', '--max-jobs', '2')
    expect(right.code, right.out).toBe(0)
  })

  it('installables beyond what one argument may hold (128 KiB) go through --installables-file; the header stays one short line', async () => {
    const j = job()
    // Few installables with a long name, rather than thousands: Nix 2.24 takes minutes to evaluate 5,000 (seen).
    const name = `many-${uid()}-${'x'.repeat(1000)}`
    writeShFlake(j.project, [`    one = mk "many-${uid()}" "echo one > $out";`], `"${name}" = one;`)
    const list = Array.from({ length: 150 }, () => `.#packages.${NIX_SYSTEM}.${name}`)
    expect(JSON.stringify(list).length).toBeGreaterThan(128 * 1024) // Linux's MAX_ARG_STRLEN for one argument (E2BIG)
    fs.writeFileSync(path.join(j.project, 'installables'), JSON.stringify(list))
    const r = await greedy(j.env, j.project, 'build', '--installables-file', 'installables')
    expect(r.code, r.out.slice(-2000)).toBe(0)
    expect(fs.existsSync(path.join(j.project, 'result'))).toBe(true)
    const header = r.stdout.split('\n').find((l) => l.startsWith('greedy-nix: nix build '))!
    expect(header.length).toBeLessThan(250)
    expect(header).toMatch(/ … \(\d+ more arguments\)$/)
  })

  it('a typo in a tuning setting falls back to its default; the cache stays on (strict: exit 1)', async () => {
    const cache = path.join(tmpDir('greedy-tuning-'), 'cache')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}`, GREEDY_DRAIN_TIMEOUT: '5m' })
    writeFlake(j.project, { prefix: `tuning-${uid()}`, chain: 1 })
    const boot = await greedy(j.env, j.project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toContain('GREEDY_DRAIN_TIMEOUT: "5m" expected a number of seconds (0 or more); using the default, 120')
    expect(boot.out).not.toContain('without the cache')
    for (const phase of ['build', 'push']) expect((await greedy(j.env, j.project, phase)).code).toBe(0)
    expect(chainPaths(j.env, j.project, 1).map((p) => inFileCache(cache, p))).toEqual([true])
    expect((await greedy({ ...j.env, GREEDY_STRICT: 'true' }, j.project, 'bootstrap')).code).toBe(1)
  })

  it('a cache URL that is wrong says which setting to fix, not "no cache configured"', async () => {
    const j = job({ GREEDY_CACHE_URL: 'htp://cache.example.com' })
    const r = await greedy(j.env, j.project, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out).toContain('GREEDY_CACHE_URL: "htp://cache.example.com" expected a Nix store URL with scheme file://')
    expect(r.out).toContain('building without a cache: fix the setting named above')
    expect(r.out).not.toContain('no cache configured')
  })

  it('an unsigned cache is named at bootstrap with how to make a key, and the command it gives works as written', async () => {
    const cache = path.join(tmpDir('greedy-unsigned-'), 'cache')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    const r = await greedy(j.env, j.project, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out).toContain('GREEDY_CACHE_URL has no signing key')
    expect(r.out).toContain('not signed by any of the keys in trusted-public-keys')
    const command = /`(nix [^`]+)`/.exec(r.out)![1]!
    const made = await runCmd('sh', ['-c', command], { env: j.env }) // on the image's nix.conf: no experimental feature on
    expect(made.code, made.out).toBe(0)
    expect(made.stdout).toMatch(/^ci-cache-1:\S+$/m)
    const signed = await greedy({ ...j.env, GREEDY_SIGNING_KEY: made.stdout.trim() }, j.project, 'bootstrap')
    expect(signed.out).not.toContain('no signing key')
    expect((await greedy({ ...j.env, GREEDY_STRICT: 'true' }, j.project, 'bootstrap')).code).toBe(1)
  })

  it('build and push without bootstrap warn; push still puts the results in the configured cache', async () => {
    const cache = path.join(tmpDir('greedy-noboot-'), 'cache')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    writeFlake(j.project, { prefix: `noboot-${uid()}`, chain: 2 })
    const links = chainPaths(j.env, j.project, 2)
    const built = await greedy(j.env, j.project, 'build')
    expect(built.code).toBe(0)
    expect(built.out).toContain('greedy-nix bootstrap did not run in this job')
    expect(built.out).toContain('nothing is pushed while this builds')
    const pushed = await greedy(j.env, j.project, 'push')
    expect(pushed.code).toBe(0)
    expect(pushed.out).toContain('the final push still goes to the configured cache')
    expect(pushed.stdout).toMatch(/pushed 0 store paths incrementally, 2 in the final push, 0 failed/)
    expect(links.map((p) => inFileCache(cache, p))).toEqual([true, true])
    // Another job, its cache given as a flag only.
    fs.rmSync(j.state, { recursive: true })
    const other = path.join(tmpDir('greedy-noboot-'), 'cache')
    const flagged = await greedy({ ...j.env, GREEDY_CACHE_URL: undefined }, j.project, 'push', '--cache-url', `file://${other}`)
    expect(flagged.stdout).toMatch(/2 in the final push, 0 failed/)
    expect(links.map((p) => inFileCache(other, p))).toEqual([true, true])
  })

  it("a failed build leaves an earlier run's ./result: push says so and does not push it as this job's", async () => {
    const cache = path.join(tmpDir('greedy-stale-'), 'cache')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    writeFlake(j.project, { prefix: `stale-${uid()}`, chain: 1 })
    expect((await runCmd('nix', nixArgs('build', '.#l1'), { env: j.env, cwd: j.project })).code).toBe(0) // an earlier job's build
    const hourAgo = Date.now() / 1000 - 3600
    fs.lutimesSync(path.join(j.project, 'result'), hourAgo, hourAgo)
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    expect((await greedy(j.env, j.project, 'build', '.#nope')).code).not.toBe(0)
    const pushed = await greedy(j.env, j.project, 'push')
    expect(pushed.out).toContain("not pushing ./result: older than this job's build (an earlier run's)")
    expect(pushed.stdout).toMatch(/0 in the final push/)
    expect(chainPaths(j.env, j.project, 1).map((p) => inFileCache(cache, p))).toEqual([false])
  })

  it('a second push in the job pushes again with its key, blames no executor, and keeps the first summary', async () => {
    const cache = path.join(tmpDir('greedy-twice-'), 'cache')
    const [secret] = makeKeys(nixEnv(tmpDir('greedy-twice-keys-')), `twice-${uid()}`)
    const j = job({ GREEDY_CACHE_URL: `file://${cache}`, GREEDY_SIGNING_KEY: secret })
    writeFlake(j.project, { prefix: `twice-${uid()}`, chain: 2 })
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    process.kill(Number(fs.readFileSync(path.join(j.state, 'watch.pid'), 'utf8').split('\n')[0]), 'SIGKILL') // the docker executor, early
    expect((await greedy(j.env, j.project, 'build')).code).toBe(0)
    const first = await greedy(j.env, j.project, 'push')
    expect(first.stdout).toMatch(/in the final push, 0 failed/)
    const before = readJsonFile<Summary>(path.join(j.state, 'summary.json'))
    fs.rmSync(cache, { recursive: true }) // what the second push must put back
    const second = await greedy(j.env, j.project, 'push')
    expect(second.code).toBe(0)
    expect(second.out).toContain('push already ran in this job: pushing again, and adding to its summary')
    expect(second.out).not.toContain('executor')
    expect(second.out).not.toMatch(/failed to push|signing-key|No such file/)
    const after = readJsonFile<Summary>(path.join(j.state, 'summary.json'))
    expect(after.final.pushed, second.out).toBe(before.final.pushed + 2)
    expect(after.failures).toEqual([])
    expect(chainPaths(j.env, j.project, 2).map((p) => inFileCache(cache, p))).toEqual([true, true])
    expect(fs.existsSync(path.join(j.state, 'secrets'))).toBe(false)
  })
})

describe("the runner's nix.conf: a job leaves it as it found it", () => {
  // greedy-nix 0.1.0 wrote this block into the user's nix.conf and never took it out: every later job on a
  // shell runner, of any project, kept substituting from that cache and trusting its key.
  const userLines = 'max-jobs = 3\n'
  const stale = '# greedy-nix begin\nextra-substituters = http://127.0.0.1:9/other-project\nextra-trusted-public-keys = other:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n# greedy-nix end\n'

  it.each([
    ['no cache configured', {}],
    ['a file:// cache', { GREEDY_CACHE_URL: 'file:///tmp/greedy-unused-cache' }],
  ])('%s: bootstrap removes the block an earlier job left, keeps the user\'s lines, and no phase writes there', async (_name, extra) => {
    const j = job(extra)
    const conf = path.join(j.env.XDG_CONFIG_HOME!, 'nix', 'nix.conf')
    fs.mkdirSync(path.dirname(conf), { recursive: true })
    fs.writeFileSync(conf, userLines + stale)
    writeFlake(j.project, { prefix: `conf-${uid()}`, chain: 1 })
    const boot = await greedy(j.env, j.project, 'bootstrap')
    expect(boot.code).toBe(0)
    expect(boot.out).toContain(`removed the cache settings an earlier job left in ${conf}`)
    expect(fs.readFileSync(conf, 'utf8')).toBe(userLines)
    for (const phase of ['build', 'push']) expect((await greedy(j.env, j.project, phase)).code).toBe(0)
    expect(fs.readFileSync(conf, 'utf8')).toBe(userLines)
  })
})

describe('on Nix as the nixos/nix image ships it (no experimental feature enabled)', () => {
  it('plain `nix build` of a flake is refused there; every greedy-nix phase works and caches', async () => {
    const cache = path.join(tmpDir('greedy-image-'), 'cache')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    expect(fs.readFileSync(path.join(j.env.NIX_CONF_DIR!, 'nix.conf'), 'utf8')).not.toMatch(/experimental-features/)
    writeFlake(j.project, { prefix: `image-${uid()}`, chain: 2 })
    const plain = await runCmd('nix', ['build', '--no-link'], { env: j.env, cwd: j.project })
    expect(plain.code).not.toBe(0)
    expect(plain.stderr).toMatch(/experimental Nix feature 'nix-command' is disabled/)
    for (const phase of ['bootstrap', 'build', 'push']) {
      const r = await greedy(j.env, j.project, phase)
      expect(r.code, r.out).toBe(0)
      expect(r.out).not.toContain('experimental Nix feature')
    }
    expect(chainPaths(j.env, j.project, 2).map((p) => inFileCache(cache, p))).toEqual([true, true])
  })
})

describe('cache problems never fail the job unless GREEDY_STRICT=1', () => {
  it('a bad value is named, and the job goes on without the cache', async () => {
    const j = job({ GREEDY_CACHE_URL: 'not a url', GREEDY_DRAIN_TIMEOUT: '-3' })
    const r = await greedy(j.env, j.project, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out).toContain('GREEDY_CACHE_URL: "not a url" expected a Nix store URL')
    expect(r.out).toContain('GREEDY_DRAIN_TIMEOUT: "-3" expected a number of seconds')
    const strict = await greedy({ ...j.env, GREEDY_STRICT: '1' }, j.project, 'bootstrap')
    expect(strict.code).toBe(1)
    expect(strict.out).toContain('GREEDY_CACHE_URL: "not a url"')
  })

  it.each([
    ['ATTIC_TOKEN_FILE', { ATTIC_SERVER: 'http://127.0.0.1:9', ATTIC_TOKEN_FILE: 'no/such/token' }, /ATTIC_TOKEN_FILE: cannot read ".*\/no\/such\/token" \(ENOENT\)/],
    ['GREEDY_SIGNING_KEY_FILE', { GREEDY_CACHE_URL: 'file:///tmp/greedy-unused-cache', GREEDY_SIGNING_KEY_FILE: '.' }, /GREEDY_SIGNING_KEY_FILE: cannot read ".*" \(EISDIR\)/],
  ])('a %s that cannot be read is named; the job goes on without the cache, or fails in strict mode', async (_name, env, message) => {
    const j = job(env)
    const r = await greedy(j.env, j.project, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out).toMatch(message)
    expect(fs.existsSync(path.join(j.state, 'watch.pid'))).toBe(false) // no cache: no watcher
    const strict = await greedy({ ...j.env, GREEDY_STRICT: '1' }, j.project, 'bootstrap')
    expect(strict.code).toBe(1)
    expect(strict.out).toMatch(message)
  })

  it('an installable that does not exist: Nix names it, build returns Nix\'s exit code', async () => {
    const cache = tmpDir('greedy-cli-cache-')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    writeFlake(j.project, { prefix: `nosuch-${uid()}`, chain: 1 })
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    const r = await greedy(j.env, j.project, 'build', '.#no-such-package')
    expect(r.code).toBe(1)
    expect(r.out).toMatch(/does not provide attribute 'packages\.[\w-]+\.no-such-package'/)
    expect(r.out).toMatch(/nix build exited 1 after \d+\.\d+s: 0 built, 0 substituted/)
    expect((await greedy(j.env, j.project, 'push')).code).toBe(0)
  })

  it('an unreachable attic server warns (exit 0), or fails in strict mode; the token is never printed', async () => {
    const token = `secret-${uid()}`
    const closed = await freePort() // nothing listens there
    const j = job({ ATTIC_SERVER: `http://127.0.0.1:${closed}`, ATTIC_TOKEN: token })
    const r = await greedy(j.env, j.project, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out).toContain(`no attic server answered: http://127.0.0.1:${closed} (ECONNREFUSED)`)
    expect(r.out).toContain('GREEDY_STRICT=true')
    const strict = await greedy({ ...j.env, GREEDY_STRICT: '1' }, j.project, 'bootstrap')
    expect(strict.code).toBe(1)
    expect(r.out + strict.out).not.toContain(token)
  })
})

describe('greedy-nix build', () => {
  const greedyJob = () => {
    const cache = tmpDir('greedy-cli-cache-')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    writeFlake(j.project, { prefix: `keepgoing-${uid()}`, chain: 3, sleep: 1, sideFails: true })
    return { ...j, cache, links: chainPaths(j.env, j.project, 3) }
  }

  it('keeps building (and pushing) the independent chain when another derivation fails, and skips GREEDY_EXCLUDE', async () => {
    const j = greedyJob()
    // Excluded paths are not pushed on their own (a dependant's closure would still carry them).
    const env = { ...j.env, GREEDY_EXCLUDE: `${path.basename(j.links[2]!)}$` }
    expect((await greedy(env, j.project, 'bootstrap')).code).toBe(0)
    const r = await greedy(env, j.project, 'build', '--', '--max-jobs', '2')
    expect(r.code).toBe(1) // Nix's exit code for a failed build
    expect(r.out).toContain('the side derivation fails')
    expect(j.links.map((p) => inFileCache(j.cache, p))).toEqual([true, true, false])
    expect((await greedy(env, j.project, 'push')).code).toBe(0)
    const s = readJsonFile<Summary>(path.join(j.state, 'summary.json'))
    expect(s.build).toMatchObject({ exitCode: 1, built: 3 })
    expect(s.incremental).toMatchObject({ pushed: 2, skipped: 1 })
  })

  it('--no-keep-going stops at the first failure, as plain nix build does', async () => {
    const j = greedyJob()
    const r = await greedy(j.env, j.project, 'build', '--no-keep-going', '--', '--max-jobs', '2')
    expect(r.code).toBe(1)
    expect(r.out).toContain('the side derivation fails')
    expect(isValid(j.env, j.links[2]!)).toBe(false)
  })

  it('push pushes the closures of the paths it is given', async () => {
    const cache = tmpDir('greedy-cli-cache-')
    const j = job({ GREEDY_CACHE_URL: `file://${cache}` })
    writeFlake(j.project, { prefix: `pushargs-${uid()}`, chain: 3 })
    const links = chainPaths(j.env, j.project, 3)
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    expect((await greedy(j.env, j.project, 'watch', 'stop')).code).toBe(0) // pushes only from the final push below
    expect((await greedy(j.env, j.project, 'build', '--', '--no-link')).code).toBe(0)
    const r = await greedy(j.env, j.project, 'push', links[1]!)
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/pushed 0 store paths incrementally, 2 in the final push, 0 failed/)
    expect(links.map((p) => inFileCache(cache, p))).toEqual([true, true, false])
  })

  it('adds up the counts of several build calls in one job', async () => {
    const j = job()
    writeFlake(j.project, { prefix: `twice-${uid()}`, chain: 2 })
    expect((await greedy(j.env, j.project, 'build', '.#l1')).code).toBe(0)
    expect((await greedy(j.env, j.project, 'build', '.#l2')).code).toBe(0)
    expect((await greedy(j.env, j.project, 'push')).code).toBe(0)
    expect(readJsonFile<Summary>(path.join(j.state, 'summary.json')).build).toMatchObject({ exitCode: 0, built: 2, runs: 2 })
  })
})

describe('job logs', () => {
  /** stdout and stderr in one pipe, in order, as a GitLab runner records them. */
  const merged = (env: NodeJS.ProcessEnv, cwd: string, ...args: string[]) =>
    runCmd('sh', ['-c', 'exec "$0" "$@" 2>&1', process.execPath, path.join(DIST, 'greedy-nix.mjs'), ...args], { env, cwd })

  it('in a GitLab job, details sit in collapsed sections while errors and the summary stay in sight', async () => {
    const j = job({ GREEDY_CACHE_URL: `file://${tmpDir('greedy-cli-cache-')}`, GITLAB_CI: 'true' })
    const prefix = `sections-${uid()}`
    writeFlake(j.project, { prefix, chain: 2, failAt: 2 })
    const log = (await merged(j.env, j.project, 'bootstrap')).out + (await merged(j.env, j.project, 'build')).out + (await merged(j.env, j.project, 'push')).out
    const at = (marker: RegExp) => log.search(marker)
    for (const name of ['bootstrap', 'build', 'push']) {
      expect(at(new RegExp(`\\x1b\\[0Ksection_start:\\d+:greedy_${name}\\[collapsed=true\\]`))).toBeGreaterThanOrEqual(0)
      expect(at(new RegExp(`section_end:\\d+:greedy_${name}\\r`))).toBeGreaterThan(0)
    }
    const buildEnd = at(/section_end:\d+:greedy_build/)
    expect(log.lastIndexOf('failed with exit code 7')).toBeGreaterThan(buildEnd) // repeated outside the section
    // The builder's own output (in a real job, the compiler's error) is in sight too, under the derivation's name.
    const name = `${prefix}-2`
    expect(log.lastIndexOf(`${name}: the builder failed; its last `)).toBeGreaterThan(buildEnd)
    expect(log.lastIndexOf(`  ${name}> link 2 fails on purpose`)).toBeGreaterThan(buildEnd)
    expect(log).toMatch(new RegExp(`nix build exited 1 after \\d+\\.\\d+s: 1 built, 0 substituted, 1 failed \\(${name}\\)`))
    const build = readJsonFile<Summary>(path.join(j.state, 'summary.json')).build
    expect(build.failed).toEqual([expect.stringMatching(new RegExp(`^/nix/store/[0-9a-z]{32}-${name}\\.drv$`))])
    expect(build.seconds).toBeGreaterThan(0)
    expect(at(/pushed 1 store paths incrementally/)).toBeGreaterThan(at(/section_end:\d+:greedy_push/))
    expect(log).not.toMatch(/\x1b\[3\d/) // NO_COLOR wins over GitLab's colour
  })

  it('colours GitLab logs (GitLab renders ANSI although TERM=dumb), and nothing else that is not a terminal', async () => {
    const j = job()
    const env = { ...j.env, NO_COLOR: undefined, TERM: 'dumb', GREEDY_CACHE_URL: 'nope' }
    expect((await merged({ ...env, GITLAB_CI: 'true' }, j.project, 'bootstrap')).out).toMatch(/\x1b\[33mgreedy-nix: warning:/)
    expect((await merged(env, j.project, 'bootstrap')).out).not.toContain('\x1b[')
  })
})

describe('greedy-nix watch', () => {
  it('status exits 0 while the watcher runs and 3 once it is stopped', async () => {
    const j = job({ GREEDY_CACHE_URL: `file://${tmpDir('greedy-cli-cache-')}` })
    expect((await greedy(j.env, j.project, 'watch', 'status')).code).toBe(3)
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    const running = await greedy(j.env, j.project, 'watch', 'status')
    expect(running.code).toBe(0)
    expect(running.out).toMatch(/running \(pid \d+\)/)
    const drained = await greedy(j.env, j.project, 'watch', 'drain')
    expect(drained.code).toBe(0)
    expect((await greedy(j.env, j.project, 'watch', 'status')).code).toBe(0) // drain leaves it running
    const stopped = await greedy(j.env, j.project, 'watch', 'stop')
    expect(stopped.code).toBe(0)
    expect(stopped.out).toMatch(/stopped: 0 pushed, 0 already cached, 0 failed, 0 pending/)
    expect((await greedy(j.env, j.project, 'watch', 'status')).code).toBe(3)
  })

  it('never signals a process whose pid the pid file names but which is not our watcher', async () => {
    const j = job({ GREEDY_CACHE_URL: `file://${tmpDir('greedy-cli-cache-')}` })
    const other = spawn('sleep', ['60'], { stdio: 'ignore' })
    children.push(other)
    fs.mkdirSync(j.state, { recursive: true })
    // Our watcher died and its pid went to another process: the start time does not match.
    fs.writeFileSync(path.join(j.state, 'watch.pid'), formatPidFile(other.pid!, String(Number(processStartTime(other.pid!)) + 5)))
    expect((await greedy(j.env, j.project, 'watch', 'status')).code).toBe(3)
    const stop = await greedy(j.env, j.project, 'watch', 'stop')
    expect(stop.code).toBe(0)
    expect(stop.out).toContain('not running')
    const p = await greedy(j.env, j.project, 'push')
    expect(p.code).toBe(0)
    expect(other.exitCode).toBeNull()
    expect(other.signalCode).toBeNull()
    expect(() => process.kill(other.pid!, 0)).not.toThrow()
  })

  it('rejects an unknown action by name', async () => {
    const j = job()
    const r = await greedy(j.env, j.project, 'watch', 'sprint')
    expect(r.code).toBe(2)
    expect(r.out).toContain('unknown action "sprint"')
  })
})
