// The store watcher: sees every store path the moment Nix finishes it (its `.lock` file is
// removed), checks it is valid, filters it, and hands it to a push sink. Unlike
// `attic watch-store` it can be drained: `drain()` resolves when everything seen so far is settled.
import fs from 'node:fs'
import { access } from 'node:fs/promises'
import path from 'node:path'
import type { PushSink, Settled } from './pusher.js'
import { invalidPaths, queryPathInfo, type PathInfo } from './nix.js'
import { ServeConnection, type ServedInfo } from './serve.js'
import { entries, NameSet, StoreSnapshot } from './snapshot.js'

export interface WatcherCounts {
  /** Valid new paths seen. */
  seen: number
  pushed: number
  /** NAR bytes of the paths pushed (uncompressed; absent in a status of an older release). */
  pushedBytes?: number
  /** Already in the cache (or an upstream one): nothing to upload. */
  cached: number
  failed: number
  /** Filtered out: signed by the target or an upstream cache, or excluded by GREEDY_INCLUDE/EXCLUDE. */
  skipped: number
  /** Handed to the sink, not settled yet (or waiting for a client). */
  pending: number
}

export interface WatcherOptions {
  storeDir: string
  /** The sink to push to; undefined while no client exists (late bootstrap). */
  sink?: PushSink
  /**
   * Called for new valid paths while there is no sink; returning a sink ends the wait and
   * flushes the backlog into it. The attic backend uses it to spot the client being built.
   */
  findSink?: (newPaths: readonly string[]) => Promise<PushSink | undefined>
  /** Signature key names whose paths never need pushing (the target cache, upstream caches). */
  skipKeyNames: readonly string[]
  include?: RegExp
  exclude?: RegExp
  /** The subset of new valid paths that are this job's (when other jobs share the store); default: all. */
  ours?: (paths: readonly string[]) => Promise<Set<string>>
  onChange?: () => void
  debug?: (msg: string) => void
  info?: (msg: string) => void
}

/** Store entries that are never pushed: derivations, build scratch, check outputs, flake sources. */
export function isPushCandidateName(name: string): boolean {
  if (!/^[0-9a-z]{32}-/.test(name)) return false
  return !/(\.drv|\.drv\.chroot|\.check|-source|\.lock)$/.test(name)
}

/** Whether a valid path needs pushing: built here, or substituted from a cache we do not push to. */
export function needsPush(info: PathInfo, skipKeyNames: ReadonlySet<string>): boolean {
  if (info.ultimate) return true
  return !info.signatures.some((s) => skipKeyNames.has(s.slice(0, s.indexOf(':'))))
}

/** While a check runs, how long new lock removals are gathered so that one check covers them all. */
const CHECK_DELAY_MS = 100
const MAX_FAILURES_KEPT = 50
/** After this many failures of `nix-store --serve`, checks use one-off processes for good. */
const SERVE_FAILURES_MAX = 3

export class StoreWatcher {
  private known: StoreSnapshot | undefined
  /** Names checked or being checked: a lock's removal brings several events. */
  private readonly handled = new NameSet()
  private candidates = new Set<string>()
  private checkTimer: NodeJS.Timeout | undefined
  private checking: Promise<void> = Promise.resolve()
  private checksUnderWay = 0
  private fsWatcher: fs.FSWatcher | undefined
  private sink: PushSink | undefined
  private backlog: string[] = []
  /** Paths handed to the sink and not settled yet, with their NAR sizes. */
  private readonly outstanding = new Map<string, number>()
  /** Names counted as pushed: a dependency pushed with its dependant is reported again. */
  private readonly pushedNames = new NameSet()
  private readonly skipKeys: ReadonlySet<string>
  private readonly serve = new ServeConnection(60_000, () => this.opts.debug?.('nix-store --serve started'))
  private serveFailures = 0
  readonly failures = new Map<string, string>()
  readonly counts: WatcherCounts = { seen: 0, pushed: 0, pushedBytes: 0, cached: 0, failed: 0, skipped: 0, pending: 0 }

  constructor(private readonly opts: WatcherOptions) {
    this.sink = opts.sink
    this.skipKeys = new Set(opts.skipKeyNames)
  }

  get hasSink(): boolean {
    return this.sink !== undefined
  }

