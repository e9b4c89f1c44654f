// Whose store path is it? Every watcher on a machine sees every new path in /nix/store. When two
// jobs share a machine (shell executor), each must push and count only its own work: `build`
// records what its Nix run builds and substitutes, and a watcher that is not alone on the
// machine pushes only paths from that record. Alone, it pushes every new path, as before.
import { appendFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { run } from './exec.js'
import { derivationOutputs } from './nix.js'
import type { NixLogEvent } from './nixlog.js'
import { processAlive, processStartTime } from './state.js'

/** Nix activity types that name what a build realises. */
const ACT_BUILD = 105 // fields[0]: the derivation
const ACT_SUBSTITUTE = 108 // fields[0]: the store path

/** `build`'s side: append each derivation built and each path substituted to the record. */
export function recordRealised(file: string, ev: NixLogEvent): void {
  if (ev.action !== 'start' || typeof ev.fields?.[0] !== 'string') return
  const kind = ev.type === ACT_BUILD ? 'drv' : ev.type === ACT_SUBSTITUTE ? 'out' : undefined
  if (!kind) return
  try {
    appendFileSync(file, `${kind} ${ev.fields[0]}\n`)
  } catch {
    // no state dir: no watcher to tell either
  }
}

type RecordEntry = { kind: 'drv' | 'out'; path: string }

/** The record's lines: `drv <derivation built>` or `out <path substituted>`. */
function recordEntries(text: string): RecordEntry[] {
  return text.split('\n').flatMap((line) => (/^(drv|out) /.test(line) ? [{ kind: line.slice(0, 3) as 'drv' | 'out', path: line.slice(4) }] : []))
}

/** The record's complete lines from byte `offset` on, and the offset after them (none yet: nothing). */
async function readRecord(file: string, offset: number): Promise<{ entries: RecordEntry[]; offset: number }> {
  let text: string
  try {
    const handle = await fs.open(file, 'r')
    try {
      const buf = Buffer.alloc(Math.max(0, (await handle.stat()).size - offset))
      await handle.read(buf, 0, buf.length, offset)
      text = buf.toString('utf8')
    } finally {
      await handle.close()
    }
  } catch {
    return { entries: [], offset } // nothing recorded yet
  }
  const complete = text.slice(0, text.lastIndexOf('\n') + 1)
  return { entries: recordEntries(complete), offset: offset + Buffer.byteLength(complete) }
}

/**
 * What the job's builds realised since `offset` in the record: the paths substituted and the
 * outputs of the derivations built (named in their .drv files). `build`'s drain checks these by
 * name instead of reading the whole store again.
 */
export async function realisedSince(file: string, offset: number): Promise<{ paths: string[]; offset: number }> {
  const read = await readRecord(file, offset)
  const paths: string[] = []
  for (const e of read.entries) {
    if (e.kind === 'out') paths.push(e.path)
    else paths.push(...derivationOutputs(await fs.readFile(e.path, 'utf8').catch(() => '')))
  }
  return { paths, offset: read.offset }
}

/** The paths this job's builds substituted, from the record (none when there is none). */
export async function substitutedPaths(file: string): Promise<string[]> {
  const text = await fs.readFile(file, 'utf8').catch(() => '')
  return recordEntries(text).filter((e) => e.kind === 'out').map((e) => e.path)
}

/** The watcher's side: reads the record as it grows and attributes new paths to this job. */
export class Attribution {
  private offset = 0
  private readonly drvs = new Set<string>()
  private readonly outs = new Set<string>()

  constructor(private readonly file: string) {}

  /** The subset of `paths` this job's builds realised. */
  async ours(paths: readonly string[]): Promise<Set<string>> {
    await this.refresh()
    const mine = new Set(paths.filter((p) => this.outs.has(p)))
    const rest = paths.filter((p) => !mine.has(p))
    if (rest.length > 0) {
      const r = await run('nix-store', ['--query', '--deriver', ...rest], { timeoutMs: 60_000 })
      const derivers = r.code === 0 ? r.stdout.split('\n') : []
      rest.forEach((p, i) => {
        if (this.drvs.has(derivers[i] ?? '')) mine.add(p)
      })
    }
    return mine
  }

  private async refresh(): Promise<void> {
    const read = await readRecord(this.file, this.offset)
    this.offset = read.offset
    for (const e of read.entries) (e.kind === 'drv' ? this.drvs : this.outs).add(e.path)
  }
}

/** Where the watchers on this machine sign in: one file per watcher, named by its pid. */
const REGISTRY = path.join(os.tmpdir(), 'greedy-nix-watchers')

/** The process a job's commands run in (the shell that ran `bootstrap`), with its start time. */
export interface JobProcess {
  pid: number
  startTime?: string
}

/** The job's shell as seen from `bootstrap`: its parent process. */
export function jobProcess(): JobProcess {
  return { pid: process.ppid, startTime: processStartTime(process.ppid) }
}

/**
 * Sign in as a watcher on this machine. `job` is the shell of the job that started it: once that
 * is gone (the job crashed or was cancelled), this watcher no longer counts as another job's company.
 */
export function registerWatcher(stateDir: string, job?: JobProcess): () => void {
  const file = path.join(REGISTRY, String(process.pid))
  try {
    mkdirSync(REGISTRY, { recursive: true, mode: 0o1777 })
    // Entries of watchers killed without a goodbye (kill -9, the end of a docker stage).
    for (const name of readdirSync(REGISTRY)) if (!processAlive(Number(name))) rmSync(path.join(REGISTRY, name), { force: true })
    const jobLine = job ? `job ${job.pid} ${job.startTime ?? ''}\n` : ''
    writeFileSync(file, `${processStartTime(process.pid) ?? ''}\n${stateDir}\n${jobLine}`)
  } catch {
    // an unwritable tmp: this watcher just cannot be seen by others
  }
  return () => rmSync(file, { force: true })
}

/**
 * Whether another live watcher of a live job signed in. A stale entry of a dead watcher is
 * ignored, and so is a watcher whose job's shell is gone: a crashed job's watcher must not put
 * every later job on the machine in attribution mode.
 */
export function otherWatchersRunning(): boolean {
  let entries: string[]
  try {
    entries = readdirSync(REGISTRY)
  } catch {
    return false
  }
  return entries.some((name) => {
    const pid = Number(name)
    if (!Number.isInteger(pid) || pid === process.pid || !processAlive(pid)) return false
    try {
      const [startTime, , jobLine] = readFileSync(path.join(REGISTRY, name), 'utf8').split('\n')
      if (startTime !== '' && startTime !== processStartTime(pid)) return false
      const job = /^job (\d+) ?(\d*)$/.exec(jobLine ?? '')
      if (!job) return true
      const jobPid = Number(job[1])
      return processAlive(jobPid) && (job[2] === '' || job[2] === processStartTime(jobPid))
    } catch {
      return false
    }
  })
}
