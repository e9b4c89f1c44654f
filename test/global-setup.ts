// Tests run the bundles as built: build them once before any test file runs. Afterwards, no
// watcher started by a test may outlive the run (a failed test can leave one behind).
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import { ROOT } from './helpers.js'

export function setup(): void {
  if (process.env.GREEDY_TEST_SKIP_BUILD === '1') return
  const r = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`npm run build failed:\n${r.stdout}\n${r.stderr}`)
}

export function teardown(): void {
  const marker = `${os.tmpdir()}/greedy-`
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let cmdline = ''
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ')
    } catch {
      continue
    }
    if (cmdline.includes(marker) && cmdline.includes('watch.mjs run')) {
      console.warn(`test teardown: killing a watcher left running: ${pid} ${cmdline}`)
      try {
        process.kill(-Number(pid), 'SIGKILL')
      } catch {
        process.kill(Number(pid), 'SIGKILL')
      }
    }
  }
}
