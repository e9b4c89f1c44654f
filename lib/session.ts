// What bootstrap decides once per job (which server answered, where the client is, which keys
// mark paths the cache already has), kept in <state>/session.json for the later phases.
// Secrets are written to 0600 files under <state>/secrets and referenced by path only.
import fs from 'node:fs/promises'
import path from 'node:path'
import { atticConfigHome, checkPushPermission, fetchCacheConfig, fetchError, withSlash, writeClientConfig, writePrivate } from './attic.js'
import type { JobProcess } from './attribution.js'
import { getAtticClient } from './client.js'
import type { Config } from './config.js'
import { ignoredSubstituter, publicKeyOf } from './nix.js'
import { appendNixConfig, jobNixConfig, shellExport, withJobNixConfig, type Substituter } from './nixconf.js'
import { readJson, writeJsonAtomic, type StatePaths } from './state.js'

export interface Session {
  backend: 'attic' | 'nix'
  /** `endpoint`: the server that answered; `apiEndpoint`: where the client pushes (the server's `api_endpoint`). */
  attic?: { endpoint: string; apiEndpoint: string; cache: string; configHome: string }
  /** The `nix copy --to` URL, with `secret-key=<file>` when signing; `netrc`: its credentials' private file. */
  nix?: { url: string; netrc?: string }
  /** The attic client binary; undefined until one exists (late bootstrap). */
  client?: string
  /** Paths signed by these keys are in the cache already (or upstream) and are not pushed. */
  skipKeyNames: string[]
  include?: string
  exclude?: string
  drainTimeout: number
  /** Seconds after which the watcher ends itself. */
  watchMaxAge: number
  /** Push processes at once (absent in a session.json from an older release: 1). */
  pushJobs?: number
  /** What every Nix command of the job adds to NIX_CONFIG (lib/nixconf.ts): the cache as substituter. */
  nixConfig?: string
  /** The job's shell (bootstrap's parent): while it lives, the watcher counts as company for other jobs' watchers. */
  job?: JobProcess
  strict: boolean
}

/** Upstream cache never pushed back to a Nix store URL (attic caches name their own upstreams). */
const UPSTREAM_KEY_NAMES = ['cache.nixos.org-1']
const PROBE_TIMEOUT_MS = 5_000

export type Prepared =
  | {
      ok: true
      session: Session
      substituter?: Substituter
      /** Cache problems that do not stop the session (a token that cannot push): warnings, or errors in strict mode. */
      problems: string[]
      /** Facts worth a line in the job log (uploads go to another endpoint). */
      notes: string[]
    }
  | { ok: false; reason: string }

/** Resolve the configured cache into a Session: probe servers, write private config files. */
export async function prepareSession(config: Config, paths: StatePaths, onProbe?: (line: string) => void): Promise<Prepared> {
  await fs.mkdir(paths.secrets, { recursive: true, mode: 0o700 })
  const common = {
    include: config.include?.source,
    exclude: config.exclude?.source,
    drainTimeout: config.drainTimeout,
    watchMaxAge: config.watchMaxAge,
    pushJobs: config.pushJobs,
    strict: config.strict,
  }
  if (config.backend === 'attic') return prepareAttic(config, paths, common, onProbe)
  if (config.backend === 'nix') return prepareNix(config, paths, common, onProbe)
  return { ok: false, reason: 'no cache configured (set ATTIC_SERVER or GREEDY_CACHE_URL)' }
}

