// Small file systems for failure tests: a tmpfs of a given size (to fill it), or a read-only one.
// Needs root (or CAP_SYS_ADMIN); where mounting is refused, the caller skips with the reason.
import { spawnSync } from 'child_process';
import { mkdirSync } from 'fs';

/** Mounts a tmpfs on dir (made if missing). Returns undefined, or why it could not. */
export function mountTmpfs(dir: string, opts: { sizeKb: number; readOnly?: boolean }): string | undefined {
  mkdirSync(dir, { recursive: true });
  const o = `size=${opts.sizeKb}k,mode=0755${opts.readOnly ? ',ro' : ''}`;
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', o, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.error) return `mount could not run: ${r.error.message}`;
  if (r.status !== 0) return `mount -t tmpfs refused here (${(r.stderr || '').trim() || `exit ${r.status}`})`;
  return undefined;
}

/** Changes a mounted tmpfs: its size, or read-only / read-write. */
export function remount(dir: string, opts: { sizeKb?: number; readOnly?: boolean }): void {
  const o = ['remount', ...(opts.sizeKb ? [`size=${opts.sizeKb}k`] : []), ...(opts.readOnly === undefined ? [] : [opts.readOnly ? 'ro' : 'rw'])];
  const r = spawnSync('mount', ['-o', o.join(','), dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`remount ${dir} failed: ${r.stderr}`);
}

export function unmount(dir: string): void {
  spawnSync('umount', ['-l', dir]);
}

/** Whether this process may mount (tried once on a scratch folder). */
export function mountRefusal(scratch: string): string | undefined {
  const why = mountTmpfs(scratch, { sizeKb: 64 });
  if (!why) unmount(scratch);
  return why;
}
