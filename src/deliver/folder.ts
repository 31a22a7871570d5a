// Atomic, durable file writes: temp file in the target folder, fdatasync, rename, fsync the
// folder. A reader never sees a half-written file, and once the call returns the file survives a
// crash or power loss. Every durable write of the project (outgoing folders, spool, dead letters,
// quarantine) goes through here.
//
// Folders are not ours alone: a downstream consumer may move a study folder away or empty the
// tree at any time, and a restarting replica removes temp files it finds. A write that meets a
// vanished folder or temp file (ENOENT) therefore forgets what it knew and starts again.
import {
  closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, promises as fsp, renameSync, statSync, unlinkSync, writevSync,
} from 'fs';
import { dirname, join, sep } from 'path';
import { randomBytes } from 'crypto';

/** Temp files start with this; whatever a crash leaves behind can be recognised and removed. */
export const TEMP_PREFIX = '.deid-';
const TEMP_SUFFIX = '.tmp';
const TMP_NAME = `${TEMP_PREFIX}${randomBytes(8).toString('hex')}${TEMP_SUFFIX}`;

/** Folders known to exist, so that a write into a known folder costs no mkdir. Bounded: a node
 * that writes one folder per series would otherwise remember every series it ever saw. */
const KNOWN_DIRS_MAX = 4096;
const knownDirs = new Set<string>();

/** Attempts of one write when its folder or temp file vanishes under it (ENOENT). */
export const WRITE_ATTEMPTS = 10;

/** Bytes per write call. Linux moves at most 0x7ffff000 bytes per call, and Node reports a byte
 * count above 2^31 as an error (writev of 2.5 GB to /dev/null fails), so no call asks for more. */
export const MAX_WRITE_BYTES = 1 << 30;
/** Buffers per writev call (IOV_MAX on Linux). */
const MAX_WRITE_BUFFERS = 1024;

/**
 * Where a write of several chunks stands: next() gives the buffers of the next write call (at
 * most maxBytes and 1024 buffers; a chunk larger than that is split), advance() takes the count
 * that call wrote, so short writes resume where they stopped.
 */
export class ChunkCursor {
  private i = 0; // first chunk not fully written
  private off = 0; // bytes of chunks[i] already written

  constructor(
    private readonly chunks: readonly Buffer[],
    private readonly maxBytes = MAX_WRITE_BYTES,
  ) {}

  /** Buffers for the next call, or undefined when everything is written. */
  next(): Buffer[] | undefined {
    const chunks = this.chunks;
    while (this.i < chunks.length && this.off >= chunks[this.i].length) {
      this.i++;
      this.off = 0;
    }
    if (this.i >= chunks.length) return undefined;
    const batch: Buffer[] = [];
    let room = this.maxBytes;
    for (let j = this.i, o = this.off; j < chunks.length && batch.length < MAX_WRITE_BUFFERS && room > 0; j++, o = 0) {
      const c = chunks[j];
      const n = Math.min(c.length - o, room);
      if (n <= 0) continue;
      batch.push(o === 0 && n === c.length ? c : c.subarray(o, o + n));
      room -= n;
    }
    return batch;
  }

  advance(written: number): void {
    if (!(written > 0)) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    while (written > 0) {
      const left = this.chunks[this.i].length - this.off;
      if (written >= left) {
        written -= left;
        this.i++;
        this.off = 0;
      } else {
        this.off += written;
        written = 0;
      }
    }
  }
}

/**
 * Writes every chunk with writev, resuming after short writes (see ChunkCursor). `writev` is the
 * system call, replaceable in tests.
 */
export function writeAllSync(
  fd: number,
  chunks: readonly Buffer[],
  writev: (fd: number, buffers: Buffer[]) => number = writevSync,
  maxBytes: number = MAX_WRITE_BYTES,
): void {
  const cursor = new ChunkCursor(chunks, maxBytes);
  for (let batch = cursor.next(); batch; batch = cursor.next()) cursor.advance(writev(fd, batch));
}

