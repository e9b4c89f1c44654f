// The serve protocol's wire format (lib/serve.ts), against the bytes Nix's own tests record:
// test/fixtures/nix-serve-unkeyed-valid-path-info-2.4.bin is NixOS/nix
// src/libstore-tests/data/serve-protocol/unkeyed-valid-path-info-2.4.bin (at 88b09c64), two path
// infos as `nix-store --serve` writes them; the expected values are that file's .json beside it.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { encode, readPathInfos, readUnkeyedInfo, WireReader } from '../../lib/serve.js'
import { ROOT } from '../helpers.js'

const fixture = fs.readFileSync(path.join(ROOT, 'test', 'fixtures', 'nix-serve-unkeyed-valid-path-info-2.4.bin'))
const zeros64 = 'A'.repeat(86) + '==' // base64 of 64 zero bytes, as the .json shows them

describe('serve protocol wire format', () => {
  it("reads Nix's recorded path infos: references, NAR size and signatures as keyName:sig", async () => {
    const r = new WireReader()
    r.push(fixture)
    expect(await readUnkeyedInfo(r)).toEqual({
      references: ['/nix/store/g1w7hyyyy1w7hy3qg1w7hy3qgqqqqy3q-foo.drv'],
      narSize: 34878,
      signatures: [],
    })
    expect(await readUnkeyedInfo(r)).toEqual({
      references: ['/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar', '/nix/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-foo'],
      narSize: 34878,
      signatures: [`fake-sig-1:${zeros64}`, `fake-sig-2:${zeros64}`],
    })
  })

  it('reads a QueryPathInfos answer in pieces, as a pipe delivers it, up to the empty path that ends it', async () => {
    const r = new WireReader()
    const answer = Buffer.concat([encode('/nix/store/p1-x'), fixture.subarray(0, 0xf0), encode('')])
    const reading = readPathInfos(r)
    for (let i = 0; i < answer.length; i += 7) r.push(answer.subarray(i, i + 7))
    expect(await reading).toEqual([{ path: '/nix/store/p1-x', valid: true, references: ['/nix/store/g1w7hyyyy1w7hy3qg1w7hy3qgqqqqy3q-foo.drv'], narSize: 34878, signatures: [] }])
  })

  it('writes numbers as 64-bit little-endian and strings padded to 8 bytes; a cut-off answer fails, it does not hang', async () => {
    expect(encode(2n, ['/nix/store/abc']).toString('hex')).toBe(
      '0200000000000000' + '0100000000000000' + '0e00000000000000' + Buffer.from('/nix/store/abc').toString('hex') + '0000',
    )
    const r = new WireReader()
    r.push(encode('/nix/store/p1-x').subarray(0, 12))
    const reading = readPathInfos(r)
    r.end(new Error('nix-store --serve ended (exit 1)'))
    await expect(reading).rejects.toThrow('nix-store --serve ended (exit 1)')
  })
})
