#!/usr/bin/env node
// after_script: stop the watcher (it may be gone already), push the result closures once more,
// and report: one summary line, summary.json, and OpenMetrics for GitLab.
import fs from 'node:fs/promises'
import { cacheProblem, loadConfig, parseCommandLine, runAsEntry, type CommandInfo } from '../lib/cli.js'
import { stopWatcher } from '../lib/control.js'
import type { WatcherStatus } from '../lib/daemon.js'
import { CLIENT_HINT } from '../lib/client.js'
import { countFailures, finalPush, resultLinks } from '../lib/final.js'
import { bold, info, section, warn } from '../lib/log.js'
import { pruneAfterJob } from '../lib/prune.js'
import { substitutedPaths } from '../lib/attribution.js'
import { loadSession, noBootstrap, sessionForPush, type Session } from '../lib/session.js'
import { readJson, statePaths } from '../lib/state.js'
import { jobSummary, mergeSummaries, summaryLine, writeReports, type BuildSummary, type Summary } from '../lib/summary.js'

export const pushInfo: CommandInfo = {
  name: 'push',
  usage: 'greedy-nix push [path...] [options]',
  about: 'after_script: stop the watcher if it still runs, push the closures of the given paths (default: the\n' +
    './result* links), print one summary line, and write <state>/summary.json, <state>/metrics.txt and\n' +
    '<state>/result-paths.txt (the store path of each ./result* link). With a file:// cache it records\n' +
    'what this job pushed and substituted in the cache\'s index, and with GREEDY_CACHE_MAX_SIZE it evicts\n' +
    'the least recently used paths beyond that budget (never the closures of the given paths).\n' +
    'Without bootstrap (or run twice) it still pushes to the cache the settings name.',
  settings: [
    'ATTIC_SERVER', 'ATTIC_CACHE', 'ATTIC_TOKEN', 'ATTIC_TOKEN_FILE', 'GREEDY_CACHE_URL', 'GREEDY_SIGNING_KEY', 'GREEDY_SIGNING_KEY_FILE',
    'GREEDY_CLIENT', 'GREEDY_STATE_DIR', 'GREEDY_DRAIN_TIMEOUT', 'GREEDY_CACHE_MAX_SIZE', 'GREEDY_STRICT', 'GREEDY_DEBUG',
  ],
}

/**
 * The final push gets as long as the drain, at least 30 s: drain, stop and final push together
 * stay under GitLab's 5 minute after_script default with the default 120 s drain timeout.
 */
const finalPushTimeoutMs = (drainTimeoutS: number) => Math.max(30, drainTimeoutS) * 1000

export async function push(argv: string[]): Promise<number> {
  const line = parseCommandLine(pushInfo, argv)
  if ('code' in line) return line.code
  const { config, ok } = loadConfig(line.flags)
  const paths = statePaths(config.stateDir)
  const earlier = await readJson<Summary>(paths.summary) // an earlier push of this job (bootstrap clears it)
  const problems: string[] = []
  let session: Session | undefined = ok ? await loadSession(paths) : undefined
  if (ok && config.backend !== 'none' && (!session || earlier)) {
    // Nothing from bootstrap, or the earlier push removed the secrets: the settings have all it takes.
    if (!session) warn(`${noBootstrap(paths)}; the final push still goes to the configured cache`)
    else info('push already ran in this job: pushing again, and adding to its summary')
    const fresh = await sessionForPush(config, paths)
    if ('session' in fresh) session = fresh.session
    else problems.push(`no final push: ${fresh.reason}`)
  }

  const stopped = await stopWatcher(paths, config.drainTimeout, (s) => info(`still pushing: ${s.counts.pending} pending`))
  const status = 'status' in stopped ? stopped.status : await readJson<WatcherStatus>(paths.status)
  const alive = stopped.state === 'drained' || stopped.state === 'timeout'
  const gone = earlier ? 'was stopped by the earlier push' : stopped.state === 'died' ? 'died while draining' : 'was no longer running (the docker executor ends it with its stage)'
  if (!alive && status) info(`the watcher ${gone}: using its last counts`)

  const build = await readJson<BuildSummary>(paths.build)
  const stale: string[] = []
  const results = await resultLinks(process.cwd(), build?.startedAt, stale)
  if (stale.length) info(`not pushing ${stale.map((l) => `./${l}`).join(', ')}: older than this job's build (an earlier run's)`)
  const targets = line.positionals.length > 0 ? line.positionals : results
  const final = session
    ? await section('push', 'final push', () => finalPush(session, targets, status, finalPushTimeoutMs(config.drainTimeout), info))
    : { pushed: [], failed: [] }

  const used = await substitutedPaths(paths.realised)
  const pruned = await pruneAfterJob({ session, maxSize: config.cacheMaxSize, keep: targets, used, log: info, warn })

  const summary = mergeSummaries(earlier, jobSummary({ backend: session?.backend, status, failures: countFailures(status, final), final, build, alive, prune: pruned.report }))
  for (const f of summary.failures) warn(`not pushed: ${f.path}: ${f.error}`)
  if (session?.backend === 'attic' && !(status?.client ?? session.client)) warn(`no attic client in this job: nothing was pushed; ${CLIENT_HINT}`)
  info(bold(summaryLine(summary)))
  await writeReports(paths, summary, results).catch((err: Error) => warn(`cannot write the summary in ${paths.dir}: ${err.message}`))
  // The job is over: no secret needs to outlive it on disk.
  await fs.rm(paths.secrets, { recursive: true, force: true }).catch((err: Error) => warn(`cannot remove ${paths.secrets}: ${err.message}`))

  const failed = summary.incremental.failed + summary.final.failed
  if (!ok) return 1
  if (failed > 0 || stopped.state === 'timeout') problems.push(`${failed} path(s) failed to push${stopped.state === 'timeout' ? ', drain timed out' : ''}`)
  if (pruned.problem) problems.push(pruned.problem)
  return (session || config.backend !== 'none') && problems.length > 0 ? cacheProblem(config.strict, problems.join('; ')) : 0
}

runAsEntry('push', push)