type Common = Pick<Session, 'include' | 'exclude' | 'drainTimeout' | 'watchMaxAge' | 'pushJobs' | 'strict'>

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
  let refused: string | undefined
  for (const endpoint of config.atticServers) {
    const probe = await fetchCacheConfig(endpoint, config.atticCache, token, PROBE_TIMEOUT_MS)
    onProbe?.(`${endpoint}: ${probe.ok ? 'ok' : probe.reason}`)
    if (!probe.ok) {
      failures.push(`${endpoint} (${probe.reason})`)
      if (probe.answered) refused ??= refusal(config, probe, token !== undefined)
      continue
    }
    const tokenFile = token ? path.join(paths.secrets, 'attic-token') : undefined
    if (token && tokenFile) await writePrivate(tokenFile, token)
    const configHome = atticConfigHome(paths.dir)
    await writeClientConfig(configHome, endpoint, tokenFile)
    const cache = probe.cache
    // The client pushes to the cache's api_endpoint when it has one (attic client/src/command/push.rs).
    const apiEndpoint = cache.apiEndpoint ?? withSlash(endpoint)
    const notes = withSlash(apiEndpoint) === withSlash(endpoint) ? [] : [`the server delegates its API: pushes go to ${apiEndpoint} (api_endpoint), not ${endpoint}`]
    const problems: string[] = []
    const permission = await checkPushPermission(apiEndpoint, config.atticCache, token, PROBE_TIMEOUT_MS)
    if (!permission.ok) {
      const tokenVar = config.atticTokenFile ? 'ATTIC_TOKEN_FILE' : 'ATTIC_TOKEN'
      problems.push(
        !permission.denied
          ? `cannot check push permission at ${apiEndpoint}: ${permission.reason}`
          : token
            ? `the token in ${tokenVar} can pull from "${config.atticCache}" but cannot push to it (${permission.reason}): give it push permission (atticadm make-token --push "${config.atticCache}")`
            : `no ATTIC_TOKEN or ATTIC_TOKEN_FILE is set and "${config.atticCache}" does not let anonymous users push (${permission.reason})`,
      )
    }
    const keyName = cache.publicKey?.split(':')[0]
    const session: Session = {
      backend: 'attic',
      attic: { endpoint, apiEndpoint, cache: config.atticCache, configHome },
      // Paths the cache signed are in it; an empty upstream list means no upstream filter (attic client/src/push.rs).
      skipKeyNames: [...(keyName ? [keyName] : []), ...cache.upstreamCacheKeyNames],
      ...common,
    }
    const substituterUrl = cache.substituterEndpoint ?? new URL(config.atticCache, withSlash(endpoint)).href
    let netrc: string | undefined
    if (token && cache.isPublic !== true) {
      netrc = path.join(paths.secrets, 'netrc')
      await writePrivate(netrc, `machine ${new URL(substituterUrl).hostname} password ${token}\n`)
    }
    return { ok: true, session, substituter: { url: substituterUrl, publicKeys: cache.publicKey ? [cache.publicKey] : [], netrc }, problems, notes }
  }
  return { ok: false, reason: refused ?? `no attic server answered: ${failures.join(', ')}` }
}

/**
 * What a server that answered, but refused the cache config, means, with the setting to fix.
 * Without discovery permission attic answers Unauthorized for a cache that does not exist too
 * (server/src/error.rs `into_no_discovery_permissions`), so both names are named then. The
 * token command is atticadm's (server/src/adm/command/make_token.rs; book/src/tutorial.md).
 */
function refusal(config: Config, probe: { endpoint: string; reason: string; kind?: string }, hasToken: boolean): string {
  const cache = JSON.stringify(config.atticCache)
  const tokenVar = config.atticTokenFile ? 'ATTIC_TOKEN_FILE' : 'ATTIC_TOKEN'
  const make = `atticadm make-token --sub ci --validity 1y --pull ${cache} --push ${cache}`
  if (probe.kind === 'NoSuchCache') return `${probe.endpoint} has no cache ${cache} (${probe.reason}): check ATTIC_CACHE`
  if (probe.kind === 'Unauthorized' && !hasToken) {
    return `${probe.endpoint} answered, but cache ${cache} is not public and no ATTIC_TOKEN or ATTIC_TOKEN_FILE is set (${probe.reason}): set ATTIC_TOKEN (a masked CI/CD variable) to a token that may pull and push it (${make})`
  }
  if (probe.kind === 'Unauthorized') {
    return `${probe.endpoint} refused the token in ${tokenVar} for cache ${cache} (${probe.reason}): it is expired, from another server, or not for ${cache} (check ATTIC_CACHE too); make one with ${make}`
  }
  return `${probe.endpoint} refused the cache config of ${cache}: ${probe.reason}`
}

/**
 * Nix substitutes only what a key in its trusted-public-keys signed, unless it trusts the cache
 * without signatures (require-sigs = false): the next pipeline would rebuild everything, quietly.
 */
