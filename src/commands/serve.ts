import type { Logger } from 'pino';
import type { RouterConfig } from '../config/types';

export async function runServe(_c: RouterConfig, _salt: string, logger: Logger): Promise<number> {
  logger.error('serve is not wired yet');
  return 3;
}
