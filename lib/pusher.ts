// Push sinks: where the watcher hands valid store paths. Each sink reports every path it was
// given exactly once as pushed, already cached, or failed, so a drain knows when it is done.
import { setTimeout as sleep } from 'node:timers/promises'
import { pushPaths, type PushOutcome } from './attic.js'
import { Batcher } from './batcher.js'
import { describeFailure, errorLine } from './exec.js'
import { copyTo, storeDir, type CopyResult } from './nix.js'
import { backoffMs, classifyError, MAX_ATTEMPTS, RetryBudget } from './retry.js'

export type Settled =
  | { path: string; status: 'pushed' }
  /** The cache already had it (or an upstream cache does): nothing to upload. */
  | { path: string; status: 'cached' }
  | { path: string; status: 'failed'; error: string }

export interface PushSink {
  /** `references`, where known, lets a sink with several lanes keep dependants after their references. */
  add(paths: readonly string[], references?: ReadonlyMap<string, readonly string[]>): void
  /** Resolves when every path added so far is settled. */
  flush(): Promise<void>
  /** Stop at once; unsettled paths stay unsettled. */
  kill(): void
}

/** Bounds for one push run; generous, because a big NAR upload may legitimately take minutes. */
export interface SinkOptions {
  onSettled: (s: Settled) => void
  onWarn: (msg: string) => void
  /** Longest one `nix copy` / `attic push` run may take. */
  runTimeoutMs: number
  /** Each push process started, for GREEDY_DEBUG=1 (benchmarks count them). */
  debug?: (msg: string) => void
  /** Push processes at once (GREEDY_PUSH_JOBS); default 1. */
  lanes?: number
}

/** `nix copy --to URL`, in batches: one process per batch, not per path. */
export class NixCopySink implements PushSink {
  private readonly batcher: Batcher
  /** Ends the copies under way when the watcher stops: none may outlive it. */
  private readonly stopping = new AbortController()
  /**
   * Set by the first `nix copy` of this sink; the others wait until it has opened the cache. Nix
   * 2.8 registers a cache in its narinfo disk cache with `insert or replace`, which gives the row
   * a new id: copies that open a cache new to this user's Nix at once fail each other
   * ("constraint failed"; nar-info-disk-cache.cc `createCache`, 2.8.0; 2.24.15 looks for the row
   * first, in a transaction). With a nix-daemon, the build's lookups register it for root only.
   */
  private opened: Promise<void> | undefined

  constructor(
    private readonly url: string,
    private readonly opts: SinkOptions,
    private readonly env?: NodeJS.ProcessEnv,
  ) {
    this.batcher = new Batcher((batch) => this.copy(batch), opts.lanes)
  }

  add(paths: readonly string[], references?: ReadonlyMap<string, readonly string[]>): void {
    this.batcher.add(paths, references)
  }

  flush(): Promise<void> {
    return this.batcher.flush()
  }

  kill(): void {
    this.batcher.kill()
    this.stopping.abort()
  }

  /** One batch: retried whole while failures look transient; split to find the path a server refuses. */
  private async copy(batch: string[]): Promise<void> {
    const budget = new RetryBudget(batch.length)
    const copied = new Set<string>() // by any try: a failed try may have uploaded some paths whole
    for (;;) {
      if (this.stopping.signal.aborted) return
      this.opts.debug?.(`nix copy: ${batch.length} path(s)`)
      const r = await this.copyOnce(batch)
      if (this.stopping.signal.aborted) return // stopped: unsettled, not failed
      for (const p of r.copied) copied.add(p)
      if (r.code === 0) {
        for (const p of batch) this.opts.onSettled({ path: p, status: copied.has(p) ? 'pushed' : 'cached' })
        return
      }
      const error = describeFailure(r, 'nix copy', this.opts.runTimeoutMs)
      const { permanent } = classifyError(r.stderr)
      if (permanent && batch.length > 1) {
        // One refused path must not fail its neighbours: find it.
        for (const p of batch) await this.copy([p])
        return
      }
      if (permanent || !budget.failed(r.stderr)) {
        for (const p of batch) this.opts.onSettled({ path: p, status: 'failed', error })
        return
      }
      const delay = backoffMs(budget.nextTry - 1)
      this.opts.onWarn(`${error}; try ${budget.nextTry} of ${MAX_ATTEMPTS} for ${batch.length} path(s) in ${(delay / 1000).toFixed(1)}s`)
      await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => {})
    }
  }

  private async copyOnce(batch: string[]): Promise<CopyResult> {
    const options = { timeoutMs: this.opts.runTimeoutMs, env: this.env, signal: this.stopping.signal }
    if (this.opened) {
      await this.opened
      return copyTo(this.url, batch, options)
    }
    let open = () => {}
    this.opened = new Promise((resolve) => (open = resolve))
    // Released at its first copied path, or at its end (nothing to copy, or it failed).
    return copyTo(this.url, batch, { ...options, onCopying: open }).finally(open)
  }
}