export interface WriteOptions {
  /** fdatasync the file and fsync its folder (default true). */
  durable?: boolean;
  /** Mode of folders this write creates (default 0o755; 0o700 for private ones). */
  dirMode?: number;
}

/**
 * Blocking calls on purpose: on these machines one image written through
 * fs.promises (eight trips through libuv's thread pool) took 3-4 ms against 1.6 ms here, most of
 * a C-STORE's latency; blocking the event loop for the fsync costs less than that.
 */
export function writeFileAtomicSync(path: string, chunks: readonly Buffer[], opts: WriteOptions = {}): void {
  const durable = opts.durable ?? true;
  const dir = dirname(path);
  for (let attempt = 1; ; attempt++) {
    try {
      writeOnce(dir, path, chunks, durable, opts.dirMode ?? 0o755);
      return;
    } catch (e) {
      // The folder (or our temp file) vanished under us: make it again and rewrite.
      if (errno(e) !== 'ENOENT' || attempt >= WRITE_ATTEMPTS) throw e;
      forgetDir(dir);
    }
  }
}

function writeOnce(dir: string, path: string, chunks: readonly Buffer[], durable: boolean, dirMode: number): void {
  ensureDirSync(dir, durable, dirMode);
  // One temp name per process and folder: this function runs to completion before the next call
  // (it blocks), so the name is never in use twice, and reusing a just-freed directory entry made
  // file creation several times cheaper here than a fresh name per file. Random, not the pid:
  // replicas in containers all run as pid 1 and may share an outgoing volume.
  const tmp = childPath(dir, TMP_NAME);
  let fd = openSync(tmp, 'w', 0o644);
  let dirFd = -1;
  try {
    writeAllSync(fd, chunks);
    if (durable) fdatasyncSync(fd);
    closeSync(fd);
    fd = -1;
    // The folder is opened before the rename: if a consumer moves it away right after, the
    // fsync still reaches the folder the file went into.
    if (durable) dirFd = openSync(dir, 'r');
    renameSync(tmp, path);
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    if (dirFd >= 0) closeSync(dirFd);
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
    throw e;
  }
  if (dirFd >= 0) fsyncFdSync(dirFd);
}

/** dir + name for a folder path that is already normal (absolute, from resolve/dirname): the
 * same as path.join there, without normalising again on every file of a batch. */
export function childPath(dir: string, name: string): string {
  return dir.endsWith(sep) ? dir + name : dir + sep + name;
}

/** mkdir -p, remembered (boundedly). New folders are durable only once their parents are synced
 * too (a new study's folder would otherwise be lost in a crash, with files already answered for
 * in it). Errors carry the real cause: EROFS, EACCES, ENOSPC, ENOTDIR (Node's recursive mkdir
 * reports most of them as ENOENT). */
export function ensureDirSync(dir: string, durable: boolean, mode = 0o755): void {
  if (knownDirs.has(dir)) return;
  const first = mkdirp(dir, mode);
  if (first && durable) {
    for (let d = dir; ; d = dirname(d)) {
      fsyncDirSync(dirname(d));
      if (d === first || dirname(d) === d) break;
    }
  }
  if (knownDirs.size >= KNOWN_DIRS_MAX) knownDirs.delete(knownDirs.values().next().value as string);
  knownDirs.add(dir);
}

/** How many folders are remembered (for tests of the bound). */
export function knownDirCount(): number {
  return knownDirs.size;
}

/** Forget that dir (and every folder below it) exists: it was found missing. */
export function forgetDir(dir: string): void {
  const below = dir.endsWith(sep) ? dir : dir + sep;
  for (const d of knownDirs) if (d === dir || d.startsWith(below)) knownDirs.delete(d);
}

