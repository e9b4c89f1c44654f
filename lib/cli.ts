// What every command shares at its edge: --help/--version, config loading with the non-blocking
// rule applied, and exit codes.
import { readFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { parseConfig, settingsHelp, VARIABLES, wrap, type Config, type Flags, type Variable } from './config.js'
import { closest, configureLog, error, warn } from './log.js'

declare const __GREEDY_VERSION__: string | undefined
export const VERSION: string = typeof __GREEDY_VERSION__ === 'string' ? __GREEDY_VERSION__ : '0.0.0-dev'

/** `status` exits with this when the watcher is not running. */
export const EXIT_NOT_RUNNING = 3

export interface CommandInfo {
  /** The command's name: `greedy-nix <name>`. */
  name: string
  usage: string
  about: string
  /** Options of the command itself (the settings' flags come from `settings`). */
  options?: Record<string, { type: 'string' | 'boolean'; doc: string }>
  /** The settings the command reads; their flags are its options too. */
  settings: readonly Variable[]
  /** What `--` hands the rest of the line to, if anything (build: nix build). */
  passThrough?: string
  /** At most this many arguments besides options (default: any). */
  positionals?: number
}

/** Options every command takes. `--verbose` is the older name of `--debug`. */
const COMMON = { help: 'boolean', h: 'boolean', version: 'boolean', verbose: 'boolean' } as const

export function helpText(cmd: CommandInfo): string {
  const own = Object.entries(cmd.options ?? {}).map(([name, o]) => `  --${name}${o.type === 'string' ? ' X' : ''}`.padEnd(24) + wrap(o.doc, 76).join(`\n${' '.repeat(24)}`))
  return [
    `Usage: ${cmd.usage}`,
    '',
    fitAbout(cmd.about),
    ...(own.length ? ['', 'Options:', ...own] : []),
    '',
    'Settings (environment variables; a flag wins over its variable):',
    settingsHelp(cmd.settings),
    '',
    "Every option: --help, --version. All settings: greedy-nix help config",
  ].join('\n')
}

/**
 * A command's about text within 100 columns: its lines run on as one paragraph and are wrapped
 * again; an indented line (a list item, `  start   …`) stays a line of its own, its continuation
 * under its text.
 */
function fitAbout(text: string, width = 100): string {
  const out: string[] = []
  let paragraph = ''
  const flush = () => {
    if (paragraph) out.push(...wrap(paragraph, width))
    paragraph = ''
  }
  for (const line of text.split('\n')) {
    const item = /^(\s+\S+\s+)(.*)$/.exec(line)
    if (!item || !line.startsWith(' ')) {
      paragraph = paragraph ? `${paragraph} ${line.trim()}` : line.trim()
      continue
    }
    flush()
    const indent = item[1]!.length
    out.push(...wrap(item[2]!, width - indent).map((l, i) => (i === 0 ? item[1]! : ' '.repeat(indent)) + l))
  }
  flush()
  return out.join('\n')
}

export interface ParsedCommand {
  flags: Flags
  positionals: string[]
  /** What followed `--`. */
  rest: string[]
}

/**
 * The command line, strictly: an option the command does not know is named, never dropped and
 * never given the next word as its value (minimist took `--dry-run .#a` as a flag with the value
 * `.#a`). Returns the message instead when the line is wrong.
 */
export function parseCommand(cmd: CommandInfo, argv: readonly string[]): ParsedCommand | { error: string } {
  const options: Record<string, { type: 'string' | 'boolean' }> = {}
  for (const [name, type] of Object.entries(COMMON)) options[name] = { type }
  for (const v of cmd.settings) {
    const flag = VARIABLES[v].flag
    if (flag) options[flag] = { type: v === 'GREEDY_STRICT' || v === 'GREEDY_DEBUG' ? 'boolean' : 'string' }
  }
  for (const [name, o] of Object.entries(cmd.options ?? {})) options[name] = { type: o.type }
  const dashdash = argv.indexOf('--')
  const ours = dashdash === -1 ? argv : argv.slice(0, dashdash)
  const rest = dashdash === -1 ? [] : argv.slice(dashdash + 1)
  try {
    const { values, positionals } = parseArgs({ args: [...ours], options, allowPositionals: true, strict: true })
    const extra = positionals[cmd.positionals ?? Infinity]
    if (extra !== undefined) return { error: `greedy-nix ${cmd.name}: unexpected argument ${JSON.stringify(extra)}` }
    if (!cmd.passThrough && dashdash !== -1) return { error: `greedy-nix ${cmd.name}: nothing goes after --` }
    return { flags: values, positionals, rest }
  } catch (err) {
    const e = err as Error & { code?: string }
    const unknown = /Unknown option '([^']+)'/.exec(e.message)?.[1]
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && unknown) {
      const names = Object.keys(options).filter((o) => o.length > 1)
      const guess = closest(unknown.replace(/^-+/, '').split('=')[0]!, names)
      const hint = guess ? `did you mean --${guess}?` : `it takes ${names.map((o) => `--${o}`).join(', ')}`
      const nix = cmd.passThrough ? `; ${cmd.passThrough}'s own options go after --, e.g. greedy-nix ${cmd.name} .#default -- ${unknown}` : ''
      return { error: `greedy-nix ${cmd.name}: unknown option ${unknown} (${hint})${nix}` }
    }
    const missing = /Option '([^' ]+)[^']*' argument (?:missing|is ambiguous)/.exec(e.message)?.[1]
    if (missing) return { error: `greedy-nix ${cmd.name}: ${missing} needs a value (${missing} X, or ${missing}=X)` }
    return { error: `greedy-nix ${cmd.name}: ${e.message.split('\n')[0]}` }
  }
}

