// An attic server for a test: the server half of the attic test double
// (test/fixtures/attic-server.mjs, written from atticd's source), started as a child process.
// Its client half is test/fixtures/attic (ATTIC_DOUBLE).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { ROOT, nixEnv, uid } from './helpers.js'

export const ATTIC_SERVER_DOUBLE = path.join(ROOT, 'test', 'fixtures', 'attic-server.mjs')

/** What the server (or the proxy in front of it) does wrong on uploads; see attic-server.mjs. */
export interface AtticFaults {
  /** Regex on the store path: its upload gets the proxy's `413` HTML page. */
  fail?: string
  /** The first N uploads of each store path answer 500 `InternalServerError`. */
  failFirst?: number
  /** Uploads are never answered. */
  hang?: boolean
  /** Each upload is answered this much later. */
  delayMs?: number
}

export interface AtticServerOptions extends AtticFaults {
  cache: string
  /** A token with pull and push on the cache. */
  token: string
  /** A second token, pull only. */
  pullToken?: string
  /** The cache-name patterns both tokens hold (atticadm make-token --pull/--push PATTERN); default: the cache's name. */
  tokenCaches?: string[]
  /** The cache's key: the server signs what it stores. Without it a key pair is generated. */
  signingKeyFile?: string
  /** The public half of signingKeyFile (derived from it when absent). */
  publicKey?: string
  isPublic?: boolean
  /** Where attic sits behind its reverse proxy: `/` (default) or e.g. `/attic/`. */
  basePath?: string
  /** The cache's `upstream_cache_key_names` (default `["cache.nixos.org-1"]`; `[]`: no filter). */
  upstreamKeyNames?: string[]
  /**
   * The `api_endpoint` the server answers (atticd's `api-endpoint`): a URL (`{port}` is replaced),
   * or a bare host name for `http://<host>:<port><basePath>` (another name for this server).
   * Default: this server's own endpoint (origin + basePath), as a correctly configured atticd
   * answers. `''`: none configured, so the server synthesizes `http://<Host>/` as atticd does
   * (wrong behind a proxy at a sub-path).
   */
  apiEndpoint?: string
  priority?: number
}

export interface AtticServer {
  /** The server as a user writes it: origin + basePath, without the trailing slash. */
  url: string
  /** origin + basePath, with its trailing slash. */
  endpoint: string
  port: number
  stop(): Promise<void>
  /** The folder holding the cache folders. */
  root: string
  /** The cache `opts.cache` as a Nix file:// binary cache: `<hash>.narinfo` exists once a path is stored. */
  cacheDir: string
  publicKey: string
  /** The server's request log (one line per request, no tokens). */
  log: string
  /** Change the faults while the server runs (read on every upload). */
  setFaults(faults: AtticFaults): void
}

/**
 * Start the attic server double in `dir` for one cache. Tokens are plain strings instead of JWTs:
 * `token` may pull and push, `pullToken` only pull, both on `opts.cache` only.
 */
export async function startAtticServer(dir: string, opts: AtticServerOptions): Promise<AtticServer> {
  fs.mkdirSync(dir, { recursive: true })
  const root = path.join(dir, 'attic-root')
  const cacheDir = path.join(root, opts.cache)
  const basePath = normalizeBase(opts.basePath ?? '/')
  // nix copy and nix key run with a Nix configuration of their own (no substituters, no build users).
  const env = nixEnv(path.join(dir, 'server-home'))
  let signingKeyFile = opts.signingKeyFile
  let publicKey = opts.publicKey
  if (!signingKeyFile) {
    if (publicKey) throw new Error('startAtticServer: the server signs what it stores; pass signingKeyFile with publicKey')
    signingKeyFile = path.join(dir, 'server-signing-key')
    const secret = nix(env, ['key', 'generate-secret', '--key-name', `attic-double-${uid()}`])
    fs.writeFileSync(signingKeyFile, secret, { mode: 0o600 })
  }
  publicKey ??= nix(env, ['key', 'convert-secret-to-public'], fs.readFileSync(signingKeyFile, 'utf8'))
  const faultsFile = path.join(dir, 'attic-faults.json')
  const { fail, failFirst, hang, delayMs } = opts
  const config = {
    basePath,
    apiEndpoint: apiEndpointOption(opts.apiEndpoint, basePath),
    caches: {
      [opts.cache]: {
        dir: cacheDir,
        shadowDir: path.join(dir, 'attic-shadow', opts.cache),
        signingKeyFile,
        publicKey,
        isPublic: opts.isPublic ?? false,
        priority: opts.priority ?? 41,
        storeDir: '/nix/store',
        upstreamCacheKeyNames: opts.upstreamKeyNames ?? ['cache.nixos.org-1'],
      },
    },
    tokens: [
      { token: opts.token, pull: true, push: true, caches: opts.tokenCaches ?? [opts.cache] },
      ...(opts.pullToken ? [{ token: opts.pullToken, pull: true, push: false, caches: opts.tokenCaches ?? [opts.cache] }] : []),
    ],
    faults: { fail, failFirst, hang, delayMs },
    faultsFile,
  }
  const configFile = path.join(dir, 'attic-server.json')
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2), { mode: 0o600 })
  const log = path.join(dir, 'attic-server.log')
  const logFd = fs.openSync(log, 'a')
  // stdin: a pipe the server watches, so it ends with this process even when stop() is never called.
  const child: ChildProcess = spawn(process.execPath, [ATTIC_SERVER_DOUBLE, configFile, '0'], {
    stdio: ['pipe', 'pipe', logFd],
    env: { ...env, ATTIC_DOUBLE_SERVER_STDIN_PIPE: '1' },
  })
  fs.closeSync(logFd)
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => abort(new Error('did not start within 10 s')), 10_000)
    const abort = (e: Error) => {
      clearTimeout(timer)
      child.kill('SIGKILL')
      reject(new Error(`attic server double: ${e.message}: ${fs.readFileSync(log, 'utf8')}`))
    }
    child.once('exit', (code) => abort(new Error(`exited with ${code}`)))
    child.stdout!.on('data', (d) => {
      out += d
      const m = /listening on http:\/\/[^:]+:(\d+)\//.exec(out)
      if (!m) return
      clearTimeout(timer)
      child.removeAllListeners('exit')
      resolve(Number(m[1]))
    })
  })
  const origin = `http://127.0.0.1:${port}`
  return {
    url: `${origin}${basePath.replace(/\/$/, '')}`,
    endpoint: `${origin}${basePath}`,
    port,
    root,
    cacheDir,
    publicKey,
    log,
    setFaults: (faults) => fs.writeFileSync(faultsFile, JSON.stringify(faults)),
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve()
        child.once('exit', () => resolve())
        child.kill('SIGTERM')
      }),
  }
}

function apiEndpointOption(option: string | undefined, basePath: string): string | undefined {
  if (option === undefined) return `http://127.0.0.1:{port}${basePath}`
  if (option === '') return undefined
  return option.includes('://') ? option : `http://${option}:{port}${basePath}`
}

function normalizeBase(b: string): string {
  const s = b.startsWith('/') ? b : `/${b}`
  return s.endsWith('/') ? s : `${s}/`
}

function nix(env: NodeJS.ProcessEnv, args: string[], input?: string): string {
  const r = spawnSync('nix', ['--extra-experimental-features', 'nix-command', ...args], { env, input, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`nix ${args.join(' ')} failed: ${r.stderr}`)
  return r.stdout.trim()
}
