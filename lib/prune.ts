// Keep a file:// binary cache within a size budget: the zero-server mode's answer to attic's
// retention and garbage collection. GitLab's `cache:` moves the whole folder into and out of
// every job, so a cache that only grows makes each job slower than the rebuilds it saves.
//
// The folder's layout and how Nix writes it (NixOS/nix 2.8.0 and 2.24.15, src/libstore/):
// - `<hash>.narinfo` names its NAR by `URL: nar/<filehash>.nar[.zst|.xz|…]`; `<hash>.ls` is a listing
//   when `write-nar-listing` is on (binary-cache-store.cc, nar-info.cc). A NAR is named by its
//   content, so two narinfos may share one, and an upload skips a NAR that exists already.
// - An upload writes the NAR, then the narinfo, each through `<file>.tmp.<pid>.<n>` and a rename
//   (local-binary-cache-store.cc, upsertFile): a NAR without a narinfo may be one in progress.
// - `nix copy` and substituters take a path as present when its narinfo exists (BinaryCacheStore::
//   isValidPathUncached): the narinfo goes first, then no one relies on the NAR; a path evicted
//   this way is uploaded again whole by the next job that has it.
import { randomBytes } from 'node:crypto'
import { readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { Session } from './session.js'
import { processAlive, processStartTime, writeJsonAtomic } from './state.js'

/** Sizes as users write them: plain bytes, K/M/G/T and KiB… (powers of 1024), KB/MB… (powers of 1000). */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?B)?|(B))?$/i.exec(text.trim())
  if (!m) return undefined
  const power = m[2] ? 'KMGT'.indexOf(m[2].toUpperCase()) + 1 : 0
  const base = m[3]?.toUpperCase() === 'B' ? 1000 : 1024
  const bytes = Math.floor(Number(m[1]) * base ** power)
  return bytes > 0 ? bytes : undefined
}

/** 1234567 → "1.2 MiB": what the summary prints. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`
}

/** The folder of a `file://` store URL, as Nix reads it: everything after the scheme, up to its parameters. */
export function fileCacheDir(url: string): string | undefined {
  return url.startsWith('file://') ? url.slice('file://'.length).split('?')[0] || undefined : undefined
}

/** The index of last uses, in the cache folder so that it travels with it. */
export const INDEX_FILE = 'greedy-nix-index.json'
/** Held while a job records uses or prunes: several jobs of one runner may share the folder. */
export const LOCK_FILE = 'greedy-nix.lock'

/** One store path in the cache, by the 32-character hash its narinfo is named after. */
export interface CachedPath {
  hash: string
  /** Hashes of the paths it references (itself excluded). */
  references: string[]
  /** Its NAR file, relative to the cache (`nar/….nar.zst`); undefined when the narinfo names none. */
  nar?: string
  /** Bytes of its narinfo and listing (the NAR is counted apart: it may be shared). */
  bytes: number
  /** When a job last pushed or substituted it (ms since the epoch). */
  lastUsed: number
}

export interface EvictionPlan {
  /**
   * Paths to evict, in a safe order: every path after all paths that reference it. `nar` is set
   * on the last path that names a NAR: it goes with it.
   */
  victims: Array<{ hash: string; nar?: string }>
  freed: number
}

/**
 * Which paths to evict so that `total` bytes come down to `budget`: the least recently used
 * first, never one in `keep` (closed under references by the caller). A path counts as used
 * whenever a path that references it was used (substituting that one fetches it too), so every
 * referrer is evicted before what it references: the cache stays closed at every step, for a
 * reader and for a job that stops halfway.
 */
