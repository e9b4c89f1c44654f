// Nix's machine log (`--log-format internal-json`): exact counts of what was built and
// substituted, and the human-readable log a CI user expects (what `--print-build-logs` shows).
import { stripAnsi } from './log.js'

/** Activity types, from Nix's logging.hh (stable since Nix 2.0). */
const ACT_BUILD = 105
const ACT_SUBSTITUTE = 108
/** Result types. */
const RES_BUILD_LOG_LINE = 101
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
        }
        return ev.text && (ev.level ?? 0) <= LVL_INFO ? [ev.text] : []
      }
      case 'result': {
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

  counts(): BuildCounts {
    let built = 0
    for (const drv of this.builtDrvs) if (!this.failedDrvs.has(drv)) built++
    return { built, substituted: this.substitutedPaths.size, failed: this.failedDrvs.size }
  }
}
