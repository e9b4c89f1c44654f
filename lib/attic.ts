// The attic client, driven without ever putting the token on a command line: we write the
// client's config file ourselves (mode 0600, in a private XDG dir) instead of `attic login`.
import fs from 'node:fs/promises'
import path from 'node:path'
import { run } from './exec.js'

/** Where the attic client config lives: a folder only we and the attic processes we start read. */
export function atticConfigHome(stateDir: string): string {
  return path.join(stateDir, 'attic-xdg')
}

/** The environment for attic processes: our private config, nothing else changed. */
export function atticEnv(configHome: string, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...env, XDG_CONFIG_HOME: configHome }
}

const SERVER_NAME = 'greedy'

/**
 * Write `attic/config.toml` with the endpoint and a token file reference (0700 dir, 0600 files).
 * The endpoint gets its trailing slash: the client joins API paths with `Url::join`
 * (attic client/src/api/mod.rs), which drops a last segment without one, so
 * `https://host/attic` would send every request to `https://host/_api/…`.
 */
export async function writeClientConfig(configHome: string, endpoint: string, tokenFile?: string): Promise<void> {
  const dir = path.join(configHome, 'attic')
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  await fs.chmod(configHome, 0o700)
  const lines = [
    `default-server = ${tomlString(SERVER_NAME)}`,
    `[servers.${SERVER_NAME}]`,
    `endpoint = ${tomlString(withSlash(endpoint))}`,
  ]
  if (tokenFile) lines.push(`token-file = ${tomlString(tokenFile)}`)
  await writePrivate(path.join(dir, 'config.toml'), lines.join('\n') + '\n')
}

/** Write a file only its owner can read, creating it with that mode (never briefly world-readable). */
export async function writePrivate(file: string, content: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true })
  await fs.rm(file, { force: true })
  await fs.writeFile(file, content, { mode: 0o600, flag: 'wx' })
}

function tomlString(s: string): string {
  return JSON.stringify(s) // a JSON string is a valid TOML basic string
}

export interface CacheConfig {
  substituterEndpoint?: string
  /** Where the client sends pushes (`api_endpoint`); the probed server when absent. */
  apiEndpoint?: string
  publicKey?: string
  isPublic?: boolean
  /** Paths signed by these keys are not pushed; empty means no filter (attic client/src/push.rs). */
  upstreamCacheKeyNames: string[]
}

export type ProbeResult =
  | { ok: true; endpoint: string; cache: CacheConfig }
  /** `kind`: the name of attic's error when the server answered with one (`Unauthorized`, `NoSuchCache`, …). */
  | { ok: false; endpoint: string; reason: string; answered: boolean; kind?: string }

const authHeaders = (token: string | undefined): Record<string, string> => (token ? { authorization: `Bearer ${token}` } : {})

/** GET /_api/v1/cache-config/CACHE: reachability, token and cache name checked in one request (pull permission). */
export async function fetchCacheConfig(endpoint: string, cache: string, token: string | undefined, timeoutMs: number): Promise<ProbeResult> {
  const url = apiUrl(endpoint, `_api/v1/cache-config/${encodeURIComponent(cache)}`)
  try {
    const res = await fetch(url, { headers: authHeaders(token), signal: AbortSignal.timeout(timeoutMs) })
    if (!res.ok) {
      const reason = await apiError(res)
      return { ok: false, endpoint, reason, answered: true, kind: /^([A-Za-z]+): /.exec(reason)?.[1] }
    }
    const body = (await res.json()) as Record<string, unknown>
    const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined)
    return {
      ok: true,
      endpoint,
      cache: {
        substituterEndpoint: str(body.substituter_endpoint),
        apiEndpoint: str(body.api_endpoint),
        publicKey: str(body.public_key),
        isPublic: typeof body.is_public === 'boolean' ? body.is_public : undefined,
        upstreamCacheKeyNames: Array.isArray(body.upstream_cache_key_names) ? body.upstream_cache_key_names.map(String) : [],
      },
    }
  } catch (err) {
    return { ok: false, endpoint, reason: requestFailure(err, timeoutMs), answered: false }
  }
}

export type PushPermission = { ok: true } | { ok: false; denied: boolean; reason: string }

/**
 * Can this token push? `POST /_api/v1/get-missing-paths` with no hashes needs push permission and
 * changes nothing (attic server/src/api/v1/get_missing_paths.rs), while cache-config needs only
 * pull, which a public cache grants to anyone. `denied`: the server said no (401/403), as opposed
 * to not answering.
 */
