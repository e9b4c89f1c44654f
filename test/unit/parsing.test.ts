// Parsers of what Nix and attic print, on recorded real output and on the documented shapes of other versions.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parsePushLine } from '../../lib/attic.js'
import { backoffMs, classifyError, RetryBudget } from '../../lib/retry.js'
import { nixBuildArgs, parseNixVersion, parsePathInfoJson, pathInfoJsonArgs } from '../../lib/nix.js'
import { BuildLog, parseNixLogLine } from '../../lib/nixlog.js'
import { isPushCandidateName, needsPush } from '../../lib/watcher.js'

const P = '/nix/store/cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-sample-a-captured'

describe('nix --version', () => {
  it.each([
    ['nix (Nix) 2.8.0', { impl: 'nix', major: 2, minor: 8 }, ['--json']],
    ['nix (Nix) 2.33.1', { impl: 'nix', major: 2, minor: 33 }, ['--json', '--json-format', '2']],
    ['nix (Lix, like Nix) 2.91.1', { impl: 'lix', major: 2, minor: 91 }, ['--json']],
    ['nix (Determinate Nix 3.6.2) 2.29.0', { impl: 'nix', major: 2, minor: 29 }, ['--json']],
  ])('%s', (text, version, args) => {
    const v = parseNixVersion(text)
    expect(v).toMatchObject(version)
    expect(pathInfoJsonArgs(v)).toEqual(args)
  })
  it('is undefined for garbage', () => expect(parseNixVersion('command not found')).toBeUndefined())
})

describe('nix path-info --json across versions', () => {
  const sig = 'cache.example-1:AAAA'
  it('reads the array of Nix ≤ 2.18 and Lix', () => {
    const infos = parsePathInfoJson(JSON.stringify([{ path: P, narSize: 120, ultimate: true, references: [P], signatures: [sig] }]))
    expect(infos).toEqual([{ path: P, valid: true, ultimate: true, signatures: [sig], references: [P], narSize: 120 }])
  })
  it('reads the object keyed by path of Nix ≥ 2.19, with null for invalid paths', () => {
    const infos = parsePathInfoJson(JSON.stringify({ [P]: { narSize: 1, signatures: [sig], references: [] }, '/nix/store/x-gone': null }))
    expect(infos.map((i) => [i.path, i.valid, i.signatures])).toEqual([[P, true, [sig]], ['/nix/store/x-gone', false, []]])
  })
  it('reads format 3: bare names and {keyName, sig} signatures', () => {
    const base = path.basename(P)
    const infos = parsePathInfoJson(JSON.stringify({ [base]: { signatures: [{ keyName: 'cache.example-1', sig: 'AAAA' }], references: [base] } }))
    expect(infos[0]).toMatchObject({ path: P, signatures: [sig], references: [P] })
  })
  it('reads real Nix 2.8 output with valid: false', () => {
    expect(parsePathInfoJson(JSON.stringify([{ path: P, valid: false }]))[0]!.valid).toBe(false)
  })
})

describe('which store paths are pushed', () => {
  it.each([
    ['cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-hello-2.12', true],
    ['cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-hello-2.12.drv', false],
    ['cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-hello-2.12.drv.chroot', false],
    ['cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-hello-2.12.check', false],
    ['cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-source', false],
    ['cvqlpj0v3y4rvw0hrsd57v4vbbr6jzvr-hello.lock', false],
    ['.links', false],
  ])('%s → %s', (name, expected) => expect(isPushCandidateName(name)).toBe(expected))

  it('skips substituted paths signed by the target or an upstream cache, keeps locally built ones', () => {
    const skip = new Set(['cache.nixos.org-1', 'mine-1'])
    const info = (ultimate: boolean, sigs: string[]) => ({ path: P, valid: true, ultimate, signatures: sigs, references: [] })
    expect(needsPush(info(true, []), skip)).toBe(true)
    expect(needsPush(info(false, ['cache.nixos.org-1:abc']), skip)).toBe(false)
    expect(needsPush(info(false, ['mine-1:abc']), skip)).toBe(false)
    expect(needsPush(info(false, ['other-1:abc']), skip)).toBe(true)
  })
})

