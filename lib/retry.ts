// Which push failures are worth another try, and how long to wait before it. A server that says
// no (401, 403, 404, 413, ...) will say it again: those fail at once. Overload, timeouts and cut
// connections (5xx, 408, 429, no HTTP status at all) are retried, with growing, jittered delays.

/** Tries in all, the first included. */
export const MAX_ATTEMPTS = 3

export interface Classified {
  permanent: boolean
  /** The HTTP status named in the error, if any. */
  status?: number
}

export function classifyError(text: string): Classified {
  const m = /\bHTTP(?: error)? (\d{3})\b/i.exec(text) ?? /\b(\d{3}) (?:[A-Z][a-z]+ ?)+\b/.exec(text)
  const status = m ? Number(m[1]) : undefined
  if (status === undefined || status < 400) return { permanent: false, status }
  const transient = status >= 500 || status === 408 || status === 429
  return { permanent: !transient, status }
}

/** Delay before try `attempt + 1`: 1 s, 2 s, 4 s, … times a jitter of 0.5–1.5, at most 15 s. */
export function backoffMs(attempt: number, random: () => number = Math.random): number {
  const base = 1000 * 2 ** (attempt - 1)
  return Math.min(15_000, Math.round(base * (0.5 + random())))
}
