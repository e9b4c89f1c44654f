#!/usr/bin/env node
// before_script: find the cache, make Nix substitute from it, get a push client, start the watcher.
import fs from 'node:fs/promises'
import path from 'node:path'
import minimist from 'minimist'
import watcherSource from 'greedy-nix:watcher-source'
import { cacheProblem, handledInfoFlags, loadConfig, runAsEntry, type CommandInfo } from '../lib/cli.js'
import { startWatcher } from '../lib/control.js'
import { debug, info, section } from '../lib/log.js'
import { substituteOnly } from '../lib/nix.js'
import { configureSubstituter, prepareSession, saveSession, type Session } from '../lib/session.js'
import { clearJobState, statePaths } from '../lib/state.js'

export const bootstrapInfo: CommandInfo = {
  usage: 'greedy-nix bootstrap [options]',
  about: 'before_script: validate the config, pick the first reachable cache server, make Nix substitute from it,\n' +
    'get the attic client from the cache only (--max-jobs 0) or PATH, and start the store watcher.\n' +
    'With no cache configured it says so and does nothing else. Cache problems only warn unless GREEDY_STRICT=1.',
}

export async function bootstrap(argv: string[]): Promise<number> {
  const flags = minimist(argv, { boolean: ['help', 'version', 'verbose', 'strict'], string: ['state-dir'] })
  if (handledInfoFlags(flags, bootstrapInfo)) return 0
  const { config, ok } = loadConfig(flags)
  if (!ok) return 1
  const paths = statePaths(config.stateDir)
  await clearJobState(paths).catch(() => {}) // a folder we cannot clean is reported when we write to it
  if (config.backend === 'none') {
    info('no cache configured (set ATTIC_SERVER or GREEDY_CACHE_URL): building without a cache')
    return 0
  }
  try {
    await fs.mkdir(paths.dir, { recursive: true })
  } catch (err) {
    return cacheProblem(config.strict, `cannot create the state dir ${paths.dir}: ${(err as Error).message}`)
  }

  const prepared = await section('bootstrap', `connecting to the ${config.backend} cache`, () =>
    prepareSession(config, paths, (line) => info(`probe ${line}`)),
  )
  if (!prepared.ok) return cacheProblem(config.strict, prepared.reason)
  const session: Session = prepared.session

  if (prepared.substituter) {
    const file = await configureSubstituter(prepared.substituter)
    info(`Nix substitutes from ${prepared.substituter.url} (${file})`)
  }
  if (session.backend === 'attic') session.client = await getAtticClient(config.client, paths.clientLink)

  await saveSession(paths, session)
  // The watcher runs from a copy in the state dir, so a bootstrap piped into node can start it too.
  await fs.writeFile(paths.watcherScript, watcherSource)
  const started = await startWatcher(paths, [paths.watcherScript, 'run', '--state-dir', paths.dir])
  if ('error' in started) return cacheProblem(config.strict, started.error)
  const target = session.attic ? `attic cache "${session.attic.cache}" at ${session.attic.endpoint}` : 'the Nix store URL'
  info(`pushing every new store path to ${target} as it is built (watcher pid ${started.pid}${started.already ? ', already running' : ''})`)
  return 0
}

/** From the cache only (never built here: that could take an hour), else PATH, else later. */
async function getAtticClient(installable: string, outLink: string): Promise<string | undefined> {
  const r = await substituteOnly(installable, outLink)
  if (r.code === 0) {
    info(`attic client from the cache: ${installable}`)
    return path.join(outLink, 'bin', 'attic')
  }
  debug(`${installable} is not in the cache: ${r.stderr.trim().split('\n').pop()}`)
  const { which } = await import('zx/core') // only this fallback needs it: loaded here, not at start-up
  const onPath = await which('attic', { nothrow: true })
  if (onPath) {
    info(`attic client from PATH: ${onPath}`)
    return onPath
  }
  info(`no attic client yet (${installable} is not cached): new paths are recorded and pushed as soon as one is built`)
  return undefined
}

runAsEntry('bootstrap', bootstrap)
