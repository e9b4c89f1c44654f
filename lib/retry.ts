// Which push failures are worth another try, and how long to wait before it. A server that says
// no (401, 403, 404, 413, ...) will say it again: those fail at once. Overload, timeouts and cut
// connections (5xx, 408, 429, no HTTP status at all) are retried, with growing, jittered delays.

/** Tries in all, the first included. */
export const MAX_ATTEMPTS = 3

export interface Classified {
  permanent: boolean
  /** The HTTP status named in the error, if any. */
  status?: number
  /** The attic server's error name (`Unauthorized`, `AccessError`, …), if the error is one of them. */
  atticError?: string
  /** The refusal concerns the whole cache (token, permission, cache name), not one path. */
  cacheWide?: boolean
}

/**
 * attic's error names, as the client prints a server's answer: `<name>: <message>` with no HTTP
 * status (server/src/error.rs `ErrorKind::name`, attic/src/error.rs `AtticError::name`). Database
 * and storage errors reach clients as `InternalServerError` (`into_clients`), and a NAR with
 * missing chunks as `IncompleteNar` (503): those may pass. Every other name is the server's
 * considered answer and comes again on another try.
 */
const ATTIC_TRANSIENT = new Set(['InternalServerError', 'IncompleteNar', 'DatabaseError', 'StorageError'])
const ATTIC_CACHE_WIDE = new Set(['Unauthorized', 'AccessError', 'NoSuchCache', 'InvalidCacheName'])
const ATTIC_PERMANENT = new Set([
  ...ATTIC_CACHE_WIDE, 'NotFound', 'NoSuchObject', 'CacheAlreadyExists', 'InvalidCompressionType', 'RequestError',
  'ManifestSerializationError', 'InvalidStorePath', 'InvalidStorePathName', 'InvalidStorePathHash',
])
const ATTIC_NAME = /(?:^|[\s:])([A-Z][A-Za-z]+): /g

export function classifyError(text: string): Classified {
  for (const [, name] of text.matchAll(ATTIC_NAME)) {
    if (ATTIC_TRANSIENT.has(name!)) return { permanent: false, atticError: name }
    if (ATTIC_PERMANENT.has(name!)) return { permanent: true, atticError: name, cacheWide: ATTIC_CACHE_WIDE.has(name!) }
  }
  const m = /\bHTTP(?: error)? (\d{3})\b/i.exec(text) ?? /\b(\d{3}) (?:[A-Z][a-z]+ ?)+\b/.exec(text)
  const status = m ? Number(m[1]) : undefined
  if (status === undefined || status < 400) return { permanent: false, status }
  const transient = status >= 500 || status === 408 || status === 429
  return status === 401 || status === 403 ? { permanent: true, status, cacheWide: true } : { permanent: !transient, status }
}

/** Delay before try `attempt + 1`: 1 s, 2 s, 4 s, … times a jitter of 0.5–1.5, at most 15 s. */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const base = 1000 * 2 ** (attempt - 1)
  return Math.min(15_000, Math.round(base * (0.5 + random())))
}

/** The file a failed `nix copy` was uploading or reading when it failed (Nix names it in quotes). */
export function failedFile(text: string): string | undefined {
  return /unable to (?:upload|download) '([^']+)'/.exec(text)?.[1]
}

/**
 * The tries of one batch. A failure at the same file as the last one uses up a try; a failure
 * further on (the cache took what came before it) starts the count again, so a batch of many paths
 * on a flaky server is not judged by the tries one path gets. At most MAX_ATTEMPTS tries per path.
 */
export class RetryBudget {
  private stalled = 0
  private tries = 0
  private lastFile: string | undefined

  constructor(private readonly paths: number) {}

  /** Records a failed try; true when one more is allowed. */
  failed(errorText: string): boolean {
    this.tries++
    const file = failedFile(errorText)
    const movedOn = file !== undefined && this.lastFile !== undefined && file !== this.lastFile
    this.stalled = movedOn ? 1 : this.stalled + 1
    this.lastFile = file
    return this.stalled < MAX_ATTEMPTS && this.tries < MAX_ATTEMPTS * this.paths
  }

  /** The next try, counted since the last progress: for the backoff and the log. */
  get nextTry(): number {
    return this.stalled + 1
  }
}