  /**
   * Start watching the store, then snapshot it (what exists now is never pushed). Watching first:
   * a path finished during the snapshot still brings its lock event.
   */
  async start(): Promise<void> {
    this.fsWatcher = fs.watch(this.opts.storeDir, (_event, name) => {
      if (typeof name !== 'string' || !name.endsWith('.lock')) return
      const target = name.slice(0, -'.lock'.length)
      // A removed lock means Nix finished (or gave up on) the path; validity is checked later.
      if (!fs.existsSync(path.join(this.opts.storeDir, name))) this.consider(target)
    })
    this.fsWatcher.on('error', (err) => this.opts.info?.(`store watch error: ${err.message}`))
    this.known = StoreSnapshot.take(this.opts.storeDir)
  }

  /**
   * Every path seen so far settled (pushed, cached, failed) or waiting for a client. Lock events
   * can be lost (inotify drops events when its queue overflows, unannounced), so the drain looks
   * again: at `expected`, the paths a build realised, by name; without it, at the whole store,
   * which also finds the paths of plain `nix` commands but costs a read of every entry (~0.2 s
   * at 180,000 entries, seconds on a long-lived runner), too much for every `build`.
   */
  async drain(expected?: readonly string[]): Promise<void> {
    if (expected) this.lookAt(expected.map((p) => path.basename(p)))
    else this.lookAt(entries(this.opts.storeDir))
    await this.checkNow()
    if (this.sink) await this.sink.flush()
  }

  close(): void {
    clearTimeout(this.checkTimer)
    this.fsWatcher?.close()
    this.serve.close()
    this.sink?.kill()
  }

  /** The backlog recorded while no client existed (late bootstrap), for a final push elsewhere. */
  get waiting(): readonly string[] {
    return this.backlog
  }

  /** Of these store entries, those new since the start that no lock event brought. */
  private lookAt(names: Iterable<string>): void {
    for (const name of names) {
      if (!isPushCandidateName(name) || this.handled.has(name) || this.known?.has(name)) continue
      this.opts.debug?.(`no lock event seen for ${name}: checking it`)
      this.consider(name)
    }
  }

  private consider(name: string): void {
    if (!isPushCandidateName(name) || this.handled.has(name)) return
    this.candidates.add(name)
    // Idle: check at once (every millisecond counts towards time-to-cache); busy: gather.
    if (this.checksUnderWay === 0) void this.checkNow()
    else this.checkTimer ??= setTimeout(() => void this.checkNow(), CHECK_DELAY_MS)
  }

  private checkNow(): Promise<void> {
    clearTimeout(this.checkTimer)
    this.checkTimer = undefined
    const batch = [...this.candidates]
    this.candidates = new Set()
    // Claimed now: the events that follow a lock's removal must not queue the same path again.
    for (const name of batch) this.handled.add(name)
    // Serialised, so a drain waits for checks already under way.
    this.checksUnderWay++
    this.checking = this.checking
      .then(() => this.check(batch))
      .catch((err: unknown) => this.opts.info?.(`store check failed: ${err instanceof Error ? err.message : String(err)}`))
      .finally(() => this.checksUnderWay--)
    return this.checking
  }

  private async check(names: string[]): Promise<void> {
    if (names.length === 0) return
    const paths = names.map((n) => path.join(this.opts.storeDir, n))
    let infos: PathInfo[]
    try {
      infos = await this.validInfos(paths)
    } catch (err) {
      this.opts.info?.(`could not check new store paths: ${(err as Error).message}`)
      for (const name of names) this.handled.delete(name)
      return
    }
    const ours = this.opts.ours ? await this.opts.ours(infos.map((i) => i.path)) : undefined
    const toPush: string[] = []
    for (const info of infos) {
      if (ours && !ours.has(info.path)) {
        this.opts.debug?.(`another job's path, left to it: ${info.path}`)
        continue
      }
      this.counts.seen++
      const reason = this.skipReason(info)
      if (reason) {
        this.counts.skipped++
        this.opts.debug?.(`skipped (${reason}): ${info.path}`)
      } else toPush.push(info.path)
    }
    if (toPush.length > 0) await this.hand(toPush, new Map(infos.map((i) => [i.path, i.references])), new Map(infos.map((i) => [i.path, i.narSize ?? 0])))
    this.opts.onChange?.()
  }

  /** Path info of those of `paths` that are valid: from the open `nix-store --serve`, else from one-off processes. */
  private async validInfos(paths: string[]): Promise<PathInfo[]> {
    return (await this.servedInfos(paths)) ?? this.queriedInfos(paths)
  }

  /** Invalid paths are let go: a later lock event or a drain's look brings them back. */
  private notValid(p: string): void {
    this.opts.debug?.(`not valid (yet), skipped: ${p}`)
    this.handled.delete(path.basename(p))
  }

