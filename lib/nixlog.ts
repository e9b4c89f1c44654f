// Nix's machine log (`--log-format internal-json`): exact counts of what was built and
// substituted, and the human-readable log a CI user expects (what `--print-build-logs` shows).
import { stripAnsi } from './log.js'

/**
 * Activity types, from Nix's logging.hh (unchanged 2.8 → main; Lix's lix/libutil/logging.hh has the
 * same numbers). Not counted: actCopyPath (100), one path copied, which is also what copies to and
 * from a remote builder are (NixOS/nix src/libstore/store-api.cc copyPaths).
 */
const ACT_COPY_PATHS = 103 // Nix's substitution counter, with a done/expected/running/failed progress; also `copyPaths`
const ACT_BUILDS = 104 // the builds of one build, with the same progress
const ACT_BUILD = 105 // fields: drv path, machine ("" when local)
const ACT_SUBSTITUTE = 108 // fields: store path, substituter
/** Result types. */
const RES_BUILD_LOG_LINE = 101
const RES_PROGRESS = 105
const RES_POST_BUILD_LOG_LINE = 107
/** Verbosity levels: messages up to lvlInfo are what plain `nix build` prints. */
const LVL_ERROR = 0
const LVL_INFO = 3

export interface NixLogEvent {
  action: 'start' | 'stop' | 'result' | 'msg' | string
  id?: number
  /** The activity this one runs inside, 0 at the top (printed from Nix 2.18, src/libutil/logging.cc, and by Lix). */
  parent?: number
  level?: number
  type?: number
  text?: string
  msg?: string
  fields?: unknown[]
}

/** `@nix {...}` → the event; anything else (plain stderr) → undefined. */
export function parseNixLogLine(line: string): NixLogEvent | undefined {
  if (!line.startsWith('@nix ')) return undefined
  try {
    const ev = JSON.parse(line.slice(5)) as NixLogEvent
    return typeof ev === 'object' && ev !== null && typeof ev.action === 'string' ? ev : undefined
  } catch {
    return undefined
  }
}

export interface BuildCounts {
  /** Derivations built here and not failed. */
  built: number
  /** Store paths fetched from a substituter. */
  substituted: number
  /** Derivations whose builder failed (a dependency's failure is not one). */
  failed: number
}

/**
 * The derivation a failure message names, and whether it failed itself or only for a failed
 * dependency. Matched at the start of the message (after `error: `), so a build log tail quoted
 * inside it cannot match.
 */
export function failureOf(msg: string): { drv: string; dependency: boolean } | undefined {
  const text = stripAnsi(msg).replace(/^error:\s*/, '')
  // Nix ≥ 2.29: "Cannot build '<drv>'.\nReason: builder failed with exit code 1." for the builder's own
  // failure, "Reason: 1 dependency failed." / "2 dependencies failed." for a dependant
  // (src/libstore/build/derivation-building-goal.cc, derivation-resolution-goal.cc); "local builds are
  // disabled", "platform mismatch", "missing system features" are the derivation's own too.
  const cannot = /^Cannot build '([^']+\.drv)'\.(?:\s*Reason:\s*([^\n]*))?/.exec(text)
  if (cannot) return { drv: cannot[1]!, dependency: /^\d+ dependenc(?:y|ies) failed/.test(cannot[2] ?? '') }
  for (const re of OWN_FAILURES) {
    const m = re.exec(text)
    if (m) return { drv: m[1]!, dependency: false }
  }
  // Nix ≤ 2.28 and Lix: "1 dependencies of derivation '<drv>' failed to build"
  // (src/libstore/build/derivation-goal.cc, lix/libstore/build/derivation-goal.cc).
  const dep = /^\d+ dependencies of derivation '([^']+\.drv)' failed to build/.exec(text)
  return dep ? { drv: dep[1]!, dependency: true } : undefined
}