describe('Nix internal-json build log', () => {
  const recorded = fs.readFileSync(path.join(import.meta.dirname, '..', 'fixtures', 'nix-2.8-internal-json.txt'), 'utf8').split('\n')

  it('counts built, failed and substituted on a recorded Nix 2.8 --keep-going run', () => {
    const log = new BuildLog()
    const lines = recorded.flatMap((l) => {
      const ev = parseNixLogLine(l)
      return ev ? log.feed(ev) : []
    })
    // Its one substitution (108, the first line) comes from another run and never stops, and the
    // counter updates were not kept: only completed activities count.
    expect(log.counts()).toEqual({ built: 1, substituted: 0, failed: 1 })
    expect(lines).toContain('sample-a-captured> hello from a')
    expect(lines).toContain('sample-b-captured> b fails')
    expect(lines.some((l) => l.includes("copying path '" + P))).toBe(true)
    expect(lines.some((l) => l.includes('failed with exit code 3'))).toBe(true)
    expect(lines.some((l) => l.includes('querying info'))).toBe(false) // debug-level noise stays out
  })

  it("takes Nix's own progress counters when it reports them (recorded: 2 substituted, 1 built, 1 failed)", () => {
    const log = new BuildLog()
    const text = fs.readFileSync(path.join(import.meta.dirname, '..', 'fixtures', 'nix-2.8-substitute-build-fail.txt'), 'utf8')
    for (const l of text.split('\n')) {
      const ev = parseNixLogLine(l)
      if (ev) log.feed(ev)
    }
    expect(log.counts()).toEqual({ built: 1, substituted: 2, failed: 1 })
  })

  it('leaves an interrupted build out of the built count', () => {
    const log = new BuildLog()
    const drv = '/nix/store/2v93068ysc3viaxhlvy85r5vdg6m5nja-b.drv'
    log.feed({ action: 'start', id: 7, type: 104, level: 0, text: '' })
    log.feed({ action: 'result', id: 7, type: 105, fields: [0, 2, 1, 0] })
    log.feed({ action: 'start', id: 8, type: 105, level: 3, text: `building '${drv}'`, fields: [drv, '', 1, 1] })
    log.feed({ action: 'msg', level: 0, msg: 'error: interrupted by the user' })
    expect(log.counts()).toMatchObject({ built: 0, failed: 0 })
    expect(log.errors).toEqual(['error: interrupted by the user'])
  })

  it('recognises the failure message of newer Nix', () => {
    const log = new BuildLog()
    const drv = '/nix/store/2v93068ysc3viaxhlvy85r5vdg6m5nja-b.drv'
    log.feed({ action: 'start', id: 1, type: 105, level: 3, text: `building '${drv}'`, fields: [drv, '', 1, 1] })
    log.feed({ action: 'msg', level: 0, msg: `error: Cannot build '${drv}'.\n       Reason: builder failed with exit code 1.` })
    expect(log.counts()).toEqual({ built: 0, substituted: 0, failed: 1 })
  })

  it('ignores lines that are not events', () => {
    expect(parseNixLogLine('warning: Git tree is dirty')).toBeUndefined()
    expect(parseNixLogLine('@nix {not json')).toBeUndefined()
  })
})

describe('attic push output', () => {
  it.each([
    [`✅ ${P} (12.3 MiB/s)`, { ok: true, path: P }],
    [`✅ ${P} (1.2 MiB/s, 40.0% deduplicated)`, { ok: true, path: P }],
    [`❌ ${P}: HTTP 413 Payload Too Large`, { ok: false, path: P, error: 'HTTP 413 Payload Too Large' }],
    ['✅ All done! (3 already cached, 0 in upstream)', undefined],
    ['⚙️ Pushing 3 paths to "main" on "greedy" (0 already cached, 0 in upstream)...', undefined],
    ['🤷 Nothing selected.', undefined],
  ])('%s', (line, expected) => expect(parsePushLine(line)).toEqual(expected))
})