  /** Through the serve connection, no process started; undefined when it failed. */
  private async servedInfos(paths: string[]): Promise<PathInfo[] | undefined> {
    if (this.serveFailures >= SERVE_FAILURES_MAX) return undefined
    let served: ServedInfo[]
    try {
      served = await this.serve.pathInfos(paths)
    } catch (err) {
      const why = (err as Error).message
      if (++this.serveFailures < SERVE_FAILURES_MAX) this.opts.debug?.(`store query failed (${why}), asking nix path-info instead`)
      else this.opts.info?.(`store query failed ${SERVE_FAILURES_MAX} times (${why}): checking new paths with nix path-info from now on`)
      return undefined
    }
    const valid = new Set(served.map((i) => i.path))
    const invalid = paths.filter((p) => !valid.has(p))
    for (const p of invalid) this.notValid(p)
    // A nix-daemon behind the connection remembers "not valid" for the connection's life: start afresh.
    if (invalid.length > 0) this.serve.close()
    // Signed by a key we skip: substituted, or built here and signed by nix.conf's secret-key-files.
    // Only `nix path-info` tells which (`ultimate`); such paths are rare during a build.
    const unsure = served.filter((i) => !needsPush({ ...i, ultimate: false }, this.skipKeys)).map((i) => i.path)
    if (unsure.length > 0) this.opts.debug?.(`nix path-info: ${unsure.length} path(s) signed by a skipped key`)
    const built = new Set((await queryPathInfo(unsure)).filter((i) => i.ultimate).map((i) => i.path))
    return served.map((i) => ({ ...i, ultimate: built.has(i.path) }))
  }

  /**
   * One `nix path-info` (a removed lock almost always means a valid path); only when it fails
   * (Nix ≤ 2.18 refuses an invalid path) are the invalid ones sorted out first.
   */
  private async queriedInfos(paths: string[]): Promise<PathInfo[]> {
    this.opts.debug?.(`nix path-info: ${paths.length} path(s)`)
    const all = await queryPathInfo(paths).catch(() => undefined)
    const invalid = all
      ? new Set(paths.filter((p) => !all.some((i) => i.path === p && i.valid)))
      : await invalidPaths(paths)
    for (const p of invalid) this.notValid(p)
    if (all) return all.filter((i) => i.valid && !invalid.has(i.path))
    return queryPathInfo(paths.filter((p) => !invalid.has(p)))
  }

  private skipReason(info: PathInfo): string | undefined {
    if (this.opts.include && !this.opts.include.test(info.path)) return 'not matched by GREEDY_INCLUDE'
    if (this.opts.exclude?.test(info.path)) return 'matched by GREEDY_EXCLUDE'
    if (!needsPush(info, this.skipKeys)) return 'signed by the cache or an upstream cache'
    return undefined
  }

  private async hand(paths: string[], references: ReadonlyMap<string, readonly string[]>, sizes?: ReadonlyMap<string, number>): Promise<void> {
    if (!this.sink && this.opts.findSink) {
      this.backlog.push(...paths)
      this.counts.pending = this.backlog.length
      this.sink = await this.opts.findSink(paths)
      if (!this.sink) return
      this.opts.info?.(`push client ready: pushing the ${this.backlog.length} path(s) recorded before it existed`)
      paths = this.backlog
      this.backlog = []
    }
    if (!this.sink) return
    for (const p of paths) this.outstanding.set(p, sizes?.get(p) ?? 0)
    this.counts.pending = this.outstanding.size
    this.sink.add(paths, references)
  }

  /** The sink reports each path once; dependencies it pushed on its own count too. */
  settle(s: Settled): void {
    const bytes = this.outstanding.get(s.path) ?? 0
    const mine = this.outstanding.delete(s.path)
    if (s.status === 'pushed' && !this.pushedNames.has(path.basename(s.path))) {
      this.pushedNames.add(path.basename(s.path))
      this.counts.pushed++
      this.counts.pushedBytes = (this.counts.pushedBytes ?? 0) + bytes
    } else if (s.status === 'cached' && mine) {
      this.counts.cached++
    } else if (s.status === 'failed' && mine) {
      this.counts.failed++
      if (this.failures.size < MAX_FAILURES_KEPT) this.failures.set(s.path, s.error)
    }
    this.counts.pending = this.outstanding.size + this.backlog.length
    this.opts.onChange?.()
  }
}

/** An executable `bin/attic` inside one of these new store paths (the client being built). */
export async function findAtticClient(paths: readonly string[]): Promise<string | undefined> {
  for (const p of paths) {
    const bin = path.join(p, 'bin', 'attic')
    try {
      await access(bin, fs.constants.X_OK)
      return bin
    } catch {
      // not this one
    }
  }
  return undefined
}
