// Push sinks: where the watcher hands valid store paths. Each sink reports every path it was
// given exactly once as pushed, already cached, or failed, so a drain knows when it is done.
import { setTimeout as sleep } from 'node:timers/promises'
import { AtticPushSession, pushPaths, type PushLine } from './attic.js'
import { describeFailure, errorLine } from './exec.js'
import { copyTo } from './nix.js'
import { backoffMs, classifyError, MAX_ATTEMPTS, RetryBudget } from './retry.js'

export type Settled =
  | { path: string; status: 'pushed' }
  /** The cache already had it (or an upstream cache does): nothing to upload. */
  | { path: string; status: 'cached' }
  | { path: string; status: 'failed'; error: string }

export interface PushSink {
  add(paths: readonly string[]): void
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
}

/** The most paths one push process takes. */
const BATCH_MAX = 64
/**
 * The least time between the starts of two push processes. A path that comes alone goes at once;
 * a stream of small paths (thousands of tiny derivations) goes in batches, at most four processes
 * a second, instead of one `nix copy` per path competing with the build for CPU.
 */
const MIN_GAP_MS = 250

/**
 * Hands paths to `push` one batch at a time, in the order they became valid (dependencies before
 * dependants): never more than one push process, and never two starts closer than MIN_GAP_MS.
 */
class Batcher {
  private pending: string[] = []
  private running: Promise<void> | undefined
  private timer: NodeJS.Timeout | undefined
  private lastStart = -Infinity

  /** `push` settles every path it is given and never rejects. */
  constructor(private readonly push: (batch: string[]) => Promise<void>) {}

  add(paths: readonly string[]): void {
    this.pending.push(...paths)
    this.next()
  }

  /** Resolves when every path added so far went through `push`; a drain does not wait for the gap. */
  async flush(): Promise<void> {
    for (;;) {
      if (!this.running && this.pending.length > 0) this.start()
      if (!this.running) return
      await this.running
    }
  }

  kill(): void {
    clearTimeout(this.timer)
    this.pending = []
  }

  private next(): void {
    if (this.running || this.timer || this.pending.length === 0) return
    const wait = this.lastStart + MIN_GAP_MS - performance.now()
    if (wait > 0) this.timer = setTimeout(() => this.start(), wait)
    else this.start()
  }

  private start(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.running || this.pending.length === 0) return
    this.lastStart = performance.now()
    const batch = this.pending.splice(0, BATCH_MAX)
    this.running = this.push(batch).finally(() => {
      this.running = undefined
      this.next()
    })
  }
}

/** `nix copy --to URL`, in batches: one process per batch, not per path. */
export class NixCopySink implements PushSink {
  private readonly batcher = new Batcher((batch) => this.copy(batch))
  /** Ends the copies under way when the watcher stops: none may outlive it. */
  private readonly stopping = new AbortController()

  constructor(
    private readonly url: string,
    private readonly opts: SinkOptions,
    private readonly env?: NodeJS.ProcessEnv,
  ) {}

  add(paths: readonly string[]): void {
    this.batcher.add(paths)
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
      const r = await copyTo(this.url, batch, { timeoutMs: this.opts.runTimeoutMs, env: this.env, signal: this.stopping.signal })
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
}

/**
 * attic: one long-lived `attic push --stdin` session uploads paths as they arrive. A flush ends
 * the session (attic finishes uploads only at EOF); the next path starts a new one. Paths a
 * session could not settle go through plain `attic push` batches. When a session dies on its
 * own (an old client without --stdin, a crash), the sink switches to batches for good, at once.
 */
export class AtticSink implements PushSink {
  private session: AtticPushSession | undefined
  private inSession = new Set<string>()
  private chain: Promise<void> = Promise.resolve()
  private streaming = true
  private readonly ending = new Set<AtticPushSession>()
  private readonly stopping = new AbortController()
  private readonly batcher = new Batcher((batch) => this.pushBatch(batch))

  constructor(
    private readonly client: string,
    private readonly cache: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly opts: SinkOptions,
  ) {}

  add(paths: readonly string[]): void {
    if (paths.length === 0) return
    if (!this.streaming) return this.batcher.add(paths)
    this.session ??= this.openSession()
    for (const p of paths) this.inSession.add(p)
    this.session.add(paths) // if the client is gone, its exit handler moves these paths to batches
  }

  async flush(): Promise<void> {
    this.chain = this.chain.then(() => this.endSession())
    await this.chain
    await this.batcher.flush()
  }

  kill(): void {
    this.session?.kill()
    for (const s of this.ending) s.kill()
    this.batcher.kill()
    this.stopping.abort()
  }

  private openSession(): AtticPushSession {
    const session = new AtticPushSession(this.client, this.cache, this.env, (line) => this.onLine(line))
    void session.exited.then((code) => {
      if (session.finishing || this.session !== session) return
      this.session = undefined
      this.streaming = false
      const rest = [...this.inSession]
      this.inSession = new Set()
      const why = errorLine(session.stderr) || `exit ${code}`
      this.opts.onWarn(`attic push --stdin ended on its own (${why}); pushing in batches from now on`)
      this.batcher.add(rest)
    })
    return session
  }

  private onLine(line: PushLine): void {
    if (line.ok) {
      this.inSession.delete(line.path)
      this.opts.onSettled({ path: line.path, status: 'pushed' })
    } else if (classifyError(line.error).permanent) {
      // The server refused it (401, 403, 413, ...): another try gets the same answer.
      this.inSession.delete(line.path)
      this.opts.onSettled({ path: line.path, status: 'failed', error: line.error })
    } else {
      // Keep it: it is retried once in a batch when the session ends.
      this.opts.onWarn(`attic push: ${line.path}: ${line.error}`)
    }
  }

  private async endSession(): Promise<void> {
    const session = this.session
    if (!session) return
    this.session = undefined
    this.ending.add(session) // still uploading: kill() must reach it too
    const r = await session.finish(this.opts.runTimeoutMs)
    this.ending.delete(session)
    const rest = [...this.inSession]
    this.inSession = new Set()
    if (rest.length === 0) return
    if (r.exitCode === 0) {
      // attic prints nothing for paths the server already has or that an upstream cache signed.
      for (const p of rest) this.opts.onSettled({ path: p, status: 'cached' })
      return
    }
    const why = r.timedOut ? `timed out after ${this.opts.runTimeoutMs / 1000}s` : `exit ${r.exitCode}`
    this.opts.onWarn(`attic push --stdin ended (${why}); retrying ${rest.length} path(s) in one batch`)
    this.batcher.add(rest)
  }

  /** `attic push CACHE paths…`; each path settles by its ✅/❌ line, or by the exit code. */
  private async pushBatch(batch: string[]): Promise<void> {
    if (this.stopping.signal.aborted) return
    const r = await pushPaths(this.client, this.cache, batch, { env: this.env, timeoutMs: this.opts.runTimeoutMs, signal: this.stopping.signal })
    if (this.stopping.signal.aborted) return // stopped: unsettled, not failed
    const done = new Set(r.pushed)
    const errors = new Map(r.failed.map((f) => [f.path, f.error]))
    for (const p of batch) {
      if (done.has(p)) this.opts.onSettled({ path: p, status: 'pushed' })
      else if (r.exitCode === 0) this.opts.onSettled({ path: p, status: 'cached' })
      else {
        const error = errors.get(p) ?? (r.timedOut ? `attic push timed out after ${this.opts.runTimeoutMs / 1000}s` : `attic push exit ${r.exitCode}: ${errorLine(r.stderr)}`)
        this.opts.onSettled({ path: p, status: 'failed', error })
      }
    }
  }
}
