// The job's result in three forms: one log line, summary.json, and OpenMetrics for
// GitLab's `artifacts:reports:metrics`.
import fs from 'node:fs/promises'
import type { Backend } from './config.js'
import type { BuildCounts } from './nixlog.js'
import { formatBytes, type PruneReport } from './prune.js'
import { readJson, writeJsonAtomic, type StatePaths } from './state.js'

export interface PushCounts {
  pushed: number
  failed: number
}

export interface BuildSummary {
  /** The last `build` run's exit code (null when `build` never ran in this job). */
  exitCode: number | null
  built: number
  substituted: number
  runs: number
  /** Derivations whose builder failed, over every run (absent in a build.json of an older release). */
  failed?: string[]
  /** Wall time of the builds, added up, in seconds. */
  seconds?: number
  /** When the job's first build started (ms since the epoch): out-links older than this are an earlier run's. */
  startedAt?: number
}

export interface Summary {
  backend: Backend
  /** `bytes`: NAR bytes (uncompressed) of the paths the watcher pushed. */
  incremental: PushCounts & { cached: number; skipped: number; bytes?: number }
  final: PushCounts
  build: BuildSummary
  /** Paths that failed to push, first few only, for the log. */
  failures: Array<{ path: string; error: string }>
  /** Whether the watcher was still alive for after_script (it is not under the docker executor). */
  watcherAlive: boolean
  /** A file:// cache's size after the job, and what pruning evicted (absent for other caches). */
  prune?: PruneReport
}

/** Add one `build` run to <state>/build.json: a script may call build several times in a job. */
export async function recordBuild(paths: StatePaths, run: BuildCounts & { exitCode: number; failures?: readonly { drv: string }[]; seconds?: number }): Promise<BuildSummary> {
  await fs.mkdir(paths.dir, { recursive: true })
  const prev = await readJson<BuildSummary>(paths.build)
  const next: BuildSummary = {
    exitCode: run.exitCode,
    built: (prev?.built ?? 0) + run.built,
    substituted: (prev?.substituted ?? 0) + run.substituted,
    runs: (prev?.runs ?? 0) + 1,
    failed: [...(prev?.failed ?? []), ...(run.failures ?? []).map((f) => f.drv)],
    seconds: Number(((prev?.seconds ?? 0) + (run.seconds ?? 0)).toFixed(1)),
    startedAt: prev?.startedAt ?? Date.now() - (run.seconds ?? 0) * 1000,
  }
  await writeJsonAtomic(paths.build, next)
  return next
}

/** The job's summary from what push gathered: the watcher's last counts, the final push, the builds. */
export function jobSummary(j: {
  backend: Backend | undefined
  status: { counts: { pushed: number; cached: number; skipped: number; pushedBytes?: number } } | undefined
  failures: { incremental: number; final: number; list: Summary['failures'] }
  final: { pushed: readonly string[] }
  build: BuildSummary | undefined
  alive: boolean
  prune: PruneReport | undefined
}): Summary {
  return {
    backend: j.backend ?? 'none',
    incremental: {
      pushed: j.status?.counts.pushed ?? 0,
      failed: j.failures.incremental,
      cached: j.status?.counts.cached ?? 0,
      skipped: j.status?.counts.skipped ?? 0,
      bytes: j.status?.counts.pushedBytes ?? 0,
    },
    final: { pushed: j.final.pushed.length, failed: j.failures.final },
    build: j.build ?? { exitCode: null, built: 0, substituted: 0, runs: 0 },
    failures: j.failures.list.slice(0, 20),
    watcherAlive: j.alive,
    prune: j.prune,
  }
}

/** summary.json, metrics.txt and result-paths.txt (the store path of each ./result* link). */
export async function writeReports(paths: StatePaths, summary: Summary, results: readonly string[]): Promise<void> {
  await fs.mkdir(paths.dir, { recursive: true })
  await writeJsonAtomic(paths.summary, summary)
  await fs.writeFile(paths.metrics, openMetrics(summary))
  await fs.writeFile(paths.resultPaths, results.map((p) => `${p}\n`).join(''))
}

/**
 * A second push in the same job adds to the first one's summary instead of replacing it: what
 * the first pushed stays counted, and the failures are the last push's word on them.
 */
