// What bootstrap decides once per job (which server answered, where the client is, which keys
// mark paths the cache already has), kept in <state>/session.json for the later phases.
// Secrets are written to 0600 files under <state>/secrets and referenced by path only.
import fs from 'node:fs/promises'
import path from 'node:path'
import { atticConfigHome, fetchCacheConfig, fetchError, withSlash, writeClientConfig, writePrivate } from './attic.js'
import type { Config } from './config.js'
import { publicKeyOf, userNixConf, writeNixConfBlock } from './nix.js'
import { readJson, writeJsonAtomic, type StatePaths } from './state.js'

export interface Session {
  backend: 'attic' | 'nix'
  attic?: { endpoint: string; cache: string; configHome: string }
  /** The `nix copy --to` URL, with `secret-key=<file>` when signing. */
  nix?: { url: string }
  /** The attic client binary; undefined until one exists (late bootstrap). */
  client?: string
  /** Paths signed by these keys are in the cache already (or upstream) and are not pushed. */
  skipKeyNames: string[]
  include?: string
  exclude?: string
  drainTimeout: number
  strict: boolean
}

/** Upstream cache that attic (and we) never push back to. */
const UPSTREAM_KEY_NAMES = ['cache.nixos.org-1']
const PROBE_TIMEOUT_MS = 5_000

export type Prepared =
  | { ok: true; session: Session; substituter?: { url: string; publicKeys: string[]; netrc?: string } }
  | { ok: false; reason: string }

/** Resolve the configured cache into a Session: probe servers, write private config files. */
export async function prepareSession(config: Config, paths: StatePaths, onProbe?: (line: string) => void): Promise<Prepared> {
  await fs.mkdir(paths.secrets, { recursive: true, mode: 0o700 })
  const common = {
    include: config.include?.source,
    exclude: config.exclude?.source,
    drainTimeout: config.drainTimeout,
    strict: config.strict,
  }
  if (config.backend === 'attic') return prepareAttic(config, paths, common, onProbe)
  if (config.backend === 'nix') return prepareNix(config, paths, common, onProbe)
  return { ok: false, reason: 'no cache configured (set ATTIC_SERVER or GREEDY_CACHE_URL)' }
}

type Common = Pick<Session, 'include' | 'exclude' | 'drainTimeout' | 'strict'>

