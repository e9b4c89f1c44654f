// The job's Nix settings (substitute from the cache, trust its key, ask it again) reach the job's
// Nix commands through NIX_CONFIG only, never through a nix.conf: on a shell runner a nix.conf
// outlives the job, and every later job of every project would keep substituting from, and
// trusting, this project's cache.
//
// Nix applies NIX_CONFIG after every nix.conf, and a client sends it to a nix-daemon like a user
// nix.conf: both are "overridden" settings (globals.cc `loadConfFile`, 2.8.0 and 2.24.15). The
// daemon takes substituters from an untrusted user only when they are trusted-substituters, and
// drops its other restricted settings (such as narinfo-cache-negative-ttl) without a word
// (daemon.cc `ClientSettings::apply`, same versions).
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

/** First line of our part of NIX_CONFIG: marks it, so that it is never added twice. */
const MARK = '# greedy-nix: this job\'s cache'

export interface Substituter {
  url: string
  publicKeys: string[]
  /** A private netrc for a cache that needs credentials. */
  netrc?: string
}

/**
 * The settings every Nix command of the job gets. `narinfo-cache-negative-ttl = 0`: Nix remembers
 * "not in the cache" for an hour by default (`~/.cache/nix/binary-cache-v6.sqlite`, or root's for
 * the daemon), and every build asks before it builds, so without it a later pipeline on the same
 * runner trusts the "not there" an earlier one recorded and rebuilds what that one pushed.
 */
export function jobNixConfig(sub: Substituter): string {
  const lines = [MARK, `extra-substituters = ${sub.url}`]
  if (sub.publicKeys.length) lines.push(`extra-trusted-public-keys = ${sub.publicKeys.join(' ')}`)
  if (sub.netrc) lines.push(`netrc-file = ${sub.netrc}`)
  lines.push('narinfo-cache-negative-ttl = 0')
  return lines.join('\n')
}

/** `env` with `text` applied after the user's own NIX_CONFIG. */
export function appendNixConfig(env: NodeJS.ProcessEnv, text: string): NodeJS.ProcessEnv {
  return { ...env, NIX_CONFIG: env.NIX_CONFIG ? `${env.NIX_CONFIG}\n${text}` : text }
}

/** `env` with the job's settings after the user's own NIX_CONFIG (once, however often it is applied). */
export function withJobNixConfig(env: NodeJS.ProcessEnv, jobConfig: string | undefined): NodeJS.ProcessEnv {
  if (!jobConfig || env.NIX_CONFIG?.includes(MARK)) return env
  return appendNixConfig(env, jobConfig)
}

/** A POSIX shell line that exports the variable: `. <state>/env.sh` gives a job's own commands the settings. */
export function shellExport(name: string, value: string): string {
  return `export ${name}='${value.replace(/'/g, `'\\''`)}'\n`
}

/** The user-level nix.conf (the first of NIX_USER_CONF_FILES, else $XDG_CONFIG_HOME/nix/nix.conf). */
export function userNixConf(env: NodeJS.ProcessEnv = process.env): string {
  const files = env.NIX_USER_CONF_FILES?.split(':').filter(Boolean)
  if (files?.[0]) return files[0]
  const config = env.XDG_CONFIG_HOME || path.join(env.HOME || os.homedir(), '.config')
  return path.join(config, 'nix', 'nix.conf')
}

const BEGIN = '# greedy-nix begin'
const END = '# greedy-nix end'

/**
 * Remove the block that greedy-nix 0.1.0's bootstrap wrote into a user nix.conf and never took
 * out. Returns whether there was one; the rest of the file stays as it was.
 */
export async function removeNixConfBlock(file: string): Promise<boolean> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch {
    return false
  }
  const start = text.indexOf(BEGIN)
  const end = text.indexOf(END, start)
  if (start === -1 || end === -1) return false
  await fs.writeFile(file, text.slice(0, start) + text.slice(end + END.length).replace(/^\n/, ''))
  return true
}
