// What differs between Nix versions, Lix and Determinate Nix (issue 13), on recorded output and on
// output built from the sources' own wording. Fixtures (test/fixtures/):
// - nix-2.24.15-*.txt, nix-2.24.15-path-info.json: recorded here with Nix 2.24.15 (private
//   NIX_CONF_DIR, `--log-format internal-json`), unedited. The flakes were plain
//   `derivation { builder = "/bin/sh"; … }`s: `fail` (exit 1), `dep1`/`dep2` (depend on fail), `ok`.
//   - keep-going-dependants: `nix build -v --keep-going .#dep1 .#dep2 .#ok`
//   - keep-going-repeated-failure: `nix build --keep-going .#fail .#dep1 .#dep2 .#ok`
//   - interrupted: a `sleep 30` build, SIGINT after 4 s
//   - remote-build: `--max-jobs 0 --builders '/tmp/rec224/machine x86_64-linux - 1 1'` (a local
//     store as the remote builder, as NixOS/nix tests/functional/build-remote.sh does), with a source
//     input copied to it and the output copied back
//   - path-info.json: `nix path-info --json <ok output> <dep1 .drv> <fail output (never built)>`
// - nix-2.33-path-info-v2.json, nix-2.35-path-info-v3.json: built from NixOS/nix's own test data
//   (src/libstore-tests/data/path-info/json-{2,3}/impure.json and empty_impure.json, unedited) put
//   in the wrapper `nix path-info --json --json-format N` prints around them (src/nix/path-info.cc
//   pathInfoToJSON: `{"version", "storeDir", "info": {<base name>: … | null}}`, keys sorted as
//   nlohmann::json does); the `null` entry is how it prints an invalid path (tests/functional/path-info.sh).
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseNixVersion, parsePathInfoJson, pathInfoJsonArgs } from '../../lib/nix.js'
import { BuildLog, buildLine, failureTails, TAIL_LINES, failureOf, parseNixLogLine, type NixLogEvent } from '../../lib/nixlog.js'

const fixture = (name: string) => fs.readFileSync(path.join(import.meta.dirname, '..', 'fixtures', name), 'utf8')
const events = (name: string): NixLogEvent[] => fixture(name).split('\n').flatMap((l) => parseNixLogLine(l) ?? [])
function play(evs: readonly NixLogEvent[]): { log: BuildLog; lines: string[] } {
  const log = new BuildLog()
  const lines = evs.flatMap((ev) => log.feed(ev))
  return { log, lines }
}

describe('nix --version of Nix, Lix and Determinate Nix', () => {
  // Lix ≥ 2.92 prints more lines after the version (lix/libmain/shared.cc printVersion); this one
  // is copied from lix doc/manual/src/release-notes/rl-2.92.md.
  const lix292 = [
    'nix (Lix, like Nix) 2.92.0-dev-pre20250117-0d14c2b',
    'System type: x86_64-linux',
    'Additional system types: i686-linux, x86_64-v1-linux, x86_64-v2-linux, x86_64-v3-linux',
    'Features: gc, signed-caches',
    'System configuration file: /etc/nix/nix.conf',
    'User configuration files: /home/jade/.config/nix/nix.conf:/etc/xdg/nix/nix.conf',
    'Store directory: /nix/store',
    'State directory: /nix/var/nix',
    'Data directory: /nix/store/rliimcnqkplrqdgm4z6yqclpr6c32wh6-lix-2.92.0-dev-pre20250117-0d14c2b/share',
    '',
  ].join('\n')
  const format2 = ['--json', '--json-format', '2']
  it.each([
    // an unofficial Nix build: `pre<date>_<rev>` (NixOS/nix packaging/components.nix)
    ['nix (Nix) 2.36.0pre20260101_0123abcd\n', { impl: 'nix', major: 2, minor: 36 }, format2],
    ['nix (Lix, like Nix) 2.96.0-dev\n', { impl: 'lix', major: 2, minor: 96 }, ['--json']],
    [lix292, { impl: 'lix', major: 2, minor: 92, raw: 'nix (Lix, like Nix) 2.92.0-dev-pre20250117-0d14c2b' }, ['--json']],
    // Determinate Nix: its own version in the parenthesis, the Nix it is built on after it
    // (DeterminateSystems/nix-src src/libmain/shared.cc; v3.16.0 has .version 2.33.3)
    ['nix (Determinate Nix 3.16.0) 2.33.3\n', { impl: 'nix', major: 2, minor: 33 }, format2],
    ['nix (Determinate Nix 3.6.2) 2.29.0\n', { impl: 'nix', major: 2, minor: 29 }, ['--json']],
    // printed by Debian's Nix and by /work/shared/tools/nix-2.24.15 on this machine
    ['nix (Nix) 2.8.0\n', { impl: 'nix', major: 2, minor: 8 }, ['--json']],
    ['nix (Nix) 2.24.15\n', { impl: 'nix', major: 2, minor: 24 }, ['--json']],
    ['nix (Lix, like Nix) 2.91.1\n', { impl: 'lix', major: 2, minor: 91 }, ['--json']],
  ])('%s', (text, version, args) => {
    const v = parseNixVersion(text)
    expect(v).toMatchObject(version)
    expect(pathInfoJsonArgs(v)).toEqual(args)
  })
})

