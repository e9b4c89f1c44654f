// The final push of after_script: the closures of the build results, pushed once more. Cheap
// when the watcher did its job (the cache answers "already there"), and the safety net when it
// could not (killed with its stage, or no client until the end).
import fs from 'node:fs/promises'
import path from 'node:path'
import { atticEnv, pushPaths } from './attic.js'
import type { WatcherStatus } from './daemon.js'
import { describeFailure, errorLine } from './exec.js'
import { copyTo, storeDir } from './nix.js'
import { uploadEnv, type Session } from './session.js'

export interface FinalPush {
  /** Paths uploaded now (closures included); the cache already had the rest. */
  pushed: string[]
  failed: Array<{ path: string; error: string }>
}

export async function finalPush(session: Session, targets: readonly string[], status: WatcherStatus | undefined, timeoutMs: number, log: (m: string) => void): Promise<FinalPush> {
  // Paths recorded while no client existed are pushed here if one exists now.
  const paths = [...new Set([...targets, ...(status?.waitingForClient ?? [])])]
  if (paths.length === 0) return { pushed: [], failed: [] }
  log(`final push of ${paths.length} path(s) and their closures`)
  if (session.backend === 'nix' && session.nix) {
    const r = await copyTo(session.nix.url, paths, { timeoutMs, env: uploadEnv(session) })
    if (r.code === 0) return { pushed: r.copied, failed: [] }
    // Nix names a path when it starts copying it, not when the copy succeeded: after a failure,
    // claim nothing as pushed.
    const error = describeFailure(r, 'nix copy', timeoutMs)
    return { pushed: [], failed: paths.map((p) => ({ path: p, error })) }
  }
  const client = status?.client ?? session.client
  if (!session.attic || !client) {
    return { pushed: [], failed: paths.map((p) => ({ path: p, error: 'no attic client was available in this job' })) }
  }
  const r = await pushPaths(client, session.attic.cache, paths, { env: atticEnv(session.attic.configHome), timeoutMs, storeDir: storeDir() })
  // Planned: every path it uploaded got a line; the rest were cached already.
  if (r.exitCode === 0 || r.planned) return { pushed: r.pushed, failed: r.failed }
  const error = r.timedOut ? `attic push timed out after ${timeoutMs / 1000}s` : `attic push failed (exit ${r.exitCode}): ${r.error ?? errorLine(r.stderr)}`
  return { pushed: r.pushed, failed: paths.map((p) => ({ path: p, error })) }
}

/**
 * Each path counts as failed once, and not at all when the final push got it into the cache
 * after the watcher could not: the counts say what is missing from the cache now.
 */
export function countFailures(status: WatcherStatus | undefined, final: FinalPush) {
  const recovered = new Set(final.pushed)
  const earlier = (status?.failures ?? []).filter((f) => !recovered.has(f.path))
  const incremental = Math.max(0, (status?.counts.failed ?? 0) - ((status?.failures.length ?? 0) - earlier.length))
  const known = new Set(earlier.map((f) => f.path))
  const later = final.failed.filter((f) => !known.has(f.path))
  return { incremental, final: later.length, list: [...earlier, ...later] }
}

/**
 * ./result, ./result-dev, …: the out-links `nix build` left (none is fine). With `since` (when
 * this job's first build started), a link older than that is an earlier run's, left in a
 * folder the runner kept: its name goes to `stale` and its path is not returned (Nix writes a
 * new link for every out-link of a build: gc.cc `addPermRoot` → util.cc `replaceSymlink`, a
 * fresh link renamed over the old, 2.8.0; so a link this job made is never older).
 */
export async function resultLinks(cwd = process.cwd(), since?: number, stale: string[] = []): Promise<string[]> {
  const links = (await fs.readdir(cwd)).filter((name) => name === 'result' || name.startsWith('result-')).sort()
  const targets: string[] = []
  for (const link of links) {
    try {
      const file = path.resolve(cwd, link)
      if (since !== undefined && (await fs.lstat(file)).mtimeMs < since - 1000) {
        stale.push(link)
        continue
      }
      targets.push(await fs.realpath(file))
    } catch {
      // a dangling link: nothing to push
    }
  }
  return targets
}
