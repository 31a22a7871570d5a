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
  const dest = pino.destination({ dest: opts.destination ?? 1, sync: false });
  return pino({ level, base: { app: 'dicom-deid-router' }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything, for tests and library use. */
export function silentLogger(): Logger {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('pino') as typeof import('pino'))({ level: 'silent' });
}
