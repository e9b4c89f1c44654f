// What every command shares at its edge: --help/--version, config loading with the non-blocking
// rule applied, and exit codes.
import { configHelp, parseConfig, type Config, type Flags } from './config.js'
import { configureLog, error, warn } from './log.js'

declare const __GREEDY_VERSION__: string | undefined
export const VERSION: string = typeof __GREEDY_VERSION__ === 'string' ? __GREEDY_VERSION__ : '0.0.0-dev'

/** `status` exits with this when the watcher is not running. */
export const EXIT_NOT_RUNNING = 3

export interface CommandInfo {
  usage: string
  about: string
  /** Extra options and notes, one per line. */
  details?: string
}

export function helpText(cmd: CommandInfo): string {
  return [`Usage: ${cmd.usage}`, '', cmd.about, cmd.details ? `\n${cmd.details}` : '', '', configHelp(), '', 'Common options: --help, --version, --verbose'].join('\n')
}

/** Handles --help and --version; returns true when the command should stop there. */
export function handledInfoFlags(flags: Flags, cmd: CommandInfo): boolean {
  if (flags.help || flags.h) {
    process.stdout.write(helpText(cmd) + '\n')
    return true
  }
  if (flags.version) {
    process.stdout.write(`greedy-nix ${VERSION}\n`)
    return true
  }
  if (flags.verbose) configureLog({ debug: true })
  return false
}

/**
 * Parse the config. Invalid values are named in warnings and the cache is disabled for this run
 * (non-strict), or they are errors (strict: `ok` is false and the caller exits 1).
 */
export function loadConfig(flags: Flags, env: NodeJS.ProcessEnv = process.env): { config: Config; ok: boolean } {
  const { config, errors } = parseConfig(env, flags)
  for (const e of errors) (config.strict ? error : warn)(`${e}${config.strict ? '' : '; continuing without the cache'}`)
  return { config, ok: !(config.strict && errors.length > 0) }
}

/** A cache problem: a warning and exit 0, or in strict mode an error and exit 1. */
export function cacheProblem(strict: boolean, msg: string): number {
  if (strict) {
    error(`${msg} (GREEDY_STRICT is on)`)
    return 1
  }
  warn(`${msg} (the job goes on; set GREEDY_STRICT=1 to fail instead)`)
  return 0
}

declare const __GREEDY_ENTRY__: string | undefined
const ENTRY = typeof __GREEDY_ENTRY__ === 'string' ? __GREEDY_ENTRY__ : undefined

/** The argv that starts this same bundle as the watcher (the all-in-one bin needs the command name). */
export function watchRunArgv(script: string, stateDir: string): string[] {
  return [script, ...(ENTRY === 'greedy-nix' ? ['watch'] : []), 'run', '--state-dir', stateDir]
}

/**
 * Run `main` when this bundle was built for the command `name`. tsup defines the entry per
 * bundle, which also works when a bundle is piped into node (no file to compare with) and keeps
 * the all-in-one `greedy-nix` bundle from running every command it contains.
 */
export function runAsEntry(name: string, main: (argv: string[]) => Promise<number>): void {
  if (ENTRY !== name) return
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (err: unknown) => {
      error(`unexpected failure: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
      process.exitCode = 70
    },
  )
}

/**
 * The installables a CI template hands over in one argument: a JSON array (what GitLab makes of
 * an array input inside a string, `[".#a", ".#b"]`), a YAML flow list (`[.#a, .#b]`), or words
 * separated by spaces or newlines. Returns undefined, naming nothing, when it is none of these.
 */
export function parseInstallables(text: string): string[] | undefined {
  const t = text.trim()
  if (!t.startsWith('[')) return t.split(/\s+/).filter(Boolean)
  try {
    const parsed: unknown = JSON.parse(t)
    if (Array.isArray(parsed) && parsed.every((x) => typeof x === 'string')) return parsed.map((x) => x.trim()).filter(Boolean)
    return undefined
  } catch {
    if (!t.endsWith(']')) return undefined
    return t.slice(1, -1).split(',').map((x) => x.trim().replace(/^(["'])(.*)\1$/, '$2')).filter(Boolean)
  }
}