export function planEviction(paths: ReadonlyMap<string, CachedPath>, narBytes: ReadonlyMap<string, number>, total: number, budget: number, keep: ReadonlySet<string>): EvictionPlan {
  const plan: EvictionPlan = { victims: [], freed: 0 }
  if (total <= budget) return plan
  const referrers = referrersOf(paths)
  // Referrers before what they reference (Kahn's order over the references).
  const waiting = new Map([...paths.keys()].map((h) => [h, referrers.get(h)?.length ?? 0]))
  const order: string[] = [...paths.keys()].filter((h) => waiting.get(h) === 0)
  for (let i = 0; i < order.length; i++) {
    for (const r of paths.get(order[i]!)!.references) {
      const left = (waiting.get(r) ?? 0) - 1
      waiting.set(r, left)
      if (left === 0) order.push(r)
    }
  }
  const rank = new Map(order.map((h, i) => [h, i]))
  const used = new Map<string, number>()
  for (const h of order) {
    // A path that thousands reference (a libc) has thousands of referrers: no spread into Math.max.
    used.set(h, (referrers.get(h) ?? []).reduce((latest, r) => Math.max(latest, used.get(r) ?? latest), paths.get(h)!.lastUsed))
  }
  // A path on a reference cycle (not a valid store) gets no rank and is never evicted.
  const candidates = order.filter((h) => !keep.has(h)).sort((a, b) => used.get(a)! - used.get(b)! || rank.get(a)! - rank.get(b)!)
  const narUsers = new Map<string, number>()
  for (const p of paths.values()) if (p.nar) narUsers.set(p.nar, (narUsers.get(p.nar) ?? 0) + 1)
  for (const h of candidates) {
    if (total - plan.freed <= budget) break
    const p = paths.get(h)!
    const left = p.nar ? narUsers.get(p.nar)! - 1 : 1
    if (p.nar) narUsers.set(p.nar, left)
    plan.victims.push(left === 0 ? { hash: h, nar: p.nar } : { hash: h })
    plan.freed += p.bytes + (left === 0 ? (narBytes.get(p.nar!) ?? 0) : 0)
  }
  return plan
}

/** The hashes of `roots` and of everything they reference, as the cache's narinfos say. */
export function closureIn(paths: ReadonlyMap<string, CachedPath>, roots: Iterable<string>): Set<string> {
  const seen = new Set<string>()
  const todo = [...roots].filter((h) => paths.has(h))
  for (let h = todo.pop(); h !== undefined; h = todo.pop()) {
    if (seen.has(h)) continue
    seen.add(h)
    for (const r of paths.get(h)!.references) if (paths.has(r) && !seen.has(r)) todo.push(r)
  }
  return seen
}

/** The fields of a narinfo that pruning needs (Nix's nar-info.cc: `Key: value` lines, references as base names). */
export function parseNarInfo(text: string): { storePath?: string; url?: string; references: string[] } {
  const field = (key: string) => new RegExp(`^${key}: (.*)$`, 'm').exec(text)?.[1]?.trim()
  const refs = field('References')
  return { storePath: field('StorePath'), url: field('URL'), references: refs ? refs.split(' ').filter(Boolean) : [] }
}

/** Who references each path in the cache (the reverse of the narinfos' references). */
function referrersOf(paths: ReadonlyMap<string, CachedPath>): Map<string, string[]> {
  const referrers = new Map<string, string[]>()
  for (const p of paths.values()) {
    for (const r of p.references) {
      if (!paths.has(r)) continue
      const list = referrers.get(r)
      if (list) list.push(p.hash)
      else referrers.set(r, [p.hash])
    }
  }
  return referrers
}

/** The hashes of `roots` and of every path that references them, directly or not. */
function referrersClosure(paths: ReadonlyMap<string, CachedPath>, roots: readonly string[]): Set<string> {
  if (roots.length === 0) return new Set()
  const referrers = referrersOf(paths)
  const seen = new Set<string>()
  const todo = [...roots]
  for (let h = todo.pop(); h !== undefined; h = todo.pop()) {
    if (seen.has(h)) continue
    seen.add(h)
    todo.push(...(referrers.get(h) ?? []))
  }
  return seen
}

/** `/nix/store/abc…-name` or `abc…-name` → its 32-character hash. */
export const hashOf = (storePath: string): string => path.basename(storePath).slice(0, 32)

export interface PruneOptions {
  /** The cache folder (of a `file://` URL). */
  dir: string
  /** Bytes the folder may hold; undefined: only record uses. */
  maxSize?: number
  /** This job's results: their closures are never evicted, and count as used now. */
  keep: readonly string[]
  /** Other paths this job used (substituted): they count as used now. */
  used: readonly string[]
  log: (msg: string) => void
  warn: (msg: string) => void
  /**
   * How long to wait for another job's lock (default 30 s: a prune of 10,000 paths takes seconds, and
   * push's drain and final push already use most of after_script's 5 minutes).
   */
  lockTimeoutMs?: number
  now?: number
}

export interface PruneReport {
  maxSize?: number
  /** Bytes of every file in the folder, before and after. */
  sizeBefore: number
  sizeAfter: number
  evictedPaths: number
  /** Bytes freed, orphans included. */
  evictedBytes: number
  /** Leftovers of uploads that stopped halfway, removed: NARs no narinfo names, temporary files. */
  orphans: number
  /** Paths protected as this job's result closures. */
  kept: number
  /** How recency was known: the index, or modification times (no index, or an unreadable one). */
  ranking: 'index' | 'mtime'
}

