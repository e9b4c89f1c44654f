// The edge where environment variables and command-line flags become one typed Config.
// Each variable is parsed on its own so that one bad value is reported by name and the rest
// still apply: a job without a usable cache configuration still builds (unless strict).
import path from 'node:path'
// zod/mini: the same parser as zod with a tree-shakable API, ~30× smaller in the bundles, which
// keeps every command's start-up close to bare node's (docs/BENCHMARKS.md, startup).
import * as z from 'zod/mini'
import { parseSize } from './prune.js'

/** Where store paths are pushed. */
export type Backend =
  /** The attic client (`attic push`), configured by ATTIC_SERVER / ATTIC_CACHE / ATTIC_TOKEN. */
  | 'attic'
  /** Any Nix store URL through `nix copy --to` (file://, http(s)://, s3://, ssh-ng://). */
  | 'nix'
  /** No cache configured: build only. */
  | 'none'

export interface Config {
  backend: Backend
  /** Candidate attic server URLs, tried in order; the first that answers is used. */
  atticServers: string[]
  atticCache: string
  /** A token value (from ATTIC_TOKEN). Never logged, never put on a command line. */
  atticToken?: string
  atticTokenFile?: string
  /** A Nix store URL for the `nix` backend, without credentials (they are in cacheCredentials). */
  cacheUrl?: string
  /** user:password taken out of an http(s) GREEDY_CACHE_URL: they go to a 0600 netrc file, never to argv or logs. */
  cacheCredentials?: { login: string; password: string }
  /** A secret signing key value (from GREEDY_SIGNING_KEY). Never logged or put on a command line. */
  signingKey?: string
  signingKeyFile?: string
  trustedPublicKeys: string[]
  /**
   * The installable that provides the attic client (`bin/attic`). Unset: the project's
   * `.#attic-client` if its flake has one, else `attic` on PATH, else nixpkgs' `attic-client`.
   */
  client?: string
  stateDir: string
  /** Seconds a drain may take before the job moves on. */
  drainTimeout: number
  /**
   * Seconds after which a watcher ends itself whatever happens: the last guard against a watcher
   * outliving a crashed job on a shared runner (its state dir gone or taken over end it sooner).
   */
  watchMaxAge: number
  /**
   * Push processes the watcher runs at once. A remote cache answers each request 50–300 ms late
   * and `nix copy` uploads one path after another, so several processes, each with its own paths,
   * multiply the throughput; a `file://` cache is limited by this machine's CPU and disk, where
   * more processes only compete with the build. Default: 1 for file://, 16 for other store URLs
   * (a fan of 200 tiny paths at 100 ms a request: 18 paths/s with 8, 25 with 16, 28 with 24 on
   * Nix 2.8, 2 cores; docs/BENCHMARKS.md), 2 for attic (each `attic push` uploads 5 paths at once).
   */
  pushJobs: number
  /**
   * Bytes a `file://` cache may hold: after its final push a job evicts the least recently used
   * paths beyond it. Unset: the cache only grows, and GitLab's `cache:` carries all of it into
   * and out of every job.
   */
  cacheMaxSize?: number
  include?: RegExp
  exclude?: RegExp
  /**
   * Strict mode: cache problems fail the command. Off by default, because a cache outage must not
   * turn a green build red; on for pipelines whose point is to populate the cache.
   */
  strict: boolean
  /** Debug output (GREEDY_DEBUG, --debug). */
  debug: boolean
}

/**
 * Configuration variables, with the flag that overrides each (secrets have none: argv is visible
 * in `ps`). `cache`: where and how to reach the cache; a bad value turns the cache off for the
 * job, since a guess could push to the wrong place. `tuning`: a bad value falls back to its
 * default, with a warning, and the cache stays on.
 */
