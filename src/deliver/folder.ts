// Atomic, durable file writes: temp file in the target folder, fdatasync, rename, fsync the
// folder. A reader never sees a half-written file, and once the call returns the file survives a
// crash or power loss. Every durable write of the project (outgoing folders, spool, dead letters,
// quarantine) goes through here.
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writevSync } from 'fs';
import { dirname, sep } from 'path';
import { randomBytes } from 'crypto';

const madeDirsSync = new Set<string>();
/** Temp files start with this; whatever a crash leaves behind can be recognised and removed. */
export const TEMP_PREFIX = '.deid-';
const TMP_NAME = `${TEMP_PREFIX}${randomBytes(8).toString('hex')}.tmp`;

/** Writes every chunk with writev, resuming after short writes. */
export function writeAllSync(fd: number, chunks: readonly Buffer[]): void {
  let pending = chunks.slice();
  while (pending.length) {
    const batch = pending.length > 1024 ? pending.slice(0, 1024) : pending;
    let written = writevSync(fd, batch);
    let i = 0;
    while (i < batch.length && written >= batch[i].length) {
      written -= batch[i].length;
      i++;
    }
    const rest = pending.slice(batch.length);
    pending = i < batch.length ? [batch[i].subarray(written), ...batch.slice(i + 1), ...rest] : rest;
  }
}

/**
 * Blocking calls on purpose: on these machines one image written through
 * fs.promises (eight trips through libuv's thread pool) took 3-4 ms against 1.6 ms here, most of
 * a C-STORE's latency; blocking the event loop for the fsync costs less than that.
 * With rename: false the temp file is left for the caller to rename (batch mode commits in order).
 */
export function writeFileAtomicSync(path: string, chunks: readonly Buffer[], opts: { durable?: boolean } = {}): void {
  const durable = opts.durable ?? true;
  const dir = dirname(path);
  ensureDirSync(dir, durable);
  // One temp name per process and folder: this function runs to completion before the next call
  // (it blocks), so the name is never in use twice, and reusing a just-freed directory entry made
  // file creation several times cheaper here than a fresh name per file. Random, not the pid:
  // replicas in containers all run as pid 1 and may share an outgoing volume.
  const tmp = childPath(dir, TMP_NAME);
  const fd = openSync(tmp, 'w', 0o644);
  try {
    writeAllSync(fd, chunks);
    if (durable) fdatasyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  if (durable) fsyncDirSync(dir);
}

/** dir + name for a folder path that is already normal (absolute, from resolve/dirname): the
 * same as path.join there, without normalising again on every file of a batch. */
export function childPath(dir: string, name: string): string {
  return dir.endsWith(sep) ? dir + name : dir + sep + name;
}

/** mkdir -p, remembered. New folders are durable only once their parents are synced too (a new
 * study's folder would otherwise be lost in a crash, with files already answered for in it). */
export function ensureDirSync(dir: string, durable: boolean): void {
  if (madeDirsSync.has(dir)) return;
  const first = mkdirSync(dir, { recursive: true });
  if (first && durable) {
    for (let d = dir; ; d = dirname(d)) {
      fsyncDirSync(dirname(d));
      if (d === first || dirname(d) === d) break;
    }
  }
  madeDirsSync.add(dir);
}

export function fsyncDirSync(dir: string): void {
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } catch (e) {
    // Some file systems refuse fsync on a folder; there is nothing more to do there.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw e;
  } finally {
    closeSync(dfd);
  }
}
