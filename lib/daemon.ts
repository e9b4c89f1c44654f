// The watcher process: a StoreWatcher wired to the session's push sink, answering drain requests
// (SIGUSR1 + a token in <state>/drain-request) and SIGTERM, and keeping its counts in a file so
// that even after a kill -9 the last counts survive for `push` to report.
import fs from 'node:fs/promises'
import path from 'node:path'
import { atticEnv } from './attic.js'
import { DEFAULT_WATCH_MAX_AGE } from './config.js'
import { Attribution, otherWatchersRunning, realisedSince, registerWatcher } from './attribution.js'
import { AtticSink, NixCopySink, type PushSink, type SinkOptions } from './pusher.js'
import { formatPidFile, parsePidFile, processStartTime, writeJsonAtomic, type StatePaths } from './state.js'
import { findAtticClient, StoreWatcher, type WatcherCounts } from './watcher.js'
import { saveSession, uploadEnv, type Session } from './session.js'
import { storeDir } from './nix.js'

export interface WatcherStatus {
  pid: number
  updatedAt: string
  counts: WatcherCounts
  failures: Array<{ path: string; error: string }>
  /** Paths recorded while no attic client existed yet. */
  waitingForClient: string[]
  /** The token of the last drain request completed. */
  drained?: string
  client?: string
}

/** Longest one push run may take inside the watcher. */
const RUN_TIMEOUT_MS = 10 * 60_000
/** How often the watcher checks that its job still owns it. */
const OWNER_CHECK_MS = 2_000

/**
 * Why this watcher's job is over, if it is. On a shared runner a crashed job's watcher would
 * otherwise live on, pushing other jobs' paths and putting their watchers in attribution mode.
 */
export async function ownerGone(paths: StatePaths, startedAt: number, maxAgeS: number, now = Date.now()): Promise<string | undefined> {
  try {
    await fs.access(paths.dir)
  } catch {
    return `its state dir ${paths.dir} is gone`
  }
  const rec = parsePidFile(await fs.readFile(paths.pid, 'utf8').catch(() => ''))
  if (rec?.pid !== process.pid) return `another job took over ${paths.dir}`
  if (now - startedAt > maxAgeS * 1000) return `it is older than GREEDY_WATCH_MAX_AGE (${maxAgeS}s)`
  return undefined
}

export function makeSink(session: Session, opts: SinkOptions): PushSink | undefined {
  const withLanes = { lanes: session.pushJobs, ...opts }
  if (session.backend === 'nix' && session.nix) return new NixCopySink(session.nix.url, withLanes, uploadEnv(session))
  if (session.backend === 'attic' && session.attic && session.client) {
    return new AtticSink(session.client, session.attic.cache, atticEnv(session.attic.configHome), withLanes)
  }
  return undefined
}

/** The process's memory in MiB, for GREEDY_DEBUG (the benchmarks read peak RSS from /proc). */
function memoryLine(): string {
  return Object.entries(process.memoryUsage()).map(([k, v]) => `${k} ${(v / 1048576).toFixed(1)}`).join(', ')
}

