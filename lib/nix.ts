// Typed wrappers around the nix CLI, using only interfaces that exist from Nix 2.8 to current
// Nix, Lix and Determinate Nix; where output shapes differ (path-info JSON), both are parsed.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import os from 'node:os'
import { run, type RunResult } from './exec.js'
import { BuildLog, parseNixLogLine, type BuildCounts, type FailedBuild, type NixLogEvent } from './nixlog.js'

export const storeDir = (env: NodeJS.ProcessEnv = process.env): string => env.NIX_STORE_DIR ?? '/nix/store'

/**
 * Every `nix` command greedy-nix runs turns on what it needs itself: the nixos/nix image's nix.conf
 * (NixOS/nix docker.nix) enables no experimental feature, so `nix build`, `nix copy`, `nix path-info`
 * and flake references fail there without it. `--extra-*` adds to what the user's config enables
 * (Nix >= 2.4); the legacy `nix-store` commands need nothing.
 */
export const NIX_FEATURES = ['--extra-experimental-features', 'nix-command flakes'] as const

/** `nix <args>` with the features greedy-nix needs. */
export const nixArgs = (...args: string[]): string[] => [...NIX_FEATURES, ...args]

export interface NixVersion {
  impl: 'nix' | 'lix'
  major: number
  minor: number
  /** The version line as printed (Lix ≥ 2.92 prints more lines after it). */
  raw: string
}

/**
 * Parse `nix --version`. The first line is `<program> (<name>) <version>`:
 * - Nix: "nix (Nix) 2.8.0"; unofficial builds "nix (Nix) 2.36.0pre20260101_0123abcd" (NixOS/nix
 *   packaging/components.nix: `pre<date>_<rev>`, or `_dirty`).
 * - Lix: "nix (Lix, like Nix) 2.91.1", "nix (Lix, like Nix) 2.96.0-dev" (lix-project/lix
 *   version.json), "… 2.92.0-dev-pre20250117-0d14c2b"; Lix ≥ 2.92 prints `System type:`,
 *   `Data directory: …-lix-2.92.0-…/share` and more lines after it (lix/libmain/shared.cc
 *   printVersion; doc/manual/src/release-notes/rl-2.92.md).
 * - Determinate Nix: "nix (Determinate Nix 3.16.0) 2.33.3": the version after the parenthesis is the
 *   Nix it is built on, which is what decides the CLI (DeterminateSystems/nix-src src/libmain/shared.cc).
 */
export function parseNixVersion(text: string): NixVersion | undefined {
  for (const line of text.split('\n')) {
    const m = /\(([^)]*)\)\s+(\d+)\.(\d+)[.\-+~_a-z0-9]*\s*$/i.exec(line.trim())
    if (m) return { impl: /\bLix\b/.test(m[1]!) ? 'lix' : 'nix', major: Number(m[2]), minor: Number(m[3]), raw: line.trim() }
  }
  return undefined
}

let versionPromise: Promise<NixVersion | undefined> | undefined
/** Detected once per process. */
export function nixVersion(): Promise<NixVersion | undefined> {
  versionPromise ??= run('nix', ['--version'], { timeoutMs: 10_000 }).then((r) =>
    r.code === 0 ? parseNixVersion(r.stdout) : undefined,
  )
  return versionPromise
}

/**
 * `nix path-info` JSON arguments. Nix ≥ 2.33 (and Determinate Nix built on it) warns on a bare
 * `--json` ("'--json' without '--json-format' is deprecated; please specify '--json-format 1' or
 * '--json-format 2'. This will become an error in a future release.", NixOS/nix src/nix/path-info.cc)
 * and takes `--json-format` 1 or 2 (2.33–2.34) or 1, 2 or 3 (2.35+; src/libstore/path-info.cc
 * parsePathInfoJsonFormat). Format 2 is asked for: the current structured format, accepted by every
 * version that has the flag and used by Nix's own tests (tests/functional/path-info.sh); format 1 is
 * kept only as "the legacy format" (doc/manual/source/release-notes/rl-2.33.md), and 3 is 2.35+ only.
 * Lix has no `--json-format` and still prints the old array (lix/libstore/store-api.cc pathInfoToJSON).
 */
