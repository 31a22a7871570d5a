import { spawnSync } from 'child_process';

/** Whether an external tool is installed. Under CI (.ci/run installs them) a missing tool is a
 * failure, not a skip, so a broken install cannot turn the interoperability tests green. */
export function hasTool(name: string): boolean {
  const ok = spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
  if (!ok && process.env.CI) throw new Error(`${name} is not installed but CI is set: .ci/run must install it`);
  return ok;
}
