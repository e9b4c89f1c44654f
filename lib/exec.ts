// Running child processes with a time limit. Every call resolves (never rejects) so a cache
// problem can never surface as an unhandled exception: callers decide what a failure means.
import { spawn, type ChildProcess } from 'node:child_process'

export interface RunOptions {
  /** Written to the child's stdin, then stdin is closed. Secrets go here, never into args. */
  input?: string
  /** Kill the whole process group after this many milliseconds. */
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Called for every complete stderr line as it arrives (progress, per-path results). */
  onStderrLine?: (line: string) => void
  /** Aborting kills the whole process group at once (the caller is shutting down). */
  signal?: AbortSignal
}

export interface RunResult {
  /** Exit code; 127 when the program could not be started, null when killed by a signal. */
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  timedOut: boolean
}

export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    let stdout = ''
    let stderr = ''
    let timedOut = false
    let child: ChildProcess
    try {
      // detached: own process group, so a timeout can end the program and everything it started.
      child = spawn(cmd, args, {
        cwd: opts.cwd,
        env: opts.env ?? process.env,
        stdio: ['pipe', 'pipe', 'pipe'],
        detached: true,
      })
    } catch (err) {
      resolve({ code: 127, signal: null, stdout, stderr: String(err), timedOut })
      return
    }
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true
            killGroup(child, 'SIGKILL')
          }, opts.timeoutMs)
    const onAbort = () => killGroup(child, 'SIGKILL')
    if (opts.signal?.aborted) onAbort()
    else opts.signal?.addEventListener('abort', onAbort, { once: true })
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    const onLine = opts.onStderrLine
    let partial = ''
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
      if (!onLine) return
      const lines = (partial + d).split('\n')
      partial = lines.pop() ?? ''
      for (const line of lines) onLine(line)
    })
    child.stdin!.on('error', () => {}) // the child may exit before reading its input
    child.stdin!.end(opts.input ?? '')
    child.on('error', (err) => {
      clearTimeout(timer)
      opts.signal?.removeEventListener('abort', onAbort)
      resolve({ code: 127, signal: null, stdout, stderr: stderr + String(err), timedOut })
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      opts.signal?.removeEventListener('abort', onAbort)
      if (onLine && partial) onLine(partial)
      resolve({ code, signal, stdout, stderr, timedOut })
    })
  })
}

/** Signal a child's whole process group (it was spawned detached); ignore a group already gone. */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return
  try {
    process.kill(-child.pid, signal)
  } catch {
    try {
      child.kill(signal)
    } catch {
      // already gone
    }
  }
}

/** A one-line description of why a run failed, for warnings. */
export function describeFailure(r: RunResult, what: string, timeoutMs?: number): string {
  if (r.timedOut) return `${what} timed out after ${Math.round((timeoutMs ?? 0) / 1000)}s`
  if (r.code === 127) return `${what} could not be started: ${errorLine(r.stderr)}`
  const why = errorLine(r.stderr)
  return `${what} failed (${r.signal ?? `exit ${r.code}`})${why ? `: ${why}` : ''}`
}

/** The line that says what went wrong: the first `error:` line (Nix, clap, anyhow), else the last line. */
export function errorLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean)
  return lines.find((l) => /^error\b/i.test(l)) ?? lines[lines.length - 1] ?? ''
}
