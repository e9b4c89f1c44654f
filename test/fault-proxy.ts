// A fault-injecting HTTP proxy of our own, in front of a real binary cache (nginx): the faults are
// ours, the cache is real. Each request is answered as `decide` says: passed through, answered
// with a status, held forever (a hung server), delayed, or cut off in the middle of its upload.
import http from 'node:http'
import type net from 'node:net'

export type Fault =
  | { kind: 'pass' }
  | { kind: 'status'; status: number }
  | { kind: 'hang' }
  | { kind: 'slow'; ms: number }
  | { kind: 'drop' }

export interface RequestInfo {
  method: string
  path: string
  /** How many requests with this method and path came before this one. */
  attempt: number
}

export interface FaultProxy {
  url: string
  /** Every request seen, in order, with the fault it got, when it came and when its answer ended (ms, performance.now). */
  log: Array<RequestInfo & { fault: Fault['kind']; start: number; end?: number }>
  stop(): Promise<void>
}

export async function startFaultProxy(target: string, decide: (req: RequestInfo) => Fault): Promise<FaultProxy> {
  const seen = new Map<string, number>()
  const log: FaultProxy['log'] = []
  const sockets = new Set<net.Socket>()
  const upstream = new URL(target)

  const server = http.createServer((req, res) => {
    const key = `${req.method} ${req.url}`
    const attempt = seen.get(key) ?? 0
    seen.set(key, attempt + 1)
    const info = { method: req.method ?? 'GET', path: req.url ?? '/', attempt }
    const fault = decide(info)
    const entry: FaultProxy['log'][number] = { ...info, fault: fault.kind, start: performance.now() }
    log.push(entry)
    res.on('finish', () => (entry.end = performance.now()))
    switch (fault.kind) {
      case 'hang':
        req.resume() // read the upload, never answer
        return
      case 'status':
        req.resume()
        req.on('end', () => res.writeHead(fault.status, { 'content-type': 'text/plain' }).end(`injected ${fault.status}\n`))
        return
      case 'drop': {
        let bytes = 0
        req.on('data', (chunk: Buffer) => {
          bytes += chunk.length
          if (bytes > 0) req.socket.destroy() // cut off mid-upload
        })
        req.on('end', () => req.socket.destroy())
        return
      }
      case 'slow':
        setTimeout(() => forward(req, res), fault.ms)
        return
      case 'pass':
        forward(req, res)
    }
  })

  function forward(req: http.IncomingMessage, res: http.ServerResponse): void {
    const out = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers)
        up.pipe(res)
      },
    )
    out.on('error', () => res.destroy())
    req.pipe(out)
  }

  // Nix uploads with `Expect: 100-continue`: say continue, then handle the request as any other.
  server.on('checkContinue', (req, res) => {
    res.writeContinue()
    server.emit('request', req, res)
  })
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    stop: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}
