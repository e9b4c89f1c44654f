// An attic server for a test: nginx as its HTTP side, the client test double (on PATH if asked),
// and jobs (own HOME, project and state dir) configured for it.
import fs from 'node:fs'
import path from 'node:path'
import { ATTIC_DOUBLE, makeKeys, nixEnv, tmpDir, uid } from './helpers.js'
import { freePort, startAtticServer, type Nginx } from './nginx.js'

/** `stops` receives the server, for the caller's afterEach. */
export async function atticSetup(stops: Nginx[], name: string, opts: { clientOnPath: boolean; env?: NodeJS.ProcessEnv }) {
  const dir = tmpDir(`greedy-${name}-`)
  const base = nixEnv(dir)
  const [secret, pub] = makeKeys(base, `attic-test-${uid()}`)
  const keyFile = path.join(dir, 'server-signing-key')
  fs.writeFileSync(keyFile, secret, { mode: 0o600 })
  const token = `tok-${uid()}${uid()}`
  const server = await startAtticServer(path.join(dir, 'server'), { cache: 'main', token, publicKey: pub })
  stops.push(server)
  const bin = path.join(dir, 'bin')
  fs.mkdirSync(bin)
  if (opts.clientOnPath) fs.symlinkSync(ATTIC_DOUBLE, path.join(bin, 'attic'))
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
      ATTIC_DOUBLE_ROOT: server.root,
      ATTIC_DOUBLE_SIGNING_KEY_FILE: keyFile,
      ATTIC_DOUBLE_LOG: doubleLog,
      ...opts.env,
    })
    return { project, env, state: path.join(project, '.greedy-nix') }
  }
  return { dir, server, token, doubleLog, job, closed, prefix: `${name}-${uid()}` }
}
