#!/usr/bin/env node
// script: nix build, greedily (--keep-going), then drain the watcher so this stage's work is in
// the cache before the stage ends (the docker executor kills the watcher then). Exits with Nix's code.
import os from 'node:os'
import { cacheProblem, EXIT_USAGE, installablesOf, loadConfig, parseCommandLine, runAsEntry, type CommandInfo } from '../lib/cli.js'
import { drainWatcher, stopWatcher } from '../lib/control.js'
import type { WatcherStatus } from '../lib/daemon.js'
import { error, info, raw, section, sectionsEnabled, shortCommand, warn } from '../lib/log.js'
import { recordRealised } from '../lib/attribution.js'
import { build as nixBuild, nixBuildArgs, type BuildResult } from '../lib/nix.js'
import { buildLine, failureTails, type NixLogEvent } from '../lib/nixlog.js'
import { jobEnv, loadSession, noBootstrap } from '../lib/session.js'
import { statePaths } from '../lib/state.js'
import { recordBuild } from '../lib/summary.js'

export const buildInfo: CommandInfo = {
  name: 'build',
  usage: 'greedy-nix build [installable...] [options] [-- nix-args...]',
  about: 'script: nix build the installables (none: Nix\'s default, ".") with --keep-going and --out-link result\n' +
    '(unless given), showing build logs; count what was built and substituted; drain the watcher;\n' +
    'exit with Nix\'s exit code, whatever happened to the cache. Nix\'s own options go after --.',
  options: {
    installables: { type: 'string', doc: 'more installables, as one argument: a JSON array, [a, b], or words' },
    'installables-file': { type: 'string', doc: 'more installables, from a file: one per line or a JSON array (no argument length limit)' },
    'no-keep-going': { type: 'boolean', doc: 'stop at the first failed derivation (default: build the independent ones)' },
  },
  settings: ['GREEDY_STATE_DIR', 'GREEDY_DRAIN_TIMEOUT', 'GREEDY_STRICT', 'GREEDY_DEBUG'],
  passThrough: 'nix build',
}

export async function build(argv: string[]): Promise<number> {
  const line = parseCommandLine(buildInfo, argv)
  if ('code' in line) return line.code
  const { config, ok } = loadConfig(line.flags)
  const installables = await installablesOf(line)
  if ('error' in installables) {
    error(installables.error)
    return EXIT_USAGE
  }
  const args = nixBuildArgs(installables.list, line.rest, !line.flags['no-keep-going'])

  // A cancelled job: stop Nix, push what was built so far within a short budget, end the watcher.
  const abort = new AbortController()
  let signalled: NodeJS.Signals | undefined
  const onSignal = (sig: NodeJS.Signals) => {
    signalled = sig
    abort.abort()
  }
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)

  const paths = statePaths(config.stateDir)
  const session = await loadSession(paths)
  if (!session && config.backend !== 'none') warn(`${noBootstrap(paths)}: nothing is pushed while this builds`)
  const onEvent = (ev: NixLogEvent) => recordRealised(paths.realised, ev) // tells our watcher what is ours
  const result = await section('build', shortCommand(['nix', 'build', ...args]), () => nixBuild({ args, onLine: raw, onEvent, signal: abort.signal, env: jobEnv(session) }))
  if (sectionsEnabled()) result.errors.forEach(raw) // the section is collapsed: errors stay in sight
  failureTails(result.failures).forEach(raw) // what the compiler said, in sight after a long log
  info(buildLine(result))
  const budget = signalled ? Math.min(config.drainTimeout, CANCEL_BUDGET_S) : config.drainTimeout
  const cacheCode = await recordAndDrain(paths, result, budget, config.strict, signalled !== undefined)

  if (signalled) return 128 + os.constants.signals[signalled]
  if (result.exitCode !== 0) return result.exitCode
  return ok ? cacheCode : 1
}

/** Seconds a cancelled build still gives the cache before it ends the watcher (the runner's SIGKILL follows). */
const CANCEL_BUDGET_S = 20

/** Add this run to build.json (a script may call build several times) and drain the watcher (or stop it: cancelled). */
async function recordAndDrain(paths: ReturnType<typeof statePaths>, r: BuildResult, timeoutS: number, strict: boolean, stop: boolean): Promise<number> {
  await recordBuild(paths, r).catch((err: Error) => warn(`cannot record build counts in ${paths.build}: ${err.message}`))
  const started = Date.now()
  const progress = (s: WatcherStatus) => info(`waiting for the cache: ${s.counts.pending} path(s) still pushing`)
  const d = stop ? await stopWatcher(paths, timeoutS, progress) : await drainWatcher(paths, timeoutS, progress, 'builds')
  if (d.state === 'not-running') return 0
  const c = d.status?.counts
  const summary = c ? `${c.pushed} pushed so far, ${c.failed} failed, ${c.pending} pending` : 'no counts'
  if (d.state === 'drained') {
    info(`cache up to date in ${((Date.now() - started) / 1000).toFixed(1)}s: ${summary}`)
    return c && c.failed > 0 && strict ? cacheProblem(strict, `${c.failed} path(s) failed to push`) : 0
  }
  return cacheProblem(strict, `drain ${d.state === 'timeout' ? `timed out after ${timeoutS}s` : 'failed: the watcher died'} (${summary})`)
}

runAsEntry('build', build)
