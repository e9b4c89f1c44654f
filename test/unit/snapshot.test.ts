// The store snapshot: every name present at start is known, names created later are not, and it
// holds 8 bytes an entry however many names the store has.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { NameSet, nameKey, StoreSnapshot } from '../../lib/snapshot.js'

const storeName = (i: number) => `${i.toString(32).padStart(32, '0')}-pkg-${i}`

describe('StoreSnapshot', () => {
  it('knows every name present when it was taken, and none made after', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'greedy-snapshot-'))
    for (let i = 0; i < 20_000; i++) fs.writeFileSync(path.join(dir, storeName(i)), '')
    fs.writeFileSync(path.join(dir, `${storeName(7)}.lock`), '')
    const snap = StoreSnapshot.take(dir)
    expect(snap.size).toBe(20_001)
    for (let i = 0; i < 20_000; i++) if (!snap.has(storeName(i))) throw new Error(`${storeName(i)} not known`)
    const later = Array.from({ length: 20_000 }, (_, i) => storeName(20_000 + i))
    expect(later.filter((n) => snap.has(n))).toEqual([])
    // A lock left behind does not make its path known.
    expect(snap.has(`${storeName(7)}.lock`)).toBe(true)
    expect(snap.has(`${storeName(20_000)}.lock`)).toBe(false)
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('hashes names to distinct safe integers', () => {
    const keys = new Set(Array.from({ length: 200_000 }, (_, i) => nameKey(storeName(i))))
    expect(keys.size).toBe(200_000)
    for (const k of [...keys].slice(0, 1000)) expect(Number.isSafeInteger(k)).toBe(true)
  })
})

describe('NameSet', () => {
  it('holds the names added, forgets the ones deleted, and no others', () => {
    const set = new NameSet()
    for (let i = 0; i < 10_000; i++) set.add(storeName(i))
    for (let i = 0; i < 10_000; i += 2) set.delete(storeName(i))
    const held = Array.from({ length: 20_000 }, (_, i) => i).filter((i) => set.has(storeName(i)))
    expect(held).toEqual(Array.from({ length: 5_000 }, (_, i) => 2 * i + 1))
  })
})
