#!/usr/bin/env node
// The `greedy-nix` command: one bin for the four phases.
import { bootstrap } from './bootstrap.js'
import { build } from './build.js'
import { prune } from './prune.js'
import { push } from './push.js'
import { watch } from './watch.js'
import { runAsEntry, VERSION } from '../lib/cli.js'

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = { bootstrap, watch, build, push, prune }

const USAGE = `Usage: greedy-nix <command> [options]

Push every Nix store path to a binary cache the moment it is built.

Commands (one per phase of a GitLab job):
  bootstrap   before_script: find the cache, configure substitution, start the watcher
  watch       the background watcher: start | drain | stop | status | run
  build       script: nix build, drain the watcher, exit with Nix's code
  push        after_script: stop the watcher, final push, summary
  prune       keep a file:// cache within GREEDY_CACHE_MAX_SIZE (push does it too)

greedy-nix <command> --help shows each command's options.`

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === '--version' || name === '-v') {
    process.stdout.write(`greedy-nix ${VERSION}\n`)
    return 0
  }
  const command = name === undefined ? undefined : COMMANDS[name]
  if (!command) {
    process.stdout.write(USAGE + '\n')
    return name === undefined || name === '--help' || name === '-h' ? 0 : 2
  }
  return command(rest)
}

runAsEntry('greedy-nix', main)