describe('nix path-info --json in every shape', () => {
  const foo = '/nix/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-foo'
  const bar = '/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar'
  const baz = '/nix/store/xvbd6zmrrjkk7kh4wmf6fg3m3zvsg2m5-baz'
  const sigs = ['asdf:' + 'A'.repeat(86) + '==', 'qwer:' + 'A'.repeat(86) + '==']

  it('format 2 (Nix ≥ 2.33): real paths from the base names under "info", never /nix/store/version', () => {
    const infos = parsePathInfoJson(fixture('nix-2.33-path-info-v2.json'))
    expect(infos.map((i) => i.path).sort()).toEqual([bar, foo, baz])
    expect(infos.find((i) => i.path === foo)).toEqual({ path: foo, valid: true, ultimate: true, signatures: sigs, references: [bar, foo], narSize: 34878 })
    expect(infos.find((i) => i.path === bar)).toMatchObject({ valid: true, ultimate: false, signatures: [], references: [] })
    expect(infos.find((i) => i.path === baz)).toMatchObject({ valid: false })
  })

  it('format 3 (Nix ≥ 2.35): signatures as {keyName, sig}', () => {
    const infos = parsePathInfoJson(fixture('nix-2.35-path-info-v3.json'))
    expect(infos.map((i) => i.path).sort()).toEqual([bar, foo, baz])
    expect(infos.find((i) => i.path === foo)!.signatures).toEqual(sigs)
    expect(infos.find((i) => i.path === baz)!.valid).toBe(false)
  })

  it("takes the store directory the output names (rl-2.33.md: 'Combined with storeDir, the full path can be reconstructed')", () => {
    const text = fixture('nix-2.33-path-info-v2.json').replaceAll('"/nix/store"', '"/opt/store"')
    const infos = parsePathInfoJson(text, '/nix/store')
    expect(infos.map((i) => i.path).sort()).toEqual(['/opt/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar', '/opt/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-foo', '/opt/store/xvbd6zmrrjkk7kh4wmf6fg3m3zvsg2m5-baz'].sort())
  })

  it('format 1 (Nix ≥ 2.33, entries with version and storeDir) is keyed by full path', () => {
    // NixOS/nix src/libstore-tests/data/path-info/json-1/impure.json, keyed as src/nix/path-info.cc does for V1
    const entry = {
      ca: 'fixed:r:sha256:1lr187v6dck1rjh2j6svpikcfz53wyl3qrlcbb405zlh13x0khhh',
      deriver: '/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv',
      narHash: 'sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc=',
      narSize: 34878,
      references: [bar, foo],
      registrationTime: 23423,
      signatures: sigs,
      storeDir: '/nix/store',
      ultimate: true,
      version: 1,
    }
    expect(parsePathInfoJson(JSON.stringify({ [foo]: entry, [baz]: null }))).toEqual([
      { path: foo, valid: true, ultimate: true, signatures: sigs, references: [bar, foo], narSize: 34878 },
      { path: baz, valid: false, ultimate: false, signatures: [], references: [] },
    ])
  })

  it('reads real Nix 2.24.15 output: keyed by path, null for a path never built', () => {
    const infos = parsePathInfoJson(fixture('nix-2.24.15-path-info.json'))
    expect(infos.map((i) => [path.basename(i.path), i.valid, i.ultimate, i.narSize])).toEqual([
      ['17kyd7vhrkg6mc1ig4gpjwdsv0h1j2g0-dep1-1795574631r.drv', true, false, 584],
      ['1aa1gim0iza2zfyb77mdxmnnlbhynziz-ok-1795574631r', true, true, 120],
      ['s8cd50rq3xq38jm4m8wl3hpb1b82a8kc-fail-1795574631r', false, false, undefined],
    ])
  })

  it('an invalid entry in any shape is invalid, never a crash', () => {
    // array (Nix ≤ 2.18, Lix: `{path, valid: false}`, lix/libstore/store-api.cc pathInfoToJSON); a null element has no path to report
    expect(parsePathInfoJson(JSON.stringify([{ path: foo, valid: false }, null]))).toEqual([
      { path: foo, valid: false, ultimate: false, signatures: [], references: [] },
    ])
    expect(parsePathInfoJson(JSON.stringify({ [foo]: null }))[0]).toMatchObject({ path: foo, valid: false })
    expect(parsePathInfoJson(JSON.stringify({ version: 2, storeDir: '/nix/store', info: { [path.basename(foo)]: null } }))).toEqual([
      { path: foo, valid: false, ultimate: false, signatures: [], references: [] },
    ])
    expect(parsePathInfoJson(JSON.stringify({ version: 3, storeDir: '/nix/store', info: {} }))).toEqual([])
  })
})

