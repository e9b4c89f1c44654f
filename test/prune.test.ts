// Zero-server mode that stays small: a real file:// cache written by real `nix copy`, pruned by
// the bundle as built, pipeline after pipeline, and read back by a fresh pipeline's Nix.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { deleteFromStore, greedy, makeKeys, nixEnv, packagePaths, readJsonFile, runCmd, tmpDir, uid, writeShFlake, DIST } from './helpers.js'
import type { Summary } from '../lib/summary.js'

const MiB = 2 ** 20
/** Each pipeline adds about 1.2 MiB: random bytes, which zstd cannot shrink. */
const BLOB_BYTES = Math.round(1.2 * MiB)

/** Bytes of every file in the folder: what GitLab's `cache:` archives. */
function folderBytes(dir: string): number {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile()).reduce((sum, e) => sum + fs.statSync(path.join(e.parentPath, e.name)).size, 0)
}

/**
 * Consistent as a Nix reader needs it: every narinfo's NAR is there, every path it references has
 * its narinfo, and every NAR is named by a narinfo. Returns the problems found.
 */
function inconsistencies(dir: string): string[] {
  const problems: string[] = []
  const narinfos = fs.readdirSync(dir).filter((f) => f.endsWith('.narinfo'))
  const named = new Set<string>()
  for (const f of narinfos) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8')
    const url = /^URL: (.*)$/m.exec(text)![1]!
    named.add(url)
    if (!fs.existsSync(path.join(dir, url))) problems.push(`${f}: its NAR ${url} is missing`)
    for (const ref of (/^References: (.*)$/m.exec(text)?.[1] ?? '').split(' ').filter(Boolean)) {
      if (!fs.existsSync(path.join(dir, `${ref.slice(0, 32)}.narinfo`))) problems.push(`${f}: its reference ${ref} is missing`)
    }
  }
  for (const nar of fs.readdirSync(path.join(dir, 'nar'))) if (!named.has(`nar/${nar}`)) problems.push(`nar/${nar}: no narinfo names it`)
  return problems
}

function setup(name: string) {
  const dir = tmpDir(`greedy-${name}-`)
  const cache = path.join(dir, 'binary-cache')
  const [secret, pub] = makeKeys(nixEnv(dir), `test-${uid()}`)
  const prefix = `${name}-${uid()}`
  /**
   * Pipeline n: `app-n` references a blob of its own and one small path every pipeline shares.
   * With `uses`, app-n only reads pipeline `uses`'s blob while it builds (a build input, not a reference).
   */
  const pipeline = (n: number, extra: NodeJS.ProcessEnv = {}, uses?: number) => {
    const project = path.join(dir, `p${n}`)
    fs.mkdirSync(project, { recursive: true })
    writeShFlake(project, [
      `    shared = mk "${prefix}-shared" "echo shared > $out";`,
      `    blob = mk "${prefix}-blob-${uses ?? n}" "head -c ${BLOB_BYTES} /dev/urandom > $out";`,
      uses === undefined
        ? `    app = mk "${prefix}-app-${n}" "echo \${shared} \${blob} > $out";`
        : `    app = mk "${prefix}-app-${n}" "wc -c < \${blob} > $out";`,
    ], 'default = app; shared = shared; blob = blob;')
    const env = nixEnv(path.join(dir, `p${n}-home`), { GREEDY_CACHE_URL: `file://${cache}`, GREEDY_SIGNING_KEY: secret, CI_PROJECT_DIR: project, ...extra })
    return { project, env, state: path.join(project, '.greedy-nix'), paths: () => packagePaths(env, project) }
  }
  return { dir, cache, pub, pipeline }
}

async function runPipeline(p: ReturnType<ReturnType<typeof setup>['pipeline']>, ...buildArgs: string[]) {
  for (const [phase, args] of [['bootstrap', []], ['build', buildArgs], ['push', []]] as const) {
    const r = await greedy(p.env, p.project, phase, ...args)
    expect(r.code, `${phase}: ${r.out}`).toBe(0)
    if (phase === 'push') return { push: r, summary: readJsonFile<Summary>(path.join(p.state, 'summary.json')) }
  }
  throw new Error('unreachable')
}