export const VARIABLES = {
  ATTIC_SERVER: { flag: 'attic-server', kind: 'cache', doc: 'attic server URL, or several separated by spaces or commas: the first that answers is used' },
  ATTIC_CACHE: { flag: 'attic-cache', kind: 'cache', doc: 'attic cache name (default: main)' },
  ATTIC_TOKEN: { flag: undefined, kind: 'cache', doc: 'attic token that may pull and push (secret: environment only)' },
  ATTIC_TOKEN_FILE: { flag: 'attic-token-file', kind: 'cache', doc: 'file holding the attic token' },
  GREEDY_CACHE_URL: { flag: 'cache-url', kind: 'cache', doc: 'a Nix store URL to push to instead of attic: file://, http(s)://, s3://, ssh://, ssh-ng://' },
  GREEDY_SIGNING_KEY: { flag: undefined, kind: 'cache', doc: 'secret key that signs what goes to GREEDY_CACHE_URL (secret: environment only)' },
  GREEDY_SIGNING_KEY_FILE: { flag: 'signing-key-file', kind: 'cache', doc: 'file holding that secret key' },
  GREEDY_TRUSTED_PUBLIC_KEYS: { flag: 'trusted-public-keys', kind: 'cache', doc: "public keys of GREEDY_CACHE_URL (default: the signing key's)" },
  GREEDY_CLIENT: { flag: 'client', kind: 'cache', doc: 'installable with bin/attic (default: .#attic-client, attic on PATH, nixpkgs#attic-client)' },
  GREEDY_STATE_DIR: { flag: 'state-dir', kind: 'tuning', doc: 'state folder (default: $CI_PROJECT_DIR/.greedy-nix, else ./.greedy-nix)' },
  GREEDY_DRAIN_TIMEOUT: { flag: 'drain-timeout', kind: 'tuning', doc: 'seconds build and push wait for pending uploads (default: 120)' },
  GREEDY_WATCH_MAX_AGE: { flag: 'watch-max-age', kind: 'tuning', doc: 'seconds after which a watcher ends itself (default: 2678400, 31 days)' },
  GREEDY_PUSH_JOBS: { flag: 'push-jobs', kind: 'tuning', doc: 'uploads at once, 1-64 (default: 1 for file://, 16 other store URLs, 2 attic)' },
  GREEDY_CACHE_MAX_SIZE: { flag: 'cache-max-size', kind: 'tuning', doc: 'size budget of a file:// cache, e.g. 500M, 2G, 1.5GiB (default: none)' },
  GREEDY_INCLUDE: { flag: 'include', kind: 'tuning', doc: 'push only store paths matching this regular expression' },
  GREEDY_EXCLUDE: { flag: 'exclude', kind: 'tuning', doc: "push no store path matching this regular expression (closures still carry them)" },
  GREEDY_STRICT: { flag: 'strict', kind: 'tuning', doc: 'true: cache problems fail the job (default: false, they only warn; 1/0 work too)' },
  GREEDY_DEBUG: { flag: 'debug', kind: 'tuning', doc: 'true: debug output (default: false; --verbose works too)' },
} as const satisfies Record<string, { flag: string | undefined; kind: 'cache' | 'tuning'; doc: string }>

export type Variable = keyof typeof VARIABLES

/** 31 days: above the longest job timeout GitLab allows (one month). */
export const DEFAULT_WATCH_MAX_AGE = 31 * 24 * 3600

/** A string, trimmed, then held to `checks`. */
const trim = (...checks: z.core.$ZodCheck<string>[]) => z.string().check(z.trim(), ...checks)
const trimmed = trim()
const httpUrl = trim(
  z.refine((s) => /^https?:$/.test(safeUrl(s)?.protocol ?? ''), { error: 'expected an http:// or https:// URL' }),
  z.refine((s) => !hasCredentials(s), { error: 'expected a URL without user:password (the token goes in ATTIC_TOKEN)', abort: true }),
)
const STORE_SCHEMES = ['file:', 'http:', 'https:', 's3:', 'ssh:', 'ssh-ng:']
const storeUrl = trim(
  z.refine((s) => STORE_SCHEMES.includes(safeUrl(s)?.protocol ?? ''), {
    error: `expected a Nix store URL with scheme ${STORE_SCHEMES.map((s) => s.replace(':', '://')).join(', ')}`,
  }),
)
const publicKey = trim(z.regex(/^[^:\s]+:[A-Za-z0-9+/]{43}=$/, { error: 'expected name:base64 public keys' }))
const regex = z.pipe(
  trimmed,
  z.transform((s: string, ctx) => {
    try {
      return new RegExp(s)
    } catch (err) {
      ctx.issues.push({ code: 'custom', input: s, message: `expected a regular expression (${(err as Error).message})` })
      return z.NEVER
    }
  }),
)
const list = z.transform((s: string) => s.split(/[\s,]+/).filter(Boolean))
const yesNo = z.pipe(
  trim(z.regex(/^(0|1|true|false|yes|no|on|off)$/i, { error: 'expected true or false (1/0, yes/no, on/off)' })),
  z.transform((s: string) => /^(1|true|yes|on)$/i.test(s)),
)