/**
 * A NAR no narinfo names may be an upload in progress (Nix writes the NAR, then the narinfo), and a
 * temporary file one being written: left alone this long.
 */
const ORPHAN_GRACE_MS = 60 * 60_000

/**
 * Record this job's uses in the cache's index and, when `maxSize` is set and the folder is over it,
 * evict the least recently used paths until it fits. Holds the cache's lock throughout.
 */
export async function prune(opts: PruneOptions): Promise<PruneReport> {
  const now = opts.now ?? Date.now()
  const release = await acquireLock(path.join(opts.dir, LOCK_FILE), opts.lockTimeoutMs ?? 30_000, opts.log)
  try {
    const scan = scanCache(opts.dir)
    const index = await readIndex(path.join(opts.dir, INDEX_FILE))
    for (const p of scan.paths.values()) p.lastUsed = index.used.get(p.hash) ?? p.lastUsed
    const keep = closureIn(scan.paths, opts.keep.map(hashOf))
    for (const h of [...keep, ...closureIn(scan.paths, opts.used.map(hashOf))]) scan.paths.get(h)!.lastUsed = now

    const report: PruneReport = { maxSize: opts.maxSize, sizeBefore: scan.total, sizeAfter: scan.total, evictedPaths: 0, evictedBytes: 0, orphans: 0, kept: keep.size, ranking: index.ok ? 'index' : 'mtime' }
    if (opts.maxSize !== undefined && scan.total > opts.maxSize) {
      // Without the index a ranking by file times is a guess (a cache restored from an archive may carry new ones).
      // A cache with no index yet is the normal first state (information); an unreadable one is a problem.
      if (!index.ok) (index.missing ? opts.log : opts.warn)(`${index.problem}: ranking the cache's paths by modification time`)
      // Leftovers of interrupted uploads go first: they serve no one.
      for (const f of scan.leftovers) {
        if (now - f.mtime < ORPHAN_GRACE_MS) continue
        if (removeFile(path.join(opts.dir, f.name))) {
          report.orphans++
          report.sizeAfter -= f.bytes
        }
      }
      // A narinfo whose NAR is gone cannot be substituted, and Nix then fails the build rather than
      // building it unless --fallback (derivation-goal.cc); nor can what references it: they all go.
      const broken = referrersClosure(scan.paths, scan.broken)
      const apply = (plan: EvictionPlan) => {
        evict(opts.dir, plan, scan)
        report.evictedPaths += plan.victims.length
        report.sizeAfter -= plan.freed
      }
      apply(planEviction(new Map([...scan.paths].filter(([h]) => broken.has(h))), scan.narBytes, Infinity, 0, keep))
      apply(planEviction(scan.paths, scan.narBytes, report.sizeAfter, opts.maxSize, keep))
      report.evictedBytes = report.sizeBefore - report.sizeAfter
      if (report.sizeAfter > opts.maxSize) {
        opts.warn(`the cache ${opts.dir} holds ${formatBytes(report.sizeAfter)} after pruning, over its budget of ${formatBytes(opts.maxSize)}: this job's results alone need ${formatBytes(keptBytes(scan, keep))}`)
      }
    }
    // Written through a rename: a job killed mid-write leaves the old index, never half of one.
    const indexFile = path.join(opts.dir, INDEX_FILE)
    await writeJsonAtomic(indexFile, { version: 1, used: Object.fromEntries([...scan.paths.values()].map((p) => [p.hash, Math.round(p.lastUsed)])) })
    report.sizeAfter += statSync(indexFile).size - scan.indexBytes
    return report
  } finally {
    await release()
  }
}

/**
 * Carry out a plan in its order, each narinfo before its NAR: from that moment no reader asks for
 * the NAR. Synchronous for the reason scanCache is.
 */
function evict(dir: string, plan: EvictionPlan, scan: Scan): void {
  for (const { hash, nar } of plan.victims) {
    removeFile(path.join(dir, `${hash}.narinfo`))
    if (scan.listings.has(hash)) removeFile(path.join(dir, `${hash}.ls`))
    if (nar) removeFile(path.join(dir, nar))
    scan.paths.delete(hash)
  }
}

/**
 * A job's end (push): with a file:// cache, this job's uses recorded in its index, and the cache
 * pruned when `maxSize` is set. A problem is returned as a message, never thrown.
 */
