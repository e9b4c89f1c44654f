// Lock events the watcher never sees. inotify queues at most `max_queued_events` events per watch
// instance, then drops the rest with one IN_Q_OVERFLOW (inotify(7)), which libuv, under node's
// fs.watch, passes on to nobody (its inotify reader skips events of an unknown watch descriptor,
// src/unix/linux.c `uv__inotify_read`). A busy shared store can fill the queue while the watcher's
// loop is blocked. The drains look again: `build`'s at what its Nix run realised, the final one at
// the whole store. Here the queue really overflows: the watcher is stopped (SIGSTOP) and the store
// folder gets more create/delete events than the queue holds, before Nix builds.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { chainPaths, greedy, inFileCache, makeKeys, nixArgs, nixEnv, runCmd, tmpDir, uid, writeFlake } from './helpers.js'

function job(name: string, chain: number) {
  const dir = tmpDir(`greedy-lost-${name}-`)
  const project = path.join(dir, 'project')
  const cache = path.join(dir, 'cache')
  const env = nixEnv(path.join(dir, 'home'), { CI_PROJECT_DIR: project, GREEDY_CACHE_URL: `file://${cache}`, GREEDY_DEBUG: '1' })
  env.GREEDY_SIGNING_KEY = makeKeys(env, `lost-${uid()}`)[0]
  writeFlake(project, { prefix: `lost-${name}-${uid()}`, chain, sleep: 0 })
  const state = path.join(project, '.greedy-nix')
  return { project, cache, env, links: chainPaths(env, project, chain), log: () => fs.readFileSync(path.join(state, 'watch.log'), 'utf8'), pid: () => Number(fs.readFileSync(path.join(state, 'watch.pid'), 'utf8').split('\n')[0]) }
}

/** Overflow the inotify queues of stopped watchers: more events in /nix/store than a queue holds (names no store path has). */
function floodStore(): void {
  const max = Number(fs.readFileSync('/proc/sys/fs/inotify/max_queued_events', 'utf8'))
  const tag = uid()
  for (let i = 0; i < max / 2 + 100; i++) {
    const file = path.join('/nix/store', `greedy-flood-${tag}-${i}`) // a create and a delete event each
    fs.writeFileSync(file, '')
    fs.rmSync(file)
  }
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
}

describe('paths whose lock events the watcher never saw', () => {
  it('build\'s drain still pushes what its Nix run built, from the record of what it realised', async () => {
    const j = job('build', 3)
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    const pid = j.pid()
    process.kill(pid, 'SIGSTOP')
    let building: ReturnType<typeof greedy> | undefined
    try {
      floodStore()
      building = greedy(j.env, j.project, 'build')
      // The build's drain request waits for the watcher; it runs again only once Nix is done.
      await until(() => fs.existsSync(path.join(j.project, 'result')), 120_000)
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    const b = await building!
    expect(b.code, b.out).toBe(0)
    // In the cache when build returned, and found by the drain's look, not by a lock event.
    expect(j.links.map((p) => inFileCache(j.cache, p))).toEqual([true, true, true])
    for (const p of j.links) expect(j.log()).toContain(`no lock event seen for ${path.basename(p)}`)
    expect((await greedy(j.env, j.project, 'push')).code).toBe(0)
  })

  it('push\'s final drain finds what a plain nix build made (no result link, no record) in the whole store', async () => {
    const j = job('plain', 2)
    expect((await greedy(j.env, j.project, 'bootstrap')).code).toBe(0)
    const pid = j.pid()
    process.kill(pid, 'SIGSTOP')
    try {
      floodStore()
      const plain = await runCmd('nix', nixArgs('build', '--no-link', '.#l2'), { env: j.env, cwd: j.project })
      expect(plain.code, plain.out).toBe(0)
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    const p = await greedy(j.env, j.project, 'push')
    expect(p.code, p.out).toBe(0)
    expect(j.links.map((l) => inFileCache(j.cache, l))).toEqual([true, true])
    for (const l of j.links) expect(j.log()).toContain(`no lock event seen for ${path.basename(l)}`)
  })
})