export async function checkPushPermission(apiEndpoint: string, cache: string, token: string | undefined, timeoutMs: number): Promise<PushPermission> {
  try {
    const res = await fetch(apiUrl(apiEndpoint, '_api/v1/get-missing-paths'), {
      method: 'POST',
      headers: { ...authHeaders(token), 'content-type': 'application/json' },
      body: JSON.stringify({ cache, store_path_hashes: [] }),
      signal: AbortSignal.timeout(timeoutMs),
    })
    if (res.ok) {
      await res.body?.cancel()
      return { ok: true }
    }
    return { ok: false, denied: res.status === 401 || res.status === 403, reason: await apiError(res) }
  } catch (err) {
    return { ok: false, denied: false, reason: requestFailure(err, timeoutMs) }
  }
}

/** An API path below an endpoint, joined as the client joins it, but with the endpoint's slash added. */
function apiUrl(endpoint: string, rel: string): URL {
  return new URL(rel, withSlash(endpoint))
}

/**
 * An error answer as the attic client words it (client/src/api/mod.rs): the server's JSON
 * `{code, error, message}` (server/src/error.rs) as `<error>: <message>`, e.g.
 * `Unauthorized: Unauthorized.`; anything else, such as a proxy's page, as `HTTP <status>`.
 */
async function apiError(res: Response): Promise<string> {
  const text = await res.text().catch(() => '')
  try {
    const body = JSON.parse(text) as { error?: unknown; message?: unknown }
    if (typeof body.error === 'string' && typeof body.message === 'string') return `${body.error}: ${body.message} (HTTP ${res.status})`
  } catch {
    // not attic's JSON: a proxy or another server answered
  }
  return `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`
}

function requestFailure(err: unknown, timeoutMs: number): string {
  return (err as Error).name === 'TimeoutError' ? `no answer within ${timeoutMs / 1000}s` : fetchError(err)
}

/** Why a fetch failed, as specific as undici tells: `ECONNREFUSED`, `ENOTFOUND`, `bad port`. */
export function fetchError(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } }
  return e.cause?.code ?? e.cause?.message ?? e.message
}

export function withSlash(url: string): string {
  return url.endsWith('/') ? url : `${url}/`
}

export type PushLine = { ok: true; path: string } | { ok: false; path: string; error: string }

/**
 * The client's per-path result lines (attic client/src/push.rs, `upload_path`): the store path's
 * base name, `✅ <hash>-<name> (12.3 MiB/s)`, `✅ <hash>-<name> (deduplicated)` or
 * `❌ <hash>-<name>: <error>`. Full paths are accepted too.
 */
export function parsePushLine(line: string, dir = '/nix/store'): PushLine | undefined {
  const m = /^(✅|❌)\s+(\S+?)(?::\s+(.*)|\s+\(.*\))?\s*$/u.exec(line.trim())
  if (!m) return undefined
  const name = m[2]!
  if (!/^(\/.*\/)?[0-9a-z]{32}-/.test(name)) return undefined // the "✅ All done!" summary line
  const p = name.startsWith('/') ? name : `${dir}/${name}`
  return m[1] === '✅' ? { ok: true, path: p } : { ok: false, path: p, error: m[3] ?? 'push failed' }
}

export interface PushOutcome {
  pushed: string[]
  failed: Array<{ path: string; error: string }>
  /**
   * The client planned its uploads (`⚙️ Pushing N paths …` or `✅ All done!`): every path it
   * planned then got a ✅ or ❌ line, so a given path without one was already cached or upstream.
   * When false and the exit code is not 0, planning failed and nothing was uploaded.
   */
  planned: boolean
  /** The `Error: …` line the client ended with (anyhow's report from main), if any. */
  error?: string
  exitCode: number | null
  timedOut: boolean
  stderr: string
}

/**
 * `attic push CACHE paths…` in one bounded run: closures, minus what the cache has or an upstream
 * cache signed (client/src/command/push.rs, `push_static`). It plans, uploads and exits at once,
 * where `push --stdin` (a PushSession) waits 2 s after the last path or 10 s after the first
 * before it even plans (client/src/push.rs): one short run per burst is what keeps the time from
 * a path being built to its being cached under a second.
 */
export async function pushPaths(client: string, cache: string, paths: readonly string[], opts: { env: NodeJS.ProcessEnv; timeoutMs: number; signal?: AbortSignal; storeDir?: string }): Promise<PushOutcome> {
  const pushed: string[] = []
  const failed: PushOutcome['failed'] = []
  let planned = false
  let error: string | undefined
  const r = await run(client, ['push', cache, ...paths], {
    env: opts.env,
    timeoutMs: opts.timeoutMs,
    signal: opts.signal,
    onStderrLine: (line) => {
      const p = parsePushLine(line, opts.storeDir)
      if (p?.ok) pushed.push(p.path)
      else if (p) failed.push({ path: p.path, error: p.error })
      else if (/^(⚙️|⚙)\s*Pushing \d+ paths|^✅ All done!|^🤷 Nothing/u.test(line.trim())) planned = true
      else if (/^Error: /.test(line.trim())) error ??= line.trim().slice('Error: '.length)
    },
  })
  return { pushed, failed, planned, error, exitCode: r.code, timedOut: r.timedOut, stderr: r.stderr }
}
