import type { RouterConfig } from '../config/types';

export async function runSpool(_c: RouterConfig, _sub: string | undefined): Promise<number> {
  process.stderr.write('spool: not wired yet\n');
  return 3;
}
