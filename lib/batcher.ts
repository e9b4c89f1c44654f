// When and in which groups paths go to push processes: a path that comes alone goes at once, a
// stream goes in batches, and a slow (remote) cache gets several processes at once, each with
// its own paths, so that its latency does not set the pace.

/** The most paths one push process takes. */
export const BATCH_MAX = 128
/**
 * The least time between two rounds of process starts. Each process start costs a wide build of
 * tiny derivations ~50 ms of wall time on 2 cores (measured on a fan of 300: four pushes a second
 * made the build 1.7 × slower, one a second 1.1 ×; docs/BENCHMARKS.md), so a stream of paths goes
 * in batches: with one lane, while each round finds more than one path waiting, the gap doubles
 * up to MAX_GAP_MS, and a round of one path brings it back down.
 */
export const MIN_GAP_MS = 500
export const MAX_GAP_MS = 2000
/**
 * With several lanes, the fewest paths worth a process of their own. `nix copy` uploads one path
 * after another (Nix 2.8 `Store::addMultipleToStore` reads them from one stream; 2.24 runs a
 * pool of as many threads as cores), three round trips each, so against a cache 100 ms away one
 * process moves ~3 paths a second on 2.8, ~6 on 2.24; more processes, each with its own paths,
 * multiply that.
 */
export const LANE_MIN = 8

/**
 * Hands paths to `push` in the order they became valid (dependencies before dependants), at most
 * `lanes` runs at once. A path never goes to a run while one of its references is in another
 * run under way or still held: each run uploads what its paths reference, so two runs must not
 * share a reference, and a cache never shows a path before what it references.
 */
export class Batcher {
  private pending: string[] = []
  private readonly refs = new Map<string, readonly string[]>()
  private readonly inFlight = new Set<string>()
  private readonly running = new Set<Promise<void>>()
  private timer: NodeJS.Timeout | undefined
  private lastStart = -Infinity
  private gap = MIN_GAP_MS

  /** `push` settles every path it is given and never rejects. */
  constructor(
    private readonly push: (batch: string[]) => Promise<void>,
    private readonly lanes = 1,
  ) {}

  /** `references`: what each path references, where known (the watcher knows it from its check). */
  add(paths: readonly string[], references?: ReadonlyMap<string, readonly string[]>): void {
    for (const p of paths) {
      const r = references?.get(p)?.filter((ref) => ref !== p)
      if (r && r.length > 0) this.refs.set(p, r)
    }
    this.pending.push(...paths)
    this.next()
  }

  /** Resolves when every path added so far went through `push`; a drain does not wait for the gap. */
  async flush(): Promise<void> {
    for (;;) {
      this.startRound()
      if (this.running.size === 0) return
      await Promise.race(this.running)
    }
  }

  kill(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.pending = []
  }

  private next(): void {
    if (this.timer || this.pending.length === 0 || this.running.size >= this.lanes) return
    const wait = this.lastStart + this.gap - performance.now()
    if (wait > 0) this.timer = setTimeout(() => this.startRound(), wait)
    else this.startRound()
  }

  /** Starts runs on the free lanes with the paths that may go now. */
  private startRound(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    const free = this.lanes - this.running.size
    if (free <= 0 || this.pending.length === 0) return
    const batches = this.take(Math.min(free, Math.ceil(this.pending.length / LANE_MIN)))
    if (batches.length === 0) return
    this.lastStart = performance.now()
    const taken = batches.reduce((n, b) => n + b.length, 0)
    // One lane (a local cache): spare the build's CPU. Several (a remote cache): its latency
    // dominates, so rounds keep coming at the least gap and batches stay small.
    this.gap = this.lanes === 1 && taken > 1 ? Math.min(this.gap * 2, MAX_GAP_MS) : MIN_GAP_MS
    for (const batch of batches) this.run(batch)
  }

  /**
   * Up to `count` batches from the pending paths, in order. A path joins the batch of its
   * references taken in this round; it is held while a reference is in a run under way, held, or
   * in two different batches. Batches are filled evenly otherwise.
   */
  private take(count: number): string[][] {
    const batches: string[][] = Array.from({ length: Math.max(1, count) }, () => [])
    // With several lanes a run takes its share of the backlog, not all of it: a lane that frees
    // while the others are busy would otherwise take up to BATCH_MAX paths and upload them one
    // after another (seen: a fan of 200 that Nix built in 3 s went as 8 small runs, then one of
    // 128 paths, ~50 s at 100 ms a request); what stays goes to the next lanes that free.
    const cap = this.lanes > 1 ? Math.min(BATCH_MAX, Math.max(LANE_MIN, Math.ceil(this.pending.length / this.lanes))) : BATCH_MAX
    const batchOf = new Map<string, number>()
    const held = new Set<string>()
    const rest: string[] = []
    for (const p of this.dependenciesFirst()) {
      let at: number | undefined
      let hold = false
      for (const r of this.refs.get(p) ?? []) {
        if (this.inFlight.has(r) || held.has(r)) hold = true
        const b = batchOf.get(r)
        if (b !== undefined) {
          if (at !== undefined && at !== b) hold = true
          at = b
        }
        if (hold) break
      }
      if (!hold) {
        at ??= batches.reduce((best, b, i) => (b.length < batches[best]!.length ? i : best), 0)
        if (batches[at]!.length >= cap) hold = true
      }
      if (hold) {
        held.add(p)
        rest.push(p)
        continue
      }
      batches[at!]!.push(p)
      batchOf.set(p, at!)
    }
    this.pending = rest
    return batches.filter((b) => b.length > 0)
  }

  /**
   * The pending paths with each after those of its references that are pending too. One check
   * hands over what it found valid in Nix's order (sorted by hash), not in dependency order.
   */
  private dependenciesFirst(): string[] {
    const pending = new Set(this.pending)
    const placed = new Set<string>()
    const out: string[] = []
    for (const root of this.pending) {
      if (placed.has(root)) continue
      placed.add(root)
      // Depth first without recursion: a chain of thousands must not overflow the stack.
      const stack: Array<{ path: string; next: number }> = [{ path: root, next: 0 }]
      while (stack.length > 0) {
        const top = stack[stack.length - 1]!
        const refs = this.refs.get(top.path) ?? []
        if (top.next < refs.length) {
          const r = refs[top.next++]!
          if (pending.has(r) && !placed.has(r)) {
            placed.add(r)
            stack.push({ path: r, next: 0 })
          }
        } else {
          stack.pop()
          out.push(top.path)
        }
      }
    }
    return out
  }

  private run(batch: string[]): void {
    for (const p of batch) this.inFlight.add(p)
    const done: Promise<void> = this.push(batch).finally(() => {
      for (const p of batch) {
        this.inFlight.delete(p)
        this.refs.delete(p)
      }
      this.running.delete(done)
      this.next()
    })
    this.running.add(done)
  }
}
