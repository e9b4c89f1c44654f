// lib/batcher.ts: which paths go to which push process, and when. `push` here is a recorder whose
// runs end when the test says so; the real sinks are tested against real caches elsewhere.
import { describe, expect, it } from 'vitest'
import { BATCH_MAX, Batcher, LANE_MIN } from '../../lib/batcher.js'

function recorder() {
  const runs: Array<{ batch: string[]; end: () => void; ended: boolean }> = []
  const push = (batch: string[]) =>
    new Promise<void>((resolve) => {
      const run = { batch, ended: false, end: () => ((run.ended = true), resolve()) }
      runs.push(run)
    })
  const live = () => runs.filter((r) => !r.ended)
  return { runs, push, live }
}
const tick = () => new Promise((r) => setImmediate(r))
const names = (n: number, prefix = 'p') => Array.from({ length: n }, (_, i) => `/nix/store/${prefix}${i}`)

describe('Batcher', () => {
  it('a path that comes alone goes at once; paths that come while a run is under way wait for it (one lane)', async () => {
    const r = recorder()
    const b = new Batcher(r.push)
    b.add(['/nix/store/a'])
    expect(r.runs.map((x) => x.batch)).toEqual([['/nix/store/a']]) // started synchronously, no timer
    b.add(['/nix/store/b', '/nix/store/c'])
    expect(r.runs).toHaveLength(1)
    const flushed = b.flush()
    r.runs[0]!.end()
    await tick()
    expect(r.runs.map((x) => x.batch)).toEqual([['/nix/store/a'], ['/nix/store/b', '/nix/store/c']]) // the drain skips the gap
    r.runs[1]!.end()
    await flushed
  })

  it('several lanes: a backlog is split into disjoint runs started together, none smaller than LANE_MIN', async () => {
    const r = recorder()
    const b = new Batcher(r.push, 4)
    const first = names(1, 'first')
    b.add(first) // the first run, alone
    const backlog = names(5 * LANE_MIN)
    b.add(backlog)
    const flushed = b.flush()
    await tick()
    const started = r.runs.slice(1).map((x) => x.batch)
    expect(started).toHaveLength(3) // 4 lanes, one busy
    for (const batch of started) expect(batch.length).toBeGreaterThanOrEqual(LANE_MIN)
    for (const x of r.live()) x.end()
    await tick()
    for (const x of r.live()) x.end()
    await flushed
    const all = r.runs.flatMap((x) => x.batch)
    expect(all.sort()).toEqual([...first, ...backlog].sort()) // each path exactly once
  })

  it('a path never runs beside a run that holds one of its references; in one round it joins its reference', async () => {
    const r = recorder()
    const b = new Batcher(r.push, 4)
    b.add(['/nix/store/lib'])
    const refs = new Map<string, string[]>([
      ['/nix/store/app', ['/nix/store/lib', '/nix/store/app']], // self-references are ignored
      ['/nix/store/app-wrapper', ['/nix/store/app']],
      ['/nix/store/x', ['/nix/store/y']],
    ])
    const others = names(2 * LANE_MIN)
    b.add(['/nix/store/app', '/nix/store/y', '/nix/store/app-wrapper', '/nix/store/x', ...others], refs)
    const flushed = b.flush()
    await tick()
    const second = r.runs.slice(1).map((x) => x.batch)
    // lib is being pushed: app and what references it wait; y and x go, together.
    expect(second.flat()).not.toContain('/nix/store/app')
    expect(second.flat()).not.toContain('/nix/store/app-wrapper')
    expect(second.find((batch) => batch.includes('/nix/store/y'))).toContain('/nix/store/x')
    for (const x of r.live()) x.end()
    await tick()
    const third = r.runs.slice(1 + second.length).map((x) => x.batch)
    expect(third).toEqual([['/nix/store/app', '/nix/store/app-wrapper']])
    for (const x of r.live()) x.end()
    await flushed
  })

  it('paths handed over before their references (one check lists them by hash) still go after them, never beside them', async () => {
    const r = recorder()
    const b = new Batcher(r.push, 4)
    // c2 -> c1 -> f0, listed dependants first, among enough others to fill every lane.
    const refs = new Map([['/nix/store/c2', ['/nix/store/c1']], ['/nix/store/c1', ['/nix/store/f0']]])
    b.add(['/nix/store/c2', '/nix/store/c1', ...names(3 * LANE_MIN), '/nix/store/f0'], refs)
    // The first round starts at once (nothing ran before): all lanes, one batch each.
    expect(r.runs.length).toBeGreaterThan(1)
    const batchOf = (p: string) => r.runs.findIndex((x) => x.batch.includes(p))
    expect(batchOf('/nix/store/c1')).toBe(batchOf('/nix/store/f0'))
    expect(batchOf('/nix/store/c2')).toBe(batchOf('/nix/store/c1'))
    const chain = r.runs[batchOf('/nix/store/f0')]!.batch.filter((p) => /\/(f0|c1|c2)$/.test(p))
    expect(chain).toEqual(['/nix/store/f0', '/nix/store/c1', '/nix/store/c2'])
    const flushed = b.flush()
    for (const x of r.live()) x.end()
    await flushed
  })

  it('no run takes more than BATCH_MAX paths', async () => {
    const r = recorder()
    const b = new Batcher(r.push)
    b.add(names(BATCH_MAX + 5))
    const flushed = b.flush()
    expect(r.runs[0]!.batch).toHaveLength(BATCH_MAX)
    r.runs[0]!.end()
    await tick()
    expect(r.runs[1]!.batch).toHaveLength(5)
    r.runs[1]!.end()
    await flushed
  })

  it('several lanes: a lane that frees while the others are busy takes its share of the backlog, not all of it', async () => {
    const r = recorder()
    const b = new Batcher(r.push, 8)
    b.add(names(8 * LANE_MIN, 'early')) // every lane busy
    expect(r.live()).toHaveLength(8)
    const backlog = names(150)
    b.add(backlog) // a fast build: the rest of a fan arrives at once
    const flushed = b.flush()
    r.live()[0]!.end()
    await tick()
    const next = r.runs[8]!.batch
    expect(next.length).toBeLessThanOrEqual(Math.ceil(150 / 8))
    expect(next.length).toBeGreaterThanOrEqual(LANE_MIN)
    while (r.live().length > 0) {
      for (const x of r.live()) x.end()
      await tick()
    }
    await flushed
    expect(r.runs.flatMap((x) => x.batch).filter((p) => p.includes('/p')).sort()).toEqual([...backlog].sort()) // each once
  })
})
