// Where the attic client comes from. Never built here (that could take an hour): only substituted
// (`--max-jobs 0` fails at once when a build would be needed), or found on PATH. Most projects'
// flakes have no attic-client output, so nixpkgs' `attic-client` is the fallback, pinned to the
// project's own nixpkgs input when it has one.
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { substituteOnly } from './nix.js'

export type ClientFound =
  | { client: string; from: string }
  /** `awaited`: an installable of the project that the build may realise (late bootstrap). */
  | { client: undefined; why: string; awaited?: string }

/** How to give a job a client, for the messages that say there is none. */
export const CLIENT_HINT =
  'put attic on PATH, set GREEDY_CLIENT to an installable that provides bin/attic, or make nixpkgs#attic-client available from a substituter'

const NO_ATTRIBUTE = /does not provide attribute/

export async function getAtticClient(opts: {
  /** GREEDY_CLIENT, when set. */
  installable?: string
  outLink: string
  cwd: string
  /** Finds a command on PATH (default: zx's which, loaded only when asked). */
  which?: (cmd: string) => Promise<string | undefined>
  debug: (msg: string) => void
  /** The job's Nix environment: the cache as substituter (lib/nixconf.ts). */
  env?: NodeJS.ProcessEnv
}): Promise<ClientFound> {
  const { installable, outLink, cwd } = opts
  const which = opts.which ?? commandOnPath
  const bin = (link: string) => path.join(link, 'bin', 'attic')
  const fromCache = async (inst: string, extra: string[] = []) => {
    const r = await substituteOnly(inst, outLink, extra, { env: opts.env })
    if (r.code !== 0) opts.debug(`${inst} is not in a substituter: ${r.stderr.trim().split('\n').pop()}`)
    return r
  }

  if (installable) {
    if ((await fromCache(installable)).code === 0) return { client: bin(outLink), from: `the cache: ${installable}` }
    const onPath = await which('attic')
    if (onPath) return { client: onPath, from: `PATH: ${onPath}` }
    return { client: undefined, why: `${installable} is not cached`, awaited: installable }
  }

  const hasFlake = existsSync(path.join(cwd, 'flake.nix'))
  let projectClient = false
  if (hasFlake) {
    const r = await fromCache('.#attic-client')
    if (r.code === 0) return { client: bin(outLink), from: 'the cache: .#attic-client' }
    projectClient = !NO_ATTRIBUTE.test(r.stderr)
  }
  const onPath = await which('attic')
  if (onPath) return { client: onPath, from: `PATH: ${onPath}` }
  if (projectClient) return { client: undefined, why: '.#attic-client is not cached', awaited: '.#attic-client' }

  const extra = hasFlake && (await hasNixpkgsInput(cwd)) ? ['--inputs-from', '.'] : []
  const nixpkgs = await fromCache('nixpkgs#attic-client', extra)
  if (nixpkgs.code === 0) {
    return { client: bin(outLink), from: `the cache: nixpkgs#attic-client${extra.length ? ' (the project’s nixpkgs input)' : ''}` }
  }
  const nixSaid = nixpkgs.stderr.trim().split('\n').filter((l) => /^error\b/.test(l.trim())).pop()?.trim()
  return {
    client: undefined,
    why: `${hasFlake ? 'the flake has no attic-client output, ' : ''}no attic on PATH, and nixpkgs#attic-client could not be substituted${nixSaid ? `: ${nixSaid}` : ''}`,
  }
}

/** Whether the project's flake.lock has a root input named nixpkgs (what `--inputs-from .` resolves). */
export async function hasNixpkgsInput(cwd: string): Promise<boolean> {
  try {
    const lock = JSON.parse(await fs.readFile(path.join(cwd, 'flake.lock'), 'utf8')) as {
      root?: string
      nodes?: Record<string, { inputs?: Record<string, unknown> }>
    }
    return lock.nodes?.[lock.root ?? 'root']?.inputs?.nixpkgs !== undefined
  } catch {
    return false
  }
}

/** A command on PATH; zx's core is loaded only for this fallback, not at start-up. */
async function commandOnPath(cmd: string): Promise<string | undefined> {
  const { which } = await import('zx/core')
  return (await which(cmd, { nothrow: true })) ?? undefined
}
