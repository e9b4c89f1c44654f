#!/usr/bin/env node
// The background watcher: start it, drain it, stop it, ask whether it runs, or be it (`run`).
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import { jobProcess } from '../lib/attribution.js'
import { cacheProblem, EXIT_NOT_RUNNING, EXIT_USAGE, loadConfig, parseCommandLine, runAsEntry, watchRunArgv, type CommandInfo } from '../lib/cli.js'
import { VARIABLES, type Variable } from '../lib/config.js'
import { drainWatcher, startWatcher, stopWatcher, type DrainResult } from '../lib/control.js'
import { runWatcher } from '../lib/daemon.js'
import { debug, error, info, warn } from '../lib/log.js'
import { loadSession, prepareSession, saveSession } from '../lib/session.js'
import { liveWatcherPid, readJson, statePaths } from '../lib/state.js'
import type { WatcherStatus } from '../lib/daemon.js'

export const watchInfo: CommandInfo = {
  name: 'watch',
  settings: Object.keys(VARIABLES) as Variable[],
  positionals: 1,
  usage: 'greedy-nix watch start|drain|stop|status|run [options]',
  about: 'The store watcher: pushes every new valid store path as soon as Nix finishes it.\n' +
    '  start   start it in the background (log: <state>/watch.log) and return at once\n' +
    '  drain   wait until every path seen so far is pushed or failed for good (GREEDY_DRAIN_TIMEOUT), keep it running\n' +
    '  stop    drain, then end it, and print its counts\n' +
    '  status  print its counts; exit 0 when it runs, 3 when it does not\n' +
    '  run     be the watcher, in the foreground',
}

export async function watch(argv: string[]): Promise<number> {
  const line = parseCommandLine(watchInfo, argv)
  if ('code' in line) return line.code
  const action = line.positionals[0] ?? ''
  const { config, ok } = loadConfig(line.flags)
  if (!ok) return 1
  const paths = statePaths(config.stateDir)
  const counts = (s: WatcherStatus | undefined) =>
    s ? `${s.counts.pushed} pushed, ${s.counts.cached} already cached, ${s.counts.failed} failed, ${s.counts.pending} pending` : 'no counts'
  const report = (what: string, r: DrainResult): number => {
    const status = 'status' in r ? r.status : undefined
    if (r.state === 'not-running') info('the watcher is not running')
    else if (r.state === 'drained') info(`${what}: ${counts(status)}`)
    else return cacheProblem(config.strict, `${what} incomplete (${r.state === 'timeout' ? `timed out after ${config.drainTimeout}s` : 'watcher died'}): ${counts(status)}`)
    return 0
  }
  const progress = (s: WatcherStatus) => info(`still pushing: ${counts(s)}`)

  switch (action) {
    case 'start': {
      let session = await loadSession(paths)
      if (!session) {
        await fs.mkdir(paths.dir, { recursive: true })
        const prepared = await prepareSession(config, paths)
        if (!prepared.ok) return cacheProblem(config.strict, prepared.reason)
        session = { ...prepared.session, job: jobProcess() }
        await saveSession(paths, session)
      }
      const script = process.argv[1]
      if (!script || !existsSync(script)) return cacheProblem(config.strict, 'watch start needs the script as a file (use bootstrap when piping)')
      const r = await startWatcher(paths, watchRunArgv(script, paths.dir))
      if ('error' in r) return cacheProblem(config.strict, r.error)
      info(`watcher ${r.already ? 'already running' : 'started'} (pid ${r.pid})`)
      return 0
    }
    case 'run': {
      const session = await loadSession(paths)
      if (!session) {
        error(`no session in ${paths.dir}: run bootstrap (or watch start) first`)
        return 1
      }
      await runWatcher(paths, session, (m) => info(m), debug)
      return 0
    }
    case 'drain':
      return report('drained', await drainWatcher(paths, config.drainTimeout, progress))
    case 'stop':
      return report('stopped', await stopWatcher(paths, config.drainTimeout, progress))
    case 'status': {
      const pid = await liveWatcherPid(paths)
      const status = await readJson<WatcherStatus>(paths.status)
      info(`${pid ? `running (pid ${pid})` : 'not running'}: ${counts(status)}`)
      return pid ? 0 : EXIT_NOT_RUNNING
    }
    default:
      error(`greedy-nix watch: ${action ? `unknown action ${JSON.stringify(action)}` : 'no action'}: expected start, drain, stop, status or run`)
      return EXIT_USAGE
  }
}

runAsEntry('watch', watch)
