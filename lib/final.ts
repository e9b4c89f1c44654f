// The final push of after_script: the closures of the build results, pushed once more. Cheap
// when the watcher did its job (the cache answers "already there"), and the safety net when it
// could not (killed with its stage, or no client until the end).
import { atticEnv, pushPaths } from './attic.js'
import type { WatcherStatus } from './daemon.js'
import { describeFailure } from './exec.js'
import { copyTo } from './nix.js'
import type { Session } from './session.js'

export interface FinalPush {
  pushed: number
  failed: Array<{ path: string; error: string }>
}

export async function finalPush(session: Session, targets: readonly string[], status: WatcherStatus | undefined, timeoutMs: number, log: (m: string) => void): Promise<FinalPush> {
  // Paths recorded while no client existed are pushed here if one exists now.
  const paths = [...new Set([...targets, ...(status?.waitingForClient ?? [])])]
  if (paths.length === 0) return { pushed: 0, failed: [] }
  log(`final push of ${paths.length} path(s) and their closures`)
  if (session.backend === 'nix' && session.nix) {
    const r = await copyTo(session.nix.url, paths, { timeoutMs })
    if (r.code === 0) return { pushed: r.copied.length, failed: [] }
    const error = describeFailure(r, 'nix copy', timeoutMs)
    return { pushed: r.copied.length, failed: paths.map((p) => ({ path: p, error })) }
  }
  const client = status?.client ?? session.client
  if (!session.attic || !client) {
    return { pushed: 0, failed: paths.map((p) => ({ path: p, error: 'no attic client was available in this job' })) }
  }
  const r = await pushPaths(client, session.attic.cache, paths, { env: atticEnv(session.attic.configHome), timeoutMs })
  if (r.exitCode === 0 || r.failed.length > 0) return { pushed: r.pushed.length, failed: r.failed }
  const error = r.timedOut ? `attic push timed out after ${timeoutMs / 1000}s` : `attic push exit ${r.exitCode}: ${r.stderr.trim().split('\n').pop()}`
  return { pushed: r.pushed.length, failed: paths.map((p) => ({ path: p, error })) }
}
