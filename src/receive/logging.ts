// Route the loglevel loggers of dcmjs-dimse and dcmjs into pino.
//
// - dcmjs-dimse logs through the *root* loglevel logger (require('loglevel'), exported as dcmjsDimse.log) with
//   every level enabled: an info line (with a multi-line association dump) per PDU / DIMSE message.
// - dcmjs bundles its own loglevel copy (dcmjs.log, default level warn, children "validation.dcmjs" and
//   "AsyncDicomReader"); dcmjs-dimse ships its own nested dcmjs copy, separate from the top-level dcmjs.
//
// Mapping: dcmjs-dimse trace/debug/info -> pino debug (only enabled when pino's debug is), warn/error -> warn.
// dcmjs trace..warn -> pino debug (dcmjs warns once per unknown/private tag, far too chatty), error -> warn.
import { dirname } from 'path';
import type { Logger } from 'pino';

type LevelName = 'trace' | 'debug' | 'info' | 'warn' | 'error';
interface LogLevelLike {
  name?: string | symbol;
  methodFactory: (methodName: string, level: number, loggerName: string | symbol | undefined) => (...args: unknown[]) => void;
  setLevel(level: LevelName | 'silent', persist?: boolean): void;
  rebuild?: () => void;
  getLoggers?: () => Record<string, LogLevelLike>;
}

function format(args: unknown[]): string {
  return args
    .map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.message : safeJson(a)))
    .join(' ');
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function routeLogger(ll: LogLevelLike, logger: Logger, lib: string, debugUpTo: LevelName): void {
  const child = logger.child({ lib });
  const order: LevelName[] = ['trace', 'debug', 'info', 'warn', 'error'];
  const debugMax = order.indexOf(debugUpTo);
  ll.methodFactory = (methodName: string) => {
    const idx = order.indexOf(methodName as LevelName);
    if (idx >= 0 && idx <= debugMax) return (...args: unknown[]) => child.debug(format(args));
    return (...args: unknown[]) => child.warn(format(args));
  };
  // Levels below the threshold become no-ops inside loglevel, so disabled lines cost nothing beyond the
  // caller's template string.
  const minLevel: LevelName = logger.isLevelEnabled('debug') ? 'trace' : order[Math.min(debugMax + 1, order.length - 1)];
  ll.setLevel(minLevel, false);
  if (typeof ll.rebuild === 'function') ll.rebuild();
}

function routeWithChildren(root: LogLevelLike, logger: Logger, lib: string, debugUpTo: LevelName): void {
  routeLogger(root, logger, lib, debugUpTo);
  const children = typeof root.getLoggers === 'function' ? root.getLoggers() : {};
  for (const [name, child] of Object.entries(children)) {
    if (child && child !== root) routeLogger(child, logger, `${lib}:${name}`, debugUpTo);
  }
}

function tryRequire(id: string, fromDir?: string): unknown {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(fromDir ? require.resolve(id, { paths: [fromDir] }) : id);
  } catch {
    return undefined;
  }
}

/**
 * Route dcmjs-dimse's logger, the dcmjs copy bundled with it, and the top-level dcmjs's `log` into pino.
 * Per-PDU chatter goes to debug (and costs nothing when debug is off); problems go to warn.
 * Safe to call more than once (e.g. with a new logger).
 */
export function silenceDimseLibraries(logger: Logger): void {
  const dimse = tryRequire('dcmjs-dimse') as { log?: LogLevelLike } | undefined;
  if (dimse?.log) routeWithChildren(dimse.log, logger, 'dcmjs-dimse', 'info');

  let dimseDir: string | undefined;
  try {
    dimseDir = dirname(require.resolve('dcmjs-dimse'));
  } catch {
    dimseDir = undefined;
  }
  const seen = new Set<unknown>();
  const candidates = [dimseDir ? tryRequire('dcmjs', dimseDir) : undefined, tryRequire('dcmjs')];
  for (const dcmjs of candidates) {
    const log = (dcmjs as { log?: LogLevelLike } | undefined)?.log;
    if (!log || seen.has(log)) continue;
    seen.add(log);
    routeWithChildren(log, logger, 'dcmjs', 'warn');
  }
}