async function readSecret(value: string | undefined, file: string | undefined, name: string): Promise<string | undefined> {
  if (value !== undefined) return value.trim()
  if (file === undefined) return undefined
  try {
    return (await fs.readFile(file, 'utf8')).trim()
  } catch (err) {
    throw new Error(`${name}: cannot read ${JSON.stringify(file)} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
}

async function prepareAttic(config: Config, paths: StatePaths, common: Common, onProbe?: (line: string) => void): Promise<Prepared> {
  let token: string | undefined
  try {
    token = await readSecret(config.atticToken, config.atticTokenFile, 'ATTIC_TOKEN_FILE')
  } catch (err) {
    return { ok: false, reason: (err as Error).message }
  }
  const failures: string[] = []
  for (const endpoint of config.atticServers) {
    const probe = await fetchCacheConfig(endpoint, config.atticCache, token, PROBE_TIMEOUT_MS)
    onProbe?.(`${endpoint}: ${probe.ok ? 'ok' : probe.reason}`)
    if (!probe.ok) {
      failures.push(`${endpoint} (${probe.reason})`)
      continue
    }
    const tokenFile = token ? path.join(paths.secrets, 'attic-token') : undefined
    if (token && tokenFile) await writePrivate(tokenFile, token)
    const configHome = atticConfigHome(paths.dir)
    await writeClientConfig(configHome, endpoint, tokenFile)
    const cache = probe.cache
    const keyName = cache.publicKey?.split(':')[0]
    const session: Session = {
      backend: 'attic',
      attic: { endpoint, cache: config.atticCache, configHome },
      skipKeyNames: [...(keyName ? [keyName] : []), ...(cache.upstreamCacheKeyNames.length ? cache.upstreamCacheKeyNames : UPSTREAM_KEY_NAMES)],
      ...common,
    }
    const substituterUrl = cache.substituterEndpoint ?? new URL(config.atticCache, withSlash(endpoint)).href
    let netrc: string | undefined
    if (token && cache.isPublic !== true) {
      netrc = path.join(paths.secrets, 'netrc')
      await writePrivate(netrc, `machine ${new URL(substituterUrl).hostname} password ${token}\n`)
    }
    return { ok: true, session, substituter: { url: substituterUrl, publicKeys: cache.publicKey ? [cache.publicKey] : [], netrc } }
  }
  return { ok: false, reason: `no attic server answered: ${failures.join(', ')}` }
}

async function prepareNix(config: Config, paths: StatePaths, common: Common, onProbe?: (line: string) => void): Promise<Prepared> {
  const url = new URL(config.cacheUrl!)
  if (url.protocol === 'http:' || url.protocol === 'https:') {
    const info = new URL('nix-cache-info', withSlash(url.origin + url.pathname))
    try {
      const res = await fetch(info, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) })
      onProbe?.(`${info.origin}: HTTP ${res.status}`)
      await res.body?.cancel()
    } catch (err) {
      return { ok: false, reason: `${url.origin} did not answer (${(err as Error).name === 'TimeoutError' ? 'timeout' : fetchError(err)})` }
    }
  }
  let secret: string | undefined
  try {
    secret = await readSecret(config.signingKey, config.signingKeyFile, 'GREEDY_SIGNING_KEY_FILE')
  } catch (err) {
    return { ok: false, reason: (err as Error).message }
  }
  const publicKeys = [...config.trustedPublicKeys]
  if (secret) {
    const keyFile = path.join(paths.secrets, 'signing-key')
    await writePrivate(keyFile, secret + '\n')
    if (!url.searchParams.has('secret-key')) url.searchParams.set('secret-key', keyFile)
    if (publicKeys.length === 0) {
      const pub = await publicKeyOf(secret)
      if (pub) publicKeys.push(pub)
    }
  }
  // xz, Nix's default, is slow to compress; zstd is the fast choice for a CI cache.
  if (!url.searchParams.has('compression') && ['file:', 'http:', 'https:', 's3:'].includes(url.protocol)) {
    url.searchParams.set('compression', 'zstd')
  }
  const substituter = new URL(url.href)
  for (const key of ['secret-key', 'compression']) substituter.searchParams.delete(key)
  const session: Session = {
    backend: 'nix',
    nix: { url: decodeURIComponent(url.href) },
    skipKeyNames: [...publicKeys.map((k) => k.split(':')[0]!), ...UPSTREAM_KEY_NAMES],
    ...common,
  }
  // user:password from the URL reach Nix through a private netrc (uploads and substitution), never argv.
  let netrc: string | undefined
  if (config.cacheCredentials) {
    netrc = path.join(paths.secrets, 'netrc')
    const { login, password } = config.cacheCredentials
    await writePrivate(netrc, `machine ${url.hostname} login ${login} password ${password}\n`)
  }
  return { ok: true, session, substituter: { url: decodeURIComponent(substituter.href), publicKeys, netrc } }
}

/** Make every later `nix` command of the job substitute from the cache (user nix.conf). */
export async function configureSubstituter(sub: { url: string; publicKeys: string[]; netrc?: string }, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const file = userNixConf(env)
  const lines = [`extra-substituters = ${sub.url}`]
  if (sub.publicKeys.length) lines.push(`extra-trusted-public-keys = ${sub.publicKeys.join(' ')}`)
  if (sub.netrc) lines.push(`netrc-file = ${sub.netrc}`)
  await writeNixConfBlock(file, lines)
  return file
}

export const saveSession = (paths: StatePaths, s: Session) => writeJsonAtomic(paths.session, s)
export const loadSession = (paths: StatePaths) => readJson<Session>(paths.session)