/** One schema per variable; each takes the raw string (already known to be non-empty). */
const PARSERS = {
  ATTIC_SERVER: z.pipe(z.pipe(trimmed, list), z.array(httpUrl).check(z.minLength(1, { error: 'expected at least one URL' }))),
  // attic's own rule (attic/src/cache.rs, CACHE_NAME_REGEX): a name it would reject never reaches a server.
  ATTIC_CACHE: trim(
    z.regex(/^[A-Za-z0-9][A-Za-z0-9_+-]{0,49}$/, {
      error: 'expected an attic cache name: a letter or digit, then up to 49 letters, digits, "-", "_" or "+"',
    }),
  ),
  ATTIC_TOKEN: z.string(),
  ATTIC_TOKEN_FILE: trimmed,
  GREEDY_CACHE_URL: z.pipe(
    storeUrl,
    z.transform((s: string): { url: string; credentials?: { login: string; password: string } } => {
      const url = new URL(s)
      if (!hasCredentials(s) || !/^https?:$/.test(url.protocol)) return { url: s }
      const credentials = { login: decodeURIComponent(url.username), password: decodeURIComponent(url.password) }
      url.username = ''
      url.password = ''
      return { url: url.href, credentials }
    }),
  ),
  GREEDY_SIGNING_KEY: trim(z.regex(/^[^:\s]+:\S+$/, { error: 'expected a secret key of the form name:base64' })),
  GREEDY_SIGNING_KEY_FILE: trimmed,
  GREEDY_TRUSTED_PUBLIC_KEYS: z.pipe(z.pipe(trimmed, list), z.array(publicKey)),
  GREEDY_CLIENT: trimmed,
  GREEDY_STATE_DIR: trimmed,
  GREEDY_DRAIN_TIMEOUT: z.pipe(
    trim(z.regex(/^\d+(\.\d+)?$/, { error: 'expected a number of seconds (0 or more)' })),
    z.transform(Number),
  ),
  GREEDY_WATCH_MAX_AGE: z.pipe(
    trim(z.regex(/^[1-9]\d*$/, { error: 'expected a whole number of seconds (1 or more)' })),
    z.transform(Number),
  ),
  GREEDY_PUSH_JOBS: z.pipe(
    trim(z.regex(/^([1-9]|[1-5]\d|6[0-4])$/, { error: 'expected a whole number from 1 to 64' })),
    z.transform(Number),
  ),
  GREEDY_CACHE_MAX_SIZE: z.pipe(
    trimmed,
    z.transform((s: string, ctx) => {
      const bytes = parseSize(s)
      if (bytes === undefined) ctx.issues.push({ code: 'custom', input: s, message: 'expected a size such as 500M, 2G, 1.5GiB or a number of bytes' })
      return bytes ?? z.NEVER
    }),
  ),
  GREEDY_INCLUDE: regex,
  GREEDY_EXCLUDE: regex,
  GREEDY_STRICT: yesNo,
  GREEDY_DEBUG: yesNo,
} satisfies Record<Variable, z.ZodMiniType>

/** What a tuning setting falls back to when its value is bad. */
const FALLBACK: { [K in Variable]?: string } = {
  GREEDY_DRAIN_TIMEOUT: 'the default, 120',
  GREEDY_WATCH_MAX_AGE: 'the default, 2678400',
  GREEDY_PUSH_JOBS: "the cache's default",
  GREEDY_CACHE_MAX_SIZE: 'no budget',
  GREEDY_INCLUDE: 'every path',
  GREEDY_EXCLUDE: 'none excluded',
  GREEDY_STRICT: 'false',
  GREEDY_DEBUG: 'false',
}

// Secrets are never echoed back in error messages.
const SECRET: ReadonlySet<Variable> = new Set(['ATTIC_TOKEN', 'GREEDY_SIGNING_KEY'])

export interface ConfigResult {
  config: Config
  /** One line per bad cache setting, naming it and what was expected. When non-empty, backend is 'none'. */
  errors: string[]
  /** One line per bad tuning setting, naming it, what was expected and the default used instead. */
  warnings: string[]
}

/** Flags as parsed at the edge (lib/cli.ts): `--cache-url X` arrives as { 'cache-url': 'X' }. */
export type Flags = Record<string, unknown>