/** Creates dir and its missing parents; returns the topmost folder it created, if any. */
function mkdirp(dir: string, mode: number): string | undefined {
  try {
    mkdirSync(dir, { mode });
    return dir;
  } catch (e) {
    const code = errno(e);
    if (code === 'EEXIST') {
      if (!statSync(dir).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: 'ENOTDIR', path: dir });
      return undefined;
    }
    const parent = dirname(dir);
    if (code !== 'ENOENT' || parent === dir) throw e;
    const first = mkdirp(parent, mode);
    try {
      mkdirSync(dir, { mode });
    } catch (e2) {
      if (errno(e2) !== 'EEXIST') throw e2; // made meanwhile by someone else: fine
      return first;
    }
    return first ?? dir;
  }
}

/** mkdirp without blocking: the same answers (topmost folder made, real causes). */
export async function mkdirpAsync(dir: string, mode = 0o755): Promise<string | undefined> {
  try {
    await fsp.mkdir(dir, { mode });
    return dir;
  } catch (e) {
    const code = errno(e);
    if (code === 'EEXIST') {
      if (!(await fsp.stat(dir)).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: 'ENOTDIR', path: dir });
      return undefined;
    }
    const parent = dirname(dir);
    if (code !== 'ENOENT' || parent === dir) throw e;
    const first = await mkdirpAsync(parent, mode);
    try {
      await fsp.mkdir(dir, { mode });
    } catch (e2) {
      if (errno(e2) !== 'EEXIST') throw e2;
      return first;
    }
    return first ?? dir;
  }
}

export function fsyncDirSync(dir: string): void {
  fsyncFdSync(openSync(dir, 'r'));
}

/** fsync and close a folder's descriptor. */
function fsyncFdSync(dfd: number): void {
  try {
    fsyncSync(dfd);
  } catch (e) {
    // Some file systems refuse fsync on a folder; there is nothing more to do there.
    const code = errno(e);
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw e;
  } finally {
    closeSync(dfd);
  }
}

/**
 * Removes the temp files a killed process left in dir (and, with recursive, in every folder
 * below it); returns how many. With olderThanMs, only those untouched for that long: on a folder
 * shared by replicas, another replica's live temp file (a streamed image, which cannot be written
 * again from memory) is written to continually and stays.
 */
export async function removeTempFiles(dir: string, recursive: boolean, opts: { olderThanMs?: number } = {}): Promise<number> {
  let removed = 0;
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if (errno(e) === 'ENOENT') return 0;
    throw e;
  }
  for (const ent of entries) {
    const p = join(dir, ent.name);
    if (ent.isFile() && ent.name.startsWith(TEMP_PREFIX) && ent.name.endsWith(TEMP_SUFFIX)) {
      try {
        if (opts.olderThanMs !== undefined && Date.now() - (await fsp.stat(p)).mtimeMs < opts.olderThanMs) continue;
        await fsp.unlink(p);
        removed++;
      } catch (e) {
        if (errno(e) !== 'ENOENT') throw e;
      }
    } else if (recursive && ent.isDirectory()) {
      removed += await removeTempFiles(p, true, opts);
    }
  }
  return removed;
}

/**
 * Makes dir (mode 0700 when new) and proves it can be written, with a durable temp file that is
 * then removed. Throws an error that names the folder and the cause.
 */
export function checkWritableDir(dir: string, what: string): void {
  try {
    ensureDirSync(dir, true, 0o700);
    const probe = childPath(dir, `${TEMP_PREFIX}probe-${randomBytes(4).toString('hex')}${TEMP_SUFFIX}`);
    writeFileAtomicSync(probe, [Buffer.from('probe\n')], { dirMode: 0o700 });
    unlinkSync(probe);
  } catch (e) {
    forgetDir(dir);
    const code = errno(e) ?? (e as Error).message;
    throw new Error(`${what} ${dir} cannot be written (${code}${ERRNO_TEXT[code] ? `: ${ERRNO_TEXT[code]}` : ''})`);
  }
}

const ERRNO_TEXT: Record<string, string> = {
  EROFS: 'read-only file system',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  ENOTDIR: 'a path component is a file',
};

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}