/**
 * attic: one short `attic push CACHE paths…` per batch, as paths become valid. The client plans,
 * uploads and exits at once; `push --stdin` would hold each path 2–10 s before planning it
 * (attic client/src/push.rs, PushSession). Each path settles by its own ✅/❌ line: a refused path
 * fails alone, a path the client did not list was already cached, and only what failed for a
 * passing reason is tried again. A refusal of the whole cache (a token that cannot push, no such
 * cache) fails the batch and every later one at once, without running the client again.
 */
export class AtticSink implements PushSink {
  private readonly batcher: Batcher
  private readonly stopping = new AbortController()
  /** The server's answer when it refused the whole cache: nothing more is sent. */
  private refused: string | undefined

  constructor(
    private readonly client: string,
    private readonly cache: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly opts: SinkOptions,
  ) {
    this.batcher = new Batcher((batch) => this.push(batch), opts.lanes)
  }

  add(paths: readonly string[], references?: ReadonlyMap<string, readonly string[]>): void {
    if (paths.length > 0) this.batcher.add(paths, references)
  }

  flush(): Promise<void> {
    return this.batcher.flush()
  }

  kill(): void {
    this.batcher.kill()
    this.stopping.abort()
  }

  private async push(batch: string[]): Promise<void> {
    const budget = new RetryBudget(batch.length)
    let todo = batch
    for (;;) {
      if (this.stopping.signal.aborted) return
      if (this.refused) return this.fail(todo, this.refused)
      this.opts.debug?.(`attic push: ${todo.length} path(s)`)
      const r = await pushPaths(this.client, this.cache, todo, { env: this.env, timeoutMs: this.opts.runTimeoutMs, signal: this.stopping.signal, storeDir: storeDir() })
      if (this.stopping.signal.aborted) return // stopped: unsettled, not failed
      const pushed = new Set(r.pushed)
      const refused = new Map(r.failed.map((f) => [f.path, f.error]))
      const again: string[] = []
      for (const p of todo) {
        const error = refused.get(p)
        if (pushed.has(p)) this.opts.onSettled({ path: p, status: 'pushed' })
        else if (error !== undefined && classifyError(error).permanent) this.opts.onSettled({ path: p, status: 'failed', error })
        else if (error !== undefined) again.push(p)
        else if (r.exitCode === 0 || r.planned) this.opts.onSettled({ path: p, status: 'cached' })
        else again.push(p) // planning failed, or the client died or timed out before this path
      }
      if (again.length === 0) return
      const error = this.describe(r, again.length < todo.length ? refused.get(again[0]!) : undefined)
      const why = classifyError(error)
      if (why.permanent && why.cacheWide) {
        this.refused = error
        this.opts.onWarn(`attic refused the cache: ${error}; no more pushes are tried in this job`)
        return this.fail(again, error)
      }
      if (why.permanent && again.length > 1) {
        // One path the server will not plan (no longer valid, a bad name) must not fail its neighbours.
        for (const p of again) await this.push([p])
        return
      }
      if (why.permanent || !budget.failed(error)) return this.fail(again, error)
      const delay = backoffMs(budget.nextTry - 1)
      this.opts.onWarn(`${error}; try ${budget.nextTry} of ${MAX_ATTEMPTS} for ${again.length} path(s) in ${(delay / 1000).toFixed(1)}s`)
      await sleep(delay, undefined, { signal: this.stopping.signal }).catch(() => {})
      todo = again
    }
  }

  private fail(paths: readonly string[], error: string): void {
    for (const p of paths) this.opts.onSettled({ path: p, status: 'failed', error })
  }

  /** Why a run left paths unsettled, in the client's own words where it gave them. */
  private describe(r: PushOutcome, pathError: string | undefined): string {
    if (pathError) return `attic push: ${pathError}`
    if (r.timedOut) return `attic push timed out after ${this.opts.runTimeoutMs / 1000}s`
    if (r.exitCode === 127) return `attic push could not be started: ${errorLine(r.stderr)}`
    return `attic push failed (${r.exitCode === null ? 'killed' : `exit ${r.exitCode}`}): ${r.error ?? errorLine(r.stderr)}`
  }
}