export function parseConfig(env: NodeJS.ProcessEnv, flags: Flags = {}, cwd = process.cwd()): ConfigResult {
  const errors: string[] = []
  const warnings: string[] = []
  const values: { [K in Variable]?: z.output<(typeof PARSERS)[K]> } = {}
  for (const name of Object.keys(VARIABLES) as Variable[]) {
    const flag = VARIABLES[name].flag
    // An absent boolean flag may arrive as false: only a flag actually given overrides the env.
    const fromFlag = flag === undefined || flags[flag] === false ? undefined : flags[flag]
    const rawValue = fromFlag !== undefined ? flagString(fromFlag) : env[name]
    if (rawValue === undefined || rawValue.trim() === '') continue
    const parsed = PARSERS[name].safeParse(rawValue)
    if (parsed.success) {
      ;(values as Record<string, unknown>)[name] = parsed.data
    } else {
      const shown = SECRET.has(name) ? '' : ` ${JSON.stringify(redactUrls(rawValue))}`
      const source = fromFlag !== undefined ? `--${flag}` : name
      const line = `${source}:${shown} ${parsed.error.issues[0]?.message ?? 'invalid'}`
      if (VARIABLES[name].kind === 'cache') errors.push(line)
      else warnings.push(`${line}; using ${FALLBACK[name] ?? 'the default'}`)
    }
  }
  if (values.ATTIC_TOKEN !== undefined && values.ATTIC_TOKEN_FILE !== undefined) {
    errors.push('ATTIC_TOKEN and ATTIC_TOKEN_FILE are both set: set only one')
  }
  if (values.GREEDY_SIGNING_KEY !== undefined && values.GREEDY_SIGNING_KEY_FILE !== undefined) {
    errors.push('GREEDY_SIGNING_KEY and GREEDY_SIGNING_KEY_FILE are both set: set only one')
  }
  if (values.ATTIC_SERVER !== undefined && values.GREEDY_CACHE_URL !== undefined) {
    errors.push('ATTIC_SERVER and GREEDY_CACHE_URL are both set: choose one cache')
  }
  const backend: Backend =
    errors.length > 0 ? 'none' : values.ATTIC_SERVER ? 'attic' : values.GREEDY_CACHE_URL ? 'nix' : 'none'
  const projectDir = env.CI_PROJECT_DIR?.trim() || cwd
  const config: Config = {
    backend,
    atticServers: values.ATTIC_SERVER ?? [],
    atticCache: values.ATTIC_CACHE ?? 'main',
    atticToken: values.ATTIC_TOKEN,
    atticTokenFile: values.ATTIC_TOKEN_FILE && path.resolve(cwd, values.ATTIC_TOKEN_FILE),
    cacheUrl: values.GREEDY_CACHE_URL?.url,
    cacheCredentials: values.GREEDY_CACHE_URL?.credentials,
    signingKey: values.GREEDY_SIGNING_KEY,
    signingKeyFile: values.GREEDY_SIGNING_KEY_FILE && path.resolve(cwd, values.GREEDY_SIGNING_KEY_FILE),
    trustedPublicKeys: values.GREEDY_TRUSTED_PUBLIC_KEYS ?? [],
    client: values.GREEDY_CLIENT,
    stateDir: path.resolve(cwd, values.GREEDY_STATE_DIR ?? path.join(projectDir, '.greedy-nix')),
    drainTimeout: values.GREEDY_DRAIN_TIMEOUT ?? 120,
    watchMaxAge: values.GREEDY_WATCH_MAX_AGE ?? DEFAULT_WATCH_MAX_AGE,
    pushJobs: values.GREEDY_PUSH_JOBS ?? (backend === 'attic' ? 2 : values.GREEDY_CACHE_URL?.url.startsWith('file:') ? 1 : 16),
    cacheMaxSize: values.GREEDY_CACHE_MAX_SIZE,
    include: values.GREEDY_INCLUDE,
    exclude: values.GREEDY_EXCLUDE,
    strict: values.GREEDY_STRICT ?? false,
    debug: values.GREEDY_DEBUG ?? false,
  }
  return { config, errors, warnings }
}

function flagString(v: unknown): string {
  if (typeof v === 'boolean') return v ? '1' : '0'
  if (Array.isArray(v)) return flagString(v[v.length - 1])
  return String(v)
}

function hasCredentials(s: string): boolean {
  const url = safeUrl(s)
  return url !== undefined && (url.username !== '' || url.password !== '')
}

/** `scheme://user:password@host` → `scheme://***@host`, for anything printed. */
export function redactUrls(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^\s/@]+@/gi, '$1***@')
}

function safeUrl(s: string): URL | undefined {
  try {
    return new URL(s)
  } catch {
    return undefined
  }
}

/**
 * The settings `names` as --help shows them, within `width` columns: the variable and its flag,
 * then what it means, wrapped under itself.
 */
export function settingsHelp(names: readonly Variable[], width = 100): string {
  const left = (n: Variable) => (VARIABLES[n].flag ? `${n} --${VARIABLES[n].flag}` : n)
  const col = Math.max(...names.map((n) => left(n).length)) + 4
  return names.map((n) => `  ${left(n).padEnd(col - 2)}${wrap(VARIABLES[n].doc, width - col).join(`\n${' '.repeat(col)}`)}`).join('\n')
}

/** Words of `text` in lines of at most `width` characters (a longer word stands alone). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = []
  let line = ''
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line)
      line = word
    } else line = line ? `${line} ${word}` : word
  }
  return line ? [...lines, line] : lines
}
