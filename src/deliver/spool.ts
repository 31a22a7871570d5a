// Durable per-destination spool of de-identified Part-10 files waiting for delivery.
//
// Layout (all under stateDir):
//   spool/<dest>/<id>.dcm             one Part-10 file per SOP instance, written atomically
//   spool/<dest>/<id>.attempts.json   per-image failure bookkeeping (only after a failure status)
//   spool/<dest>/.deid-*.tmp          files being written (a killed process's are removed at init)
// Folders are made mode 0700, and made again when found missing.
//   deadletter/<dest>/<id>.dcm        images the PACS refused maxAttempts times
//   deadletter/<dest>/<id>.reason.json {status, statusHex, message, attempts, time}
//
// <id> is the SOP Instance UID when it is a plain UID (digits and dots), else a SHA-1 of it, so the
// same instance enqueued twice is one file (the later write replaces the earlier one).
import { createHash } from 'node:crypto';
import { ensureDirSync, forgetDir, fsyncDirSync, removeTempFiles, writeFileAtomicSync } from './folder';
import type { DurableWriter } from './durable-writer';
import { hasLongLength } from '../dicom/vr';
import { TS } from '../dicom/uids';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

export interface SpoolItemInfo {
  sopInstanceUid: string;
  sopClassUid: string;
  transferSyntaxUid: string;
  studyInstanceUid: string;
}

export interface SpoolEntry {
  id: string;
  path: string;
  size: number;
  mtimeMs: number;
}

export interface BacklogInfo {
  count: number;
  bytes: number;
  oldestAgeMs: number;
}

export interface Part10Meta {
  /** Byte offset of the first dataset byte (just after the file meta group). */
  datasetOffset: number;
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
}

/** An item opened for sending: the file handle stays open until release()/ack(). */
export interface OpenedItem extends Part10Meta {
  id: string;
  /** SOP class / instance UIDs for the C-STORE command: the dataset's own (0008,0016)/(0008,0018) when
   * readable, else the file meta's. */
  commandSopClassUid: string;
  commandSopInstanceUid: string;
  path: string;
  fh: FileHandle;
  size: number;
  ino: number;
  mtimeMs: number;
  /** Number of dataset bytes (size - datasetOffset). */
  datasetLength: number;
}

export interface AttemptRecord {
  attempts: number;
  status?: number;
  message?: string;
  lastTime?: string;
}

export interface DeadLetterReason {
  status: number | null;
  statusHex: string | null;
  message: string;
  attempts: number;
  time: string;
  sopInstanceUid?: string;
}

export class Part10Error extends Error {}

const DCM = '.dcm';
const ATTEMPTS = '.attempts.json';
const REASON = '.reason.json';
const PRIVATE = { dirMode: 0o700 };

/** Walk the Part-10 file meta group (always explicit VR little endian). Needs only the first bytes. */
export function parsePart10Meta(buf: Buffer, complete = true): Part10Meta {
  if (buf.length < 132 || buf.toString('latin1', 128, 132) !== 'DICM') {
    throw new Part10Error('not a Part-10 file (no DICM prefix)');
  }
  let pos = 132;
  const values = new Map<number, string>();
  let sawOtherGroup = false;
  while (pos + 8 <= buf.length) {
    const group = buf.readUInt16LE(pos);
    if (group !== 0x0002) {
      sawOtherGroup = true;
      break;
    }
    const element = buf.readUInt16LE(pos + 2);
    const vr = buf.toString('latin1', pos + 4, pos + 6);
    let len: number;
    let header: number;
    if (hasLongLength(vr)) {
      if (pos + 12 > buf.length) throw new Part10Error(complete ? 'file meta runs past the end of the file' : 'truncated file meta');
      len = buf.readUInt32LE(pos + 8);
      header = 12;
    } else {
      len = buf.readUInt16LE(pos + 6);
      header = 8;
    }
    if (len === 0xffffffff) throw new Part10Error('undefined length in file meta');
    if (pos + header + len > buf.length) {
      throw new Part10Error(complete ? 'file meta runs past the end of the file' : 'truncated file meta');
    }
    if (element === 0x0002 || element === 0x0003 || element === 0x0010) {
      values.set(element, trimUid(buf.toString('latin1', pos + header, pos + header + len)));
    }
    pos += header + len;
  }
  if (!sawOtherGroup && !complete) {
    // The buffer ended before the meta group did: the caller must read more.
    throw new Part10Error('truncated file meta');
  }
  const sopClassUid = values.get(0x0002);
  const sopInstanceUid = values.get(0x0003);
  const transferSyntaxUid = values.get(0x0010);
  if (!sopClassUid || !sopInstanceUid || !transferSyntaxUid) {
    throw new Part10Error('file meta lacks MediaStorageSOPClassUID, MediaStorageSOPInstanceUID or TransferSyntaxUID');
  }
  return { datasetOffset: pos, sopClassUid, sopInstanceUid, transferSyntaxUid };
}

