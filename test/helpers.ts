// Real parts for the tests: an isolated Nix configuration per test, flakes of /bin/sh
// derivations with unique names, signing keys, file:// caches, and the bundles as built.
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The checkout: the nearest folder up with our tsup.config.ts (the benchmarks run these helpers bundled, from bench/.out). */
export const ROOT = findRoot(path.dirname(fileURLToPath(import.meta.url)))
function findRoot(dir: string): string {
  for (let d = dir; d !== path.dirname(d); d = path.dirname(d)) if (fs.existsSync(path.join(d, 'tsup.config.ts'))) return d
  throw new Error(`no greedy-nix checkout above ${dir}`)
}
export const DIST = path.join(ROOT, 'dist')
export const ATTIC_DOUBLE = path.join(ROOT, 'test', 'fixtures', 'attic')

export function tmpDir(prefix = 'greedy-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

export function uid(): string {
  return randomBytes(4).toString('hex')
}

/**
 * The nix.conf of the nixos/nix image, the component's default (NixOS/nix docker.nix): no
 * experimental feature is on, so neither `nix build` nor flakes work unless a command turns them
 * on itself. Changed only where this machine needs it: no build users (root, no daemon), and no
 * substituters (no network: cache.nixos.org would be tried and time out).
 */
export const IMAGE_NIX_CONF = [
  'sandbox = false',
  'build-users-group =',
  'trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=',
  'substituters =',
]

/** What a user of that image types to use the new CLI and flakes: the tests' own nix calls do the same. */
export const nixArgs = (...args: string[]): string[] => ['--extra-experimental-features', 'nix-command flakes', ...args]

/**
 * Env for one test: Nix reads only our nix.conf (NIX_CONF_DIR replaces /etc/nix), the image's;
 * a private XDG_CONFIG_HOME receives what bootstrap writes. NIX_CONFIG is not used: it would
 * override bootstrap's user nix.conf.
 */
export function nixEnv(dir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const conf = path.join(dir, 'etc-nix')
  fs.mkdirSync(conf, { recursive: true })
  fs.writeFileSync(
    path.join(conf, 'nix.conf'),
    [...IMAGE_NIX_CONF, ''].join('\n'),
  )
  // The machine's TLS setup (a corporate or sandbox CA) is kept: npm and fetch need it.
  const tls = Object.fromEntries(Object.entries(process.env).filter(([k]) => /^(NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|SSL_CERT_DIR|NIX_SSL_CERT_FILE)$/.test(k)))
  const env: NodeJS.ProcessEnv = {
    ...tls,
    PATH: process.env.PATH,
    HOME: dir,
    NIX_CONF_DIR: conf,
    XDG_CONFIG_HOME: path.join(dir, 'config'),
    XDG_CACHE_HOME: path.join(dir, 'cache'),
    NO_COLOR: '1',
    ...extra,
  }
  delete env.NIX_CONFIG
  return env
}

export interface FlakeSpec {
  /** Unique prefix of every derivation name, so tests never share store paths. */
  prefix: string
  /** Length of the chain; each link references the previous one. */
  chain: number
  /** 1-based position of a link whose builder fails (it and everything after it is not built). */
  failAt?: number
  /** Seconds each link sleeps, so the watcher sees paths while the build runs. */
  sleep?: number
  /** An extra package `attic-client` that provides bin/attic (the test double), built at position `clientAt`. */
  clientAt?: number
  /** Add a derivation that fails at once, independent of the chain; `default` then needs both. */
  sideFails?: boolean
}

/** A flake without inputs whose `default` package is the end of a chain of /bin/sh derivations. */
export function writeFlake(dir: string, spec: FlakeSpec): void {
  fs.mkdirSync(dir, { recursive: true })
  const links: string[] = []
  for (let i = 1; i <= spec.chain; i++) {
    const prev = i === 1 ? '' : `echo \${l${i - 1}} >> $out; `
    const fail = spec.failAt === i ? `echo link ${i} fails on purpose >&2; exit 7; ` : ''
    const client = spec.clientAt === i ? 'c=${attic}; ' : ''
    links.push(
      `    l${i} = mk "${spec.prefix}-${i}" "${client}echo building link ${i}; sleep ${spec.sleep ?? 0}; ${fail}echo ${i} > $out; ${prev}";`,
    )
  }
  if (spec.sideFails) {
    links.push(`    side = mk "${spec.prefix}-side" "echo the side derivation fails >&2; exit 9";`)
    links.push(`    top = mk "${spec.prefix}-top" "echo \${side} \${l${spec.chain}} > $out";`)
  }
  const hasClient = spec.clientAt !== undefined
  if (hasClient) {
    fs.copyFileSync(ATTIC_DOUBLE, path.join(dir, 'attic'))
    links.unshift(`    attic = derivation { name = "${spec.prefix}-attic-client"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; src = ./attic; args = [ "-c" "mkdir -p $out/bin; cp $src $out/bin/attic; chmod +x $out/bin/attic" ]; };`)
  }
  const packages = `default = ${spec.sideFails ? 'top' : `l${spec.chain}`}; ${hasClient ? 'attic-client = attic; ' : ''}${Array.from({ length: spec.chain }, (_, i) => `l${i + 1} = l${i + 1};`).join(' ')}`
  writeShFlake(dir, links, packages)
}

/** Nix's name for this machine's platform, as the test flakes use it. */
export const NIX_SYSTEM = process.arch === 'arm64' ? 'aarch64-linux' : 'x86_64-linux'

/**
 * flake.nix without inputs: `bindings` (Nix `name = value;` lines, which may use `system` and
 * `mk name cmd`, a /bin/sh derivation) and the attribute set of `packages.<system>`.
 */
export function writeShFlake(dir: string, bindings: string[], packages: string): void {
  fs.writeFileSync(
    path.join(dir, 'flake.nix'),
    `{
  outputs = { self }: let
    system = "${NIX_SYSTEM}";
    mk = name: cmd: derivation { inherit name system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" cmd ]; };
${bindings.join('\n')}
  in {
    packages.\${system} = { ${packages} };
  };
}
`,
  )
}

export interface Ran {
  code: number | null
  stdout: string
  stderr: string
  out: string
}

/** Run a command to completion (argv array: nothing goes through a shell). */
export function runCmd(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string; timeoutMs?: number } = {}): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: opts.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.stdin.end(opts.input ?? '')
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr, out: stdout + stderr })
    })
  })
}

