// The pid file guard, with real processes: a reused pid is never taken for our watcher.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { formatPidFile, liveWatcherPid, parsePidFile, processStartTime, statePaths } from '../../lib/state.js'

const children: Array<ReturnType<typeof spawn>> = []
afterEach(() => children.splice(0).forEach((c) => c.kill('SIGKILL')))

function sleeper() {
  const c = spawn('sleep', ['30'], { stdio: 'ignore' })
  children.push(c)
  return c.pid!
}

describe('watch.pid', () => {
  const paths = statePaths(fs.mkdtempSync(path.join(os.tmpdir(), 'greedy-state-')))

  it('round-trips pid and start time', () => {
    expect(parsePidFile(formatPidFile(42, '123'))).toEqual({ pid: 42, startTime: '123' })
    expect(parsePidFile('garbage')).toBeUndefined()
  })

  it('finds the live process that wrote the pid file', async () => {
    const pid = sleeper()
    fs.writeFileSync(paths.pid, formatPidFile(pid, processStartTime(pid)))
    expect(await liveWatcherPid(paths)).toBe(pid)
  })

  it('never returns a live process that did not write the file (pid reuse)', async () => {
    const pid = sleeper()
    fs.writeFileSync(paths.pid, formatPidFile(pid, String(Number(processStartTime(pid)) - 1)))
    expect(await liveWatcherPid(paths)).toBeUndefined()
    fs.writeFileSync(paths.pid, `${pid}\n`) // no start time recorded: not trusted either
    expect(await liveWatcherPid(paths)).toBeUndefined()
  })

  it('returns nothing for a dead pid or no file', async () => {
    const c = spawn('true')
    await new Promise((r) => c.on('close', r))
    fs.writeFileSync(paths.pid, formatPidFile(c.pid!, '1'))
    expect(await liveWatcherPid(paths)).toBeUndefined()
    fs.rmSync(paths.pid)
    expect(await liveWatcherPid(paths)).toBeUndefined()
  })
})
