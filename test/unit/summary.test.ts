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
