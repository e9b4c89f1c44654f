// Provided by tsup.config.ts at bundle time: the watch command, bundled, as source text.
declare module 'greedy-nix:watcher-source' {
  const source: string
  export default source
}
