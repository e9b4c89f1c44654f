// Secrets never reach argv, logs or world-readable files: a password inside GREEDY_CACHE_URL and a
// signing key, through a whole job (success and failure paths, debug output on), with every
// process's argv sampled from /proc while it runs.
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { chainPaths, greedy, inFileCache, makeKeys, nixEnv, tmpDir, uid, writeFlake } from './helpers.js'
import { startHttpCache, type Nginx } from './nginx.js'

const servers: Nginx[] = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()))
})

/** Sample every process's argv until stopped; returns the command lines that contained a secret. */
function sampleArgv(secrets: string[]): () => string[] {
  const hits = new Set<string>()
  const timer = setInterval(() => {
    for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      let cmdline: string
      try {
        cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ')
      } catch {
        continue
      }
      if (secrets.some((s) => cmdline.includes(s))) hits.add(cmdline)
    }
  }, 20)
  return () => {
    clearInterval(timer)
    return [...hits]
  }
}

/** Files under dir that contain a secret, with their modes. */
function filesWithSecrets(dir: string, secrets: string[]): Array<{ file: string; mode: number }> {
  const found: Array<{ file: string; mode: number }> = []
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue
    const file = path.join(entry.parentPath, entry.name)
    const text = fs.readFileSync(file, 'latin1')
    if (secrets.some((s) => text.includes(s))) found.push({ file: path.relative(dir, file), mode: fs.statSync(file).mode & 0o777 })
  }
  return found
}

describe('secrets', () => {
  it('a password in GREEDY_CACHE_URL and the signing key appear in no output, argv or readable file', async () => {
    const dir = tmpDir('greedy-secrets-')
    const password = `pw-${uid()}${uid()}`
    const cache = await startHttpCache(path.join(dir, 'nginx'), { login: 'ci', password })
    servers.push(cache)
    const [signingKey] = makeKeys(nixEnv(dir), `secrets-${uid()}`)
    const secretPart = signingKey.split(':')[1]!
    const project = path.join(dir, 'project')
    const url = cache.url.replace('http://', `http://ci:${password}@`)
    const env = nixEnv(path.join(dir, 'home'), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: url, GREEDY_SIGNING_KEY: signingKey, GREEDY_DEBUG: '1' })
    writeFlake(project, { prefix: `secrets-${uid()}`, chain: 3, failAt: 3, sleep: 1 })
    const links = chainPaths(env, project, 3)
    const secrets = [password, secretPart]

    const stop = sampleArgv(secrets)
    const outputs = [await greedy(env, project, 'bootstrap', '--debug'), await greedy(env, project, 'build', '--debug')]
    // Mid-job, the secrets exist only in 0600 files.
    const midJob = filesWithSecrets(dir, secrets).filter((f) => !f.file.startsWith('nginx/'))
    outputs.push(await greedy(env, project, 'push', '--verbose'))
    const argvHits = stop()

    expect(outputs[1]!.code).not.toBe(0) // the failure path ran too
    expect(links.slice(0, 2).map((p) => inFileCache(cache.cacheDir, p))).toEqual([true, true]) // the password worked, via netrc
    for (const o of outputs) for (const s of secrets) expect(o.out).not.toContain(s)
    expect(outputs[0]!.out).toContain('Nix substitutes from http://127.0.0.1') // the URL is shown, without its password
    expect(argvHits).toEqual([])
    expect(midJob.map((f) => f.file).sort()).toEqual(['project/.greedy-nix/secrets/netrc', 'project/.greedy-nix/secrets/signing-key'])
    for (const f of midJob) expect(f.mode).toBe(0o600)
    expect(filesWithSecrets(dir, secrets).filter((f) => !f.file.startsWith('nginx/'))).toEqual([]) // push removed them
  })

  it('a bad URL with a password is named without the password', async () => {
    const dir = tmpDir('greedy-secrets-')
    const password = `pw-${uid()}`
    const env = nixEnv(dir, { CI_PROJECT_DIR: dir, GREEDY_CACHE_URL: `gopher://ci:${password}@cache.example.com/`, ATTIC_SERVER: undefined })
    const r = await greedy(env, dir, 'bootstrap')
    expect(r.code).toBe(0)
    expect(r.out).toContain('GREEDY_CACHE_URL: "gopher://***@cache.example.com/" expected a Nix store URL')
    expect(r.out).not.toContain(password)
    const attic = await greedy({ ...env, GREEDY_CACHE_URL: undefined, ATTIC_SERVER: `https://ci:${password}@attic.example.com` }, dir, 'bootstrap')
    expect(attic.out).toContain('ATTIC_SERVER: "https://***@attic.example.com" expected a URL without user:password')
    expect(attic.out).not.toContain(password)
  })
})
