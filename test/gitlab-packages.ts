// A test double of one GitLab API endpoint: downloading a file of a project's generic package
// (GitLab cannot run here). Written from GitLab's documentation, "GitLab generic packages
// repository" (docs.gitlab.com/user/packages/generic_packages):
// - GET /api/v4/projects/:id/packages/generic/:package_name/:package_version/:file_name, where
//   :id is the project's number or its path URL-encoded (`group%2Fproject`);
// - a CI/CD job reads it with its job token in the JOB-TOKEN header, which works only when the
//   package's project lets the job's project in (its CI/CD job token allowlist);
// - what a token may not read answers as missing: 404 `{"message":"404 Not Found"}` (GitLab hides
//   private resources; gitlab-org/gitlab#478004 shows a job token of another project getting 404).
import fs from 'node:fs'
import http from 'node:http'

export interface PackageRegistry {
  /** What a runner has in CI_API_V4_URL. */
  apiUrl: string
  /** The JOB-TOKEN header of every request, in order ('' when none was sent). */
  tokens: string[]
  stop(): Promise<void>
}

/**
 * Serve `files` (package file path `<project path>/<package>/<version>/<file>` → local file) to
 * `jobToken`; with `public`, to anyone who sends no token too (a public project's packages), while
 * another project's job token that the allowlist does not name is still refused.
 */
export async function startPackageRegistry(files: Record<string, string>, jobToken: string, opts: { public?: boolean } = {}): Promise<PackageRegistry> {
  const tokens: string[] = []
  const server = http.createServer((req, res) => {
    const token = String(req.headers['job-token'] ?? '')
    tokens.push(token)
    const m = /^\/api\/v4\/projects\/([^/]+)\/packages\/generic\/([^/]+)\/([^/]+)\/([^/?]+)$/.exec(req.url ?? '')
    const key = m && `${decodeURIComponent(m[1]!)}/${m[2]}/${m[3]}/${m[4]}`
    const file = key ? files[key] : undefined
    const allowed = token === jobToken || (opts.public === true && token === '')
    if (req.method !== 'GET' || !file || !allowed) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"message":"404 Not Found"}')
      return
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    fs.createReadStream(file).pipe(res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  return {
    apiUrl: `http://127.0.0.1:${port}/api/v4`,
    tokens,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  }
}