/** Messages of a derivation's own failure in Nix ≤ 2.28 and Lix. */
const OWN_FAILURES = [
  // "builder for '<drv>' failed with exit code 1" (derivation-goal.cc buildDone; Lix also "… failed on remote builder")
  /^builder for '([^']+\.drv)'/,
  // "build of '<drv>' on 'ssh://…' failed: …" (src/build-remote/build-remote.cc); not the final
  // "build of '<drv>^out', … failed", which lists what was asked for, dependants too
  /^build of '([^']+\.drv)' on '/,
  // "hash mismatch in fixed-output derivation '<drv>':" (local-derivation-goal.cc, both)
  /^hash mismatch in fixed-output derivation '([^']+\.drv)'/,
  // "a 'aarch64-linux' with features {} is required to build '<drv>', but I am a …" (derivation-goal.cc)
  /^a '[^']*' with features \{[^}]*\} is required to build '([^']+\.drv)'/,
  // "building of '<drv>^out' from .drv file timed out after 10 seconds of silence" (derivation-goal.cc)
  /^building of '([^'^]+\.drv)[^']*' .*timed out after/,
]

const INTERRUPTED = /^error: interrupted by the user/m

/** The name a build log line is prefixed with, as `nix build -L` does: `hello-2.12>`. */
export function drvName(drvPath: string): string {
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1).replace(/\.drv$/, '')
  return base.replace(/^[0-9a-z]{32}-/, '')
}

/** Lines of a failed builder's own output kept for the log and the summary. */
export const TAIL_LINES = 25
/** Stopped builds whose last lines are kept until a failure message may name them (it follows the stop). */
const TAILS_KEPT = 64

export interface FailedBuild {
  drv: string
  /** The builder's last output lines (at most TAIL_LINES). */
  tail: string[]
}

/** A build or substitution activity that stopped: done, failed, or cancelled (which the stop alone cannot tell). */
interface Stopped {
  kind: 'build' | 'substitution'
  /** The drv built or the path substituted. */
  key: string
  /** `BuildLog.movedOn` when it stopped. */
  movedOn: number
  /** `BuildLog.index` when it stopped. */
  index: number
  /** The next thing Nix said was an error: how a failed substitution ends (substitution-goal.cc). */
  errorNext?: boolean
}

/** Follows one `nix build` run's events; pure: feed events, get lines to print and counts. */
export class BuildLog {
  private readonly builds = new Map<number, string>() // activity id → drv path
  private readonly substitutions = new Map<number, string>() // activity id → store path
  /** Running activities: type, and whether a build runs on a remote builder. */
  private readonly running = new Map<number, { type: number; remote: boolean }>()
  private remoteBuilds = 0
  private readonly stopped: Stopped[] = []
  /** Stops no event has followed yet but other stops and error messages. */
  private pendingStops: Stopped[] = []
  private readonly failedDrvs = new Set<string>()
  /** Last output lines per drv: of running builds, and of the last TAILS_KEPT stopped ones. */
  private readonly tails = new Map<string, string[]>()
  /** Failed builds with their last lines, in the order Nix reported them. */
  private readonly failures: FailedBuild[] = []
  private readonly errorMessages: string[] = []
  private readonly errorTexts = new Set<string>()
  /** Nix's own progress counters: [done, expected, running, failed] per ACT_BUILDS / ACT_COPY_PATHS activity. */
  private readonly progress = new Map<number, { type: number; fields: number[] }>()
  /** Events fed. */
  private index = 0
  /** Events that show Nix went on working: all but stops and error messages. */
  private movedOn = 0
  /** When Nix said it was interrupted: `index` and `movedOn` then. */
  private interrupted?: { index: number; movedOn: number }

  /** The derivations whose builder failed, each with its last output lines. */
  get failedBuilds(): readonly FailedBuild[] {
    return this.failures
  }

  private keepLine(drv: string, line: string): void {
    let tail = this.tails.get(drv)
    if (!tail) this.tails.set(drv, (tail = []))
    tail.push(stripAnsi(line))
    if (tail.length > TAIL_LINES) tail.shift()
  }

  /** Keeps the tails of running builds and of the last TAILS_KEPT that stopped: memory stays flat on a wide build. */
  private forgetOldTails(): void {
    const running = new Set(this.builds.values())
    let stopped = 0
    for (const drv of [...this.tails.keys()].reverse()) if (!running.has(drv) && ++stopped > TAILS_KEPT) this.tails.delete(drv)
  }

