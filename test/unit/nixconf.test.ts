import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { jobNixConfig, removeNixConfBlock, shellExport, userNixConf, withJobNixConfig } from '../../lib/nixconf.js'
import { tmpDir } from '../helpers.js'

describe("the job's Nix settings", () => {
  const config = jobNixConfig({ url: 'https://attic.example.com/main', publicKeys: ['main:k1=', 'up:k2='], netrc: '/p/.greedy-nix/secrets/netrc' })

  it('name the cache, its keys and netrc, and ask the cache again rather than trust an old "not there"', () => {
    expect(config.split('\n').slice(1)).toEqual([
      'extra-substituters = https://attic.example.com/main',
      'extra-trusted-public-keys = main:k1= up:k2=',
      'netrc-file = /p/.greedy-nix/secrets/netrc',
      'narinfo-cache-negative-ttl = 0',
    ])
  })

  it("come after the user's own NIX_CONFIG, once however often they are applied", () => {
    const once = withJobNixConfig({ NIX_CONFIG: 'max-jobs = 2' }, config)
    expect(once.NIX_CONFIG).toBe(`max-jobs = 2\n${config}`)
    expect(withJobNixConfig(once, config).NIX_CONFIG).toBe(once.NIX_CONFIG)
    expect(withJobNixConfig({}, config).NIX_CONFIG).toBe(config)
    expect(withJobNixConfig({ NIX_CONFIG: 'x = 1' }, undefined).NIX_CONFIG).toBe('x = 1')
  })

  it('reach a POSIX shell intact through env.sh, quotes and newlines included', () => {
    const value = `a = it's\n${config}`
    const r = spawnSync('sh', ['-c', `${shellExport('NIX_CONFIG', value)}printf %s "$NIX_CONFIG"`], { encoding: 'utf8' })
    expect(r.stdout).toBe(value)
  })

  it('the user nix.conf is the first of NIX_USER_CONF_FILES, else $XDG_CONFIG_HOME/nix/nix.conf, else ~/.config', () => {
    expect(userNixConf({ NIX_USER_CONF_FILES: '/a/nix.conf:/b/nix.conf', XDG_CONFIG_HOME: '/x' })).toBe('/a/nix.conf')
    expect(userNixConf({ XDG_CONFIG_HOME: '/x', HOME: '/h' })).toBe('/x/nix/nix.conf')
    expect(userNixConf({ HOME: '/h' })).toBe('/h/.config/nix/nix.conf')
  })

  it("a block an earlier greedy-nix left is removed; the file's other lines stay; a file without one is untouched", async () => {
    const file = path.join(tmpDir('greedy-nixconf-'), 'nix.conf')
    fs.writeFileSync(file, 'max-jobs = 3\n# greedy-nix begin\nextra-substituters = http://x\n# greedy-nix end\ncores = 1\n')
    expect(await removeNixConfBlock(file)).toBe(true)
    expect(fs.readFileSync(file, 'utf8')).toBe('max-jobs = 3\ncores = 1\n')
    expect(await removeNixConfBlock(file)).toBe(false)
    expect(fs.readFileSync(file, 'utf8')).toBe('max-jobs = 3\ncores = 1\n')
    expect(await removeNixConfBlock(path.join(path.dirname(file), 'none.conf'))).toBe(false)
  })
})
