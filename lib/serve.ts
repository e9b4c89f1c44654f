// One long-lived `nix-store --serve` answers the watcher's "which of these paths are valid, and
// how are they signed?" for the watcher's whole life. On a wide build of tiny derivations, a
// `nix path-info` process per check cost the build ~50 ms of wall time each (measured on a fan of
// 300 on 2 cores: process starts compete with Nix's own); a query on an open connection costs none.
//
// The protocol is Nix's serve protocol (the one `ssh://` stores speak), stable since Nix 2.0:
// NixOS/nix src/libstore/include/nix/store/serve-protocol.hh (magic numbers, commands),
// src/nix/nix-store/nix-store.cc `opServe` (the server's loop), src/libstore/serve-protocol.cc
// (`UnkeyedValidPathInfo` on the wire) and src/libutil/serialise.cc (numbers and strings).
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import type { Readable, Writable } from 'node:stream'
import type { PathInfo } from './nix.js'

const SERVE_MAGIC_1 = 0x390c9debn
const SERVE_MAGIC_2 = 0x5452eecbn
/** 2.5: path infos carry narHash, ca and signatures from 2.4 on (serve-protocol.cc). */
const CLIENT_VERSION = (2n << 8n) | 5n
const CMD_QUERY_PATH_INFOS = 2n

/** Numbers are 64-bit little-endian; a string is its length, its bytes, then zeros up to a multiple of 8 (serialise.cc). */
export function encode(...items: Array<bigint | string | readonly string[]>): Buffer {
  const parts: Buffer[] = []
  const num = (n: bigint) => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(n)
    parts.push(b)
  }
  const str = (s: string) => {
    const bytes = Buffer.from(s, 'utf8')
    num(BigInt(bytes.length))
    parts.push(bytes, Buffer.alloc((8 - (bytes.length % 8)) % 8))
  }
  for (const item of items) {
    if (typeof item === 'bigint') num(item)
    else if (typeof item === 'string') str(item)
    else {
      num(BigInt(item.length)) // a set or list: its count, then its members
      for (const s of item) str(s)
    }
  }
  return Buffer.concat(parts)
}

/** Reads the server's answers as they arrive. */
export class WireReader {
  private buf: Buffer = Buffer.alloc(0)
  private wake: (() => void) | undefined
  private ended: Error | undefined

  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk
    this.wake?.()
  }

  end(err: Error): void {
    this.ended ??= err
    this.wake?.()
  }

  private async need(n: number): Promise<void> {
    while (this.buf.length < n) {
      if (this.ended) throw this.ended
      await new Promise<void>((resolve) => (this.wake = resolve))
      this.wake = undefined
    }
  }

  async num(): Promise<bigint> {
    await this.need(8)
    const n = this.buf.readBigUInt64LE(0)
    this.buf = this.buf.subarray(8)
    return n
  }

  async str(): Promise<string> {
    const len = Number(await this.num())
    const padded = Math.ceil(len / 8) * 8
    await this.need(padded)
    const s = this.buf.toString('utf8', 0, len)
    this.buf = this.buf.subarray(padded)
    return s
  }

  async strs(): Promise<string[]> {
    const out: string[] = []
    for (let n = Number(await this.num()); n > 0; n--) out.push(await this.str())
    return out
  }
}

/** What the serve protocol tells of a valid path. It does not say whether the path was built here (`ultimate`). */
export type ServedInfo = Omit<PathInfo, 'ultimate'>

/** One `UnkeyedValidPathInfo` as protocol ≥ 2.4 writes it (serve-protocol.cc). */
export async function readUnkeyedInfo(r: WireReader): Promise<Omit<ServedInfo, 'path' | 'valid'>> {
  await r.str() // deriver
  const references = await r.strs()
  await r.num() // "download size": the NAR size again
  const narSize = Number(await r.num())
  await r.str() // narHash
  await r.str() // content address
  const signatures = await r.strs()
  return { references, narSize, signatures }
}

/** Answers to QueryPathInfos: (path, info) pairs for the valid paths asked for, ended by an empty path (nix-store.cc). */
export async function readPathInfos(r: WireReader): Promise<ServedInfo[]> {
  const infos: ServedInfo[] = []
  for (;;) {
    const path = await r.str()
    if (path === '') return infos
    infos.push({ path, valid: true, ...(await readUnkeyedInfo(r)) })
  }
}