/**
 * The command line of `cmd`; or, when it printed what was asked (--help, --version) or what is
 * wrong with the line, the exit code.
 */
export function parseCommandLine(cmd: CommandInfo, argv: readonly string[]): ParsedCommand | { code: number } {
  const parsed = parseCommand(cmd, argv)
  if ('error' in parsed) {
    error(`${parsed.error}; see greedy-nix ${cmd.name} --help`)
    return { code: EXIT_USAGE }
  }
  const { flags } = parsed
  if (flags.help || flags.h) {
    process.stdout.write(helpText(cmd) + '\n')
    return { code: 0 }
  }
  if (flags.version) {
    process.stdout.write(`greedy-nix ${VERSION}\n`)
    return { code: 0 }
  }
  if (flags.verbose || flags.debug) configureLog({ debug: true })
  return parsed
}

/** A command line greedy-nix cannot follow (an unknown option, a missing value). */
export const EXIT_USAGE = 2

/**
 * Parse the config. A bad tuning value is named and its default used; a bad cache setting is
 * named and the cache is off for this run (non-strict), or either is an error (strict: `ok` is
 * false and the caller exits 1). `invalid`: a cache setting was bad, so "no cache" is not the
 * user's choice.
 */
export function loadConfig(flags: Flags, env: NodeJS.ProcessEnv = process.env): { config: Config; ok: boolean; invalid: boolean } {
  const { config, errors, warnings } = parseConfig(env, flags)
  if (config.debug) configureLog({ debug: true })
  for (const w of warnings) (config.strict ? error : warn)(w)
  for (const e of errors) (config.strict ? error : warn)(`${e}${config.strict ? '' : '; continuing without the cache'}`)
  return { config, ok: !(config.strict && errors.length + warnings.length > 0), invalid: errors.length > 0 }
}

/** A cache problem: a warning and exit 0, or in strict mode an error and exit 1. */
export function cacheProblem(strict: boolean, msg: string): number {
  if (strict) {
    error(`${msg} (GREEDY_STRICT is on)`)
    return 1
  }
  warn(`${msg} (the job goes on; set GREEDY_STRICT=true to fail instead)`)
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

/**
 * build's installables: its arguments, then `--installables`, then `--installables-file` (a
 * file has no length limit: one argument of more than 128 KiB is refused by Linux, E2BIG).
 */
export async function installablesOf(line: ParsedCommand): Promise<{ list: string[] } | { error: string }> {
  const list = [...line.positionals]
  const given = line.flags.installables
  if (typeof given === 'string') {
    const parsed = parseInstallables(given)
    if (!parsed) return { error: `--installables: ${JSON.stringify(given.slice(0, 200))} is not a list of installables (expected a JSON array, [a, b], or words)` }
    list.push(...parsed)
  }
  const file = line.flags['installables-file']
  if (typeof file === 'string') {
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      return { error: `--installables-file: cannot read ${JSON.stringify(file)} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` }
    }
    const parsed = parseInstallables(text)
    if (!parsed) return { error: `--installables-file: ${JSON.stringify(file)} is not a list of installables (expected one per line, or a JSON array)` }
    list.push(...parsed)
  }
  return { list }
}
