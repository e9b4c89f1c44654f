// Real nginx for the tests: a plain HTTP binary cache that accepts uploads, and any other site.
// The attic server is the test double's server half (attic-server.ts), re-exported here.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'

export { startAtticServer, type AtticServer, type AtticServerOptions, type AtticFaults } from './attic-server.js'

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
