// Nix's machine log (`--log-format internal-json`): exact counts of what was built and
// substituted, and the human-readable log a CI user expects (what `--print-build-logs` shows).
import { stripAnsi } from './log.js'

/** Activity types, from Nix's logging.hh (stable since Nix 2.0). */
const ACT_COPY_PATHS = 103 // the substitutions of one build, with a done/expected/running/failed progress
const ACT_BUILDS = 104 // the builds of one build, with the same progress
const ACT_BUILD = 105
const ACT_SUBSTITUTE = 108
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
  /** Derivations whose builder failed. */
  failed: number
}

// Nix ≤ 2.2x: "builder for '/nix/store/…drv' failed with exit code 1";
// newer: "Cannot build '/nix/store/…drv'." followed by "Reason: builder failed…".
const FAILED_DRV = /(?:builder for|Cannot build|build of) '(\/[^']+\.drv)'/g

/** The name a build log line is prefixed with, as `nix build -L` does: `hello-2.12>`. */
export function drvName(drvPath: string): string {
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1).replace(/\.drv$/, '')
  return base.replace(/^[0-9a-z]{32}-/, '')
}

/** Follows one `nix build` run's events; pure: feed events, get lines to print and counts. */
export class BuildLog {
  private readonly builds = new Map<number, string>() // activity id → drv path
  private readonly builtDrvs = new Set<string>()
  private readonly failedDrvs = new Set<string>()
  private readonly substitutedPaths = new Set<string>()
  private readonly errorMessages: string[] = []
  /** Nix's own progress counters: [done, expected, running, failed] per ACT_BUILDS / ACT_COPY_PATHS activity. */
  private readonly progress = new Map<number, { type: number; fields: number[] }>()

  /** Nix's error messages so far, to repeat where a collapsed log section would hide them. */
  get errors(): readonly string[] {
    return this.errorMessages
  }

  /** Returns the human-readable lines this event stands for (often none). */
  feed(ev: NixLogEvent): string[] {
    switch (ev.action) {
      case 'start': {
        const f = ev.fields ?? []
        if (ev.type === ACT_BUILD && typeof f[0] === 'string' && ev.id !== undefined) {
          this.builds.set(ev.id, f[0])
          this.builtDrvs.add(f[0])
        } else if (ev.type === ACT_SUBSTITUTE && typeof f[0] === 'string') {
          this.substitutedPaths.add(f[0])
        } else if ((ev.type === ACT_BUILDS || ev.type === ACT_COPY_PATHS) && ev.id !== undefined) {
          this.progress.set(ev.id, { type: ev.type, fields: [] })
        }
        return ev.text && (ev.level ?? 0) <= LVL_INFO ? [ev.text] : []
      }
      case 'result': {
        const counter = ev.id === undefined ? undefined : this.progress.get(ev.id)
        if (counter && ev.type === RES_PROGRESS) counter.fields = (ev.fields ?? []).map(Number)
        const drv = ev.id === undefined ? undefined : this.builds.get(ev.id)
        const line = ev.fields?.[0]
        if (drv && (ev.type === RES_BUILD_LOG_LINE || ev.type === RES_POST_BUILD_LOG_LINE) && typeof line === 'string') {
          return [`${drvName(drv)}> ${line}`]
        }
        return []
      }
      case 'msg': {
        const msg = ev.msg ?? ''
        for (const m of stripAnsi(msg).matchAll(FAILED_DRV)) this.failedDrvs.add(m[1]!)
        if ((ev.level ?? 0) === LVL_ERROR && msg) this.errorMessages.push(msg)
        return (ev.level ?? 0) <= LVL_INFO && msg ? [msg] : []
      }
      default:
        return []
    }
  }

  /**
   * Nix's own counters when it reported them (they leave out builds and downloads that were
   * interrupted); else the activities seen, minus the builds reported failed.
   */
  counts(): BuildCounts {
    const sum = (type: number, field: number): number | undefined => {
      const counters = [...this.progress.values()].filter((c) => c.type === type && c.fields.length === 4)
      return counters.length ? counters.reduce((n, c) => n + (c.fields[field] ?? 0), 0) : undefined
    }
    let seenBuilt = 0
    for (const drv of this.builtDrvs) if (!this.failedDrvs.has(drv)) seenBuilt++
    return {
      built: sum(ACT_BUILDS, 0) ?? seenBuilt,
      substituted: sum(ACT_COPY_PATHS, 0) ?? this.substitutedPaths.size,
      failed: sum(ACT_BUILDS, 3) ?? this.failedDrvs.size,
    }
  }
}
