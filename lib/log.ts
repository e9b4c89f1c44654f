// Log formatting for CI job logs: one prefix, GitLab collapsible sections, colour only where it renders.
// Nothing here ever receives a secret: callers log names and paths, never values from tokens or keys.

export interface LogOptions {
  debug: boolean
  /** ANSI colour. GitLab renders it although its shell says TERM=dumb. */
  color: boolean
  /** GitLab section markers (only meaningful inside a GitLab job). */
  sections: boolean
}

export function detectLogOptions(env: NodeJS.ProcessEnv = process.env): LogOptions {
  const gitlab = env.GITLAB_CI === 'true'
  const tty = Boolean(process.stdout.isTTY) && env.TERM !== 'dumb'
  const color = env.NO_COLOR ? false : Boolean(env.FORCE_COLOR) || gitlab || tty
  return { debug: isTruthy(env.GREEDY_DEBUG), color, sections: gitlab }
}

function isTruthy(v: string | undefined): boolean {
  return v !== undefined && /^(1|true|yes|on)$/i.test(v.trim())
}

let options: LogOptions = detectLogOptions()

export function configureLog(next: Partial<LogOptions>): void {
  options = { ...options, ...next }
}

const paint = (code: string) => (s: string) => (options.color ? `\x1b[${code}m${s}\x1b[0m` : s)
export const bold = paint('1')
const yellow = paint('33')
const red = paint('31;1')
const dim = paint('2')

const PREFIX = 'greedy-nix:'

export function info(msg: string): void {
  process.stdout.write(`${PREFIX} ${msg}\n`)
}

export function warn(msg: string): void {
  process.stderr.write(`${yellow(`${PREFIX} warning:`)} ${msg}\n`)
}

export function error(msg: string): void {
  process.stderr.write(`${red(`${PREFIX} error:`)} ${msg}\n`)
}

export function debug(msg: string): void {
  if (options.debug) process.stderr.write(dim(`${PREFIX} debug: ${msg}`) + '\n')
}

/** Raw output (e.g. Nix's own build log lines), untouched but for colour stripping. */
export function raw(line: string): void {
  process.stderr.write((options.color ? line : stripAnsi(line)) + '\n')
}

export function stripAnsi(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
}

/** Whether output goes into GitLab log sections (inside a GitLab job). */
export function sectionsEnabled(): boolean {
  return options.sections
}

/**
 * Run `fn` inside a GitLab log section. Details go in collapsed sections; errors and the summary
 * line are printed outside them so they stay visible in a collapsed log.
 */
export async function section<T>(name: string, header: string, fn: () => Promise<T>, collapsed = true): Promise<T> {
  if (!options.sections) {
    info(header)
    return fn()
  }
  const id = `greedy_${name.replace(/[^a-zA-Z0-9_.-]/g, '_')}`
  const now = () => Math.floor(Date.now() / 1000)
  process.stdout.write(`\x1b[0Ksection_start:${now()}:${id}[collapsed=${collapsed}]\r\x1b[0K${bold(`${PREFIX} ${header}`)}\n`)
  try {
    return await fn()
  } finally {
    process.stdout.write(`\x1b[0Ksection_end:${now()}:${id}\r\x1b[0K\n`)
  }
}

/** A command line for a header: whole when short, else its start and how many arguments it has. */
export function shortCommand(argv: readonly string[], max = 160): string {
  const whole = argv.join(' ')
  if (whole.length <= max) return whole
  let shown = 0
  let length = -1
  while (shown < argv.length && length + 1 + argv[shown]!.length <= max) length += 1 + argv[shown++]!.length
  return `${argv.slice(0, shown).join(' ')} … (${argv.length - shown} more arguments)`
}

/** The word of `words` nearest to `word` (a typo: at most two edits away), if any. */
export function closest(word: string, words: readonly string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    let prev = Array.from({ length: b.length + 1 }, (_, i) => i)
    for (let i = 1; i <= a.length; i++) {
      const row = [i]
      for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
      prev = row
    }
    return prev[b.length]!
  }
  const [best] = words.map((w) => [w, distance(word, w)] as const).sort((x, y) => x[1] - y[1])
  return best && best[1] <= 2 ? best[0] : undefined
}
