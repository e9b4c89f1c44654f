// Real nginx for the tests: the HTTP side of an attic server (cache-config API with a token
// check, the binary cache as substituter) and a plain HTTP binary cache that accepts uploads.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'

export function nginxBinary(): string {
  for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx']) if (fs.existsSync(p)) return p
  throw new Error('nginx is not installed (.ci/run installs nginx-light): the HTTP cache tests need it')
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo
      srv.close(() => resolve(port))
    })
  })
}

export interface Nginx {
  url: string
  port: number
  stop(): Promise<void>
}

/** Start nginx in the foreground with `locations` (nginx config text) inside one server block. */
export async function startNginx(dir: string, locations: string, port?: number): Promise<Nginx> {
  port ??= await freePort()
  for (const d of ['logs', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true })
  const conf = path.join(dir, 'nginx.conf')
  fs.writeFileSync(
    conf,
    `worker_processes 1;
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log;
events { worker_connections 64; }
http {
  access_log ${dir}/logs/access.log;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  client_max_body_size 0;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
${locations}
  }
}
`,
  )
  const child: ChildProcess = spawn(nginxBinary(), ['-p', dir, '-c', conf, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (d) => (stderr += d))
  const deadline = Date.now() + 10_000
  while (!(await canConnect(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`nginx did not start on port ${port}: ${stderr}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve()
        child.once('close', () => resolve())
        child.kill('SIGTERM')
      }),
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

export interface AtticServer extends Nginx {
  /** ATTIC_DOUBLE_ROOT: the double stores cache `main` in <root>/main, which nginx serves. */
  root: string
  cacheDir: string
  publicKey: string
}

/**
 * The server half of attic: GET /_api/v1/cache-config/<cache> answers only with the right bearer
 * token (401 otherwise), and /<cache>/ serves the binary cache the double writes, to the same
 * token (as Bearer, or as the netrc password Nix sends). The cache is private unless `isPublic`.
 */
export async function startAtticServer(dir: string, opts: { cache: string; token: string; publicKey: string; isPublic?: boolean }): Promise<AtticServer> {
  const root = path.join(dir, 'attic-root')
  const cacheDir = path.join(root, opts.cache)
  fs.mkdirSync(cacheDir, { recursive: true })
  fs.writeFileSync(path.join(cacheDir, 'nix-cache-info'), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n')
  const basic = Buffer.from(`:${opts.token}`).toString('base64')
  const port = await freePort()
  const config = {
    public_key: opts.publicKey,
    is_public: opts.isPublic ?? false,
    substituter_endpoint: `http://127.0.0.1:${port}/${opts.cache}`,
    api_endpoint: `http://127.0.0.1:${port}/`,
    store_dir: '/nix/store',
    priority: 41,
    upstream_cache_key_names: ['cache.nixos.org-1'],
  }
  fs.writeFileSync(path.join(dir, 'cache-config.json'), JSON.stringify(config))
  const authOk = `$http_authorization = "Bearer ${opts.token}"`
  const nginx = await startNginx(dir, `
    location = /_api/v1/cache-config/${opts.cache} {
      if ($http_authorization != "Bearer ${opts.token}") { return 401; }
      default_type application/json;
      alias ${dir}/cache-config.json;
    }
    location /${opts.cache}/ {
      set $ok ${opts.isPublic ? '1' : '0'};
      if (${authOk}) { set $ok 1; }
      if ($http_authorization = "Basic ${basic}") { set $ok 1; }
      if ($ok = 0) { return 401; }
      alias ${cacheDir}/;
    }`, port)
  return { ...nginx, root, cacheDir, publicKey: opts.publicKey }
}

/** A plain HTTP binary cache (GET and PUT), as `nix copy --to http://…` expects; with basic auth if asked. */
export async function startHttpCache(dir: string, auth?: { login: string; password: string }): Promise<Nginx & { cacheDir: string }> {
  const cacheDir = path.join(dir, 'http-cache')
  fs.mkdirSync(cacheDir, { recursive: true })
  fs.writeFileSync(path.join(cacheDir, 'nix-cache-info'), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n')
  const basic = auth && Buffer.from(`${auth.login}:${auth.password}`).toString('base64')
  const nginx = await startNginx(dir, `
    location / {
      ${basic ? `if ($http_authorization != "Basic ${basic}") { return 401; }` : ''}
      root ${cacheDir};
      dav_methods PUT;
      create_full_put_path on;
    }`)
  return { ...nginx, cacheDir }
}
