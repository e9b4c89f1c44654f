// The pure part of pruning: sizes, the eviction order, and prune() on folders laid out as Nix
// writes a file:// cache (local-binary-cache-store.cc). Real caches made by `nix copy` are in test/prune.test.ts.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { closureIn, fileCacheDir, formatBytes, INDEX_FILE, LOCK_FILE, parseNarInfo, parseSize, planEviction, prune, type CachedPath } from '../../lib/prune.js'
import { tmpDir } from '../helpers.js'

const h = (c: string) => c.repeat(32)
const entry = (c: string, refs: string[], lastUsed: number, nar = `nar/${c}.nar`, bytes = 100): CachedPath => ({ hash: h(c), references: refs.map(h), nar, bytes, lastUsed })
const cache = (...es: CachedPath[]) => new Map(es.map((e) => [e.hash, e]))
const nars = (m: Map<string, CachedPath>, bytes = 1000) => new Map([...m.values()].map((e) => [e.nar!, bytes]))

describe('sizes', () => {
  it('parses what users write and rejects the rest', () => {
    expect(parseSize('500M')).toBe(500 * 2 ** 20)
    expect(parseSize('1.5GiB')).toBe(1.5 * 2 ** 30)
    expect(parseSize('2 GB')).toBe(2e9)
    expect(parseSize('10KiB')).toBe(10240)
    expect(parseSize('7B')).toBe(7)
    expect(parseSize('7')).toBe(7)
    for (const bad of ['', 'lots', '0', '0.1', 'G', '1 X', '1GiBs']) expect(parseSize(bad)).toBeUndefined()
  })
  it('prints bytes as a reader wants them', () => {
    expect(formatBytes(512)).toBe('512 B')
    expect(formatBytes(3 * 2 ** 20)).toBe('3.0 MiB')
    expect(formatBytes(1.25 * 2 ** 30)).toBe('1.3 GiB')
  })
  it('reads the folder of a file:// URL as Nix does, parameters off', () => {
    expect(fileCacheDir('file:///builds/p/.nix-cache?compression=zstd&secret-key=/k')).toBe('/builds/p/.nix-cache')
    expect(fileCacheDir('https://cache.example.org')).toBeUndefined()
  })
})

describe('planEviction', () => {
  it('leaves a cache under its budget alone', () => {
    const m = cache(entry('a', [], 1), entry('b', [], 2))
    expect(planEviction(m, nars(m), 2200, 2200, new Set())).toEqual({ victims: [], freed: 0 })
  })

  it('evicts the least recently used first, and stops as soon as the cache fits', () => {
    const m = cache(entry('a', [], 30), entry('b', [], 10), entry('c', [], 20))
    const plan = planEviction(m, nars(m), 3300, 2200, new Set())
    expect(plan.victims).toEqual([{ hash: h('b'), nar: 'nar/b.nar' }])
    expect(plan.freed).toBe(1100)
  })

  it('never evicts what the job keeps, even when the budget cannot be met', () => {
    const m = cache(entry('a', [], 1), entry('b', [], 2))
    const plan = planEviction(m, nars(m), 2200, 100, new Set([h('a')]))
    expect(plan.victims.map((v) => v.hash)).toEqual([h('b')])
  })

  it('a path used through its referrer counts as used then; referrers always go before what they reference', () => {
    // lib (old) is referenced by app (recent): lib is as recent as app. old-tool is older than both.
    const m = cache(entry('l', [], 1), entry('p', ['l'], 50), entry('t', [], 10), entry('q', ['l'], 5))
    const plan = planEviction(m, nars(m), 4400, 1100, new Set())
    expect(plan.victims.map((v) => v.hash)).toEqual([h('q'), h('t'), h('p')])
    // Equal recency: the referrer first, so the cache is closed after every single eviction.
    const tie = cache(entry('x', [], 7), entry('y', ['x'], 7), entry('z', ['y'], 7))
    expect(planEviction(tie, nars(tie), 3300, 0, new Set()).victims.map((v) => v.hash)).toEqual([h('z'), h('y'), h('x')])
  })

  it('a NAR two narinfos name goes with the last of them, and counts once', () => {
    const m = cache(entry('a', [], 1, 'nar/same.nar'), entry('b', [], 2, 'nar/same.nar'), entry('c', [], 3))
    const plan = planEviction(m, new Map([['nar/same.nar', 1000], ['nar/c.nar', 1000]]), 2300, 1100, new Set())
    expect(plan.victims).toEqual([{ hash: h('a') }, { hash: h('b'), nar: 'nar/same.nar' }])
    expect(plan.freed).toBe(1200)
  })

  it('the closure of kept paths follows the references the narinfos name', () => {
    const m = cache(entry('a', ['b'], 1), entry('b', ['c'], 1), entry('c', [], 1), entry('d', ['c'], 1))
    expect(closureIn(m, [h('a')])).toEqual(new Set([h('a'), h('b'), h('c')]))
    expect(closureIn(m, [h('z')])).toEqual(new Set())
  })
})