export async function runWatcher(paths: StatePaths, session: Session, log: (msg: string) => void, debug: (msg: string) => void): Promise<void> {
  let lastDrain: string | undefined
  let writing: Promise<void> = Promise.resolve()
  let dirty = false
  const sinkOpts: SinkOptions = {
    onSettled: (s) => {
      if (s.status === 'pushed') log(`pushed ${s.path}`)
      else if (s.status === 'failed') log(`push failed: ${s.path}: ${s.error}`)
      watcher.settle(s)
    },
    onWarn: log,
    debug,
    runTimeoutMs: RUN_TIMEOUT_MS,
  }
  const watcher: StoreWatcher = new StoreWatcher({
    storeDir: storeDir(),
    sink: makeSink(session, sinkOpts),
    findSink:
      session.backend === 'attic'
        ? async (newPaths) => {
            const client = await findAtticClient(newPaths)
            if (!client) return undefined
            log(`attic client appeared in the store: ${client}`)
            session.client = client
            await fs.rm(paths.clientLink, { force: true })
            await fs.symlink(path.dirname(path.dirname(client)), paths.clientLink)
            await saveSession(paths, session)
            return makeSink(session, sinkOpts)
          }
        : undefined,
    skipKeyNames: session.skipKeyNames,
    include: session.include === undefined ? undefined : new RegExp(session.include),
    exclude: session.exclude === undefined ? undefined : new RegExp(session.exclude),
    // Alone on the machine, every new path is this job's; with other watchers, only what our builds realised.
    ours: async (newPaths) => (otherWatchersRunning() ? attribution.ours(newPaths) : new Set(newPaths)),
    onChange: () => scheduleStatus(),
    debug,
    info: log,
  })

  const status = (): WatcherStatus => ({
    pid: process.pid,
    updatedAt: new Date().toISOString(),
    counts: { ...watcher.counts },
    failures: [...watcher.failures].map(([p, error]) => ({ path: p, error })),
    waitingForClient: [...watcher.waiting],
    drained: lastDrain,
    client: session.client,
  })
  const writeStatus = (): Promise<void> => {
    dirty = false
    writing = writing.then(() => writeJsonAtomic(paths.status, status()).catch((err) => log(`cannot write status: ${err}`)))
    return writing
  }
  // At most a few writes a second, whatever the push rate.
  let statusTimer: NodeJS.Timeout | undefined
  function scheduleStatus(): void {
    dirty = true
    statusTimer ??= setTimeout(() => {
      statusTimer = undefined
      if (dirty) void writeStatus()
    }, 200)
  }

  const attribution = new Attribution(paths.realised)
  const unregister = registerWatcher(paths.dir, session.job)
  await watcher.start()
  await writeStatus()
  await fs.writeFile(paths.pid, formatPidFile(process.pid, processStartTime(process.pid)))
  log(`watching ${storeDir()} (backend ${session.backend}${watcher.hasSink ? '' : ', waiting for an attic client'})`)

  // Drain requests are served one after another; a request arriving mid-drain gets its own pass.
  let draining: Promise<void> = Promise.resolve()
  let realisedOffset = 0 // how far `builds` drains have read the realised record
  process.on('SIGUSR1', () => {
    draining = draining.then(async () => {
      const [token = '', scope] = (await fs.readFile(paths.drainRequest, 'utf8').catch(() => '')).split('\n')
      const started = Date.now()
      try {
        if (scope === 'builds') {
          const realised = await realisedSince(paths.realised, realisedOffset)
          realisedOffset = realised.offset
          await watcher.drain(realised.paths)
        } else await watcher.drain()
        log(`drained in ${Date.now() - started} ms: ${JSON.stringify(watcher.counts)}`)
        debug(`memory: ${memoryLine()}`)
      } catch (err) {
        // Answer anyway: the caller reports the counts, and the next drain gets a fresh pass.
        log(`drain incomplete: ${(err as Error).message}`)
      }
      lastDrain = token
      await writeStatus()
    })
  })
  const startedAt = Date.now()
  let ownerTimer: NodeJS.Timeout | undefined
  await new Promise<void>((resolve) => {
    const stop = (why: string) => {
      log(`${why}: stopping`)
      resolve()
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
    ownerTimer = setInterval(() => {
      void ownerGone(paths, startedAt, session.watchMaxAge ?? DEFAULT_WATCH_MAX_AGE).then((why) => why && stop(`its job is over: ${why}`))
    }, OWNER_CHECK_MS)
  })
  clearInterval(ownerTimer)
  clearTimeout(statusTimer)
  unregister()
  watcher.close()
  await writeStatus().catch(() => {})
  // Only our own pid file: after a takeover it names the new watcher.
  const rec = parsePidFile(await fs.readFile(paths.pid, 'utf8').catch(() => ''))
  if (rec?.pid === process.pid) await fs.rm(paths.pid, { force: true })
}