describe('GREEDY_CACHE_MAX_SIZE: a file:// cache pruned to its budget', () => {
  it('five pipelines of 1.2 MiB each with a 3 MiB budget: never over it, always consistent; a build input substituted counts as used; a fresh pipeline substitutes the last result whole', async () => {
    const t = setup('prune')
    let last: Record<string, string> = {}
    for (let n = 1; n <= 5; n++) {
      const p = t.pipeline(n, { GREEDY_CACHE_MAX_SIZE: '3M' })
      // Pipeline 4 finds an index it cannot read (a bad merge of caches, a disk error): a warning, then file times.
      if (n === 4) fs.writeFileSync(path.join(t.cache, 'greedy-nix-index.json'), 'not json')
      const { push, summary } = await runPipeline(p)
      last = p.paths()
      expect(folderBytes(t.cache), `after pipeline ${n}`).toBeLessThanOrEqual(3 * MiB)
      expect(inconsistencies(t.cache), `after pipeline ${n}`).toEqual([])
      expect(summary.prune).toMatchObject({ maxSize: 3 * MiB, sizeAfter: folderBytes(t.cache), ranking: n === 4 ? 'mtime' : n === 1 ? 'mtime' : 'index' })
      // This job's result closure is whole in the cache: app, its blob, and the shared path from pipeline 1.
      for (const out of Object.values(last)) expect(fs.existsSync(path.join(t.cache, `${path.basename(out).slice(0, 32)}.narinfo`)), out).toBe(true)
      if (n <= 2) expect(summary.prune?.evictedPaths).toBe(0)
      else {
        // The oldest pipeline's app and blob go; the shared path, oldest of all, stays: the last result needs it.
        expect(summary.prune?.evictedPaths).toBe(2)
        expect(push.stdout).toMatch(/cache 2\.\d MiB of 3\.0 MiB after evicting 2 path\(s\) \(1\.2 MiB\)/)
      }
      if (n === 4) expect(push.stderr).toMatch(/warning: the cache's index .* is unreadable .*: ranking the cache's paths by modification time/)
      expect(fs.readFileSync(path.join(p.state, 'metrics.txt'), 'utf8')).toMatch(/^greedy_nix_cache_bytes \d+$/m)
    }

    // Pipeline 6 substitutes pipeline 5's blob only to read it while building: "used" all the same, so the
    // index says so (a build input the next pipeline needs again must not look old).
    fs.rmSync(path.join(t.dir, 'p5', 'result'))
    deleteFromStore(nixEnv(t.dir), [last.default!, last.blob!])
    const before = Date.now()
    const p6 = t.pipeline(6, { GREEDY_CACHE_MAX_SIZE: '3M' }, 5)
    const { summary: s6 } = await runPipeline(p6)
    expect(s6.build).toMatchObject({ substituted: 1, built: 1 })
    const index = readJsonFile<{ used: Record<string, number> }>(path.join(t.cache, 'greedy-nix-index.json'))
    expect(index.used[path.basename(last.blob!).slice(0, 32)]).toBeGreaterThanOrEqual(before)
    expect(index.used[path.basename(last.shared!).slice(0, 32)]).toBeLessThan(before) // not used by pipeline 6

    // A fresh runner: nothing of it in the store. It builds nothing (--max-jobs 0): all substituted.
    for (let n = 1; n <= 6; n++) fs.rmSync(path.join(t.dir, `p${n}`, 'result'), { force: true })
    const everything = [1, 2, 3, 4, 5].flatMap((n) => Object.values(t.pipeline(n).paths())).concat(p6.paths().default!)
    deleteFromStore(nixEnv(t.dir), [...new Set(everything)])
    const fresh = t.pipeline(5)
    fs.rmSync(path.join(fresh.project, 'result'), { force: true })
    const { summary } = await runPipeline(fresh, '--', '--max-jobs', '0')
    expect(summary.build).toMatchObject({ exitCode: 0, built: 0, substituted: 3 })
  })

  it('two jobs pruning the same cache at once: both green, the cache consistent and within the smaller budget', async () => {
    const t = setup('prune2')
    for (let n = 1; n <= 4; n++) await runPipeline(t.pipeline(n))
    expect(folderBytes(t.cache)).toBeGreaterThan(4 * BLOB_BYTES)
    const env = t.pipeline(1).env
    const pruneTo = (size: string) => runCmd(process.execPath, [path.join(DIST, 'greedy-nix.mjs'), 'prune', '--cache-max-size', size], { env, cwd: t.dir })
    const [a, b] = await Promise.all([pruneTo('3.5MiB'), pruneTo('2MiB')])
    expect(a.code, a.out).toBe(0)
    expect(b.code, b.out).toBe(0)
    expect(`${a.out}${b.out}`).toMatch(/evicting \d path\(s\)/)
    expect(inconsistencies(t.cache)).toEqual([])
    expect(folderBytes(t.cache)).toBeLessThanOrEqual(2 * MiB)
  })

  it('GREEDY_CACHE_MAX_SIZE=lots: named with what was expected; the job stays green', async () => {
    const t = setup('prunebad')
    const p = t.pipeline(1, { GREEDY_CACHE_MAX_SIZE: 'lots' })
    const out: string[] = []
    for (const phase of ['bootstrap', 'build', 'push']) {
      const r = await greedy(p.env, p.project, phase)
      expect(r.code, r.out).toBe(0)
      out.push(r.out)
    }
    expect(out[0]).toContain('GREEDY_CACHE_MAX_SIZE: "lots" expected a size such as 500M, 2G, 1.5GiB or a number of bytes; using no budget') // the cache stays on
    expect(fs.existsSync(path.join(p.project, 'result'))).toBe(true)
    const strict = await greedy({ ...p.env, GREEDY_STRICT: '1' }, p.project, 'prune')
    expect(strict.code).toBe(1)
    expect(strict.out).toContain('GREEDY_CACHE_MAX_SIZE: "lots"')
  })
})
