// One pino logger for the whole process. Log lines carry tags, new UIDs, counts and reasons,
// never patient values (names, IDs, dates, original UIDs): callers pass only those.
import pino, { Logger } from 'pino';

export type { Logger };

export function createLogger(opts: { level?: string; destination?: number | string } = {}): Logger {
  const level = opts.level ?? process.env.LOG_LEVEL ?? 'info';
  const dest = pino.destination({ dest: opts.destination ?? 1, sync: false });
  return pino({ level, base: { app: 'dicom-deid-router' }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything, for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
