#!/usr/bin/env node
// before_script: find the cache, make Nix substitute from it, get a push client, start the watcher.
import fs from 'node:fs/promises'
import watcherSource from 'greedy-nix:watcher-source'
import { cacheProblem, loadConfig, parseCommandLine, runAsEntry, type CommandInfo } from '../lib/cli.js'
import { VARIABLES, type Variable } from '../lib/config.js'
import { jobProcess } from '../lib/attribution.js'
import { startWatcher, takeOverStateDir } from '../lib/control.js'
import { debug, info, section } from '../lib/log.js'
import { CLIENT_HINT, getAtticClient } from '../lib/client.js'
import { removeNixConfBlock, userNixConf } from '../lib/nixconf.js'
import { configureJobNix, jobEnv, prepareSession, saveSession, substituterProblem, type Session } from '../lib/session.js'
import { clearJobState, statePaths } from '../lib/state.js'

export const bootstrapInfo: CommandInfo = {
  name: 'bootstrap',
  usage: 'greedy-nix bootstrap [options]',
  settings: Object.keys(VARIABLES) as Variable[],
  positionals: 0,
  about: 'before_script: validate the config, pick the first reachable cache server, check the token can push, make\n' +
    'Nix substitute from it, get the attic client from a substituter only (--max-jobs 0: GREEDY_CLIENT, else the\n' +
    "flake's .#attic-client, attic on PATH, nixpkgs#attic-client), and start the store watcher.\n" +
    'With no cache configured it says so and does nothing else. Cache problems only warn unless GREEDY_STRICT=true.',
}

export async function bootstrap(argv: string[]): Promise<number> {
  const line = parseCommandLine(bootstrapInfo, argv)
  if ('code' in line) return line.code
  const { config, ok, invalid } = loadConfig(line.flags)
  if (!ok) return 1
  const paths = statePaths(config.stateDir)
  const earlier = await takeOverStateDir(paths)
  if (earlier !== undefined) info(`stopped the watcher an earlier job left running in ${paths.dir} (pid ${earlier})`)
  await clearJobState(paths).catch(() => {}) // a folder we cannot clean is reported when we write to it
  // greedy-nix 0.1.0 configured Nix in the user's nix.conf and left it there for every later job.
  const conf = userNixConf()
  if (await removeNixConfBlock(conf).catch(() => false)) info(`removed the cache settings an earlier job left in ${conf}`)
  if (config.backend === 'none') {
    info(invalid ? 'building without a cache: fix the setting named above' : 'no cache configured (set ATTIC_SERVER or GREEDY_CACHE_URL): building without a cache')
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
  for (const note of prepared.notes) info(note)
  for (const problem of prepared.problems) if (cacheProblem(config.strict, problem) !== 0) return 1

  if (prepared.substituter) {
    session.nixConfig = await configureJobNix(paths, prepared.substituter)
    const ignored = await substituterProblem(prepared.substituter, jobEnv(session))
    if (!ignored) info(`this job's Nix substitutes from ${prepared.substituter.url} (greedy-nix build; your own nix commands after \`. ${paths.jobEnv}\`)`)
    else if (cacheProblem(config.strict, ignored) !== 0) return 1
  }
  if (session.backend === 'attic') {
    const found = await getAtticClient({ installable: config.client, outLink: paths.clientLink, cwd: process.cwd(), debug, env: jobEnv(session) })
    session.client = found.client
    if (found.client !== undefined) info(`attic client from ${found.from}`)
    else if (found.awaited) info(`no attic client yet (${found.why}): new paths are recorded and pushed as soon as the build realises ${found.awaited}`)
    else if (cacheProblem(config.strict, `no attic client (${found.why}): nothing will be pushed unless the build realises one; ${CLIENT_HINT}`) !== 0) return 1
  }

  session.job = jobProcess()
  await saveSession(paths, session)
  // The watcher runs from a copy in the state dir, so a bootstrap piped into node can start it too.
  await fs.writeFile(paths.watcherScript, watcherSource)
  const started = await startWatcher(paths, [paths.watcherScript, 'run', '--state-dir', paths.dir])
  if ('error' in started) return cacheProblem(config.strict, started.error)
  const target = session.attic ? `attic cache "${session.attic.cache}" at ${session.attic.endpoint}` : 'the Nix store URL'
  info(`pushing every new store path to ${target} as it is built (watcher pid ${started.pid}${started.already ? ', already running' : ''})`)
  return 0
}

runAsEntry('bootstrap', bootstrap)
