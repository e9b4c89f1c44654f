import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseInstallables } from '../../lib/cli.js'
import { parseConfig, settingsHelp, VARIABLES, type Variable } from '../../lib/config.js'

const KEY = 'cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='

describe('parseConfig', () => {
  it('has sensible defaults and no backend when nothing is configured', () => {
    const { config, errors } = parseConfig({}, {}, '/work/p')
    expect(errors).toEqual([])
    expect(config).toMatchObject({
      backend: 'none', atticCache: 'main', client: undefined, drainTimeout: 120, strict: false,
      stateDir: path.resolve('/work/p/.greedy-nix'),
    })
  })

  it('puts the state dir under CI_PROJECT_DIR, and GREEDY_STATE_DIR wins', () => {
    expect(parseConfig({ CI_PROJECT_DIR: '/builds/x' }, {}, '/tmp').config.stateDir).toBe('/builds/x/.greedy-nix')
    expect(parseConfig({ CI_PROJECT_DIR: '/builds/x', GREEDY_STATE_DIR: 'st' }, {}, '/tmp').config.stateDir).toBe('/tmp/st')
  })

  it('splits ATTIC_SERVER candidates on spaces and commas', () => {
    const { config } = parseConfig({ ATTIC_SERVER: ' https://a.example/,  http://b.example:8080 \n https://c.example ' })
    expect(config.backend).toBe('attic')
    expect(config.atticServers).toEqual(['https://a.example/', 'http://b.example:8080', 'https://c.example'])
  })

  it('GREEDY_CACHE_MAX_SIZE and --cache-max-size: sizes as users write them; a bad value is named with what was expected', () => {
    const size = (v: string) => parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c', GREEDY_CACHE_MAX_SIZE: v })
    expect(size('500M').config.cacheMaxSize).toBe(500 * 1024 ** 2)
    expect(size('2G').config.cacheMaxSize).toBe(2 * 1024 ** 3)
    expect(size('1.5GiB').config.cacheMaxSize).toBe(1.5 * 1024 ** 3)
    expect(size('3 MiB').config.cacheMaxSize).toBe(3 * 1024 ** 2)
    expect(size('2GB').config.cacheMaxSize).toBe(2e9)
    expect(size('123456').config.cacheMaxSize).toBe(123456)
    expect(size('64k').config.cacheMaxSize).toBe(65536)
    expect(parseConfig({ GREEDY_CACHE_MAX_SIZE: '1G' }, { 'cache-max-size': '10M' }).config.cacheMaxSize).toBe(10 * 1024 ** 2)
    expect(parseConfig({}).config.cacheMaxSize).toBeUndefined()
    for (const bad of ['lots', '0', '-1G', '2 P', '1.5.2G']) {
      const r = size(bad)
      expect(r.warnings).toEqual([`GREEDY_CACHE_MAX_SIZE: "${bad}" expected a size such as 500M, 2G, 1.5GiB or a number of bytes; using no budget`])
      expect(r.config).toMatchObject({ backend: 'nix', cacheMaxSize: undefined }) // a tuning typo never turns the cache off
    }
    expect(parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c' }, { 'cache-max-size': 'huge' }).warnings).toEqual(['--cache-max-size: "huge" expected a size such as 500M, 2G, 1.5GiB or a number of bytes; using no budget'])
  })

  it('push jobs: 1 for a file:// cache, 16 for a remote store URL, 2 for attic; GREEDY_PUSH_JOBS wins; a bad value is named', () => {
    expect(parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c' }).config.pushJobs).toBe(1)
    expect(parseConfig({ GREEDY_CACHE_URL: 'https://cache.example.org' }).config.pushJobs).toBe(16)
    expect(parseConfig({ GREEDY_CACHE_URL: 's3://bucket?region=eu-west-1' }).config.pushJobs).toBe(16)
    expect(parseConfig({ ATTIC_SERVER: 'https://attic.example.org' }).config.pushJobs).toBe(2)
    expect(parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c', GREEDY_PUSH_JOBS: '4' }).config.pushJobs).toBe(4)
    expect(parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c' }, { 'push-jobs': 3 }).config.pushJobs).toBe(3)
    for (const bad of ['0', '65', 'many', '2.5']) {
      const r = parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c', GREEDY_PUSH_JOBS: bad })
      expect(r.warnings).toEqual([`GREEDY_PUSH_JOBS: "${bad}" expected a whole number from 1 to 64; using the cache's default`])
      expect(r.config).toMatchObject({ backend: 'nix', pushJobs: 1 })
    }
  })

  it('lets flags override the environment', () => {
    const { config } = parseConfig({ ATTIC_CACHE: 'env', GREEDY_DRAIN_TIMEOUT: '5' }, { 'attic-cache': 'flag', 'drain-timeout': '7', strict: true })
    expect(config).toMatchObject({ atticCache: 'flag', drainTimeout: 7, strict: true })
  })

  it('keeps GREEDY_STRICT=1 when the --strict flag is absent (an absent boolean flag may arrive as false)', () => {
    expect(parseConfig({ GREEDY_STRICT: '1' }, { strict: false }).config.strict).toBe(true)
  })

  it.each([
    ['ATTIC_SERVER', 'ftp://x', /^ATTIC_SERVER: "ftp:\/\/x" expected an http:\/\/ or https:\/\/ URL/],
    ['ATTIC_SERVER', ' , ', /^ATTIC_SERVER: " , " expected at least one URL/],
    ['GREEDY_CACHE_URL', 'cache.example.org', /^GREEDY_CACHE_URL: "cache.example.org" expected a Nix store URL/],
    ['GREEDY_TRUSTED_PUBLIC_KEYS', 'nokey', /^GREEDY_TRUSTED_PUBLIC_KEYS: "nokey" expected name:base64 public keys/],
    ['ATTIC_CACHE', 'my cache', /^ATTIC_CACHE: "my cache" expected an attic cache name/],
    // attic's rule (attic/src/cache.rs): no dots, no leading "-", at most 50 characters.
    ['ATTIC_CACHE', 'bad.name', /^ATTIC_CACHE: "bad.name" expected an attic cache name/],
    ['ATTIC_CACHE', '-main', /^ATTIC_CACHE: "-main" expected an attic cache name/],
    ['ATTIC_CACHE', 'x'.repeat(51), /^ATTIC_CACHE: "x{51}" expected an attic cache name/],
  ])('names %s and what was expected when its value is bad', (name, value, message) => {
    const { config, errors } = parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c', [name]: value })
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatch(message)
    expect(config.backend).toBe('none') // a bad config disables the cache, it does not half-apply
  })

  it.each([
    ['GREEDY_DRAIN_TIMEOUT', '5m', 'expected a number of seconds (0 or more); using the default, 120', { drainTimeout: 120 }],
    ['GREEDY_WATCH_MAX_AGE', '1d', 'expected a whole number of seconds (1 or more); using the default, 2678400', { watchMaxAge: 2678400 }],
    ['GREEDY_STRICT', 'maybe', 'expected true or false (1/0, yes/no, on/off); using false', { strict: false }],
    ['GREEDY_DEBUG', 'loud', 'expected true or false (1/0, yes/no, on/off); using false', { debug: false }],
    ['GREEDY_INCLUDE', '(', 'expected a regular expression (Invalid regular expression: /(/: Unterminated group); using every path', { include: undefined }],
    ['GREEDY_EXCLUDE', '[', 'expected a regular expression (Invalid regular expression: /[/: Unterminated character class); using none excluded', { exclude: undefined }],
  ] as const)('a bad %s is named, its default used, and the cache stays on', (name, value, message, used) => {
    const { config, errors, warnings } = parseConfig({ GREEDY_CACHE_URL: 'file:///tmp/c', [name]: value })
    expect(errors).toEqual([])
    expect(warnings).toEqual([`${name}: "${value}" ${message}`])
    expect(config).toMatchObject({ backend: 'nix', ...used })
  })

  it.each(['team+ci', 'main', 'a_b-c', '0', 'x'.repeat(50)])('accepts the attic cache name %s', (name) => {
    const { config, errors } = parseConfig({ ATTIC_SERVER: 'https://attic.example.com', ATTIC_CACHE: name })
    expect(errors).toEqual([])
    expect(config.atticCache).toBe(name)
  })

  it('never echoes a secret in an error', () => {
    const { errors } = parseConfig({ GREEDY_CACHE_URL: 'file:///c', GREEDY_SIGNING_KEY: 'no-colon-secret-value' })
    expect(errors).toEqual(['GREEDY_SIGNING_KEY: expected a secret key of the form name:base64'])
  })

  it('takes user:password out of an http(s) GREEDY_CACHE_URL (they go to a netrc, not argv)', () => {
    const { config, errors } = parseConfig({ GREEDY_CACHE_URL: 'https://ci:p%40ss@cache.example.com/nix?priority=30' })
    expect(errors).toEqual([])
    expect(config.cacheUrl).toBe('https://cache.example.com/nix?priority=30')
    expect(config.cacheCredentials).toEqual({ login: 'ci', password: 'p@ss' })
    expect(parseConfig({ GREEDY_CACHE_URL: 'ssh-ng://builder@host' }).config).toMatchObject({ cacheUrl: 'ssh-ng://builder@host', cacheCredentials: undefined })
  })

  it('names the flag when a flag carries the bad value', () => {
    expect(parseConfig({}, { 'cache-url': 'nope' }).errors[0]).toMatch(/^--cache-url: "nope"/)
  })

  it('refuses two caches, or a secret given twice', () => {
    const both = parseConfig({ ATTIC_SERVER: 'http://a', GREEDY_CACHE_URL: 'file:///c' })
    expect(both.errors).toEqual(['ATTIC_SERVER and GREEDY_CACHE_URL are both set: choose one cache'])
    expect(parseConfig({ ATTIC_TOKEN: 't', ATTIC_TOKEN_FILE: '/f' }).errors[0]).toMatch(/both set/)
  })

  it('accepts valid public keys and regexes', () => {
    const { config, errors } = parseConfig({ GREEDY_CACHE_URL: 's3://bucket?region=eu-west-1', GREEDY_TRUSTED_PUBLIC_KEYS: KEY, GREEDY_EXCLUDE: '-vendor-' })
    expect(errors).toEqual([])
    expect(config.trustedPublicKeys).toEqual([KEY])
    expect(config.exclude?.test('/nix/store/x-vendor-1')).toBe(true)
  })

  it('documents every variable in the help text, within 100 columns', () => {
    const text = settingsHelp(Object.keys(VARIABLES) as Variable[])
    for (const v of ['ATTIC_SERVER', 'ATTIC_CACHE', 'ATTIC_TOKEN', 'ATTIC_TOKEN_FILE', 'GREEDY_CACHE_URL', 'GREEDY_SIGNING_KEY',
      'GREEDY_SIGNING_KEY_FILE', 'GREEDY_TRUSTED_PUBLIC_KEYS', 'GREEDY_CLIENT', 'GREEDY_STATE_DIR', 'GREEDY_DRAIN_TIMEOUT',
      'GREEDY_INCLUDE', 'GREEDY_EXCLUDE', 'GREEDY_STRICT', 'GREEDY_DEBUG', 'GREEDY_CACHE_MAX_SIZE', 'GREEDY_PUSH_JOBS']) expect(text).toContain(v)
    for (const line of text.split('\n')) expect(line.length, line).toBeLessThanOrEqual(100)
  })
})

describe('parseInstallables', () => {
  it.each([
    ['[".#a",".#b"]', ['.#a', '.#b']],
    ['[".#a", ".#b^out,dev"]', ['.#a', '.#b^out,dev']],
    ['[.#a, .#b]', ['.#a', '.#b']],
    ["['.#a', '.#b']", ['.#a', '.#b']],
    ['[]', []],
    ['.#a  .#b\n.#c', ['.#a', '.#b', '.#c']],
    ['', []],
  ])('%j → %j', (text, expected) => expect(parseInstallables(text)).toEqual(expected))
  it('rejects what is no list', () => {
    expect(parseInstallables('[1, 2')).toBeUndefined()
    expect(parseInstallables('[1, 2]')).toBeUndefined()
  })
})