/** Run a built bundle with plain node: `greedy(env, cwd, 'build', '.#x')`. */
export function greedy(env: NodeJS.ProcessEnv, cwd: string, ...args: string[]): Promise<Ran> {
  return runCmd(process.execPath, [path.join(DIST, 'greedy-nix.mjs'), ...args], { env, cwd })
}

export function nixSync(env: NodeJS.ProcessEnv, args: string[], cwd?: string): string {
  const r = spawnSync('nix', nixArgs(...args), { env, cwd, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`nix ${args.join(' ')} failed: ${r.stderr}`)
  return r.stdout.trim()
}

/** A fresh signing key pair: [secret key text, public key text]. */
export function makeKeys(env: NodeJS.ProcessEnv, name: string): [string, string] {
  const secret = nixSync(env, ['key', 'generate-secret', '--key-name', name])
  const r = spawnSync('nix', nixArgs('key', 'convert-secret-to-public'), { env, input: secret, encoding: 'utf8' })
  return [secret, r.stdout.trim()]
}

/** Output paths of a flake's packages, without building them. */
export function outPath(env: NodeJS.ProcessEnv, flakeDir: string, attr: string): string {
  return nixSync(env, ['eval', '--raw', `${flakeDir}#${attr}.outPath`])
}

/** The out path of every package of a flake, by attribute name (evaluation only). */
export function packagePaths(env: NodeJS.ProcessEnv, flakeDir: string): Record<string, string> {
  const json = nixSync(env, ['eval', '--json', `${flakeDir}#packages.${NIX_SYSTEM}`, '--apply', 'ps: builtins.mapAttrs (n: p: p.outPath) ps'])
  return JSON.parse(json) as Record<string, string>
}

/** The store path of every link of the chain, in order (evaluation only). */
export function chainPaths(env: NodeJS.ProcessEnv, flakeDir: string, n: number): string[] {
  const all = packagePaths(env, flakeDir)
  return Array.from({ length: n }, (_, i) => all[`l${i + 1}`]!)
}

/** Is this store path in the file:// binary cache at dir? (its .narinfo exists) */
export function inFileCache(cacheDir: string, storePath: string): boolean {
  const hash = path.basename(storePath).slice(0, 32)
  return fs.existsSync(path.join(cacheDir, `${hash}.narinfo`))
}

/** Whether `storePath` reached the cache while `running` (a build) had not finished yet. */
export async function cachedWhileRunning(running: Promise<Ran>, cacheDir: string, storePath: string): Promise<{ early: boolean; result: Ran }> {
  let done = false
  const finished = running.then((r) => {
    done = true
    return r
  })
  while (!done && !inFileCache(cacheDir, storePath)) await new Promise((r) => setTimeout(r, 100))
  return { early: !done, result: await finished }
}

export function isValid(env: NodeJS.ProcessEnv, storePath: string): boolean {
  return spawnSync('nix-store', ['--check-validity', storePath], { env }).status === 0
}

/** Remove paths from the local store (the next pipeline on a fresh runner). */
export function deleteFromStore(env: NodeJS.ProcessEnv, paths: string[]): void {
  const valid = paths.filter((p) => isValid(env, p))
  if (valid.length === 0) return
  const r = spawnSync('nix', nixArgs('store', 'delete', ...valid), { env, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`nix store delete failed: ${r.stderr}`)
}

export function readJsonFile<T>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T
}

/** Processes whose command line or environment mentions `marker` (our watcher, nix, the builders). */
export function processesWith(marker: string): string[] {
  const found: string[] = []
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid)) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ')
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8')
      if (cmd.includes(marker) || environ.includes(marker)) found.push(`${pid} ${cmd}`)
    } catch {
      // gone meanwhile
    }
  }
  return found
}