export function pathInfoJsonArgs(v: NixVersion | undefined): string[] {
  const hasFormat = v !== undefined && v.impl === 'nix' && (v.major > 2 || (v.major === 2 && v.minor >= 33))
  return hasFormat ? ['--json', '--json-format', '2'] : ['--json']
}

export interface PathInfo {
  path: string
  valid: boolean
  /** Built on this machine (not substituted): never already in a cache we substitute from. */
  ultimate: boolean
  /** Signatures as "keyName:base64". */
  signatures: string[]
  references: string[]
  narSize?: number
}

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x)

/** A signature as "keyName:base64": format 3 writes `{keyName, sig}` (NixOS/nix src/libstore-tests/data/path-info/json-3/impure.json). */
function signatureText(s: unknown): string | undefined {
  if (typeof s === 'string') return s
  if (isObject(s) && typeof s.keyName === 'string' && typeof s.sig === 'string') return `${s.keyName}:${s.sig}`
  return undefined
}

/**
 * `nix path-info --json` in every shape it has had, `null` or `valid: false` for an invalid path:
 * - an array of objects with `path` (Nix ≤ 2.18; Lix, with `{path, valid: false}` for invalid ones);
 * - an object keyed by store path, `null` when invalid (Nix 2.19–2.32, and `--json-format 1` from
 *   2.33, whose entries also carry `version` and `storeDir`);
 * - `{"version": 2|3, "storeDir": "/nix/store", "info": {<base name>: {…} | null}}` (`--json-format 2`
 *   and 3, NixOS/nix src/nix/path-info.cc pathInfoToJSON), with base names in keys and references,
 *   and in format 3 signatures as `{keyName, sig}`.
 */
export function parsePathInfoJson(text: string, dir = '/nix/store'): PathInfo[] {
  const data: unknown = JSON.parse(text)
  // Only the wrapped formats have these two at the top; the keys of the others are store paths.
  const wrapped = isObject(data) && typeof data.version === 'number' && isObject(data.info)
  const storeDir = wrapped && typeof data.storeDir === 'string' ? data.storeDir : dir
  const full = (p: string) => (p.startsWith('/') ? p : `${storeDir}/${p}`)
  const entries: Array<[string, unknown]> = Array.isArray(data)
    ? data.filter(isObject).map((o) => [String(o.path ?? ''), o])
    : Object.entries(wrapped ? (data.info as Record<string, unknown>) : isObject(data) ? data : {})
  return entries
    .filter(([key]) => key !== '')
    .map(([key, raw]) => {
      const p = full(key)
      if (!isObject(raw)) return { path: p, valid: false, ultimate: false, signatures: [], references: [] }
      return {
        path: p,
        valid: raw.valid !== false,
        ultimate: raw.ultimate === true,
        signatures: (Array.isArray(raw.signatures) ? raw.signatures : []).map(signatureText).filter((s) => s !== undefined),
        references: Array.isArray(raw.references) ? raw.references.map((r) => full(String(r))) : [],
        narSize: typeof raw.narSize === 'number' ? raw.narSize : undefined,
      }
    })
}

/** Path info for valid paths (callers check validity first: older Nix fails on an invalid one). */
export async function queryPathInfo(paths: readonly string[], timeoutMs = 60_000): Promise<PathInfo[]> {
  if (paths.length === 0) return []
  const r = await run('nix', nixArgs('path-info', ...pathInfoJsonArgs(await nixVersion()), '--', ...paths), { timeoutMs })
  if (r.code !== 0) throw new Error(`nix path-info failed: ${r.stderr.trim().split('\n').pop()}`)
  return parsePathInfoJson(r.stdout, storeDir())
}