  /** Nix's error messages so far, each once, to repeat where a collapsed log section would hide them. */
  get errors(): readonly string[] {
    return this.errorMessages
  }

  /** Returns the human-readable lines this event stands for (often none). */
  feed(ev: NixLogEvent): string[] {
    this.index++
    const isError = ev.action === 'msg' && (ev.level ?? 0) === LVL_ERROR
    if (ev.action !== 'stop' && !isError) {
      this.movedOn++
      this.pendingStops = []
    }
    switch (ev.action) {
      case 'start': {
        const f = ev.fields ?? []
        if (ev.id !== undefined) {
          const remote = ev.type === ACT_BUILD && typeof f[1] === 'string' && f[1] !== ''
          if (this.isOwnCounter(ev)) this.progress.set(ev.id, { type: ev.type!, fields: [] })
          this.running.set(ev.id, { type: ev.type ?? 0, remote })
          if (remote) this.remoteBuilds++
          if (ev.type === ACT_BUILD && typeof f[0] === 'string') this.builds.set(ev.id, f[0])
          if (ev.type === ACT_SUBSTITUTE && typeof f[0] === 'string') this.substitutions.set(ev.id, f[0])
        }
        return ev.text && (ev.level ?? 0) <= LVL_INFO ? [ev.text] : []
      }
      case 'stop': {
        const act = ev.id === undefined ? undefined : this.running.get(ev.id)
        if (!act) return []
        this.running.delete(ev.id!)
        if (act.remote) this.remoteBuilds--
        const key = act.type === ACT_BUILD ? this.builds.get(ev.id!) : act.type === ACT_SUBSTITUTE ? this.substitutions.get(ev.id!) : undefined
        this.builds.delete(ev.id!)
        this.substitutions.delete(ev.id!)
        if (key !== undefined && act.type === ACT_BUILD) this.forgetOldTails()
        if (key !== undefined) {
          const s: Stopped = { kind: act.type === ACT_BUILD ? 'build' : 'substitution', key, movedOn: this.movedOn, index: this.index }
          this.stopped.push(s)
          this.pendingStops.push(s)
        }
        return []
      }
      case 'result': {
        const counter = ev.id === undefined ? undefined : this.progress.get(ev.id)
        if (counter && ev.type === RES_PROGRESS) counter.fields = (ev.fields ?? []).map(Number)
        const drv = ev.id === undefined ? undefined : this.builds.get(ev.id)
        const line = ev.fields?.[0]
        if (drv && (ev.type === RES_BUILD_LOG_LINE || ev.type === RES_POST_BUILD_LOG_LINE) && typeof line === 'string') {
          this.keepLine(drv, line)
          return [`${drvName(drv)}> ${line}`]
        }
        return []
      }
      case 'msg': {
        const msg = ev.msg ?? ''
        if (isError && msg) this.onError(msg)
        return (ev.level ?? 0) <= LVL_INFO && msg ? [msg] : []
      }
      default:
        return []
    }
  }

  /**
   * Whether a 103/104 activity is Nix's own counter of this build: the worker starts them without
   * text (src/libstore/build/worker.cc, lix/libstore/build/worker.cc), while `copyPaths` says
   * "copying N paths" (store-api.cc). A remote builder's own worker counts the same builds again:
   * its activities come forwarded inside the build's (`parent`, src/libutil/logging.cc
   * handleJSONLogMessage), or, where no `parent` is printed (Nix 2.8), while a remote build runs.
   */
  private isOwnCounter(ev: NixLogEvent): boolean {
    if (ev.type !== ACT_BUILDS && ev.type !== ACT_COPY_PATHS) return false
    if (ev.text) return false
    if (ev.parent !== undefined && this.running.has(ev.parent)) return false
    return this.remoteBuilds === 0
  }

