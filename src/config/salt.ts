// The global secret salt: DEID_SALT, `salt:`, `saltFile:`, or one generated on first run.
import { randomBytes } from 'crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'fs';
import { join } from 'path';
import type { LogSink } from '../observe/logger';
import { ConfigError, RouterConfig } from './types';
import { isExampleSalt } from './load';

export function saltPath(config: RouterConfig): string {
  return config.saltFile ?? join(config.stateDir, 'salt');
}

export function resolveSalt(config: RouterConfig, logger?: LogSink): string {
  if (config.salt) return config.salt.value;
  const file = saltPath(config);
  if (existsSync(file)) {
    const s = readFileSync(file, 'utf8').trim();
    if (isExampleSalt(s)) throw new ConfigError([`${file}: the salt is empty or an example value`]);
    return s;
  }
  if (config.saltFile) throw new ConfigError([`saltFile: ${file} does not exist`]);
  // No salt configured at all: make one, keep it, and say so. Losing this file means new UIDs and
  // hashes that no longer match earlier output, so it belongs in backups.
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const s = randomBytes(32).toString('hex');
  writeFileSync(file, s + '\n', { mode: 0o600, flag: 'wx' });
  logger?.warn({ file }, 'no salt configured: generated a random one; back this file up, outputs depend on it');
  return s;
}