/** The subset of `paths` that are not valid store paths (yet). `nix-store --check-validity` is the same on every version. */
export async function invalidPaths(paths: readonly string[], timeoutMs = 60_000): Promise<Set<string>> {
  if (paths.length === 0) return new Set()
  const r = await run('nix-store', ['--check-validity', '--print-invalid', ...paths], { timeoutMs })
  if (r.code !== 0) throw new Error(`nix-store --check-validity failed: ${r.stderr.trim().split('\n').pop()}`)
  return new Set(r.stdout.split('\n').filter(Boolean))
}

export interface CopyResult extends RunResult {
  /** Paths Nix started copying (paths already in the target are not listed); all copied only when code is 0. */
  copied: string[]
}

/** `nix copy --to URL paths…`, bounded: against a failing HTTP cache Nix itself retries for minutes. */
/**
 * How `nix copy` talks to an HTTP cache. One try: Nix 2.8 retries an upload without its body and
 * then waits for the stall timeout (seen here), so we retry with a fresh `nix copy` instead. A
 * server that accepts and never answers costs 30 s, not the 300 s default.
 */
const COPY_OPTIONS = [
  '--option', 'download-attempts', '1', '--option', 'connect-timeout', '10', '--option', 'stalled-download-timeout', '30',
  // Nix's narinfo caches keep their default TTLs. With `narinfo-cache-negative-ttl 0` each path's
  // upload asked the cache again whether it had it, answered "no" a moment before by the same
  // process: 1 more round trip per path on 2.8, 3 on 2.24 (seen in the proxy's log; 200 paths,
  // 100 ms, 8 processes on 2.24: 22 -> 41 paths/s). A "not there" the build's substituter lookups
  // left does no harm: the push that uploads a path writes "there" over it
  // (binary-cache-store.cc `writeNarInfo`, 2.8.0 and 2.24.15), so a later push skips it
  // (test/remote.test.ts: each path goes up once, on both versions).
]

/** `onCopying`: called once, at the first path Nix starts copying (the cache is open by then). */
export async function copyTo(url: string, paths: readonly string[], opts: { timeoutMs: number; env?: NodeJS.ProcessEnv; signal?: AbortSignal; onCopying?: () => void }): Promise<CopyResult> {
  const copied: string[] = []
  const r = await run('nix', nixArgs('copy', ...COPY_OPTIONS, '--to', url, ...paths), {
    timeoutMs: opts.timeoutMs,
    env: opts.env,
    signal: opts.signal,
    onStderrLine: (line) => {
      const m = /^copying path '([^']+)' to /.exec(line.trim())
      if (m && copied.push(m[1]!) === 1) opts.onCopying?.()
    },
  })
  return { ...r, copied }
}

/**
 * The output paths a derivation's text names. Its first list holds `("name","path","method","hash")`
 * per output, after `Derive(` or, with dynamic derivations, `DrvWithVersion("xp-dyn-drv",`
 * (derivations.cc `Derivation::unparse`, 2.8.0 and 2.24.15); a floating content-addressed or
 * deferred output has no path ("") until it is built, so it is not named.
 */