describe('nix build arguments', () => {
  it('adds --out-link result and --keep-going unless the user chose otherwise', () => {
    expect(nixBuildArgs(['.#a'], [], true)).toEqual(['.#a', '--out-link', 'result', '--keep-going'])
    expect(nixBuildArgs([], ['-o', 'out', '-k'], true)).toEqual(['-o', 'out', '-k'])
    expect(nixBuildArgs(['.#a'], ['--no-link'], false)).toEqual(['.#a', '--no-link'])
  })
})

describe('retry policy', () => {
  it.each([
    ["error: unable to upload 'http://c/nar/x.nar.zst': HTTP error 413 ('Payload Too Large')", true, 413],
    ["error: unable to upload 'http://c/x.narinfo': HTTP error 401 ('Unauthorized')", true, 401],
    ["error: unable to upload 'http://c/x.narinfo': HTTP error 503 ('Service Unavailable')", false, 503],
    ["error: unable to upload 'http://c/x.narinfo': HTTP error 429 ('Too Many Requests')", false, 429],
    ["error: unable to upload 'http://c/nar/x': HTTP error 100 ('Continue') (curl error: Timeout was reached)", false, 100],
    ['HTTP 413 Payload Too Large', true, 413],
    ['error: cannot connect to socket: Connection refused', false, undefined],
  ])('%s → permanent %s', (text, permanent, status) => expect(classifyError(text)).toMatchObject({ permanent, status }))

  // The attic client prints a server's refusal as `<error>: <message>`, with no HTTP status
  // (attic client/src/api/mod.rs, server/src/error.rs, token/src/lib.rs for the access texts).
  it.each([
    ['❌ x: Unauthorized: Unauthorized.', 'Unauthorized', true, true],
    ['AccessError: Access error: User does not have permission to complete this action.', 'AccessError', true, true],
    ['NoSuchCache: The requested cache does not exist.', 'NoSuchCache', true, true],
    ['RequestError: General request error: invalid store path', 'RequestError', true, false],
    ['InternalServerError: The server encountered an internal error or misconfiguration.', 'InternalServerError', false, false],
    ['IncompleteNar: The requested NAR has missing chunks and needs to be repaired.', 'IncompleteNar', false, false],
  ])('attic says %s → %s, permanent %s', (text, atticError, permanent, cacheWide) => {
    const c = classifyError(text)
    expect(c).toMatchObject({ atticError, permanent })
    expect(c.cacheWide === true).toBe(cacheWide)
  })

  it('a request that never reached attic is transient', () => {
    expect(classifyError('error sending request for url (http://127.0.0.1:9/_api/v1/upload-path)').permanent).toBe(false)
  })

  it('backs off 1, 2, 4 s with jitter, capped', () => {
    expect([1, 2, 3].map((a) => backoffMs(a, () => 0.5))).toEqual([1000, 2000, 4000])
    expect(backoffMs(1, () => 0)).toBe(500)
    expect(backoffMs(1, () => 0.999)).toBeLessThan(1500)
    expect(backoffMs(10, () => 0.5)).toBe(15_000)
  })

  const at = (file: string) => `error: unable to upload 'http://c/${file}': HTTP error 503 ('Service Unavailable')`
  it('gives up after three tries that fail at the same file', () => {
    const budget = new RetryBudget(10)
    expect([1, 2, 3].map(() => budget.failed(at('a.narinfo')))).toEqual([true, true, false])
    const down = new RetryBudget(10)
    const refused = "error: unable to download 'http://c/a.narinfo': Couldn't connect to server (7)"
    expect([1, 2, 3].map(() => down.failed(refused))).toEqual([true, true, false])
  })

  it('counts again when a try failed further on than the last, at most three tries per path', () => {
    const budget = new RetryBudget(2)
    // every upload's first try refused: each of two paths costs two failures, and the batch still gets through
    expect(['nar/a', 'a.narinfo', 'nar/b', 'b.narinfo'].map((f) => budget.failed(at(f)))).toEqual([true, true, true, true])
    expect(budget.nextTry).toBe(2)
    expect(budget.failed(at('c.narinfo'))).toBe(true)
    expect(budget.failed(at('d.narinfo'))).toBe(false) // 6 tries for 2 paths: enough
  })
})
