// greedy-nix as a library: the typed pieces the four scripts are made of, for composing your own.
export { parseConfig, VARIABLES, type Backend, type Config, type ConfigResult, type Variable } from './config.js'
export {
  build,
  closureOf,
  copyTo,
  invalidPaths,
  nixArgs,
  nixVersion,
  parseNixVersion,
  parsePathInfoJson,
  pathInfoJsonArgs,
  publicKeyOf,
  queryPathInfo,
  storeDir,
  substituteOnly,
  type BuildOptions,
  type BuildResult,
  type CopyResult,
  type NixVersion,
  type PathInfo,
} from './nix.js'
export { BuildLog, drvName, parseNixLogLine, type BuildCounts, type NixLogEvent } from './nixlog.js'
export {
  atticConfigHome,
  atticEnv,
  checkPushPermission,
  fetchCacheConfig,
  parsePushLine,
  pushPaths,
  writeClientConfig,
  type CacheConfig,
  type PushLine,
  type PushPermission,
  type PushOutcome,
} from './attic.js'
export { AtticSink, NixCopySink, type PushSink, type Settled, type SinkOptions } from './pusher.js'
export { ServeConnection, type ServedInfo } from './serve.js'
export { StoreWatcher, findAtticClient, isPushCandidateName, needsPush, type WatcherCounts, type WatcherOptions } from './watcher.js'
export { runWatcher, makeSink, type WatcherStatus } from './daemon.js'
export { drainWatcher, startWatcher, stopWatcher, type DrainResult } from './control.js'
export { appendNixConfig, jobNixConfig, removeNixConfBlock, userNixConf, withJobNixConfig, type Substituter } from './nixconf.js'
export { configureJobNix, jobEnv, loadSession, prepareSession, saveSession, type Prepared, type Session } from './session.js'
export { finalPush, type FinalPush } from './final.js'
export {
  closureIn,
  fileCacheDir,
  formatBytes,
  parseNarInfo,
  parseSize,
  planEviction,
  prune,
  pruneCache,
  type CachedPath,
  type EvictionPlan,
  type PruneOptions,
  type PruneReport,
} from './prune.js'
export { liveWatcherPid, statePaths, type StatePaths } from './state.js'
export { hitRate, openMetrics, pruneLine, summaryLine, type BuildSummary, type PushCounts, type Summary } from './summary.js'
export { run, type RunOptions, type RunResult } from './exec.js'