export async function pruneAfterJob(opts: Omit<PruneOptions, 'dir'> & { session?: Pick<Session, 'backend' | 'nix'> }): Promise<{ report?: PruneReport; problem?: string }> {
  const dir = opts.session?.nix && fileCacheDir(opts.session.nix.url)
  if (!dir) {
    if (opts.maxSize !== undefined && opts.session) opts.log(`GREEDY_CACHE_MAX_SIZE applies to file:// caches only${opts.session?.backend === 'attic' ? ': attic keeps its caches small on the server (retention period, garbage collection)' : ''}`)
    return {}
  }
  if (opts.maxSize !== undefined) opts.log(`keeping ${dir} within ${formatBytes(opts.maxSize)}`)
  return pruneCache({ ...opts, dir })
}

/** `prune`, for a folder that may not exist yet; a problem is returned as a message, never thrown. */
export async function pruneCache(opts: PruneOptions): Promise<{ report?: PruneReport; problem?: string }> {
  try {
    await fs.access(opts.dir)
  } catch {
    return {} // nothing was ever pushed there: nothing to record or prune
  }
  try {
    return { report: await prune(opts) }
  } catch (err) {
    return { problem: `cannot prune ${opts.dir}: ${(err as Error).message}` }
  }
}

interface Scan {
  paths: Map<string, CachedPath>
  /** Paths whose narinfo names a NAR that is not there. */
  broken: string[]
  /** Bytes of the index as found (it is rewritten). */
  indexBytes: number
  /** Hashes with a `.ls` listing (write-nar-listing). */
  listings: Set<string>
  narBytes: Map<string, number>
  /** NARs no narinfo names, and temporary files (Nix's `<file>.tmp.<pid>.<n>`, writeJsonAtomic's `<file>.<pid>.tmp`). */
  leftovers: Array<{ name: string; bytes: number; mtime: number }>
  total: number
}

/**
 * Every narinfo, every NAR, and the bytes of every file in the folder (what GitLab archives).
 * Synchronous on purpose: tens of thousands of small stats and reads, nothing else to do meanwhile,
 * and each async call would cost a round trip through libuv's thread pool (10,000 paths: 2 s → a fraction).
 */
function scanCache(dir: string): Scan {
  const files = listFiles(dir)
  const bytesOf = new Map(files.map((f) => [f.name, f]))
  const paths = new Map<string, CachedPath>()
  for (const f of files) {
    if (!/^[0-9a-z]{32}\.narinfo$/.test(f.name)) continue
    let text: string
    try {
      text = readFileSync(path.join(dir, f.name), 'utf8')
    } catch {
      continue // gone meanwhile: nothing to rank
    }
    const hash = f.name.slice(0, 32)
    const info = parseNarInfo(text)
    paths.set(hash, {
      hash,
      references: info.references.map(hashOf).filter((r) => r !== hash),
      nar: info.url,
      bytes: f.bytes + (bytesOf.get(`${hash}.ls`)?.bytes ?? 0),
      lastUsed: f.mtime,
    })
  }
  const named = new Set([...paths.values()].map((p) => p.nar))
  const temporary = (name: string) => /\.tmp\.\d+\.\d+$/.test(name) || (name.startsWith(`${INDEX_FILE}.`) && name.endsWith('.tmp'))
  const nars = files.filter((f) => f.name.startsWith('nar/') && !temporary(f.name))
  return {
    paths,
    broken: [...paths.values()].filter((p) => p.nar !== undefined && !bytesOf.has(p.nar)).map((p) => p.hash),
    narBytes: new Map(nars.map((f) => [f.name, f.bytes])),
    leftovers: [...nars.filter((f) => !named.has(f.name)), ...files.filter((f) => temporary(f.name))],
    indexBytes: bytesOf.get(INDEX_FILE)?.bytes ?? 0,
    listings: new Set(files.filter((f) => f.name.endsWith('.ls')).map((f) => f.name.slice(0, 32))),
    // Our own lock is gone when the job ends: not counted.
    total: files.reduce((sum, f) => sum + (f.name === LOCK_FILE ? 0 : f.bytes), 0),
  }
}

function listFiles(dir: string, prefix = ''): Array<{ name: string; bytes: number; mtime: number }> {
  const out: Array<{ name: string; bytes: number; mtime: number }> = []
  for (const e of readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const name = prefix ? `${prefix}/${e.name}` : e.name
    if (e.isDirectory()) out.push(...listFiles(dir, name))
    else if (e.isFile()) {
      const st = statSync(path.join(dir, name), { throwIfNoEntry: false })
      if (st) out.push({ name, bytes: st.size, mtime: st.mtimeMs })
    }
  }
  return out
}

