#!/usr/bin/env node
// Prune a file:// cache to its budget on demand: in a scheduled pipeline, or in a job that
// composes its own phases. `push` does the same after every final push when the budget is set.
import { cacheProblem, loadConfig, parseCommandLine, runAsEntry, type CommandInfo } from '../lib/cli.js'
import { redactUrls } from '../lib/config.js'
import { resultLinks } from '../lib/final.js'
import { info, warn } from '../lib/log.js'
import { fileCacheDir, pruneCache } from '../lib/prune.js'
import { pruneLine } from '../lib/summary.js'

export const pruneInfo: CommandInfo = {
  name: 'prune',
  usage: 'greedy-nix prune [path...] [--cache-max-size S] [options]',
  settings: ['GREEDY_CACHE_URL', 'GREEDY_CACHE_MAX_SIZE', 'GREEDY_STATE_DIR', 'GREEDY_STRICT', 'GREEDY_DEBUG'],
  about: 'Evict the least recently used store paths of the file:// cache GREEDY_CACHE_URL until it holds no more than\n' +
    'GREEDY_CACHE_MAX_SIZE (--cache-max-size), never the closures of the given paths (default: the ./result* links).\n' +
    'Prints what was evicted and the size after. A cache under its budget is not touched.',
}

export async function prune(argv: string[]): Promise<number> {
  const line = parseCommandLine(pruneInfo, argv)
  if ('code' in line) return line.code
  const { config, ok } = loadConfig(line.flags)
  if (!ok) return 1
  const dir = config.cacheUrl && fileCacheDir(config.cacheUrl)
  if (!dir) return cacheProblem(config.strict, `prune needs a file:// cache in GREEDY_CACHE_URL (--cache-url)${config.cacheUrl ? `, not ${redactUrls(config.cacheUrl)}` : ''}`)
  if (config.cacheMaxSize === undefined) return cacheProblem(config.strict, 'prune needs a budget: set GREEDY_CACHE_MAX_SIZE or --cache-max-size')

  const keep = line.positionals.length > 0 ? line.positionals : await resultLinks()
  info(`keeping ${dir} within its budget${keep.length > 0 ? `, and the closures of ${keep.length} path(s)` : ''}`)
  const { report, problem } = await pruneCache({ dir, maxSize: config.cacheMaxSize, keep, used: [], log: info, warn })
  if (!report) return cacheProblem(config.strict, problem ?? `no cache at ${dir}`)
  info(pruneLine(report))
  return 0
}

runAsEntry('prune', prune)
