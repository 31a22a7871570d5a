// Atomic, durable file writes off the event loop, for the storage SCP.
//
// Same contract as writeFileAtomicSync (temp file in the target folder, fdatasync, rename, folder
// fsync: once commit() resolves the file survives a crash or power loss, and a reader never sees a
// half-written file), but every system call runs in libuv's thread pool, so the event loop keeps
// receiving other associations' PDUs while a file is being synced, and a file can be written piece
// by piece while its PDVs are still arriving (DurableFile.append).
//
// Folder fsyncs are shared (group commit): a commit waits for an fsync of its folder that *started*
// after its own rename; every commit that renamed while one fsync was running shares the next one.
// One image is still answered only after its own data and its own directory entry are durable.
import * as fs from 'node:fs';
import { basename, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { ChunkCursor, TEMP_PREFIX, WRITE_ATTEMPTS, childPath, mkdirpAsync } from './folder';

/** Milliseconds spent per phase, summed over all files (for the stage breakdown serve logs). */
export interface WriterStats {
  files: number;
  bytes: number;
  openMs: number;
  writeMs: number;
  datasyncMs: number;
  renameMs: number;
  /** Waiting for the shared folder fsync (includes waiting for a running one to finish). */
  dirSyncMs: number;
  dirSyncs: number;
}

const hrMs = (): number => Number(process.hrtime.bigint()) / 1e6;

function call<T>(f: (cb: (err: NodeJS.ErrnoException | null, v: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => f((err, v) => (err ? reject(err) : resolve(v))));
}

/** One fsync at a time per folder; callers that arrive while it runs share the next one. */
class DirSync {
  private running: Promise<void> | undefined;
  private next: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | undefined;
  constructor(readonly dir: string, private readonly stats: WriterStats) {}

  /** Resolves after an fsync of the folder that started after this call. */
  sync(): Promise<void> {
    if (!this.running) {
      this.running = this.run();
      return this.running;
    }
    if (!this.next) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      this.next = { promise, resolve, reject };
    }
    return this.next.promise;
  }

  private async run(): Promise<void> {
    try {
      this.stats.dirSyncs++;
      await fsyncDir(this.dir);
    } finally {
      const n = this.next;
      this.next = undefined;
      this.running = undefined;
      if (n) {
        this.running = this.run();
        this.running.then(n.resolve, n.reject);
      }
    }
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const fd = await call<number>((cb) => fs.open(dir, 'r', cb));
  try {
    await call<void>((cb) => fs.fsync(fd, (e) => cb(e, undefined)));
  } catch (e) {
    // Some file systems refuse fsync on a folder; there is nothing more to do there.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw e;
  } finally {
    fs.close(fd, () => undefined);
  }
}

/** A file being written: temp name until commit() renames it into place. */
export class DurableFile {
  private fd: Promise<number>;
  private tail: Promise<void>;
  private failed: unknown;
  private tmp = '';
  private done = false;
  /** Bytes handed to append() whose write has not completed. */
  pending = 0;
  size = 0;
  private drainWaiters: Array<() => void> = [];
  private queue: Buffer[] = [];
  private pumping = false;

  constructor(private readonly w: DurableWriter, readonly path: string, private readonly dirMode = 0o755) {
    const dir = dirname(path);
    this.fd = (async () => {
      await w.ensureDir(dir, dirMode);
      const t0 = hrMs();
      this.tmp = childPath(dir, w.tempName(dir));
      let fd: number;
      // Read-write: if the folder is taken away before the commit, the bytes are read back (relocate).
      try {
        fd = await call<number>((cb) => fs.open(this.tmp, 'w+', 0o644, cb));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        // The folder was removed behind our back (an operator moved a study away): make it again.
        w.forgetDir(dir);
        await w.ensureDir(dir, dirMode);
        fd = await call<number>((cb) => fs.open(this.tmp, 'w+', 0o644, cb));
      }
      w.stats.openMs += hrMs() - t0;
      return fd;
    })();
    this.tail = this.fd.then(() => undefined);
    this.tail.catch((e: unknown) => (this.failed ??= e));
  }

  /** Queue chunks to be written after everything appended before. The buffers must not change until written.
   * Chunks appended while a write is running go out together in the next writev: one trip through the
   * thread pool per batch, not per PDV. */
  append(chunks: readonly Buffer[]): void {
    if (this.done) throw new Error('append after commit/abort');
    let n = 0;
    for (const c of chunks) {
      if (c.length === 0) continue;
      this.queue.push(c);
      n += c.length;
    }
    if (n === 0) return;
    this.pending += n;
    this.size += n;
    if (!this.pumping) {
      this.pumping = true;
      this.tail = this.pump();
    }
  }

  private async pump(): Promise<void> {
    try {
      const fd = await this.fd;
      while (this.queue.length && !this.failed) {
        const batch = this.queue;
        this.queue = [];
        let n = 0;
        for (const c of batch) n += c.length;
        const t0 = hrMs();
        try {
          await writeAll(fd, batch);
        } finally {
          this.w.stats.writeMs += hrMs() - t0;
          this.pending -= n;
          this.wakeDrainWaiters();
        }
      }
    } catch (e) {
      this.failed ??= e;
    } finally {
      this.pumping = false;
      if (this.failed) {
        this.queue = [];
        this.pending = 0;
        this.wakeDrainWaiters();
      }
    }
  }

  private wakeDrainWaiters(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    w.forEach((f) => f());
  }

  /** Resolves once fewer than `limit` bytes wait to be written (or the file failed). */
  whenBelow(limit: number): Promise<void> {
    if (this.pending < limit || this.failed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const check = (): void => {
        if (this.pending < limit || this.failed) resolve();
        else this.drainWaiters.push(check);
      };
      this.drainWaiters.push(check);
    });
  }

  /** Everything appended written, fdatasync'd, renamed into place, folder fsync'd. */
  async commit(): Promise<void> {
    this.done = true;
    await this.tail;
    if (this.failed) {
      await this.abort();
      throw this.failed;
    }
    const fd = await this.fd;
    const st = this.w.stats;
    try {
      let t0 = hrMs();
      await call<void>((cb) => fs.fdatasync(fd, (e) => cb(e, undefined)));
      let t1 = hrMs();
      st.datasyncMs += t1 - t0;
      t0 = t1;
      try {
        await call<void>((cb) => fs.rename(this.tmp, this.path, (e) => cb(e, undefined)));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await this.relocate(fd);
      }
      t1 = hrMs();
      st.renameMs += t1 - t0;
    } catch (e) {
      await this.abort();
      throw e;
    }
    // The temp name is free again; closing is not on the answer's path.
    fs.close(fd, () => undefined);
    const dir = dirname(this.path);
    this.w.releaseTempName(dir, this.tmp);
    const t0 = hrMs();
    await this.w.dirSync(dir).sync().catch((e: unknown) => {
      // The folder went away after the rename: a consumer took it, with this file in it.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    });
    st.dirSyncMs += hrMs() - t0;
    st.files++;
    st.bytes += this.size;
  }

  /**
   * The folder went away with the temp file in it (a consumer took the study folder, or emptied
   * the tree): the bytes are still behind our descriptor. Copy them into a temp file in the folder
   * made again, and rename that instead; the old temp file is emptied where it went.
   */
  private async relocate(fd: number): Promise<void> {
    const dir = dirname(this.path);
    const buf = Buffer.allocUnsafe(Math.min(this.size, 1 << 20));
    for (let attempt = 1; ; attempt++) {
      this.w.forgetDir(dir);
      await this.w.ensureDir(dir, this.dirMode);
      const tmp = childPath(dir, this.w.tempName(dir));
      const out = await call<number>((cb) => fs.open(tmp, 'w', 0o644, cb));
      try {
        for (let pos = 0; pos < this.size; ) {
          const n = await call<number>((cb) => fs.read(fd, buf, 0, Math.min(buf.length, this.size - pos), pos, cb));
          if (n === 0) throw Object.assign(new Error('temp file shorter than written'), { code: 'EIO' });
          for (let off = 0; off < n; ) off += await call<number>((cb) => fs.write(out, buf, off, n - off, pos + off, cb));
          pos += n;
        }
        await call<void>((cb) => fs.fdatasync(out, (e) => cb(e, undefined)));
        await call<void>((cb) => fs.rename(tmp, this.path, (e) => cb(e, undefined)));
      } catch (e) {
        await call<void>((cb) => fs.unlink(tmp, (e2) => cb(e2, undefined))).catch(() => undefined);
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= WRITE_ATTEMPTS) throw e;
        continue;
      } finally {
        fs.close(out, () => undefined);
      }
      await call<void>((cb) => fs.ftruncate(fd, 0, (e) => cb(e, undefined))).catch(() => undefined);
      this.tmp = tmp;
      return;
    }
  }

  /** Drop the file: nothing becomes visible, the temp file is removed. */
  async abort(): Promise<void> {
    this.done = true;
    this.failed ??= new Error('aborted');
    await this.tail.catch(() => undefined);
    let fd: number | undefined;
    try {
      fd = await this.fd;
    } catch {
      return; // never opened
    }
    await call<void>((cb) => fs.close(fd as number, (e) => cb(e, undefined))).catch(() => undefined);
    await call<void>((cb) => fs.unlink(this.tmp, (e) => cb(e, undefined))).catch(() => undefined);
  }
}

async function writeAll(fd: number, chunks: Buffer[]): Promise<void> {
  const cursor = new ChunkCursor(chunks);
  for (let batch = cursor.next(); batch; batch = cursor.next()) {
    const b = batch;
    cursor.advance(await call<number>((cb) => fs.writev(fd, b, null, cb)));
  }
}

export class DurableWriter {
  readonly stats: WriterStats = { files: 0, bytes: 0, openMs: 0, writeMs: 0, datasyncMs: 0, renameMs: 0, dirSyncMs: 0, dirSyncs: 0 };
  /** Folders known to exist (and, once made by us, to be durable). Bounded: a long-running node sees a new
   * series folder every few images. */
  private made = new LRUCache<string, true>({ max: 4096 });
  private making = new Map<string, Promise<void>>();
  private syncers = new LRUCache<string, DirSync>({ max: 1024 });
  private freeNames = new LRUCache<string, string[]>({ max: 1024 });
  private readonly prefix = `${TEMP_PREFIX}${randomBytes(6).toString('hex')}-`;
  private counter = 0;

  /** Start writing `path` (atomically, durably). */
  open(path: string, dirMode?: number): DurableFile {
    return new DurableFile(this, path, dirMode);
  }

  /** Write a whole file; resolves once it is durable under its name. A folder or temp file that
   * vanishes meanwhile (a consumer took the study, a starting replica cleaned up) is made again
   * and the file rewritten. */
  async writeFile(path: string, chunks: readonly Buffer[], opts: { dirMode?: number } = {}): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const f = this.open(path, opts.dirMode);
      f.append(chunks);
      try {
        await f.commit();
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= WRITE_ATTEMPTS) throw e;
        this.forgetDir(dirname(path));
        // A consumer emptying a large tree takes a while: give it that, a little more each time.
        await new Promise((r) => setTimeout(r, 5 * attempt));
      }
    }
  }

  /** A temp file name unused in `dir` by this process. Names freed by a rename are reused: on ext4 a
   * just-freed directory entry made file creation cheaper than a fresh name. */
  tempName(dir: string): string {
    const free = this.freeNames.get(dir);
    const reuse = free?.pop();
    return reuse ?? `${this.prefix}${(this.counter++).toString(36)}.tmp`;
  }

  releaseTempName(dir: string, tmpPath: string): void {
    let free = this.freeNames.get(dir);
    if (!free) this.freeNames.set(dir, (free = []));
    if (free.length < 16) free.push(basename(tmpPath));
  }

  dirSync(dir: string): DirSync {
    let s = this.syncers.get(dir);
    if (!s) this.syncers.set(dir, (s = new DirSync(dir, this.stats)));
    return s;
  }

  forgetDir(dir: string): void {
    this.made.delete(dir);
  }

  /** mkdir -p; folders we create are made durable (their parents fsync'd) before any file in them is
   * answered. Errors name the real cause (EROFS, EACCES, ENOSPC: Node's recursive mkdir says ENOENT). */
  ensureDir(dir: string, mode = 0o755): Promise<void> {
    if (this.made.has(dir)) return Promise.resolve();
    let p = this.making.get(dir);
    if (!p) {
      p = (async () => {
        const first = await mkdirpAsync(dir, mode);
        if (first) {
          const parents: string[] = [];
          for (let d = dir; ; d = dirname(d)) {
            parents.push(dirname(d));
            if (d === first || dirname(d) === d) break;
          }
          await Promise.all(parents.map((p) => this.dirSync(p).sync()));
        }
        this.made.set(dir, true);
      })().finally(() => this.making.delete(dir));
      this.making.set(dir, p);
    }
    return p;
  }
}
