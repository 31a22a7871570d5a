// One pino logger for the whole process. Log lines carry tags, new UIDs, counts and reasons,
// never patient values (names, IDs, dates, original UIDs): callers pass only those.
import type { Logger } from 'pino';

export type { Logger };

/** The few calls the batch command makes; satisfied by a pino Logger. */
export interface LogSink {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/**
 * A LogSink that loads pino only when a line is actually written: a clean batch run writes none,
 * and pino is a noticeable part of a short run's start-up.
 */
export function lazyLogger(opts: { level?: string; destination?: number | string } = {}): LogSink {
  const level = opts.level ?? process.env.LOG_LEVEL ?? 'info';
  const threshold = LEVELS.indexOf(level) < 0 ? 2 : LEVELS.indexOf(level);
  let real: Logger | undefined;
  const at = (name: 'debug' | 'info' | 'warn' | 'error') => (obj: object, msg: string) => {
    if (LEVELS.indexOf(name) < threshold) return;
    (real ??= createLogger(opts))[name](obj, msg);
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export function createLogger(opts: { level?: string; destination?: number | string } = {}): Logger {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const pino = require('pino') as typeof import('pino');
  const level = opts.level ?? process.env.LOG_LEVEL ?? 'info';
  // Lines are gathered into writes of up to 4 KiB (one system call for several images' lines, not one
  // per line: a line per stored image cost the storage SCP's event loop a write each) and flushed at
  // least every 200 ms, so that a `tail -f` stays current; pino flushes what is left on exit.
  const dest = pino.destination({ dest: opts.destination ?? 1, sync: false, minLength: 4096 });
  let unflushed = false;
  setInterval(() => {
    if (!unflushed) return; // (a flush of nothing would still write)
    unflushed = false;
    try {
      dest.flush();
    } catch {
      /* not open yet, or closed: the exit flush writes it */
    }
  }, 200).unref();
  const hooks = { streamWrite: (line: string) => ((unflushed = true), line) };
  return pino({ level, base: { app: 'dicom-deid-router' }, timestamp: pino.stdTimeFunctions.isoTime, hooks }, dest);
}

/** A logger that drops everything, for tests and library use. */
export function silentLogger(): Logger {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('pino') as typeof import('pino'))({ level: 'silent' });
}
