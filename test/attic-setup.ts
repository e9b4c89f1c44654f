// An attic server for a test: the test double's server half (attic-server.ts), its client half
// (on PATH if asked), and jobs (own HOME, project and state dir) configured for it.
import fs from 'node:fs'
import path from 'node:path'
import { ATTIC_DOUBLE, makeKeys, nixEnv, tmpDir, uid } from './helpers.js'
import { startAtticServer, type AtticServerOptions } from './attic-server.js'
import { freePort, type Nginx } from './nginx.js'

/**
 * `stops` receives the server, for the caller's afterEach. Server options (faults, `cache`,
 * `basePath`, `upstreamKeyNames`, `apiEndpoint`, ...) go to startAtticServer; the server always
 * has a second, pull-only token too (`pullToken`). Jobs use cache `main` unless their env says.
 */
export async function atticSetup(stops: Nginx[], name: string, opts: { clientOnPath: boolean; env?: NodeJS.ProcessEnv } & Partial<AtticServerOptions>) {
  const { clientOnPath, env: extraEnv, ...serverOpts } = opts
  const dir = tmpDir(`greedy-${name}-`)
  const base = nixEnv(dir)
  const [secret, pub] = makeKeys(base, `attic-test-${uid()}`)
  const keyFile = path.join(dir, 'server-signing-key')
  fs.writeFileSync(keyFile, secret, { mode: 0o600 })
  const token = `tok-${uid()}${uid()}`
  const pullToken = `pull-${uid()}${uid()}`
  const server = await startAtticServer(path.join(dir, 'server'), { cache: 'main', token, pullToken, publicKey: pub, signingKeyFile: keyFile, ...serverOpts })
  stops.push(server)
  const bin = path.join(dir, 'bin')
  fs.mkdirSync(bin)
  if (clientOnPath) fs.symlinkSync(ATTIC_DOUBLE, path.join(bin, 'attic'))
  const doubleLog = path.join(dir, 'attic-double.log')
  const closed = await freePort()
  const job = (n: string) => {
    const project = path.join(dir, n)
    fs.mkdirSync(project, { recursive: true })
    const env = nixEnv(path.join(dir, `${n}-home`), {
      PATH: `${bin}:${process.env.PATH}`,
      // An unreachable candidate first: bootstrap must move on to the next one.
      ATTIC_SERVER: `http://127.0.0.1:${closed}, ${server.url}`,
      ATTIC_CACHE: 'main',
      ATTIC_TOKEN: token,
      CI_PROJECT_DIR: project,
      // The double ignores it: it marks the job's processes (processesWith(server.root) in faults.test.ts).
      ATTIC_DOUBLE_ROOT: server.root,
      ATTIC_DOUBLE_LOG: doubleLog,
      ...extraEnv,
    })
    return { project, env, state: path.join(project, '.greedy-nix') }
  }
  return { dir, server, token, pullToken, doubleLog, job, closed, prefix: `${name}-${uid()}` }
}
