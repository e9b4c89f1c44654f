import { readFileSync } from 'node:fs'
import { build as esbuild, type Plugin } from 'esbuild'
import { defineConfig, type Options } from 'tsup'

const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }

// A single-file ESM bundle of zx needs a real `require` (zx loads node builtins through it).
const banner = {
  js: "import { createRequire as __greedyCreateRequire } from 'node:module'; const require = __greedyCreateRequire(import.meta.url);",
}
const define = (entry: string) => ({ __GREEDY_VERSION__: JSON.stringify(version), __GREEDY_ENTRY__: JSON.stringify(entry) })

/**
 * `import source from 'greedy-nix:watcher-source'`: the watch command, bundled, as a string.
 * bootstrap writes it into the state dir and starts it from there, so a bootstrap that was piped
 * into node (no file of its own) can still start the watcher.
 */
const watcherSource: Plugin = {
  name: 'watcher-source',
  setup(b) {
    b.onResolve({ filter: /^greedy-nix:watcher-source$/ }, (args) => ({ path: args.path, namespace: 'watcher-source' }))
    b.onLoad({ filter: /.*/, namespace: 'watcher-source' }, async () => {
      const out = await esbuild({
        entryPoints: ['scripts/watch.ts'],
        bundle: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        write: false,
        minify: true,
        banner,
        define: define('watch'),
      })
      return { contents: `export default ${JSON.stringify(out.outputFiles[0]!.text)}`, loader: 'js' }
    })
  },
}

const bundle = (entry: string): Options => ({
  entry: { [entry]: `scripts/${entry}.ts` },
  format: ['esm'],
  platform: 'node',
  target: 'node20',
  outDir: 'dist',
  outExtension: () => ({ js: '.mjs' }),
  // Self-contained: one file that needs only node.
  noExternal: [/.*/],
  banner,
  define: define(entry),
  esbuildPlugins: [watcherSource],
  clean: false,
  splitting: false,
})

export default defineConfig([
  { ...bundle('bootstrap'), clean: true },
  bundle('watch'),
  bundle('build'),
  bundle('push'),
  bundle('greedy-nix'),
  {
    // The library for `import … from 'greedy-nix'`: dependencies stay external, with types.
    entry: { index: 'lib/index.ts' },
    format: ['esm'],
    platform: 'node',
    target: 'node20',
    outDir: 'dist',
    dts: true,
    define: define('library'),
  },
])
