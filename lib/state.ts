// The state folder: how the phases of one job talk to each other. Env exported by a child never
// reaches the job shell, and after_script is a new shell, so everything lives in files here.
import fs from 'node:fs/promises'
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'

export function statePaths(stateDir: string) {
  const p = (name: string) => path.join(stateDir, name)
  return {
    dir: stateDir,
    /** What bootstrap decided: backend, endpoint, client. No secrets. */
    session: p('session.json'),
    /** The watcher's pid (first line) and its start time, to never signal a reused pid. */
    pid: p('watch.pid'),
    log: p('watch.log'),
    /** The watcher's running counts, rewritten as they change. */
    status: p('watch-status.json'),
    drainRequest: p('drain-request'),
    /** The watcher program itself, written by bootstrap so a piped bootstrap can still start it. */
    watcherScript: p('watch.mjs'),
    /** Counts of every `build` run in this job, added up. */
    build: p('build.json'),
    /** What this job's builds realised (derivations built, paths substituted), for the watcher. */
    realised: p('realised'),
    summary: p('summary.json'),
    metrics: p('metrics.txt'),
    /**
     * The store path each ./result* link points to, one per line: GitLab archives the links as
     * links, so the artifact alone is dangling; these paths are what to fetch from the cache.
     */
    resultPaths: p('result-paths.txt'),
    /** Out-link to the attic client, a GC root while the job runs. */
    clientLink: p('attic-client'),
    /** `export NIX_CONFIG=…`: `. <state>/env.sh` gives the job shell's own nix commands the cache (lib/nixconf.ts). */
    jobEnv: p('env.sh'),
    /** Private (0600) files. */
    secrets: p('secrets'),
  }
}

export type StatePaths = ReturnType<typeof statePaths>

export async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as T
  } catch {
    return undefined
  }
}

/** Write via rename so a reader (or a kill -9 mid-write) never sees half a file. */
export async function writeJsonAtomic(file: string, data: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`
  await fs.writeFile(tmp, JSON.stringify(data, null, 2) + '\n')
  await fs.rename(tmp, file)
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), if readable. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

/**
 * Whether a process runs. A killed process stays a zombie until its parent reaps it, and an
 * orphaned watcher's new parent may take its time: a zombie counts as gone.
 */
export function processAlive(pid: number): boolean {
  if (existsSync('/proc/self/stat')) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const state = stat.charAt(stat.lastIndexOf(')') + 2)
      return state !== 'Z' && state !== 'X'
    } catch {
      return false
    }
  }
  try {
    process.kill(pid, 0) // no /proc (not Linux): ask the kernel
    return true
  } catch {
    return false
  }
}

export function formatPidFile(pid: number, startTime: string | undefined): string {
  return `${pid}\n${startTime ? `starttime ${startTime}\n` : ''}`
}

export function parsePidFile(text: string): { pid: number; startTime?: string } | undefined {
  const [first, second] = text.split('\n')
  const pid = Number(first?.trim())
  if (!Number.isInteger(pid) || pid <= 1) return undefined
  const m = /^starttime (\d+)$/.exec(second?.trim() ?? '')
  return { pid, startTime: m?.[1] }
}

/**
 * The pid of this state dir's live watcher, or undefined. A pid whose process is not the one
 * that wrote the file (the pid was reused after it died) is never returned, so never signalled.
 */
export async function liveWatcherPid(paths: StatePaths): Promise<number | undefined> {
  let text: string
  try {
    text = await fs.readFile(paths.pid, 'utf8')
  } catch {
    return undefined
  }
  const rec = parsePidFile(text)
  if (!rec) return undefined
  const now = processStartTime(rec.pid)
  if (now === undefined || rec.startTime === undefined) return undefined
  return now === rec.startTime && processAlive(rec.pid) ? rec.pid : undefined
}

/**
 * A new job starts (bootstrap): forget the counts of an earlier job that used the same folder
 * (shell executors may keep the project dir). Left alone while this job's watcher runs.
 */
export async function clearJobState(paths: StatePaths): Promise<void> {
  if ((await liveWatcherPid(paths)) !== undefined) return
  const stale = [paths.session, paths.jobEnv, paths.status, paths.drainRequest, paths.build, paths.realised, paths.summary, paths.metrics, paths.pid]
  await Promise.all(stale.map((f) => fs.rm(f, { force: true })))
}
