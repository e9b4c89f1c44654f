#!/usr/bin/env node
// after_script: stop the watcher (it may be gone already), push the result closures once more,
// and report: one summary line, summary.json, and OpenMetrics for GitLab.
import fs from 'node:fs/promises'
import minimist from 'minimist'
import { cacheProblem, handledInfoFlags, loadConfig, runAsEntry, type CommandInfo } from '../lib/cli.js'
import { stopWatcher } from '../lib/control.js'
import type { WatcherStatus } from '../lib/daemon.js'
import { CLIENT_HINT } from '../lib/client.js'
import { countFailures, finalPush, resultLinks } from '../lib/final.js'
import { bold, info, section, warn } from '../lib/log.js'
import { pruneAfterJob } from '../lib/prune.js'
import { substitutedPaths } from '../lib/attribution.js'
import { loadSession } from '../lib/session.js'
import { readJson, statePaths, writeJsonAtomic } from '../lib/state.js'
import { openMetrics, summaryLine, type BuildSummary, type Summary } from '../lib/summary.js'

export const pushInfo: CommandInfo = {
  usage: 'greedy-nix push [path...] [options]',
  about: 'after_script: stop the watcher if it still runs, push the closures of the given paths (default: the\n' +
    './result* links), print one summary line, and write <state>/summary.json, <state>/metrics.txt and\n' +
    '<state>/result-paths.txt (the store path of each ./result* link). With a file:// cache it records\n' +
    'what this job pushed and substituted in the cache\'s index, and with GREEDY_CACHE_MAX_SIZE it evicts\n' +
    'the least recently used paths beyond that budget (never the closures of the given paths).',
}

/**
 * The final push gets as long as the drain, at least 30 s: drain, stop and final push together
 * stay under GitLab's 5 minute after_script default with the default 120 s drain timeout.
 */
const finalPushTimeoutMs = (drainTimeoutS: number) => Math.max(30, drainTimeoutS) * 1000

export async function push(argv: string[]): Promise<number> {
  const flags = minimist(argv, { boolean: ['help', 'version', 'verbose', 'strict'], string: ['state-dir', 'drain-timeout', 'max-size'] })
  if (handledInfoFlags(flags, pushInfo)) return 0
  const { config, ok } = loadConfig(flags)
  const paths = statePaths(config.stateDir)
  const session = ok ? await loadSession(paths) : undefined

  const stopped = await stopWatcher(paths, config.drainTimeout, (s) => info(`still pushing: ${s.counts.pending} pending`))
  const status = 'status' in stopped ? stopped.status : await readJson<WatcherStatus>(paths.status)
  const alive = stopped.state === 'drained' || stopped.state === 'timeout'
  if (!alive && status) info(`the watcher ${stopped.state === 'died' ? 'died while draining' : 'was no longer running (the executor ends it with its stage)'}: using its last counts`)

  const results = await resultLinks()
  const targets = flags._.length > 0 ? flags._.map(String) : results
  const final = session
    ? await section('push', 'final push', () => finalPush(session, targets, status, finalPushTimeoutMs(config.drainTimeout), info))
    : { pushed: [], failed: [] }

  const used = await substitutedPaths(paths.realised)
  const pruned = await pruneAfterJob({ session, maxSize: config.cacheMaxSize, keep: targets, used, log: info, warn })

  const build = await readJson<BuildSummary>(paths.build)
  const failures = countFailures(status, final)
  const summary: Summary = {
    backend: session?.backend ?? 'none',
    incremental: {
      pushed: status?.counts.pushed ?? 0,
      failed: failures.incremental,
      cached: status?.counts.cached ?? 0,
      skipped: status?.counts.skipped ?? 0,
    },
    final: { pushed: final.pushed.length, failed: failures.final },
    build: build ?? { exitCode: null, built: 0, substituted: 0, runs: 0 },
    failures: failures.list.slice(0, 20),
    watcherAlive: alive,
    prune: pruned.report,
  }
  for (const f of summary.failures) warn(`not pushed: ${f.path}: ${f.error}`)
  if (session?.backend === 'attic' && !(status?.client ?? session.client)) warn(`no attic client in this job: nothing was pushed; ${CLIENT_HINT}`)
  info(bold(summaryLine(summary)))
  try {
    await fs.mkdir(paths.dir, { recursive: true })
    await writeJsonAtomic(paths.summary, summary)
    await fs.writeFile(paths.metrics, openMetrics(summary))
    await fs.writeFile(paths.resultPaths, results.map((p) => `${p}\n`).join(''))
  } catch (err) {
    warn(`cannot write the summary in ${paths.dir}: ${(err as Error).message}`)
  }
  // The job is over: no secret needs to outlive it on disk.
  await fs.rm(paths.secrets, { recursive: true, force: true }).catch((err: Error) => warn(`cannot remove ${paths.secrets}: ${err.message}`))

  const failed = summary.incremental.failed + summary.final.failed
  if (!ok) return 1
  const problems = [
    ...(failed > 0 || stopped.state === 'timeout' ? [`${failed} path(s) failed to push${stopped.state === 'timeout' ? ', drain timed out' : ''}`] : []),
    ...(pruned.problem ? [pruned.problem] : []),
  ]
  return session && problems.length > 0 ? cacheProblem(config.strict, problems.join('; ')) : 0
}

runAsEntry('push', push)