export function derivationOutputs(text: string): string[] {
  const end = text.indexOf(')]')
  if (!/^(Derive|DrvWithVersion)\(/.test(text) || end === -1) return []
  return [...text.slice(0, end + 1).matchAll(/\("[^"]*","(\/[^"]+)"/g)].map((m) => m[1]!)
}

/** The closure of `paths` (`nix-store -qR`, stable on every version). */
export async function closureOf(paths: readonly string[], timeoutMs = 60_000): Promise<string[]> {
  if (paths.length === 0) return []
  const r = await run('nix-store', ['--query', '--requisites', ...paths], { timeoutMs })
  if (r.code !== 0) throw new Error(`nix-store --query --requisites failed: ${r.stderr.trim().split('\n').pop()}`)
  return r.stdout.split('\n').filter(Boolean)
}

/** Build `installable` from substituters only (`--max-jobs 0`): fails at once when it is not cached. */
export async function substituteOnly(installable: string, outLink: string, extraArgs: readonly string[] = [], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return run('nix', nixArgs('build', installable, '--max-jobs', '0', '--out-link', outLink, ...extraArgs), { timeoutMs: opts.timeoutMs ?? 300_000, env: opts.env })
}

/** The public half of a secret signing key, read through stdin so the secret never reaches argv. */
export async function publicKeyOf(secretKey: string): Promise<string | undefined> {
  const r = await run('nix', nixArgs('key', 'convert-secret-to-public'), { input: secretKey.trim(), timeoutMs: 10_000 })
  return r.code === 0 ? r.stdout.trim() || undefined : undefined
}

/**
 * The `nix build` arguments of a greedy build: `--out-link result` (the final push looks for
 * ./result*) and `--keep-going` (one failure must not stop independent work), unless the user's
 * own arguments already say otherwise.
 */
export function nixBuildArgs(installables: readonly string[], userArgs: readonly string[], keepGoing: boolean): string[] {
  const args = [...installables, ...userArgs]
  if (!userArgs.some((a) => a === '--out-link' || a === '-o' || a === '--no-link')) args.push('--out-link', 'result')
  if (keepGoing && !userArgs.some((a) => a === '--keep-going' || a === '-k')) args.push('--keep-going')
  return args
}

export interface BuildOptions {
  /** Installables and any extra nix arguments, as given. */
  args: readonly string[]
  /** Called with each human-readable log line. */
  onLine: (line: string) => void
  /** Called with each of Nix's machine log events. */
  onEvent?: (ev: NixLogEvent) => void
  env?: NodeJS.ProcessEnv
  /** Abort: the build is sent SIGTERM, then SIGKILL after a grace period. */
  signal?: AbortSignal
}

export interface BuildResult extends BuildCounts {
  exitCode: number
  /** Nix's error messages (also among the lines given to onLine). */
  errors: readonly string[]
  /** Derivations whose builder failed, with their last output lines. */
  failures: readonly FailedBuild[]
  /** Wall time of the build, in seconds. */
  seconds: number
}

/** `nix build` with the machine log: prints a readable log and counts built and substituted paths exactly. */
export function build(opts: BuildOptions): Promise<BuildResult> {
  return new Promise((resolve) => {
    const log = new BuildLog()
    const started = Date.now()
    const child = spawn('nix', nixArgs('build', '--log-format', 'internal-json', ...opts.args), {
      stdio: ['ignore', 'inherit', 'pipe'],
      env: opts.env ?? process.env,
    })
    const onAbort = () => {
      child.kill('SIGTERM')
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref()
    }
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    const lines = createInterface({ input: child.stderr! })
    lines.on('line', (line) => {
      const ev = parseNixLogLine(line)
      if (!ev) return opts.onLine(line)
      opts.onEvent?.(ev)
      for (const out of log.feed(ev)) opts.onLine(out)
    })
    const finish = (exitCode: number) => {
      opts.signal?.removeEventListener('abort', onAbort)
      resolve({ exitCode, ...log.counts(), errors: log.errors, failures: log.failedBuilds, seconds: (Date.now() - started) / 1000 })
    }
    child.on('error', (err) => {
      opts.onLine(`nix could not be started: ${err.message}`)
      finish(127)
    })
    child.on('close', (code, sig) => {
      lines.close()
      finish(code ?? 128 + (sig ? os.constants.signals[sig] : 0))
    })
  })
}

/**
 * Whether Nix will really substitute from `url`. A nix-daemon ignores the substituters of a user it
 * does not trust unless they are in its `trusted-substituters`, and says so only as a warning on each
 * connection: `ignoring untrusted substituter '<url>'` (Nix's daemon.cc; seen on 2.8 and 2.24).
 * Any store operation opens a connection; this one changes nothing. Returns that warning, if any.
 */
export async function ignoredSubstituter(url: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const probe = `${storeDir(env)}/${'0'.repeat(32)}-greedy-nix-probe`
  const r = await run('nix-store', ['--check-validity', '--print-invalid', probe], { env, timeoutMs: 30_000 })
  const wanted = url.replace(/\/+$/, '')
  return r.stderr
    .split('\n')
    .map((l) => l.trim())
    .find((l) => /ignoring untrusted substituter '([^']*)'/.exec(l)?.[1]?.replace(/\/+$/, '') === wanted)
}