/**
 * Nix's own counter updates (progress results on the text-less 103/104 activities the worker starts)
 * from event `from` on left out: what Lix ≥ 2.92 may never send, as it sends them at most every
 * 20 ms and stops sending when the build ends (lix/libstore/build/worker.cc updateStatistics).
 */
function withoutCounterUpdates(evs: readonly NixLogEvent[], from: number): NixLogEvent[] {
  const counters = new Set(evs.filter((e) => e.action === 'start' && (e.type === 103 || e.type === 104) && !e.text).map((e) => e.id))
  return evs.filter((e, i) => i < from || !(e.action === 'result' && e.type === 105 && counters.has(e.id)))
}

describe('counts when Nix does not send its final counters (Lix ≥ 2.92)', () => {
  it('never fewer built or substituted than the completed activities show (recorded 2.8 run, updates dropped)', () => {
    const evs = events('nix-2.8-substitute-build-fail.txt')
    const firstSubstitution = evs.findIndex((e) => e.action === 'start' && e.type === 108)
    const { log } = play(withoutCounterUpdates(evs, firstSubstitution))
    // two substitutions and one build stopped after the last update Nix sent; the failed build is named
    expect(log.counts()).toEqual({ built: 1, substituted: 2, failed: 1 })
  })

  it('a substitution whose activity stopped counts, a stale counter notwithstanding', () => {
    // Built event by event from Lix's sources: the worker's counters (lix/libstore/build/worker.cc,
    // started without text), one substitution (substitution-goal.cc: actSubstitute with the path and
    // the substituter; copyStorePath's actCopyPath inside it), the last update never sent.
    const p = '/nix/store/0c5yvrxxfsx4bw7v2d6f4p1q4rqvmgy9-hello-2.12.1'
    const { log } = play([
      { action: 'start', id: 1, level: 0, parent: 0, text: '', type: 104 },
      { action: 'start', id: 2, level: 0, parent: 0, text: '', type: 103 },
      { action: 'result', id: 1, type: 105, fields: [0, 0, 0, 0] },
      { action: 'result', id: 2, type: 105, fields: [0, 1, 0, 0] },
      { action: 'start', id: 3, level: 0, parent: 0, text: '', type: 108, fields: [p, 'https://cache.nixos.org'] },
      { action: 'result', id: 2, type: 105, fields: [0, 1, 1, 0] },
      { action: 'start', id: 4, level: 3, parent: 3, text: `copying path '${p}' from 'https://cache.nixos.org'`, type: 100, fields: [p, 'https://cache.nixos.org', 'local'] },
      { action: 'stop', id: 4 },
      { action: 'stop', id: 3 },
      { action: 'stop', id: 2 },
      { action: 'stop', id: 1 },
    ])
    expect(log.counts()).toEqual({ built: 0, substituted: 1, failed: 0 })
  })

  it('a failed builder counts as failed, not built, though its activity stopped first (Lix: the stop comes at EOF)', () => {
    // lix/libstore/build/local-derivation-goal.cc handleRawChildStream ends the activity when the
    // builder's output ends; derivation-goal.cc buildErrorContents then says "builder for '…' failed…".
    const drv = '/nix/store/2v93068ysc3viaxhlvy85r5vdg6m5nja-b.drv'
    const { log } = play([
      { action: 'start', id: 1, level: 0, parent: 0, text: '', type: 104 },
      { action: 'result', id: 1, type: 105, fields: [0, 1, 0, 0] },
      { action: 'start', id: 2, level: 3, parent: 0, text: `building '${drv}'`, type: 105, fields: [drv, '', 1, 1] },
      { action: 'stop', id: 2 },
      { action: 'msg', level: 0, msg: `\u001b[31;1merror:\u001b[0m builder for '\u001b[35;1m${drv}\u001b[0m' failed with exit code 1` },
      { action: 'stop', id: 1 },
    ])
    expect(log.counts()).toEqual({ built: 0, substituted: 0, failed: 1 })
  })

  it('an interrupted build is not built, though its activity stops (recorded 2.24.15, with and without counters)', () => {
    const evs = events('nix-2.24.15-interrupted.txt')
    expect(play(evs).log.counts()).toEqual({ built: 0, substituted: 0, failed: 0 })
    expect(play(withoutCounterUpdates(evs, 0)).log.counts()).toEqual({ built: 0, substituted: 0, failed: 0 })
    expect(play(evs).log.errors.map((e) => e.replace(/\u001b\[[0-9;]*m/g, ''))).toEqual(['error: interrupted by the user'])
  })
})

describe('failed builds and their dependants', () => {
  const fail = '/nix/store/b0p2sip7rl2rnjx8ysbykg8f3smnhb9h-fail.drv'
  const dep1 = '/nix/store/86jnp44py5z4l4anpzlh4w74ax5chvv6-dep1.drv'
  const dep2 = '/nix/store/dqr9qdhpq5766hz5w8pz290sganp650k-dep2.drv'
  // Nix ≥ 2.29 wording (src/libstore/build/derivation-building-goal.cc, derivation-resolution-goal.cc:
  // "Cannot build '%s'.\n" "Reason: " ANSI_RED "%d %s failed" ANSI_NORMAL "." and "builder %s"),
  // with showKnownOutputs' "Output paths:" and the 7-space indent of "error: " (src/libutil/error.cc).
  const cannotBuild = (drv: string, reason: string) =>
    `\u001b[31;1merror:\u001b[0m Cannot build '\u001b[35;1m${drv}\u001b[0m'.\n       Reason: \u001b[31;1m${reason}\u001b[0m.\n       Output paths:\n         \u001b[35;1m${drv.replace(/\.drv$/, '')}\u001b[0m`

  it('Nix ≥ 2.29: one failed builder with two dependants is 1 failed, each message once', () => {
    // The order `nix build --keep-going .#dep1 .#dep2` gives: the builder's failure when it happens
    // (goal.cc amDone: it has waiters), the top-level dependants' at the end (src/libcmd/installables.cc
    // throwBuildErrors). Nix's counter updates are left out: the count must come from the messages.
    const { log, lines } = play([
      { action: 'start', id: 1, level: 3, parent: 0, text: `building '${fail}'`, type: 105, fields: [fail, '', 1, 1] },
      { action: 'result', id: 1, type: 101, fields: ['failing'] },
      { action: 'msg', level: 0, msg: cannotBuild(fail, 'builder failed with exit code 1') },
      { action: 'stop', id: 1 },
      { action: 'msg', level: 0, msg: cannotBuild(dep1, '1 dependency failed') },
      { action: 'msg', level: 0, msg: cannotBuild(dep2, '1 dependency failed') },
      { action: 'msg', level: 0, msg: `\u001b[31;1merror:\u001b[0m build of '${dep1}^out', '${dep2}^out' failed` },
    ])
    expect(log.counts()).toEqual({ built: 0, substituted: 0, failed: 1 })
    expect(log.errors).toHaveLength(4)
    expect(lines).toContain('fail> failing')
  })

  it('Nix 2.33–2.34: "Build failed due to failed dependency" once per dependant is one error, no failure', () => {
    // src/libstore/build/derivation-goal.cc at 2.33.0; removed in 2.35 as "spamming a gazillion
    // duplicated error messages" (NixOS/nix d79b5a9f8d)
    const { log } = play([
      { action: 'msg', level: 0, msg: cannotBuild(dep1, '1 dependency failed') },
      { action: 'msg', level: 0, msg: '\u001b[31;1merror:\u001b[0m Build failed due to failed dependency' },
      { action: 'msg', level: 0, msg: cannotBuild(dep2, '1 dependency failed') },
      { action: 'msg', level: 0, msg: '\u001b[31;1merror:\u001b[0m Build failed due to failed dependency' },
    ])
    expect(log.counts().failed).toBe(0)
    expect(log.errors).toHaveLength(3)
  })

  it('Nix 2.24.15 --keep-going: a builder failure repeated at the end is one error and one failure (recorded)', () => {
    const { log } = play(events('nix-2.24.15-keep-going-repeated-failure.txt'))
    expect(log.counts()).toEqual({ built: 1, substituted: 0, failed: 1 })
    const plain = log.errors.map((e) => e.replace(/\u001b\[[0-9;]*m/g, ''))
    expect(plain.filter((e) => e.startsWith('error: builder for '))).toHaveLength(1)
    expect(plain).toHaveLength(4) // the builder, dep1, dep2, "build of … failed"
  })

  it('Nix 2.24.15 --keep-going -v: dependants are not failed builds (recorded)', () => {
    const evs = events('nix-2.24.15-keep-going-dependants.txt')
    expect(play(evs).log.counts()).toEqual({ built: 1, substituted: 0, failed: 1 })
    // and from the messages and activities alone
    expect(play(withoutCounterUpdates(evs, 0)).log.counts()).toEqual({ built: 1, substituted: 0, failed: 1 })
  })

  it.each([
    ['≥ 2.29 builder', cannotBuild(fail, 'builder failed with exit code 1'), { drv: fail, dependency: false }],
    ['≥ 2.29 dependant', cannotBuild(dep1, '1 dependency failed'), { drv: dep1, dependency: true }],
    ['≥ 2.29 dependant of two', cannotBuild(dep1, '2 dependencies failed'), { drv: dep1, dependency: true }],
    // derivation-building-goal.cc reject(): the derivation's own
    ['≥ 2.29 platform', `error: Cannot build '${fail}'.\n       Reason: platform mismatch\n       Required system: 'aarch64-linux'`, { drv: fail, dependency: false }],
    ['≤ 2.28 and Lix builder', `error: builder for '${fail}' failed with exit code 3`, { drv: fail, dependency: false }],
    ['≤ 2.28 and Lix dependant', `error: 1 dependencies of derivation '${dep1}' failed to build`, { drv: dep1, dependency: true }],
    ['remote builder', `error: build of '${fail}' on 'ssh://builder' failed: builder for '${fail}' failed with exit code 1`, { drv: fail, dependency: false }],
    ['fixed-output hash', `error: hash mismatch in fixed-output derivation '${fail}':\n  specified: sha256-AAAA\n     got:    sha256-BBBB`, { drv: fail, dependency: false }],
    ['the final summary', `error: build of '${dep1}^out', '${dep2}^out' failed`, undefined],
    ['a log tail quoted in a message', `error: 1 dependencies of derivation '${dep1}' failed to build\n> builder for '${fail}' failed`, { drv: dep1, dependency: true }],
  ])('failure message: %s', (_, msg, expected) => expect(failureOf(msg)).toEqual(expected))
})

describe('remote builders', () => {
  it('copies to and from a builder are not substitutions, and its own counters are not ours (recorded 2.24.15)', () => {
    // The build hook's activities come forwarded inside the worker's (parent = actRealise): a
    // "copying 1 paths" (actCopyPaths with text, store-api.cc copyPaths) with actCopyPath (100) for the
    // input and again for the output, and the remote store's own worker counting the same build.
    const evs = events('nix-2.24.15-remote-build.txt')
    expect(evs.filter((e) => e.action === 'start' && e.type === 100)).toHaveLength(2)
    const { log, lines } = play(evs)
    expect(log.counts()).toEqual({ built: 1, substituted: 0, failed: 0 })
    expect(lines).toContain('remote-1795574817> built remotely')
    expect(play(withoutCounterUpdates(evs, 0)).log.counts()).toEqual({ built: 1, substituted: 0, failed: 0 })
  })

  it('without a parent field (Nix 2.8 prints none), counters that start during a remote build are the builder’s', () => {
    const evs = events('nix-2.24.15-remote-build.txt').map(({ parent: _, ...ev }) => ev)
    expect(play(evs).log.counts()).toEqual({ built: 1, substituted: 0, failed: 0 })
  })
})

describe("a failed builder's last lines (shown after the collapsed build log)", () => {
  // Events as Nix prints them: actBuild (105) with the drv, resBuildLogLine (101) per line, its stop, then the error
  // (derivation-goal.cc, 2.8.0 and 2.24.15: the goal fails after the activity ends).
  const drv = (n: number) => `/nix/store/${String(n).padStart(32, 'a')}-pkg-${n}.drv`
  const buildOf = (id: number, d: string, lines: number, fails: boolean): NixLogEvent[] => [
    { action: 'start', id, level: 3, type: 105, text: `building '${d}'`, fields: [d, '', 1, 1] },
    ...Array.from({ length: lines }, (_, i) => ({ action: 'result', id, type: 101, fields: [`line ${i + 1} of ${d}`] })),
    { action: 'stop', id },
    ...(fails ? [{ action: 'msg', level: 0, msg: `error: builder for '\x1b[35;1m${d}\x1b[0m' failed with exit code 2` }] : []),
  ]

  it('the recorded 2.8 run names its failed derivation', () => {
    expect(play(events('nix-2.8-substitute-build-fail.txt')).log.failedBuilds.map((f) => f.drv)).toEqual(['/nix/store/fv39cg13fbm1jawmkdb6bscgsgvfq81c-cap2-d.drv'])
  })

  it(`keeps the last ${TAIL_LINES} lines of each failed builder, after hundreds of builds that succeeded`, () => {
    const evs = [...Array.from({ length: 500 }, (_, i) => buildOf(i + 10, drv(i + 10), 40, false)).flat(), ...buildOf(1, drv(1), 40, true), ...buildOf(2, drv(2), 3, true)]
    const { log } = play(evs)
    expect(log.failedBuilds.map((f) => [f.drv, f.tail.length, f.tail[0], f.tail.at(-1)])).toEqual([
      [drv(1), TAIL_LINES, `line ${40 - TAIL_LINES + 1} of ${drv(1)}`, `line 40 of ${drv(1)}`],
      [drv(2), 3, `line 1 of ${drv(2)}`, `line 3 of ${drv(2)}`],
    ])
    expect((log as unknown as { tails: Map<string, string[]> }).tails.size).toBeLessThanOrEqual(64 + 2) // flat, not 502 tails
    expect(failureTails(log.failedBuilds)[0]).toBe(`pkg-1: the builder failed; its last ${TAIL_LINES} line(s) (all of it: nix log ${drv(1)})`)
    expect(buildLine({ exitCode: 1, seconds: 3.04, ...log.counts(), failures: log.failedBuilds })).toBe('nix build exited 1 after 3.0s: 500 built, 0 substituted, 2 failed (pkg-1, pkg-2)')
  })
})
