import { describe, expect, it } from 'vitest'
import { hitRate, openMetrics, summaryLine, type Summary } from '../../lib/summary.js'

const summary = (built: number, substituted: number): Summary => ({
  backend: 'attic',
  incremental: { pushed: 7, failed: 1, cached: 0, skipped: 2 },
  final: { pushed: 2, failed: 0 },
  build: { exitCode: 0, built, substituted, runs: 1 },
  failures: [],
  watcherAlive: true,
})

describe('summary', () => {
  it('says what was pushed when, what failed, and how much the cache saved', () => {
    expect(summaryLine(summary(3, 1))).toBe(
      'pushed 7 store paths incrementally, 2 in the final push, 1 failed, cache hit rate 25% (1 substituted, 3 built)',
    )
  })
  it("pushed paths no greedy-nix build of the job made are said to be other builds' (a shared machine)", () => {
    expect(summaryLine(summary(0, 0))).toMatch(/^pushed 7 store paths incrementally \(other builds' paths: greedy-nix build built and substituted nothing\), 2 in the final push/)
    const noBuild = { ...summary(0, 0), build: { exitCode: null, built: 0, substituted: 0, runs: 0 } }
    expect(summaryLine(noBuild)).toMatch(/^pushed 7 store paths incrementally \(other nix commands' paths: greedy-nix build did not run in this job\),/)
  })
  it('with a file:// cache, ends with its size, its budget and what pruning evicted, also as metrics', () => {
    const MiB = 2 ** 20
    const pruned = { maxSize: 3 * MiB, sizeBefore: 4 * MiB, sizeAfter: 2_936_012, evictedPaths: 2, evictedBytes: 1_258_291, orphans: 1, kept: 3, ranking: 'index' as const }
    expect(summaryLine({ ...summary(3, 1), prune: pruned })).toMatch(/, cache 2\.8 MiB of 3\.0 MiB after evicting 2 path\(s\) and 1 leftover\(s\) of interrupted uploads \(1\.2 MiB\)$/)
    const untouched = { ...pruned, maxSize: undefined, sizeBefore: MiB, sizeAfter: MiB, evictedPaths: 0, evictedBytes: 0, orphans: 0 }
    expect(summaryLine({ ...summary(3, 1), prune: untouched })).toMatch(/built\), cache 1\.0 MiB$/)
    const text = openMetrics({ ...summary(3, 1), prune: pruned })
    expect(text).toMatch(/^greedy_nix_cache_bytes 2936012$/m)
    expect(text).toMatch(/^greedy_nix_evicted_paths 2$/m)
    expect(openMetrics(summary(3, 1))).not.toContain('greedy_nix_cache_bytes')
  })
  it('has no hit rate when nothing was built or substituted', () => {
    expect(hitRate(summary(0, 0).build)).toBeUndefined()
    expect(summaryLine(summary(0, 0))).toContain('cache hit rate n/a')
  })
  it('writes OpenMetrics that GitLab can read', () => {
    const text = openMetrics(summary(3, 1))
    expect(text).toMatch(/^greedy_nix_pushed_incremental 7$/m)
    expect(text).toMatch(/^greedy_nix_pushed_final 2$/m)
    expect(text).toMatch(/^greedy_nix_push_failed 1$/m)
    expect(text).toMatch(/^greedy_nix_cache_hit_ratio 0.25$/m)
    expect(text.endsWith('# EOF\n')).toBe(true)
    for (const line of text.trim().split('\n')) expect(line).toMatch(/^(# (TYPE|HELP|EOF)|greedy_nix_\w+ [\d.]+$)/)
  })
})