describe('parseNarInfo', () => {
  it('reads the fields Nix writes (nar-info.cc)', () => {
    const text = `StorePath: /nix/store/${h('a')}-app\nURL: nar/0abc.nar.zst\nCompression: zstd\nFileHash: sha256:0abc\nFileSize: 120\nNarHash: sha256:1def\nNarSize: 400\nReferences: ${h('a')}-app ${h('b')}-lib\nDeriver: ${h('d')}-app.drv\nSig: k-1:abc==\n`
    expect(parseNarInfo(text)).toEqual({ storePath: `/nix/store/${h('a')}-app`, url: 'nar/0abc.nar.zst', references: [`${h('a')}-app`, `${h('b')}-lib`] })
    expect(parseNarInfo('StorePath: /nix/store/x\nURL: nar/y.nar\nReferences: \n').references).toEqual([])
  })
})

/** A folder laid out as Nix writes a file:// cache: narinfos named by hash, NARs under nar/. */
function writeCache(dir: string, paths: Array<{ c: string; refs?: string[]; narBytes?: number; mtime?: number }>): void {
  fs.mkdirSync(path.join(dir, 'nar'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'nix-cache-info'), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n')
  for (const p of paths) {
    const refs = (p.refs ?? []).map((r) => `${h(r)}-${r}`).join(' ')
    const narinfo = path.join(dir, `${h(p.c)}.narinfo`)
    fs.writeFileSync(narinfo, `StorePath: /nix/store/${h(p.c)}-${p.c}\nURL: nar/${p.c}.nar\nCompression: none\nReferences: ${refs}\n`)
    fs.writeFileSync(path.join(dir, 'nar', `${p.c}.nar`), Buffer.alloc(p.narBytes ?? 1000))
    if (p.mtime) fs.utimesSync(narinfo, p.mtime / 1000, p.mtime / 1000)
  }
}
const present = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.narinfo')).map((f) => f[0]).sort().join('')
const quiet = { log: () => undefined, warn: () => undefined }

describe('prune on a folder', () => {
  it('records uses in the index, and a later prune ranks by them, not by file times', async () => {
    const dir = tmpDir()
    writeCache(dir, [{ c: 'a', mtime: 1000 }, { c: 'b', mtime: 2000 }, { c: 'c', mtime: 3000 }])
    const warnings: string[] = []
    // No index yet, and no budget: nothing ranked, so no warning; the index starts from file times. a was substituted by this job: used now.
    const first = await prune({ dir, keep: [], used: [`/nix/store/${h('a')}-a`], log: () => undefined, warn: (m) => warnings.push(m), now: 10_000 })
    expect(warnings).toEqual([])
    expect(first).toMatchObject({ ranking: 'mtime', evictedPaths: 0 })
    const index = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), 'utf8'))
    expect(index).toEqual({ version: 1, used: { [h('a')]: 10_000, [h('b')]: 2000, [h('c')]: 3000 } })
    // Two paths too many: b and c go, a (used last) stays.
    const second = await prune({ dir, maxSize: first.sizeBefore - 1500, keep: [], used: [], ...quiet, now: 11_000 })
    expect(second).toMatchObject({ ranking: 'index', evictedPaths: 2 })
    expect(present(dir)).toBe('a')
    expect(fs.readdirSync(path.join(dir, 'nar'))).toEqual(['a.nar'])
    // The size after is the folder's, index included.
    const onDisk = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).reduce((n, e) => n + fs.statSync(path.join(e.parentPath, e.name)).size, 0)
    expect(second.sizeAfter).toBe(onDisk)
    expect(fs.existsSync(path.join(dir, LOCK_FILE))).toBe(false)
  })

  it('no index (the first push: information), or an unreadable one (a warning), when it comes to ranking, which then follows modification times', async () => {
    const fresh = tmpDir()
    writeCache(fresh, [{ c: 'a', mtime: 3000 }, { c: 'b', mtime: 1000 }])
    const said: string[] = []
    const warned: string[] = []
    await prune({ dir: fresh, maxSize: 1500, keep: [], used: [], log: (m) => said.push(m), warn: (m) => warned.push(m), now: 5000 })
    expect(warned).toEqual([])
    expect(said.filter((m) => m.includes('index'))).toEqual([expect.stringMatching(/the cache has no index of last uses \(greedy-nix-index.json\) yet: ranking the cache's paths by modification time/)])
    expect(present(fresh)).toBe('a')

    const dir = tmpDir()
    writeCache(dir, [{ c: 'a', mtime: 3000 }, { c: 'b', mtime: 1000 }, { c: 'c', mtime: 2000 }])
    fs.writeFileSync(path.join(dir, INDEX_FILE), '{"version":1,"used":{')
    const warnings: string[] = []
    const r = await prune({ dir, maxSize: 1500, keep: [], used: [], log: () => undefined, warn: (m) => warnings.push(m), now: 5000 })
    expect(warnings).toEqual([expect.stringMatching(/index .*greedy-nix-index.json is unreadable \(.*\): ranking the cache's paths by modification time$/)])
    expect(r.ranking).toBe('mtime')
    expect(present(dir)).toBe('a')
  })

  it('keeps the whole closure of the job results and evicts what references nothing kept', async () => {
    const dir = tmpDir()
    writeCache(dir, [{ c: 'l', mtime: 1 }, { c: 'r', refs: ['l'], mtime: 2 }, { c: 'o', refs: ['l'], mtime: 3 }, { c: 'x', mtime: 4 }])
    const r = await prune({ dir, maxSize: 1, keep: [`/nix/store/${h('r')}-r`], used: [], ...quiet, now: 10 })
    expect(present(dir)).toBe('lr')
    expect(r).toMatchObject({ evictedPaths: 2, kept: 2 })
  })

  it('a narinfo whose NAR is gone goes first, with what references it; an old NAR no narinfo names goes too', async () => {
    const dir = tmpDir()
    writeCache(dir, [{ c: 'a', mtime: 1 }, { c: 'b', refs: ['a'], mtime: 9e12 }, { c: 'c', mtime: 2 }])
    fs.rmSync(path.join(dir, 'nar', 'a.nar'))
    fs.writeFileSync(path.join(dir, 'nar', 'orphan.nar'), Buffer.alloc(5000))
    fs.utimesSync(path.join(dir, 'nar', 'orphan.nar'), 1, 1)
    fs.writeFileSync(path.join(dir, 'nar', 'uploading.nar'), Buffer.alloc(5000)) // just written: maybe its narinfo is next
    // Nix's temporary files (upsertFile: `<file>.tmp.<pid>.<n>`): one a killed upload left long ago, one being written.
    fs.writeFileSync(path.join(dir, 'nar', 'killed.nar.zst.tmp.4242.1'), Buffer.alloc(300))
    fs.utimesSync(path.join(dir, 'nar', 'killed.nar.zst.tmp.4242.1'), 1, 1)
    fs.writeFileSync(path.join(dir, 'nar', 'live.nar.zst.tmp.4243.1'), Buffer.alloc(300))
    const r = await prune({ dir, maxSize: 7600, keep: [], used: [], ...quiet, now: Date.now() })
    expect(r.orphans).toBe(2)
    expect(present(dir)).toBe('c')
    expect(fs.readdirSync(path.join(dir, 'nar')).sort()).toEqual(['c.nar', 'live.nar.zst.tmp.4243.1', 'uploading.nar'])
  })

  it('takes over a lock left by a process that is gone, and waits for a live one', async () => {
    const dir = tmpDir()
    writeCache(dir, [{ c: 'a' }])
    fs.writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: 2 ** 22 + 7, host: (await import('node:os')).hostname(), at: Date.now() }))
    await prune({ dir, keep: [], used: [], ...quiet })
    expect(fs.existsSync(path.join(dir, LOCK_FILE))).toBe(false)
    // A live holder (this very process, as another job would be): the prune gives up after its timeout, naming the lock.
    fs.writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: process.pid, host: (await import('node:os')).hostname(), at: Date.now() }))
    const said: string[] = []
    await expect(prune({ dir, keep: [], used: [], log: (m) => said.push(m), warn: () => undefined, lockTimeoutMs: 500 })).rejects.toThrow(/another job holds .*greedy-nix.lock/)
    expect(said).toEqual([expect.stringContaining('waiting for another job')])
  })
})