export const UNSIGNED =
  'GREEDY_CACHE_URL has no signing key: what goes up is unsigned, and the next pipeline\'s Nix refuses it ("not signed by any ' +
  'of the keys in trusted-public-keys") and builds it again, unless it trusts this cache without signatures. Make a key once: ' +
  '`nix --extra-experimental-features nix-command key generate-secret --key-name ci-cache-1`, and give its output as ' +
  'GREEDY_SIGNING_KEY (a masked CI/CD variable) or in a file named by GREEDY_SIGNING_KEY_FILE'

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
    nix: { url: decodeURIComponent(url.href), netrc: config.cacheCredentials && path.join(paths.secrets, 'netrc') },
    skipKeyNames: [...publicKeys.map((k) => k.split(':')[0]!), ...UPSTREAM_KEY_NAMES],
    ...common,
  }
  // user:password from the URL reach Nix through a private netrc (uploads and substitution), never argv.
  const netrc = session.nix!.netrc
  if (config.cacheCredentials && netrc) {
    const { login, password } = config.cacheCredentials
    await writePrivate(netrc, `machine ${url.hostname} login ${login} password ${password}\n`)
  }
  const problems = secret || url.searchParams.has('secret-key') ? [] : [UNSIGNED]
  return { ok: true, session, substituter: { url: decodeURIComponent(substituter.href), publicKeys, netrc }, problems, notes: [] }
}

/**
 * Give the job's Nix commands the cache as substituter, for this job only: greedy-nix's own
 * commands read it from the session; the job's shell gets it from <state>/env.sh, which exports
 * NIX_CONFIG (the user's own, then ours). Returns what goes into the session.
 */
export async function configureJobNix(paths: StatePaths, sub: Substituter, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const nixConfig = jobNixConfig(sub)
  await fs.writeFile(paths.jobEnv, shellExport('NIX_CONFIG', withJobNixConfig(env, nixConfig).NIX_CONFIG!))
  return nixConfig
}

/** The environment of `nix copy` to the cache: its credentials, and none of the job's other settings. */
export function uploadEnv(session: Session, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const netrc = session.nix?.netrc
  return netrc ? appendNixConfig(env, `netrc-file = ${netrc}`) : env
}

/** The environment of a Nix command of this job: the cache as substituter, when a session has one. */
export const jobEnv = (session: Pick<Session, 'nixConfig'> | undefined, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv =>
  withJobNixConfig(env, session?.nixConfig)

/**
 * Why Nix will not substitute from the cache although bootstrap configured it, with the fix: on
 * multi-user Nix a user the daemon does not trust cannot add substituters or keys.
 */
export async function substituterProblem(sub: Substituter, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const warning = await ignoredSubstituter(sub.url, env)
  if (!warning) return undefined
  const user = env.USER ?? env.LOGNAME ?? 'the job user'
  const keys = sub.publicKeys.length ? `\n    trusted-public-keys = ${sub.publicKeys.join(' ')}` : ''
  return (
    `the nix-daemon does not trust this user, so Nix will not substitute from the cache (Nix: “${warning.replace(/^warning:\s*/, '')}”); the next pipeline ` +
    `rebuilds what this one pushes. Fix, in the system nix.conf (/etc/nix/nix.conf), then restart nix-daemon: either\n` +
    `    extra-trusted-substituters = ${sub.url}${keys.replace('trusted-public-keys', 'extra-trusted-public-keys')}\n` +
    `    narinfo-cache-negative-ttl = 0   (else the daemon trusts for an hour an earlier "not in the cache")\n` +
    `  or make the user trusted:\n    extra-trusted-users = ${user}\n  (pushing works either way)`
  )
}

/** The first half of what build and push say when bootstrap did not run with this state dir. */
export const noBootstrap = (paths: StatePaths) =>
  `greedy-nix bootstrap did not run in this job (no ${paths.session}; another GREEDY_STATE_DIR?): run it in before_script`

export const saveSession = (paths: StatePaths, s: Session) => writeJsonAtomic(paths.session, s)
export const loadSession = (paths: StatePaths) => readJson<Session>(paths.session)

/**
 * The session push uses when bootstrap did not make one, or when an earlier push of this job
 * removed its secrets: the same probe and private files from the settings as they are now, and
 * the attic client from where bootstrap would look. No watcher, no substituter.
 */
export async function sessionForPush(config: Config, paths: StatePaths): Promise<{ session: Session } | { reason: string }> {
  let prepared: Prepared
  try {
    prepared = await prepareSession(config, paths) // its first step creates <state>/secrets
  } catch (err) {
    return { reason: `cannot create the state dir ${paths.dir}: ${(err as Error).message}` }
  }
  if (!prepared.ok) return { reason: prepared.reason }
  const session = prepared.session
  if (session.backend === 'attic') {
    session.client = (await getAtticClient({ installable: config.client, outLink: paths.clientLink, cwd: process.cwd(), debug: () => {} })).client
  }
  return { session }
}
