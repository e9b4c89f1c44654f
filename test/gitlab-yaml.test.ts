// Every GitLab YAML we ship validates against GitLab's CI schema (the one gitlab-ci-local@4.65.1
// bundles), offline: .gitlab-ci.yml, the component (its spec header and its body), the include
// file, and the README's examples.
import fs from 'node:fs'
import path from 'node:path'
import { Ajv } from 'ajv'
import yaml from 'js-yaml'
import { beforeAll, describe, expect, it } from 'vitest'
import { ROOT } from './helpers.js'

type Validate = ((data: unknown) => boolean) & { errors?: unknown }
let validate: Validate

beforeAll(async () => {
  const where = 'gitlab-ci-local/src/schema/index.js' // no types: it is plain data
  const { default: schema } = (await import(where)) as { default: object }
  const ajv = new Ajv({ allErrors: true, allowUnionTypes: true, validateFormats: false, strictTypes: false, keywords: ['markdownDescription'] })
  validate = ajv.compile(schema) as Validate
})

function check(doc: unknown, where: string): void {
  const ok = validate(doc)
  expect(ok, `${where}: ${JSON.stringify(validate.errors, null, 1)}`).toBe(true)
}

const read = (f: string) => fs.readFileSync(path.join(ROOT, f), 'utf8')
const docs = (f: string) => yaml.loadAll(read(f)) as Array<Record<string, unknown>>
const version = (JSON.parse(read('package.json')) as { version: string }).version

describe('GitLab CI YAML', () => {
  it('the schema rejects what GitLab rejects (a control for the checks below)', () => {
    expect(validate({ job: { script: 5 } })).toBe(false)
    expect(validate({ spec: { inputs: { x: { type: 'array', default: 'no' } } } })).toBe(false)
  })

  const files = ['.gitlab-ci.yml', ...fs.readdirSync(path.join(ROOT, 'templates')).map((f) => `templates/${f}`), 'include/nix-build-base.yml']

  it.each(files)('%s validates', (file) => {
    const all = docs(file)
    if (file.startsWith('templates/')) {
      expect(all).toHaveLength(2) // spec header --- body
      expect(Object.keys(all[0]!)).toEqual(['spec'])
    }
    all.forEach((doc, i) => check(doc, `${file} document ${i + 1}`))
  })

  it("validates the README's examples", () => {
    const blocks = [...read('README.md').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!)
    expect(blocks.length).toBeGreaterThanOrEqual(3)
    blocks.forEach((b, i) => yaml.loadAll(b).forEach((doc) => check(doc, `README yaml block ${i + 1}`)))
  })

  it('the component and the include file run the same setup and after_script, from this version', () => {
    const [, body] = docs('templates/nix-build.yml')
    const job = Object.values(body!)[0] as Record<string, string[]>
    const base = docs('include/nix-build-base.yml')[0]!['.nix-build-base'] as Record<string, string[] | Record<string, string>>
    expect(base.before_script).toEqual(job.before_script)
    expect(base.after_script).toEqual(job.after_script)
    expect(base.artifacts).toEqual(job.artifacts)
    const inputs = (docs('templates/nix-build.yml')[0]!.spec as { inputs: Record<string, { default?: unknown }> }).inputs
    // This instance's package registry first (the release job uploads there), then npm.
    expect(inputs['script-source']!.default).toBe(`gitlab:greedy-nix/greedy-nix@${version} npm:${version}`)
    expect((base.variables as Record<string, string>).GREEDY_SCRIPT_SOURCE).toBe(`gitlab:greedy-nix/greedy-nix@${version} npm:${version}`)
  })
})