function keptBytes(scan: Scan, keep: ReadonlySet<string>): number {
  const nars = new Set([...keep].map((h) => scan.paths.get(h)?.nar).filter((n) => n !== undefined))
  return [...keep].reduce((s, h) => s + (scan.paths.get(h)?.bytes ?? 0), 0) + [...nars].reduce((s, n) => s + (scan.narBytes.get(n) ?? 0), 0)
}

function removeFile(file: string): boolean {
  try {
    unlinkSync(file)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

type Index = { ok: true; used: Map<string, number> } | { ok: false; used: Map<string, number>; problem: string; missing?: boolean }

/** `{"version":1,"used":{"<hash>":<ms>}}`; anything else is a problem, named. */
async function readIndex(file: string): Promise<Index> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return { ok: false, used: new Map(), problem: code === 'ENOENT' ? `the cache has no index of last uses (${path.basename(file)}) yet` : `cannot read ${file} (${code})`, missing: code === 'ENOENT' }
  }
  try {
    const data = JSON.parse(text) as { version?: unknown; used?: unknown }
    if (data.version !== 1 || typeof data.used !== 'object' || data.used === null) throw new Error('not version 1 with "used"')
    const used = new Map<string, number>()
    for (const [h, t] of Object.entries(data.used)) if (typeof t === 'number' && Number.isFinite(t)) used.set(h, t)
    return { ok: true, used }
  } catch (err) {
    return { ok: false, used: new Map(), problem: `the cache's index ${file} is unreadable (${(err as Error).message})` }
  }
}

interface LockOwner {
  pid: number
  start?: string
  host: string
  at: number
}

/** A lock older than this is stale whoever holds it: a prune of 10,000 paths takes seconds. */
const LOCK_STALE_MS = 10 * 60_000

/**
 * Take the cache's lock file (created exclusively). A lock whose process is gone (same host) or
 * that is older than LOCK_STALE_MS is taken over: renamed away, then checked to be the one judged
 * stale, so that two jobs taking over the same stale lock cannot both win.
 */
async function acquireLock(file: string, timeoutMs: number, log: (msg: string) => void): Promise<() => Promise<void>> {
  const me: LockOwner = { pid: process.pid, start: processStartTime(process.pid), host: os.hostname(), at: Date.now() }
  const deadline = Date.now() + timeoutMs
  let said = false
  for (;;) {
    try {
      const mine = JSON.stringify(me) + '\n'
      await fs.writeFile(file, mine, { flag: 'wx' })
      // Released only while still ours: a job that judged it stale may hold it now.
      return async () => {
        if ((await fs.readFile(file, 'utf8').catch(() => '')) === mine) await fs.rm(file, { force: true })
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const text = await fs.readFile(file, 'utf8').catch(() => '')
    const mtime = (await fs.stat(file).catch(() => undefined))?.mtimeMs ?? Date.now()
    if (isStale(text, mtime)) {
      const aside = `${file}.stale.${process.pid}.${randomBytes(4).toString('hex')}`
      if (await fs.rename(file, aside).then(() => true, () => false)) {
        const moved = await fs.readFile(aside, 'utf8').catch(() => '')
        // Not the stale lock any more (another job took it over meanwhile): put theirs back.
        if (moved !== text) await fs.link(aside, file).catch(() => undefined)
        await fs.rm(aside, { force: true })
      }
      continue
    }
    if (Date.now() > deadline) throw new Error(`another job holds ${file}${text ? ` (${text.trim()})` : ''} for more than ${timeoutMs / 1000}s`)
    if (!said) log(`waiting for another job's lock on the cache (${file})`)
    said = true
    await new Promise((r) => setTimeout(r, 200))
  }
}

function isStale(text: string, mtime: number): boolean {
  let owner: LockOwner
  try {
    owner = JSON.parse(text) as LockOwner
  } catch {
    // Empty or half written: its owner is writing it now, unless that was long ago.
    return Date.now() - mtime > 10_000
  }
  if (Date.now() - owner.at > LOCK_STALE_MS) return true
  if (owner.host !== os.hostname()) return false
  return !processAlive(owner.pid) || (owner.start !== undefined && owner.start !== processStartTime(owner.pid))
}
