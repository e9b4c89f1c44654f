// The attic client, driven without ever putting the token on a command line: we write the
// client's config file ourselves (mode 0600, in a private XDG dir) instead of `attic login`.
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import fs from 'node:fs/promises'
import path from 'node:path'
import { killGroup, run } from './exec.js'

/** Where the attic client config lives: a folder only we and the attic processes we start read. */
export function atticConfigHome(stateDir: string): string {
  return path.join(stateDir, 'attic-xdg')
}

/** The environment for attic processes: our private config, nothing else changed. */
export function atticEnv(configHome: string, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...env, XDG_CONFIG_HOME: configHome }
}

const SERVER_NAME = 'greedy'

/** Write `attic/config.toml` with the endpoint and a token file reference (0700 dir, 0600 files). */
export async function writeClientConfig(configHome: string, endpoint: string, tokenFile?: string): Promise<void> {
  const dir = path.join(configHome, 'attic')
  await fs.mkdir(dir, { recursive: true, mode: 0o700 })
  await fs.chmod(configHome, 0o700)
  const lines = [
    `default-server = ${tomlString(SERVER_NAME)}`,
    `[servers.${SERVER_NAME}]`,
    `endpoint = ${tomlString(endpoint)}`,
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
  publicKey?: string
  isPublic?: boolean
  upstreamCacheKeyNames: string[]
}

export type ProbeResult =
  | { ok: true; endpoint: string; cache: CacheConfig }
  | { ok: false; endpoint: string; reason: string }

/** GET /_api/v1/cache-config/CACHE: reachability, token and cache name checked in one request. */
export async function fetchCacheConfig(endpoint: string, cache: string, token: string | undefined, timeoutMs: number): Promise<ProbeResult> {
  const url = new URL(`_api/v1/cache-config/${encodeURIComponent(cache)}`, withSlash(endpoint))
  try {
    const res = await fetch(url, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(timeoutMs),
    })
    if (!res.ok) {
      const why = res.status === 401 || res.status === 403 ? 'token rejected' : res.status === 404 ? `no cache named "${cache}"` : ''
      return { ok: false, endpoint, reason: `HTTP ${res.status}${why ? ` (${why})` : ''}` }
    }
    const body = (await res.json()) as Record<string, unknown>
    return {
      ok: true,
      endpoint,
      cache: {
        substituterEndpoint: typeof body.substituter_endpoint === 'string' ? body.substituter_endpoint : undefined,
        publicKey: typeof body.public_key === 'string' ? body.public_key : undefined,
        isPublic: typeof body.is_public === 'boolean' ? body.is_public : undefined,
        upstreamCacheKeyNames: Array.isArray(body.upstream_cache_key_names) ? body.upstream_cache_key_names.map(String) : [],
      },
    }
  } catch (err) {
    const reason = (err as Error).name === 'TimeoutError' ? `no answer within ${timeoutMs / 1000}s` : fetchError(err)
    return { ok: false, endpoint, reason }
  }
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

/** The client's per-path result lines: `✅ <path> (12.3 MiB/s)` and `❌ <path>: <error>`. */
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
  exitCode: number | null
  timedOut: boolean
  stderr: string
}

/** `attic push CACHE paths…` in one bounded run (pushes closures; the server skips what it has). */
export async function pushPaths(client: string, cache: string, paths: readonly string[], opts: { env: NodeJS.ProcessEnv; timeoutMs: number; signal?: AbortSignal }): Promise<PushOutcome> {
  const pushed: string[] = []
  const failed: PushOutcome['failed'] = []
  const r = await run(client, ['push', cache, ...paths], {
    env: opts.env,
    timeoutMs: opts.timeoutMs,
    signal: opts.signal,
    onStderrLine: (line) => {
      const p = parsePushLine(line)
      if (p?.ok) pushed.push(p.path)
      else if (p) failed.push({ path: p.path, error: p.error })
    },
  })
  return { pushed, failed, exitCode: r.code, timedOut: r.timedOut, stderr: r.stderr }
}

/**
 * One long-lived `attic push --stdin` session: paths stream in as they are built; per-path
 * results stream out. The client only finishes its uploads at EOF, so `finish()` is the drain.
 */
export class AtticPushSession {
  private readonly child: ChildProcess
  /** Resolves with the exit code when the client ends, whether `finish()` ended it or not. */
  readonly exited: Promise<number | null>
  private stderrTail = ''
  /** Set once `finish()` closed stdin: an exit after that is the expected end. */
  finishing = false

  constructor(client: string, cache: string, env: NodeJS.ProcessEnv, onLine: (line: PushLine) => void) {
    this.child = spawn(client, ['push', '--stdin', cache], { env, stdio: ['pipe', 'ignore', 'pipe'], detached: true })
    this.child.stdin!.on('error', () => {}) // a dead client is reported by exit code, not an EPIPE crash
    createInterface({ input: this.child.stderr! }).on('line', (line) => {
      const parsed = parsePushLine(line)
      if (parsed) onLine(parsed)
      else this.stderrTail = (this.stderrTail + line + '\n').slice(-2000)
    })
    this.exited = new Promise((resolve) => {
      this.child.on('error', (err) => {
        this.stderrTail += String(err)
        resolve(127)
      })
      this.child.on('close', (code) => resolve(code))
    })
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined
  }

  add(paths: readonly string[]): boolean {
    if (!this.alive || !this.child.stdin!.writable) return false
    this.child.stdin!.write(paths.map((p) => `${p}\n`).join(''))
    return true
  }

  /** What the client printed besides per-path lines (its last 2000 characters). */
  get stderr(): string {
    return this.stderrTail
  }

  /** Close stdin and wait for every upload to finish; kill the client if it takes longer than timeoutMs. */
  async finish(timeoutMs: number): Promise<{ exitCode: number | null; timedOut: boolean; stderr: string }> {
    this.finishing = true
    this.child.stdin!.end()
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      killGroup(this.child, 'SIGKILL')
    }, timeoutMs)
    const exitCode = await this.exited
    clearTimeout(timer)
    return { exitCode, timedOut, stderr: this.stderrTail }
  }

  kill(): void {
    killGroup(this.child, 'SIGKILL')
  }
}
