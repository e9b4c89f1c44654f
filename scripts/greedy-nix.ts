#!/usr/bin/env node
// The `greedy-nix` command: one bin for the four phases.
import { bootstrap, bootstrapInfo } from './bootstrap.js'
import { build, buildInfo } from './build.js'
import { prune, pruneInfo } from './prune.js'
import { push, pushInfo } from './push.js'
import { watch, watchInfo } from './watch.js'
import { EXIT_USAGE, helpText, runAsEntry, VERSION, type CommandInfo } from '../lib/cli.js'
import { settingsHelp, VARIABLES, type Variable } from '../lib/config.js'
import { closest, error } from '../lib/log.js'

const COMMANDS: Record<string, [(argv: string[]) => Promise<number>, CommandInfo]> = {
  bootstrap: [bootstrap, bootstrapInfo],
  watch: [watch, watchInfo],
  build: [build, buildInfo],
  push: [push, pushInfo],
  prune: [prune, pruneInfo],
}

const USAGE = `Usage: greedy-nix <command> [options]

Push every Nix store path to a binary cache the moment it is built.

Commands (one per phase of a GitLab job):
  bootstrap   before_script: find the cache, configure substitution, start the watcher
  watch       the background watcher: start | drain | stop | status | run
  build       script: nix build, drain the watcher, exit with Nix's code
  push        after_script: stop the watcher, final push, summary
  prune       keep a file:// cache within GREEDY_CACHE_MAX_SIZE (push does it too)

greedy-nix <command> --help shows each command's options; greedy-nix help config, every setting.`

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === '--version' || name === '-v') {
    process.stdout.write(`greedy-nix ${VERSION}\n`)
    return 0
  }
  if (name === undefined || name === '--help' || name === '-h') {
    process.stdout.write(USAGE + '\n')
    return 0
  }
  if (name === 'help') return help(rest[0])
  const command = COMMANDS[name]
  if (!command) return unknown(name)
  return command[0](rest)
}

/** `greedy-nix help [command|config]`. */
function help(topic: string | undefined): number {
  if (topic === 'config') {
    process.stdout.write(`Settings (environment variables; a flag wins over its variable):\n${settingsHelp(Object.keys(VARIABLES) as Variable[])}\n`)
    return 0
  }
  if (topic === undefined) {
    process.stdout.write(USAGE + '\n')
    return 0
  }
  const command = COMMANDS[topic]
  if (!command) return unknown(topic)
  process.stdout.write(helpText(command[1]) + '\n')
  return 0
}

function unknown(name: string): number {
  const guess = closest(name, [...Object.keys(COMMANDS), 'help'])
  error(`unknown command ${JSON.stringify(name)}${guess ? ` (did you mean ${guess}?)` : ''}`)
  process.stdout.write(USAGE + '\n')
  return EXIT_USAGE
}

runAsEntry('greedy-nix', main)
