// Tests run the bundles as built: build them once before any test file runs.
import { spawnSync } from 'node:child_process'
import { ROOT } from './helpers.js'

export default function setup(): void {
  if (process.env.GREEDY_TEST_SKIP_BUILD === '1') return
  const r = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`npm run build failed:\n${r.stdout}\n${r.stderr}`)
}