  private onError(msg: string): void {
    // With --keep-going, Nix ≥ 2.23 repeats at the end the failure of each requested derivation when
    // more than one failed, colours apart, though one with dependants was printed when it happened
    // (src/libcmd/installables.cc throwBuildErrors; recorded on 2.24.15): keep it once.
    const text = stripAnsi(msg).trim()
    if (!this.errorTexts.has(text)) {
      this.errorTexts.add(text)
      this.errorMessages.push(msg)
    }
    const failure = failureOf(msg)
    if (failure && !failure.dependency && !this.failedDrvs.has(failure.drv)) {
      this.failedDrvs.add(failure.drv)
      this.failures.push({ drv: failure.drv, tail: this.tails.get(failure.drv) ?? [] })
    }
    for (const s of this.pendingStops) s.errorNext = true
    this.pendingStops = []
    // SIGINT, SIGTERM and SIGHUP all end Nix with this (src/libutil/unix/signals.cc; Lix lix/libutil/signals.cc).
    if (INTERRUPTED.test(stripAnsi(msg))) this.interrupted = { index: this.index, movedOn: this.movedOn }
  }

  /**
   * A build or substitution done, as far as the log shows: stopped, and not failed. A stop alone is
   * not enough: an interrupted build stops too, as its goal is destroyed (recorded on 2.24.15:
   * test/fixtures/nix-2.24.15-interrupted.txt). Those are the stops after which Nix only stopped
   * activities and printed errors until it said it was interrupted. A failed substitution is
   * followed by its error (substitution-goal.cc). A build cancelled because another failed without
   * --keep-going stops like a finished one, and no message tells them apart (worker.cc drops the
   * goals): greedy-nix passes --keep-going unless told not to.
   */
  private done(kind: Stopped['kind']): Set<string> {
    const keys = new Set<string>()
    for (const s of this.stopped) {
      if (s.kind !== kind) continue
      const tornDown = this.interrupted && s.index < this.interrupted.index && s.movedOn === this.interrupted.movedOn
      if (tornDown || (kind === 'substitution' && s.errorNext) || (kind === 'build' && this.failedDrvs.has(s.key))) continue
      keys.add(s.key)
    }
    return keys
  }

  /**
   * Nix's own counters, but never fewer than the completed activities show: Lix ≥ 2.92 sends its
   * counters at most every 20 ms and drops the last update when the build ends
   * (lix/libstore/build/worker.cc updateStatistics). Failed: Nix's counter (which leaves out
   * dependency failures, derivation-goal.cc done) or the derivations failure messages name,
   * whichever is more. A failure the counter has and no message names is taken off the
   * completed builds, as it stopped like one.
   */
  counts(): BuildCounts {
    const sum = (type: number, field: number): number | undefined => {
      const counters = [...this.progress.values()].filter((c) => c.type === type && c.fields.length === 4)
      return counters.length ? counters.reduce((n, c) => n + (c.fields[field] ?? 0), 0) : undefined
    }
    const countedFailed = sum(ACT_BUILDS, 3) ?? 0
    const unnamedFailures = Math.max(0, countedFailed - this.failedDrvs.size)
    return {
      built: Math.max(sum(ACT_BUILDS, 0) ?? 0, this.done('build').size - unnamedFailures),
      substituted: Math.max(sum(ACT_COPY_PATHS, 0) ?? 0, this.done('substitution').size),
      failed: Math.max(countedFailed, this.failedDrvs.size),
    }
  }
}

/** A failed builder's last lines, each under its name, to print after the (collapsed) build log. */
export function failureTails(failures: readonly FailedBuild[]): string[] {
  return failures.flatMap((f) => [
    `${drvName(f.drv)}: the builder failed${f.tail.length ? `; its last ${f.tail.length} line(s)` : ' without output'} (all of it: nix log ${f.drv})`,
    ...f.tail.map((l) => `  ${drvName(f.drv)}> ${l}`),
  ])
}

/** "nix build exited 1 after 12.3s: 2 built, 0 substituted, 1 failed (hello-1.0)" */
export function buildLine(r: BuildCounts & { exitCode: number; seconds: number; failures: readonly FailedBuild[] }): string {
  const names = r.failures.map((f) => drvName(f.drv))
  const shown = names.length > 5 ? [...names.slice(0, 5), `${names.length - 5} more`] : names
  return `nix build exited ${r.exitCode} after ${r.seconds.toFixed(1)}s: ${r.built} built, ${r.substituted} substituted` +
    (r.failed ? `, ${r.failed} failed${shown.length ? ` (${shown.join(', ')})` : ''}` : '')
}