/**
 * A store keeps each answer in memory: "valid" for `narinfo-cache-positive-ttl` (30 days), "not
 * valid" for `narinfo-cache-negative-ttl` (1 hour) (store-api.cc, `queryPathInfoFromClientCache`).
 * A long-lived server must answer what the store holds now: a path built after a "not valid", or
 * deleted after a "valid" (seen here: still "valid" on the same connection until these were 0).
 */
const NO_CLIENT_CACHE = ['--option', 'narinfo-cache-negative-ttl', '0', '--option', 'narinfo-cache-positive-ttl', '0']

/**
 * A `nix-store --serve` connection, opened on first use. Queries are answered one at a time, in
 * order. A daemon behind it keeps its own per-connection answers, so callers close the connection
 * after any path comes back invalid.
 */
export class ServeConnection {
  private child: ChildProcessByStdio<Writable, Readable, Readable> | undefined
  private reader = new WireReader()
  private queue: Promise<unknown> = Promise.resolve()
  private stderrTail = ''

  constructor(
    private readonly timeoutMs = 60_000,
    /** Told each time a server process starts (GREEDY_DEBUG; the benchmarks count processes). */
    private readonly onStart?: () => void,
  ) {}

  /** Path info of those of `paths` that are valid; rejects (and closes) when the server fails or is too slow. */
  pathInfos(paths: readonly string[]): Promise<ServedInfo[]> {
    const answer = this.queue.then(() => this.ask(paths))
    this.queue = answer.catch(() => undefined)
    return answer
  }

  close(): void {
    this.child?.stdin.end()
    this.child?.kill()
    this.child = undefined
  }

  private async ask(paths: readonly string[]): Promise<ServedInfo[]> {
    if (paths.length === 0) return []
    let timer: NodeJS.Timeout | undefined
    try {
      // The bound covers the greeting too: a server stuck at start (a daemon that never answers)
      // must not hold every later check of the watcher.
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`nix-store --serve did not answer in ${this.timeoutMs / 1000}s`)), this.timeoutMs)
      })
      const answer = this.open().then((reader) => {
        this.child!.stdin.write(encode(CMD_QUERY_PATH_INFOS, paths))
        return readPathInfos(reader)
      })
      return await Promise.race([answer, timeout])
    } catch (err) {
      this.close()
      throw err
    } finally {
      clearTimeout(timer)
    }
  }

  private async open(): Promise<WireReader> {
    if (this.child) return this.reader
    const reader = (this.reader = new WireReader())
    this.stderrTail = ''
    const child = spawn('nix-store', ['--serve', ...NO_CLIENT_CACHE], { stdio: ['pipe', 'pipe', 'pipe'] })
    this.child = child
    this.onStart?.()
    child.stdout.on('data', (c: Buffer) => reader.push(c))
    child.stderr.on('data', (c: Buffer) => (this.stderrTail = (this.stderrTail + c.toString()).slice(-500)))
    const gone = (why: string) => reader.end(new Error(`nix-store --serve ${why}${this.stderrTail ? `: ${this.stderrTail.trim().split('\n').pop()}` : ''}`))
    child.on('error', (err) => gone(`could not start (${err.message})`))
    child.on('close', (code, signal) => gone(`ended (${signal ?? `exit ${code}`})`))
    child.stdin.on('error', () => undefined) // a server that died shows as its 'close'
    // The greeting (serve-protocol-connection.cc `BasicServerConnection::handshake`): our magic and
    // version; its magic and version. The version used is the lower of the two.
    child.stdin.write(encode(SERVE_MAGIC_1, CLIENT_VERSION))
    if ((await reader.num()) !== SERVE_MAGIC_2) throw new Error('nix-store --serve: protocol mismatch')
    const version = await reader.num()
    if (version >> 8n !== 2n || (version & 0xffn) < 4n) throw new Error(`nix-store --serve: protocol ${version >> 8n}.${version & 0xffn} is too old`)
    return reader
  }
}
