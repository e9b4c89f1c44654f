// Controlling the watcher from the job's other processes: start it detached, ask it to drain,
// stop it. Every wait is bounded; a watcher that is gone (docker executor) is a normal case.
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import type { WatcherStatus } from './daemon.js'
import { liveWatcherPid, processAlive, readJson, type StatePaths } from './state.js'


/**
 * V8's young generation for the watcher. Its default (16 MiB semi-spaces) lets a process that
 * allocates steadily, as the watcher does for every path and every push's output, grow its RSS
 * by ~20 MiB before the first scavenge; 1 MiB keeps it flat at the price of more, smaller
 * scavenges (well under a millisecond each). Measured in `npm run bench scale` and `memory`.
 */
const WATCHER_V8_FLAGS = '--max-semi-space-size=1'

/**
 * What the runtime running us needs before the watcher's path: V8's flags for node; for Deno,
 * `run`, the permissions the scripts use (`deno script.mjs` alone would run it with none) and the
 * same V8 flags in Deno's spelling.
 */
export function runtimeArgs(versions: NodeJS.ProcessVersions & { deno?: string } = process.versions): string[] {
  return versions.deno ? ['run', '--allow-all', `--v8-flags=${WATCHER_V8_FLAGS}`] : [WATCHER_V8_FLAGS]
}

/**
 * Spawn `node <argv…>` as the watcher: own process group, stdin from /dev/null, output to the
 * log file. A child that keeps the job's stdout open would make the stage hang (gitlab-runner#2880).
 */
export async function startWatcher(paths: StatePaths, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<{ pid: number; already: boolean } | { error: string }> {
  const running = await liveWatcherPid(paths)
  if (running !== undefined) return { pid: running, already: true }
  const out = fs.openSync(paths.log, 'a')
  const child = spawn(process.execPath, [...runtimeArgs(), ...argv], { detached: true, stdio: ['ignore', out, out], env })
  fs.closeSync(out)
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.unref()
  // Ready when it has written its pid file (after its store snapshot, so nothing built from now on is missed).
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    const pid = await liveWatcherPid(paths)
    if (pid !== undefined && pid === child.pid) return { pid, already: false }
    if (child.exitCode !== null) break
    await Promise.race([sleep(50), exited])
  }
  return { error: `the watcher did not start (see ${paths.log})` }
}

export type DrainResult =
  | { state: 'not-running' }
  | { state: 'drained'; status: WatcherStatus }
  | { state: 'timeout'; status?: WatcherStatus }
  | { state: 'died'; status?: WatcherStatus }

/**
 * Where a drain looks for paths no lock event announced (inotify can lose events). `builds`: the
 * paths the job's `build` runs realised since the last such drain, from their record (cheap, what
 * `build` needs at its end). `store`: every entry of the store, which also finds what plain `nix`
 * commands made, at the cost of reading the whole store (the final drain, `watch drain`).
 */
export type DrainScope = 'builds' | 'store'

/** Ask the watcher to push everything seen so far; wait at most timeoutS seconds. */
export async function drainWatcher(paths: StatePaths, timeoutS: number, onProgress?: (s: WatcherStatus) => void, scope: DrainScope = 'store'): Promise<DrainResult> {
  const pid = await liveWatcherPid(paths)
  if (pid === undefined) return { state: 'not-running' }
  const token = randomUUID()
  fs.writeFileSync(paths.drainRequest, `${token}\n${scope}\n`)
  try {
    process.kill(pid, 'SIGUSR1')
  } catch {
    return { state: 'died', status: await readJson<WatcherStatus>(paths.status) }
  }
  const deadline = Date.now() + timeoutS * 1000
  let nextProgress = Date.now() + 10_000
  for (;;) {
    const status = await readJson<WatcherStatus>(paths.status)
    if (status?.drained === token) return { state: 'drained', status }
    if (!processAlive(pid)) return { state: 'died', status }
    if (Date.now() >= deadline) return { state: 'timeout', status }
    if (status && onProgress && Date.now() >= nextProgress) {
      onProgress(status)
      nextProgress = Date.now() + 10_000
    }
    await sleep(100)
  }
}

/** Drain, then end the watcher (SIGTERM, then SIGKILL of its group after a grace period). */
export async function stopWatcher(paths: StatePaths, timeoutS: number, onProgress?: (s: WatcherStatus) => void): Promise<DrainResult> {
  const drained = await drainWatcher(paths, timeoutS, onProgress)
  const pid = await liveWatcherPid(paths)
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGTERM')
    } catch {
      // it ended on its own meanwhile
    }
    const deadline = Date.now() + 5_000
    while (processAlive(pid) && Date.now() < deadline) await sleep(50)
    if (processAlive(pid)) {
      try {
        process.kill(-pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  if (drained.state === 'not-running') return drained
  // Its last word: the counts it wrote on the way out.
  const status = (await readJson<WatcherStatus>(paths.status)) ?? drained.status
  return drained.state === 'drained' ? { state: 'drained', status: status ?? drained.status } : { state: drained.state, status }
}

/**
 * `bootstrap` starts a job: a watcher still running in its state dir was left by an earlier job
 * (a shell runner keeps the project folder). Stop it, after a short drain for what it holds, so
 * the new job's watcher runs with the new job's settings. Returns its pid, if there was one.
 */
export async function takeOverStateDir(paths: StatePaths): Promise<number | undefined> {
  const pid = await liveWatcherPid(paths)
  if (pid === undefined) return undefined
  await stopWatcher(paths, 10)
  return pid
}