export function mergeSummaries(earlier: Summary | undefined, next: Summary): Summary {
  if (!earlier) return next
  return { ...next, final: { pushed: earlier.final.pushed + next.final.pushed, failed: next.final.failed }, prune: next.prune ?? earlier.prune }
}

/** Substituted / (built + substituted): how much of the work the cache saved. */
export function hitRate(b: BuildSummary): number | undefined {
  const total = b.built + b.substituted
  return total === 0 ? undefined : b.substituted / total
}

export function summaryLine(s: Summary): string {
  const rate = hitRate(s.build)
  const failed = s.incremental.failed + s.final.failed
  // Alone on a machine the watcher pushes every new path: with nothing from greedy-nix build, they are other builds'.
  const whose = s.incremental.pushed === 0 || s.build.built + s.build.substituted > 0 ? ''
    : s.build.runs === 0 ? ' (other nix commands\' paths: greedy-nix build did not run in this job)'
    : " (other builds' paths: greedy-nix build built and substituted nothing)"
  return [
    `pushed ${s.incremental.pushed} store paths incrementally${whose}`,
    `${s.final.pushed} in the final push`,
    `${failed} failed`,
    `cache hit rate ${rate === undefined ? 'n/a' : `${Math.round(rate * 100)}%`} (${s.build.substituted} substituted, ${s.build.built} built)`,
    ...(s.prune ? [pruneLine(s.prune)] : []),
  ].join(', ')
}

/** "cache 2.9 MiB of 3.0 MiB after evicting 2 path(s) (1.2 MiB)" */
export function pruneLine(p: PruneReport): string {
  const evicted = p.evictedPaths + p.orphans > 0 ? ` after evicting ${p.evictedPaths} path(s)${p.orphans ? ` and ${p.orphans} leftover(s) of interrupted uploads` : ''} (${formatBytes(p.evictedBytes)})` : ''
  return `cache ${formatBytes(p.sizeAfter)}${p.maxSize === undefined ? '' : ` of ${formatBytes(p.maxSize)}`}${evicted}`
}

export function openMetrics(s: Summary): string {
  const lines: string[] = []
  const metric = (name: string, help: string, value: number, labels = '') => {
    lines.push(`# TYPE ${name} gauge`, `# HELP ${name} ${help}`, `${name}${labels} ${value}`)
  }
  metric('greedy_nix_pushed_incremental', 'Store paths pushed by the watcher while the build ran.', s.incremental.pushed)
  metric('greedy_nix_pushed_final', 'Store paths pushed by the final push.', s.final.pushed)
  if (s.incremental.bytes !== undefined) metric('greedy_nix_pushed_bytes', 'NAR bytes (uncompressed) of the store paths the watcher pushed.', s.incremental.bytes)
  metric('greedy_nix_push_failed', 'Store paths that failed to push.', s.incremental.failed + s.final.failed)
  metric('greedy_nix_built', 'Derivations built in this job.', s.build.built)
  metric('greedy_nix_substituted', 'Store paths substituted from a cache.', s.build.substituted)
  if (s.build.seconds !== undefined) metric('greedy_nix_build_seconds', 'Wall time of the builds, in seconds.', s.build.seconds)
  if (s.build.exitCode !== null) metric('greedy_nix_build_exit_code', "The last build's exit code (Nix's).", s.build.exitCode)
  // Left out when nothing was built or substituted: 0/0 is no ratio, and a NaN would read as a change between pipelines.
  const rate = hitRate(s.build)
  if (rate !== undefined) metric('greedy_nix_cache_hit_ratio', 'Substituted / (built + substituted).', Number(rate.toFixed(4)))
  if (s.prune) {
    metric('greedy_nix_cache_bytes', 'Bytes of the file:// cache after the job.', s.prune.sizeAfter)
    metric('greedy_nix_evicted_paths', 'Store paths evicted from the file:// cache to keep it within its budget.', s.prune.evictedPaths)
    metric('greedy_nix_evicted_bytes', 'Bytes freed in the file:// cache by pruning.', s.prune.evictedBytes)
  }
  lines.push('# EOF')
  return lines.join('\n') + '\n'
}