function trimUid(s: string): string {
  return s.replace(/[\0 ]+$/, '').trim();
}

/**
 * SOPClassUID (0008,0016) and SOPInstanceUID (0008,0018) from the first bytes of a dataset in any transfer
 * syntax (deflated: inflated on the fly). The C-STORE command must carry these (a PACS checks them against the
 * dataset), and they can differ from the file meta in odd files. Returns {} when not found in `head`.
 */
export function datasetSopUids(head: Buffer, transferSyntaxUid: string): { sopClassUid?: string; sopInstanceUid?: string } {
  let buf = head;
  if (transferSyntaxUid === TS.DeflatedExplicitLE) {
    try {
      buf = zlib.inflateRawSync(head, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } catch {
      return {};
    }
  }
  const implicit = transferSyntaxUid === TS.ImplicitLE;
  const be = transferSyntaxUid === TS.ExplicitBE;
  const u16 = (o: number) => (be ? buf.readUInt16BE(o) : buf.readUInt16LE(o));
  const u32 = (o: number) => (be ? buf.readUInt32BE(o) : buf.readUInt32LE(o));
  const out: { sopClassUid?: string; sopInstanceUid?: string } = {};
  let pos = 0;
  while (pos + 8 <= buf.length) {
    const group = u16(pos);
    const element = u16(pos + 2);
    if (group > 0x0008 || (group === 0x0008 && element > 0x0018)) break;
    let len: number;
    let header: number;
    if (implicit) {
      len = u32(pos + 4);
      header = 8;
    } else {
      const vr = buf.toString('latin1', pos + 4, pos + 6);
      if (hasLongLength(vr)) {
        if (pos + 12 > buf.length) break;
        len = u32(pos + 8);
        header = 12;
      } else {
        len = u16(pos + 6);
        header = 8;
      }
    }
    if (len === 0xffffffff) break; // undefined-length sequence before (0008,0018): give up
    if (pos + header + len > buf.length) break;
    if (group === 0x0008 && (element === 0x0016 || element === 0x0018)) {
      const v = trimUid(buf.toString('latin1', pos + header, pos + header + len));
      if (element === 0x0016) out.sopClassUid = v;
      else out.sopInstanceUid = v;
    }
    pos += header + len;
  }
  return out;
}

/** File-name id for a SOP instance UID. */
export function spoolId(sopInstanceUid: string): string {
  if (/^[0-9][0-9.]{0,63}$/.test(sopInstanceUid)) return sopInstanceUid;
  return 'h' + createHash('sha1').update(sopInstanceUid).digest('hex');
}

export function statusHex(status: number): string {
  return '0x' + status.toString(16).toUpperCase().padStart(4, '0');
}

/** unlink, ignoring a file that is already gone (cheaper than fs.rm, which lstat()s first). */
async function unlinkIfExists(p: string): Promise<void> {
  try {
    await fsp.unlink(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

export class Spool {
  readonly destination: string;
  readonly dir: string;
  readonly deadDir: string;
  private ready: Promise<void> | undefined;
  /** Ids known to have an attempts file (so ack() need not try to delete one for every image). */
  private withAttempts = new Set<string>();
  /** When set, enqueue() writes through it (off the event loop) instead of blocking calls. */
  writer: DurableWriter | undefined;

  constructor(stateDir: string, destination: string) {
    if (!/^[A-Za-z0-9._-]+$/.test(destination) || destination.startsWith('.')) {
      throw new Error(`invalid destination name for a spool directory: ${JSON.stringify(destination)}`);
    }
    this.destination = destination;
    this.dir = path.join(stateDir, 'spool', destination);
    this.deadDir = path.join(stateDir, 'deadletter', destination);
  }

  /** Create the directories (mode 0700) and remove the temp files a killed process left.
   * Idempotent; called by every method. */
  init(): Promise<void> {
    if (!this.ready) {
      this.ready = (async () => {
        for (const d of [this.dir, this.deadDir]) {
          ensureDirSync(d, true, 0o700);
          await removeTempFiles(d, false);
        }
      })();
      this.ready.catch(() => (this.ready = undefined));
    }
    return this.ready;
  }

  /** The spool folder was found missing (removed by an operator or a cleanup job): make it again. */
  private remake(dir: string): void {
    forgetDir(dir);
    ensureDirSync(dir, true, 0o700);
  }

  pathOf(id: string): string {
    return path.join(this.dir, id + DCM);
  }

  /**
   * Store one Part-10 file. When the promise resolves the file is on stable storage (temp file written and
   * fsynced, renamed into place, directory fsynced) and survives SIGKILL or power loss. Returns what a
   * ForwardQueue needs to queue the item without rescanning the folder.
   */
  async enqueue(part10: Buffer | readonly Buffer[], info: SpoolItemInfo): Promise<SpoolEntry> {
    await this.init();
    // Chunks (as the de-identifier produces them) are written without joining them first: only
    // the head is joined, to check the file meta.
    const chunks = Buffer.isBuffer(part10) ? [part10] : part10;
    let size = 0;
    for (const c of chunks) size += c.length;
    let head = chunks[0];
    if (chunks.length > 1) {
      const first: Buffer[] = [];
      let n = 0;
      for (const c of chunks) {
        if (n >= 4096) break;
        first.push(c);
        n += c.length;
      }
      head = Buffer.concat(first);
    }
    const meta = parsePart10Meta(head, head.length >= size);
    if (meta.sopInstanceUid !== info.sopInstanceUid) {
      throw new Part10Error('file meta MediaStorageSOPInstanceUID differs from the SOP instance UID given');
    }
    const id = spoolId(info.sopInstanceUid);
    if (this.writer) await this.writer.writeFile(this.pathOf(id), chunks, PRIVATE);
    else writeFileAtomicSync(this.pathOf(id), chunks, PRIVATE);
    // A fresh copy starts with a clean failure count.
    if (this.withAttempts.delete(id)) await unlinkIfExists(path.join(this.dir, id + ATTEMPTS));
    return { id, path: this.pathOf(id), size, mtimeMs: Date.now() };
  }

  /** The bookkeeping of enqueue() for a file written straight to pathOf(id) (the streaming C-STORE path
   * writes it durably itself, through a DurableWriter). */
  async enqueued(id: string, size: number): Promise<SpoolEntry> {
    if (this.withAttempts.delete(id)) await unlinkIfExists(path.join(this.dir, id + ATTEMPTS));
    return { id, path: this.pathOf(id), size, mtimeMs: Date.now() };
  }

  /** Ids of the spooled images (no stat, no read). */
  async listIds(): Promise<string[]> {
    await this.init();
    let names: string[];
    try {
      names = await fsp.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      this.remake(this.dir);
      names = [];
    }
    for (const n of names) if (n.endsWith(ATTEMPTS)) this.withAttempts.add(n.slice(0, -ATTEMPTS.length));
    return names.filter((n) => n.endsWith(DCM) && !n.startsWith('.')).map((n) => n.slice(0, -DCM.length));
  }

  async statEntry(id: string): Promise<SpoolEntry | undefined> {
    const p = this.pathOf(id);
    try {
      const st = await fsp.stat(p);
      return { id, path: p, size: st.size, mtimeMs: st.mtimeMs };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  /** All spooled images with size and time, oldest first. */
  async list(): Promise<SpoolEntry[]> {
    const out: SpoolEntry[] = [];
    for (const id of await this.listIds()) {
      const e = await this.statEntry(id);
      if (e) out.push(e);
    }
    return out.sort((a, b) => a.mtimeMs - b.mtimeMs);
  }

  async backlog(): Promise<BacklogInfo> {
    const now = Date.now();
    let count = 0;
    let bytes = 0;
    let oldest = now;
    for (const id of await this.listIds()) {
      const e = await this.statEntry(id);
      if (!e) continue;
      count++;
      bytes += e.size;
      oldest = Math.min(oldest, e.mtimeMs);
    }
    return { count, bytes, oldestAgeMs: count ? Math.max(0, now - oldest) : 0 };
  }

  /**
   * Open a spooled image for sending: reads only the file meta. Returns undefined if it vanished.
   * Throws Part10Error if the file meta cannot be parsed.
   */
  async open(id: string): Promise<OpenedItem | undefined> {
    const p = this.pathOf(id);
    let fh: FileHandle;
    try {
      fh = await fsp.open(p, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    try {
      const st = await fh.stat();
      // One read normally covers the file meta and the start of the dataset (for its SOP UIDs).
      let want = Math.min(st.size, 32768);
      for (;;) {
        const buf = Buffer.allocUnsafe(want); // only the bytesRead filled are looked at
        const { bytesRead } = await fh.read(buf, 0, want, 0);
        try {
          const meta = parsePart10Meta(buf.subarray(0, bytesRead), bytesRead >= st.size);
          let head = buf.subarray(meta.datasetOffset, bytesRead);
          if (head.length < 4096 && bytesRead < st.size) {
            const more = Buffer.allocUnsafe(Math.min(st.size - meta.datasetOffset, 65536));
            head = more.subarray(0, (await fh.read(more, 0, more.length, meta.datasetOffset)).bytesRead);
          }
          const ds = datasetSopUids(head, meta.transferSyntaxUid);
          return {
            commandSopClassUid: ds.sopClassUid || meta.sopClassUid,
            commandSopInstanceUid: ds.sopInstanceUid || meta.sopInstanceUid,
            ...meta,
            id,
            path: p,
            fh,
            size: st.size,
            ino: st.ino,
            mtimeMs: st.mtimeMs,
            datasetLength: st.size - meta.datasetOffset,
          };
        } catch (e) {
          if (e instanceof Part10Error && e.message === 'truncated file meta' && want < st.size) {
            want = Math.min(st.size, want * 4);
            continue;
          }
          throw e;
        }
      }
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }

  /** Close the handle without deleting (the image stays queued). */
  async release(item: OpenedItem): Promise<void> {
    await item.fh.close().catch(() => undefined);
  }

  /**
   * The PACS has the image: delete the spool file, unless it was replaced by a newer enqueue of the same
   * SOP instance meanwhile (then the new copy stays queued). Returns true if deleted.
   */
  async ack(item: OpenedItem): Promise<boolean> {
    await this.release(item);
    const st = await fsp.stat(item.path).catch(() => undefined);
    if (!st) return true;
    if (st.ino !== item.ino || st.mtimeMs !== item.mtimeMs) return false;
    await unlinkIfExists(item.path);
    if (this.withAttempts.delete(item.id)) await unlinkIfExists(path.join(this.dir, item.id + ATTEMPTS));
    return true;
  }

  async getAttempts(id: string): Promise<AttemptRecord> {
    try {
      const rec = JSON.parse(await fsp.readFile(path.join(this.dir, id + ATTEMPTS), 'utf8')) as AttemptRecord;
      return typeof rec.attempts === 'number' ? rec : { attempts: 0 };
    } catch {
      return { attempts: 0 };
    }
  }

  /** Count one permanent failure for an image; returns the new attempt count. */
  async recordFailure(id: string, status: number | null, message: string): Promise<number> {
    await this.init();
    const prev = await this.getAttempts(id);
    const rec: AttemptRecord = {
      attempts: prev.attempts + 1,
      status: status ?? undefined,
      message,
      lastTime: new Date().toISOString(),
    };
    writeFileAtomicSync(path.join(this.dir, id + ATTEMPTS), [Buffer.from(JSON.stringify(rec))], PRIVATE);
    this.withAttempts.add(id);
    return rec.attempts;
  }

  /** Move an image to the dead-letter folder with a reason file. With `copy` (the file that was tried), only
   * if the spool file is still that copy: resolves false, and moves nothing, when a newer one replaced it
   * (the same check as ack()). */
  async deadLetter(
    id: string,
    reason: { status: number | null; message: string; attempts: number; sopInstanceUid?: string },
    copy?: { ino: number; mtimeMs: number },
  ): Promise<boolean> {
    await this.init();
    if (copy) {
      const st = await fsp.stat(this.pathOf(id)).catch(() => undefined);
      if (st && (st.ino !== copy.ino || st.mtimeMs !== copy.mtimeMs)) return false;
    }
    const full: DeadLetterReason = {
      status: reason.status,
      statusHex: reason.status === null ? null : statusHex(reason.status),
      message: reason.message,
      attempts: reason.attempts,
      time: new Date().toISOString(),
      sopInstanceUid: reason.sopInstanceUid,
    };
    writeFileAtomicSync(path.join(this.deadDir, id + REASON), [Buffer.from(JSON.stringify(full, null, 2) + '\n')], PRIVATE);
    await fsp.rename(this.pathOf(id), path.join(this.deadDir, id + DCM));
    fsyncDirSync(this.deadDir);
    await unlinkIfExists(path.join(this.dir, id + ATTEMPTS));
    fsyncDirSync(this.dir);
    return true;
  }

  async listDeadLetters(): Promise<Array<{ id: string; reason?: DeadLetterReason }>> {
    await this.init();
    const out: Array<{ id: string; reason?: DeadLetterReason }> = [];
    for (const n of await this.deadNames()) {
      if (!n.endsWith(DCM) || n.startsWith('.')) continue;
      const id = n.slice(0, -DCM.length);
      let reason: DeadLetterReason | undefined;
      try {
        reason = JSON.parse(await fsp.readFile(path.join(this.deadDir, id + REASON), 'utf8')) as DeadLetterReason;
      } catch {
        reason = undefined;
      }
      out.push({ id, reason });
    }
    return out;
  }

  async deadLetterCount(): Promise<number> {
    await this.init();
    return (await this.deadNames()).filter((n) => n.endsWith(DCM) && !n.startsWith('.')).length;
  }

  private async deadNames(): Promise<string[]> {
    try {
      return await fsp.readdir(this.deadDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  /** Move every dead letter back into the spool with a fresh attempt count. Returns how many. */
  async retryDeadLetters(): Promise<number> {
    await this.init();
    this.remake(this.dir);
    let n = 0;
    for (const { id } of await this.listDeadLetters()) {
      const target = this.pathOf(id);
      // A newer copy already queued wins; the dead one is dropped.
      const exists = await fsp.stat(target).then(() => true, () => false);
      if (exists) await unlinkIfExists(path.join(this.deadDir, id + DCM));
      else await fsp.rename(path.join(this.deadDir, id + DCM), target);
      await unlinkIfExists(path.join(this.dir, id + ATTEMPTS));
      await unlinkIfExists(path.join(this.deadDir, id + REASON));
      n++;
    }
    fsyncDirSync(this.dir);
    fsyncDirSync(this.deadDir);
    return n;
  }
}
