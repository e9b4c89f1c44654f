// Flakes for benchmarks: chains (each link depends on the one before) and wide fans (independent
// leaves under one top), of /bin/sh derivations with a chosen build time and output size, and an
// optional failure at position K. Names carry a unique prefix so no run reuses another's paths.
import fs from 'node:fs'
import { writeShFlake } from '../test/helpers.js'

export interface FlakeShape {
  prefix: string
  kind: 'chain' | 'fan'
  count: number
  /** Seconds each derivation's builder sleeps. */
  seconds?: number
  /** Bytes of output per derivation (written with head -c from /dev/urandom). */
  bytes?: number
  /** 1-based position of a derivation that fails (at once, without sleeping). */
  failAt?: number
  /** A fan only: also `part1`, `part2`, … each the top of this many consecutive leaves. */
  partSize?: number
}

export function writeBenchFlake(dir: string, shape: FlakeShape): void {
  fs.mkdirSync(dir, { recursive: true })
  // The failing derivation fails at once, as a compile error does: the build ends right after it.
  const body = (i: number, dep: string) =>
    shape.failAt === i
      ? `${dep ? `: ${dep}; ` : ''}echo ${shape.prefix}-${i} fails >&2; exit 1` // `:` keeps the dependency
      : [
          `sleep ${shape.seconds ?? 0}`,
          `mkdir $out`,
          `head -c ${shape.bytes ?? 16} /dev/urandom > $out/data`,
          dep ? `echo ${dep} > $out/dep` : '',
        ].filter(Boolean).join('; ')
  const lines: string[] = []
  for (let i = 1; i <= shape.count; i++) {
    const dep = shape.kind === 'chain' && i > 1 ? `\${d${i - 1}}` : ''
    lines.push(`    d${i} = mk "${shape.prefix}-${i}" "${body(i, dep)}";`)
  }
  // The fan's top lists its leaves in a file (passAsFile): thousands of store paths overflow one argument.
  const topOf = (name: string, from: number, to: number) =>
    `derivation { name = "${shape.prefix}-${name}"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; ` +
    `leaves = [ ${Array.from({ length: to - from + 1 }, (_, i) => `d${from + i}`).join(' ')} ]; passAsFile = [ "leaves" ]; ` +
    `args = [ "-c" "mkdir $out; cat $leavesPath > $out/all" ]; }`
  const top = shape.kind === 'chain' ? `d${shape.count}` : topOf('top', 1, shape.count)
  const parts: string[] = []
  for (let from = 1, n = 1; shape.kind === 'fan' && shape.partSize && from <= shape.count; from += shape.partSize, n++) {
    parts.push(`part${n} = ${topOf(`part${n}`, from, Math.min(shape.count, from + shape.partSize - 1))};`)
  }
  writeShFlake(dir, lines, `default = ${top}; ${parts.join(' ')} ${Array.from({ length: shape.count }, (_, i) => `d${i + 1} = d${i + 1};`).join(' ')}`)
}
