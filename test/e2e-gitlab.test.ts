// The component in a GitLab pipeline, run by gitlab-ci-local@4.65.1 (shell executor) with real Nix:
// a throw-away project includes templates/nix-build.yml as a local component and runs its job.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import yaml from 'js-yaml'
import { afterEach, describe, expect, it } from 'vitest'
import {
  ATTIC_DOUBLE, DIST, ROOT, chainPaths, deleteFromStore, inFileCache, makeKeys, nixEnv, readJsonFile, runCmd, tmpDir, uid, writeFlake,
  type FlakeSpec, type Ran,
} from './helpers.js'
import { startPackageRegistry } from './gitlab-packages.js'
import { freePort, startAtticServer, startNginx, type Nginx } from './nginx.js'
import type { Summary } from '../lib/summary.js'

const GCL = path.join(ROOT, 'node_modules', '.bin', 'gitlab-ci-local')
const JOB = 'nix-build'

const servers: Array<{ stop(): Promise<void> }> = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()))
})

function git(cwd: string, ...args: string[]): void {
  const r = spawnSync('git', ['-c', 'user.name=greedy', '-c', 'user.email=greedy@example.com', ...args], { cwd, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`)
}

interface Example {
  project: string
  state: string
  /** Write the flake and .gitlab-ci.yml, commit (the component is included at HEAD). */
  commit(flake: FlakeSpec, extraYaml?: string): void
  /** One pipeline on a fresh runner: its own HOME and nix.conf; the project folder as GitLab leaves it. `variables`: predefined ones GitLab would set. */
  pipeline(env?: NodeJS.ProcessEnv, variables?: Record<string, string>): Promise<Ran & { log: string }>
}

/** A project with the component as a local component, the bundle vendored, and the given inputs. */
function example(name: string, inputs: Record<string, string>, env: NodeJS.ProcessEnv = {}): Example {
  const dir = tmpDir(`greedy-gitlab-${name}-`)
  const project = path.join(dir, 'project')
  fs.mkdirSync(path.join(project, 'templates'), { recursive: true })
  fs.mkdirSync(path.join(project, 'vendor', 'greedy-nix'), { recursive: true })
  fs.copyFileSync(path.join(ROOT, 'templates', 'nix-build.yml'), path.join(project, 'templates', 'nix-build.yml'))
  fs.copyFileSync(path.join(DIST, 'greedy-nix.mjs'), path.join(project, 'vendor', 'greedy-nix', 'greedy-nix.mjs'))
  git(project, 'init', '-q')
  git(project, 'remote', 'add', 'origin', 'git@gitlab.example.com:greedy/example.git')
  let runs = 0
  return {
    project,
    state: path.join(project, '.greedy-nix'),
    commit(flake, extraYaml = '') {
      writeFlake(project, flake)
      const lines = Object.entries({ 'job-name': JOB, installables: '[".#default"]', 'script-source': 'vendor/greedy-nix', ...inputs })
      fs.writeFileSync(
        path.join(project, '.gitlab-ci.yml'),
        'include:\n  - component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/nix-build@$CI_COMMIT_SHA\n    inputs:\n' +
          lines.map(([k, v]) => `      ${k}: ${v}\n`).join('') + extraYaml,
      )
      git(project, 'add', '-A')
      git(project, 'commit', '-qm', `pipeline ${uid()}`)
    },
    async pipeline(extra = {}, variables = {}) {
      // What a fresh checkout does not have: the last job's out-links and state (the cache dir is GitLab's cache).
      for (const f of fs.readdirSync(project)) if (f.startsWith('result') || f === '.greedy-nix') fs.rmSync(path.join(project, f), { recursive: true })
      const home = path.join(dir, `runner-${++runs}`)
      // gitlab-ci-local gives jobs with an image CI_PROJECT_DIR=/builds/… even on the shell executor; a runner gives the checkout.
      const args = ['--force-shell-executor', '--variable', `CI_PROJECT_DIR=${project}`, ...Object.entries(variables).flatMap(([k, v]) => ['--variable', `${k}=${v}`]), JOB]
      const r = await runCmd(GCL, args, { cwd: project, env: nixEnv(home, { ...env, ...extra }), timeoutMs: 300_000 })
      const logFile = path.join(project, '.gitlab-ci-local', 'output', `${JOB}.log`)
      return { ...r, log: fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '' }
    },
  }
}

/** The file:// zero-server setup: cache-url inside the project, signed with a key from a CI variable. */
function zeroServer(name: string) {
  const base = nixEnv(tmpDir('greedy-gitlab-keys-'))
  const [secret] = makeKeys(base, `gitlab-${uid()}`)
  const ex = example(name, { 'cache-url': 'file://$CI_PROJECT_DIR/.nix-cache' }, { GREEDY_SIGNING_KEY: secret })
  return { ...ex, cache: path.join(ex.project, '.nix-cache'), secret }
}

async function atticExample(name: string, opts: { down?: boolean } = {}) {
  const dir = tmpDir(`greedy-gitlab-${name}-server-`)
  const base = nixEnv(dir)
  const [secret, pub] = makeKeys(base, `gitlab-attic-${uid()}`)
  const keyFile = path.join(dir, 'server-key')
  fs.writeFileSync(keyFile, secret, { mode: 0o600 })
  const token = `tok-${uid()}`
  const server = await startAtticServer(path.join(dir, 'server'), { cache: 'main', token, publicKey: pub, signingKeyFile: keyFile })
  servers.push(server)
  const bin = path.join(dir, 'bin')
  fs.mkdirSync(bin)
  fs.symlinkSync(ATTIC_DOUBLE, path.join(bin, 'attic'))
  const url = opts.down ? `http://127.0.0.1:${await freePort()}` : server.url
  const ex = example(name, { 'attic-server': url }, {
    PATH: `${bin}:${process.env.PATH}`, ATTIC_TOKEN: token, ATTIC_DOUBLE_ROOT: server.root, ATTIC_DOUBLE_SIGNING_KEY_FILE: keyFile,
  })
  return { ...ex, cache: server.cacheDir, token, url }
}

describe('the nix-build component under gitlab-ci-local', () => {
  it.each(['nix', 'attic'] as const)('%s: pipeline A fails late and caches what it finished; pipeline B resumes from it', async (backend) => {
    const ex = backend === 'nix' ? zeroServer('ab') : await atticExample('ab')
    const prefix = `gl-${backend}-${uid()}`
    ex.commit({ prefix, chain: 5, failAt: 4, sleep: 1 })
    const links = chainPaths(nixEnv(tmpDir()), ex.project, 5)

    const a = await ex.pipeline()
    expect(a.code).not.toBe(0) // the job fails with the build
    expect(a.log).toContain('link 4 fails on purpose')
    expect(a.out).toContain('Running after script...')
    expect(a.log).toContain('$ # after_script is a new shell: the component\'s inputs again.')
    expect(a.log).toMatch(/pushed 3 store paths incrementally, 0 in the final push, 0 failed/)
    expect(links.slice(0, 3).map((p) => inFileCache(ex.cache, p))).toEqual([true, true, true])
    expect(a.out).not.toContain('secret' in ex ? ex.secret : ex.token)

    deleteFromStore(nixEnv(tmpDir()), links.slice(0, 3))
    ex.commit({ prefix, chain: 5, sleep: 1 }) // the failure fixed
    const b = await ex.pipeline()
    expect(b.code).toBe(0)
    for (const p of links.slice(0, 3)) expect(b.log).toContain(`copying path '${p}' from`)
    expect(b.log).not.toContain('building link 1')
    expect(b.log).toContain('building link 5')
    expect(readJsonFile<Summary>(path.join(ex.state, 'summary.json')).build).toMatchObject({ exitCode: 0, built: 2, substituted: 3 })
  })

  it.each(['nix', 'attic'] as const)('%s: the watcher killed between script and after_script (docker executor): after_script still succeeds with honest counts', async (backend) => {
    const ex = backend === 'nix' ? zeroServer('killed') : await atticExample('killed')
    ex.commit({ prefix: `gl-killed-${uid()}`, chain: 2 }, `${JOB}:\n  script:\n    - greedy-nix build\n    - kill -9 "$(head -n1 .greedy-nix/watch.pid)"\n`)
    const links = chainPaths(nixEnv(tmpDir()), ex.project, 2)
    const r = await ex.pipeline()
    expect(r.code).toBe(0)
    expect(r.log).toContain('the watcher was no longer running')
    expect(r.log).toContain('final push of 1 path(s) and their closures') // ./result, which the cache already has
    expect(r.log).toMatch(/pushed 2 store paths incrementally, 0 in the final push, 0 failed/)
    expect(readJsonFile<Summary>(path.join(ex.state, 'summary.json'))).toMatchObject({ watcherAlive: false, incremental: { pushed: 2 } })
    expect(links.map((p) => inFileCache(ex.cache, p))).toEqual([true, true])
  })

  it('the hidden job .nix-build-base from the include file does the same', async () => {
    const ex = zeroServer('base')
    fs.mkdirSync(path.join(ex.project, 'include'))
    fs.copyFileSync(path.join(ROOT, 'include', 'nix-build-base.yml'), path.join(ex.project, 'include', 'nix-build-base.yml'))
    ex.commit({ prefix: `gl-base-${uid()}`, chain: 2, failAt: 2 }, '')
    fs.writeFileSync(
      path.join(ex.project, '.gitlab-ci.yml'),
      'include:\n  - local: include/nix-build-base.yml\n' +
        `${JOB}:\n  extends: .nix-build-base\n  variables:\n    GREEDY_SCRIPT_SOURCE: vendor/greedy-nix\n    GREEDY_CACHE_URL: file://$CI_PROJECT_DIR/.nix-cache\n  script:\n    - greedy-nix build .#default\n`,
    )
    git(ex.project, 'commit', '-qam', 'use the include file')
    const links = chainPaths(nixEnv(tmpDir()), ex.project, 2)
    const r = await ex.pipeline()
    expect(r.code).not.toBe(0)
    expect(r.log).toContain('link 2 fails on purpose')
    expect(r.log).toMatch(/pushed 1 store paths incrementally/)
    expect(inFileCache(ex.cache, links[0]!)).toBe(true)
  })

  it("the project's own pipeline expands and validates, with the component dogfooded on this commit", async () => {
    const dir = tmpDir('greedy-gitlab-self-')
    for (const f of ['.gitlab-ci.yml', 'templates', 'include', 'example']) fs.cpSync(path.join(ROOT, f), path.join(dir, f), { recursive: true })
    git(dir, 'init', '-q')
    git(dir, 'remote', 'add', 'origin', 'git@gitlab.example.com:greedy-nix/greedy-nix.git')
    git(dir, 'add', '-A')
    git(dir, 'commit', '-qm', 'self')
    const r = await runCmd(GCL, ['--preview'], { cwd: dir, env: nixEnv(tmpDir()) })
    expect(r.code, r.out).toBe(0)
    const expanded = yaml.load(r.stdout.slice(r.stdout.indexOf('---'))) as Record<string, Record<string, unknown>>
    expect(Object.keys(expanded)).toEqual(expect.arrayContaining(['lint', 'test', 'bundles', 'example:greedy', 'npm:publish', 'package:bundles', 'release']))
    expect(expanded['example:greedy']).toMatchObject({ needs: [{ job: 'bundles' }], interruptible: true })
    expect(JSON.stringify(expanded['example:greedy']!.script)).toContain('./example#default')
    // Nothing is published unless the component worked on this commit; the catalog release uses glab.
    for (const job of ['npm:publish', 'package:bundles', 'release']) expect(expanded[job]!.needs).toEqual(expect.arrayContaining([expect.objectContaining({ job: 'example:greedy' })]))
    expect(expanded.release!.needs).toEqual(expect.arrayContaining([expect.objectContaining({ job: 'package:bundles' })]))
    expect(expanded.release!.image).toMatchObject({ name: 'registry.gitlab.com/gitlab-org/cli:latest' })
    expect(fs.existsSync(path.join(ROOT, 'LICENSE'))).toBe(true)
  })

  // GitLab's precedence ("CI/CD variable precedence"), highest first: pipeline, project/group/instance CI/CD variables,
  // job variables, top-level variables. So the component must not set a job variable from an input left empty (it
  // would blank the top-level one), and a given input must still win over a CI/CD variable of the same name.
  it('inputs and variables compose: a cache set in top-level variables is used when no input names one; a given input wins, even over a CI/CD variable', async () => {
    const [secret, pub] = makeKeys(nixEnv(tmpDir('greedy-gitlab-keys-')), `gitlab-${uid()}`)
    const topLevel = 'variables:\n  GREEDY_CACHE_URL: file://$CI_PROJECT_DIR/.top-cache\n  GREEDY_DRAIN_TIMEOUT: "60"\n'
    const cases: Array<{ name: string; inputs: Record<string, string>; cicd?: string; used: string; unused: string[]; drain: number; maxSize?: number }> = [
      { name: 'vars-top', inputs: {}, used: '.top-cache', unused: ['.input-cache'], drain: 60 },
      // Number-like inputs are strings (so that they can be left empty): given quoted.
      { name: 'vars-input', inputs: { 'cache-url': 'file://$CI_PROJECT_DIR/.input-cache', 'drain-timeout': '"90"', 'cache-max-size': '1.5G' }, used: '.input-cache', unused: ['.top-cache'], drain: 90, maxSize: 1.5 * 2 ** 30 },
      // A project CI/CD variable (gitlab-ci-local reads them from .gitlab-ci-local-variables.yml) outranks job variables.
      { name: 'vars-cicd', inputs: { 'cache-url': 'file://$CI_PROJECT_DIR/.input-cache' }, cicd: '.cicd-cache', used: '.input-cache', unused: ['.top-cache', '.cicd-cache'], drain: 60 },
    ]
    for (const c of cases) {
      const ex = example(c.name, c.inputs, { GREEDY_SIGNING_KEY: secret })
      ex.commit({ prefix: `gl-${c.name}-${uid()}`, chain: 2 }, topLevel)
      if (c.cicd) fs.writeFileSync(path.join(ex.project, '.gitlab-ci-local-variables.yml'), `GREEDY_CACHE_URL: file://${path.join(ex.project, c.cicd)}\n`)
      const links = chainPaths(nixEnv(tmpDir()), ex.project, 2)
      const r = await ex.pipeline()
      expect(r.code, r.log).toBe(0)
      expect(r.log).toMatch(/pushed 2 store paths incrementally/)
      expect(links.map((p) => inFileCache(path.join(ex.project, c.used), p))).toEqual([true, true])
      for (const u of c.unused) expect(fs.existsSync(path.join(ex.project, u)), u).toBe(false)
      expect(readJsonFile<{ drainTimeout: number }>(path.join(ex.state, 'session.json')).drainTimeout).toBe(c.drain)
      // The budget reaches after_script's push (a new shell): the summary names it, and the cache got its index.
      const pruned = readJsonFile<Summary>(path.join(ex.state, 'summary.json')).prune
      expect([pruned?.maxSize, pruned?.evictedPaths]).toEqual([c.maxSize, 0])
      expect(fs.existsSync(path.join(ex.project, c.used, 'greedy-nix-index.json'))).toBe(true)

      // The result artifact's links point into /nix/store of the job's machine; result-paths.txt names what to
      // fetch from the cache elsewhere, with the README's command (nix-store needs no experimental feature).
      const listed = path.join(ex.state, 'result-paths.txt')
      expect(fs.readFileSync(listed, 'utf8')).toBe(`${links[1]}\n`)
      const elsewhere = nixEnv(tmpDir('greedy-gitlab-fetch-'))
      fs.rmSync(path.join(ex.project, 'result')) // its GC root: another machine has none
      deleteFromStore(elsewhere, links)
      const paths = fs.readFileSync(listed, 'utf8').trim().split('\n')
      const got = await runCmd('nix-store', ['--realise', ...paths, '--option', 'extra-substituters', `file://${path.join(ex.project, c.used)}`, '--option', 'extra-trusted-public-keys', pub], { env: elsewhere })
      expect(got.code, got.out).toBe(0)
      expect(got.out).toContain(`copying path '${links[1]}' from 'file://${path.join(ex.project, c.used)}'`)
      expect(fs.readFileSync(links[1]!, 'utf8')).toContain(links[0]!)
    }
  })

  it('strict: a given "true" wins over GREEDY_STRICT=0 set as a CI/CD variable, and a cache that is down then fails a green job', async () => {
    const closed = await freePort()
    const ex = example('strict', { 'cache-url': `http://127.0.0.1:${closed}`, strict: '"true"' })
    ex.commit({ prefix: `gl-strict-${uid()}`, chain: 1 })
    fs.writeFileSync(path.join(ex.project, '.gitlab-ci-local-variables.yml'), 'GREEDY_STRICT: "0"\n')
    const r = await ex.pipeline()
    expect(r.code).not.toBe(0)
    expect(r.log).toContain(`http://127.0.0.1:${closed} did not answer (ECONNREFUSED)`)
    expect(r.log).not.toContain('building link 1') // bootstrap failed the job in before_script

    // A value strict does not accept is refused when the pipeline is created, naming the input.
    const bad = example('strict-bad', { strict: '"yes"' })
    bad.commit({ prefix: `gl-strict-bad-${uid()}`, chain: 1 })
    const preview = await runCmd(GCL, ['--preview'], { cwd: bad.project, env: nixEnv(tmpDir()) })
    expect(preview.code).not.toBe(0)
    expect(preview.out).toMatch(/strict.*input.*yes.*cannot be used because it is not in the list of allowed options/s)
  })

  it('a cache server that is down: the job result is the build result, failed or green', async () => {
    const closed = await freePort()
    const failing = example('down-nix', { 'cache-url': `http://127.0.0.1:${closed}` })
    failing.commit({ prefix: `gl-down-${uid()}`, chain: 2, failAt: 2 })
    const f = await failing.pipeline()
    expect(f.code).not.toBe(0)
    expect(f.log).toContain('link 2 fails on purpose')
    expect(f.log).toContain(`http://127.0.0.1:${closed} did not answer (ECONNREFUSED)`)

    const green = await atticExample('down-attic', { down: true })
    green.commit({ prefix: `gl-down-${uid()}`, chain: 2 })
    const g = await green.pipeline()
    expect(g.code).toBe(0)
    expect(g.log).toContain(`no attic server answered: ${green.url} (ECONNREFUSED)`)
    expect(g.log).toContain('building link 2')
  })

  it('script-source: the bundle from an npm package and from an http(s) folder', async () => {
    const packs = tmpDir('greedy-gitlab-pack-')
    const packed = await runCmd('npm', ['pack', '--silent', '--pack-destination', packs], { cwd: ROOT, env: process.env })
    expect(packed.code).toBe(0)
    const tarball = path.join(packs, packed.stdout.trim().split('\n').pop()!)
    const web = await startNginx(tmpDir('greedy-gitlab-web-'), `    location / { root ${DIST}; }`)
    servers.push(web)
    for (const source of [`npm:${tarball}`, `${web.url}/`]) {
      const ex = example('source', { 'script-source': `"${source}"`, 'cache-url': 'file://$CI_PROJECT_DIR/.nix-cache' })
      ex.commit({ prefix: `gl-source-${uid()}`, chain: 1 })
      const r = await ex.pipeline()
      expect(r.code, r.out).toBe(0)
      expect(r.log).toMatch(/pushed 1 store paths incrementally/)
    }
  })

  it("self-hosted GitLab without npm or a CDN: the bundle comes from the project's own generic package registry, with the job token", async () => {
    const token = `job-${uid()}`
    // A mirror of greedy-nix at tools/greedy-nix on this instance, whose release job uploaded the bundle (.gitlab-ci.yml).
    const registry = await startPackageRegistry({ 'tools/greedy-nix/greedy-nix/0.1.0/greedy-nix.mjs': path.join(DIST, 'greedy-nix.mjs') }, token)
    servers.push(registry)
    const [secret] = makeKeys(nixEnv(tmpDir('greedy-gitlab-keys-')), `gitlab-${uid()}`)
    const ex = example('registry', { 'script-source': '"gitlab:tools/greedy-nix@0.1.0 npm:0.1.0"', 'cache-url': 'file://$CI_PROJECT_DIR/.nix-cache' }, { GREEDY_SIGNING_KEY: secret })
    ex.commit({ prefix: `gl-registry-${uid()}`, chain: 2 })
    const links = chainPaths(nixEnv(tmpDir()), ex.project, 2)
    const r = await ex.pipeline({}, { CI_API_V4_URL: registry.apiUrl, CI_JOB_TOKEN: token })
    expect(r.code, r.log).toBe(0)
    expect(registry.tokens).toEqual([token]) // one request, with the job token; npm never tried
    expect(r.log).toMatch(/pushed 2 store paths incrementally/)
    expect(links.map((p) => inFileCache(path.join(ex.project, '.nix-cache'), p))).toEqual([true, true])
    expect(r.log).not.toContain(token)

    // A public project's package, and a job token its allowlist does not name (GitLab answers 404): read without it.
    const open = await startPackageRegistry({ 'tools/greedy-nix/greedy-nix/0.1.0/greedy-nix.mjs': path.join(DIST, 'greedy-nix.mjs') }, token, { public: true })
    servers.push(open)
    ex.commit({ prefix: `gl-registry-${uid()}`, chain: 1 })
    const other = await ex.pipeline({}, { CI_API_V4_URL: open.apiUrl, CI_JOB_TOKEN: 'token-of-a-project-not-allowed' })
    expect(other.code, other.log).toBe(0)
    expect(open.tokens).toEqual(['token-of-a-project-not-allowed', ''])
    expect(other.log).toMatch(/pushed 1 store paths incrementally/)
  })

  it('greedy-nix cannot be fetched (nothing published, no registry reachable): the job still builds with one warning, its result is the build\'s; strict fails it', async () => {
    const registry = await startPackageRegistry({}, 'token') // the instance has no such package
    servers.push(registry)
    // The component's default has this shape: this instance's package registry, then npm (here a tarball that is not there).
    const sources = `"gitlab:greedy-nix/greedy-nix@0.1.0 npm:${path.join(tmpDir('greedy-gitlab-nonpm-'), 'greedy-nix-0.1.0.tgz')}"`
    const variables = { CI_API_V4_URL: registry.apiUrl, CI_JOB_TOKEN: 'token-of-another-project' }
    const warning = /greedy-nix: WARNING: greedy-nix could not be fetched from: .*; this job builds with plain nix build, without the cache/g
    for (const failAt of [undefined, 2]) {
      const ex = example('unfetched', { 'script-source': sources, 'cache-url': 'file://$CI_PROJECT_DIR/.nix-cache' })
      ex.commit({ prefix: `gl-unfetched-${uid()}`, chain: 2, failAt })
      const links = chainPaths(nixEnv(tmpDir()), ex.project, 2)
      const r = await ex.pipeline({}, variables)
      expect(r.log.match(warning), r.log).toHaveLength(1)
      expect(r.log).toContain('building link 1') // the builder's output is shown (nix build -L)
      if (failAt) {
        expect(r.code).not.toBe(0)
        expect(r.log).toContain('link 2 fails on purpose')
      } else {
        expect(r.code, r.log).toBe(0)
        expect(fs.realpathSync(path.join(ex.project, 'result'))).toBe(links[1]) // the same out-link as greedy-nix build
      }
      expect(fs.existsSync(path.join(ex.project, '.nix-cache'))).toBe(false)
    }
    const strict = example('unfetched-strict', { 'script-source': sources, strict: '"true"' })
    strict.commit({ prefix: `gl-unfetched-${uid()}`, chain: 1 })
    const s = await strict.pipeline({}, variables)
    expect(s.code).not.toBe(0)
    expect(s.log).toContain('greedy-nix: ERROR: greedy-nix could not be fetched from')
    expect(s.log).not.toContain('building link 1')
  })
})
