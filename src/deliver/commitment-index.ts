// What storage commitment needs to know about each received instance, without keeping its original
// UID: the index is keyed by HMAC-SHA-256 (a key derived from the salt, purpose 'commitment') of the
// original SOP Instance UID, and holds only where the de-identified copy went (destination names and
// the new SOP Instance UID) or that it was quarantined by policy.
//
// Whether an instance is durable is read from the delivery state on disk at the time of asking:
// folder destination: written before the sender was answered; dicom/dicomweb: committed once its spool
// file is gone, failed while it is a dead letter, pending while it is spooled. A dead letter left by an
// earlier copy (the modality sent the instance again after it was reported failed, which rewrites the
// entry) does not speak for the copy received since: it counts only when it was made after the entry.
//
// Durability: an entry is written (temp file, rename) without an fsync of its own, so that the C-STORE path
// pays no extra fsync per image. Before a report claims instances committed, their entries and the index
// folder are fsynced (makeDurable: one group flush per report, whichever process wrote them): a report never
// claims an instance whose entry a power cut could still take away. An entry lost before it was reported
// makes the instance "never received" (failed), and the modality sends it again.
//
// Layout: <stateDir>/commitment/entries/<YYYY-MM-DD>/<hex>.json, one folder per UTC day of recording, newest
// entry of an instance first. Folders older than `indexRetentionDays` (default 30) are removed by the writer
// thread, at start and hourly: the index no longer grows with every image a node ever received (one file per
// image, for years, in one folder). A commitment request for an instance received before that is answered
// "no such object instance", and the modality sends it again. Entries of earlier versions, flat in
// <stateDir>/commitment/index/<hex>.json, are still read, and removed once older than the retention.
import { existsSync, readFileSync, readdirSync, statSync } from 'fs';
import { open } from 'fs/promises';
import { randomBytes } from 'crypto';
import { Worker } from 'worker_threads';
import { createHmac } from 'crypto';
import { dirname, join } from 'path';
import { deriveKey } from '../deid/plan';
import { DEFAULT_INDEX_RETENTION_DAYS } from '../config/types';
import { TEMP_PREFIX } from './folder';
import { spoolId } from './spool';

export interface CommitmentEntry {
  /** [destination name, type, new SOP Instance UID] */
  d?: Array<[string, 'folder' | 'dicom' | 'dicomweb', string]>;
  /** Quarantined by policy (unknownStudy: quarantine). */
  q?: true;
}

export type CommitmentState = { state: 'committed' } | { state: 'pending' } | { state: 'failed'; reason: number; why: string };

/** PS3.4 J.3.2 / C.14 Failure Reason codes. */
export const FAILURE = { ProcessingFailure: 0x0110, NoSuchObjectInstance: 0x0112, ResourceLimitation: 0x0213 } as const;

const DAY_MS = 86_400_000;
/** Names of the day folders: their string order is their time order. */
const DAY_NAME = /^\d{4}-\d{2}-\d{2}$/;

/** The UTC day folder name of a time. */
export function dayName(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Messages to the writer thread (commitment-index-thread.ts). write: a batch of entries, [file name, JSON],
 * into one day folder. prune: remove day folders named before `beforeDay`, and legacy flat entries older
 * than `legacyBeforeMs`. */
export type IndexBatch =
  | { kind: 'write'; id: number; dir: string; entries: Array<[string, string]>; tempPrefix: string }
  | { kind: 'prune'; id: number; root: string; beforeDay: string; legacyDir: string; legacyBeforeMs: number };

export interface IndexBatchDone {
  id: number;
  /** Error codes of the entries that could not be written. */
  errors: string[];
}

export interface CommitmentIndexOptions {
  /** Days an entry is kept (default 30). */
  retentionDays?: number;
  /** The clock (tests). */
  now?: () => number;
}

export class CommitmentIndex {
  /** Holds one folder per day of entries. */
  readonly root: string;
  /** Where earlier versions kept every entry, flat; read, and pruned, still. */
  readonly legacyDir: string;
  private readonly key: Buffer;
  private readonly retentionDays: number;
  private readonly now: () => number;
  private pruneTimer: NodeJS.Timeout | undefined;

  /** Entries recorded and not yet handed to the writer thread. */
  private batch: Array<[string, string]> = [];
  private flushScheduled = false;
  /** Batches handed to the writer thread and not yet written, by id. */
  private readonly inFlight = new Map<number, { kind: IndexBatch['kind']; written: Promise<void>; done: () => void }>();
  private batchId = 0;
  private writer: Worker | undefined;
  private readonly tempPrefix = `${TEMP_PREFIX}${randomBytes(6).toString('hex')}-`;

  /** `onError`: an entry could not be written (the instance will be reported failed, and sent again). */
  constructor(private readonly stateDir: string, salt: string, private readonly onError: (e: unknown) => void = () => undefined, options: CommitmentIndexOptions = {}) {
    this.root = join(stateDir, 'commitment', 'entries');
    this.legacyDir = join(stateDir, 'commitment', 'index');
    this.key = deriveKey(salt, 'commitment');
    this.retentionDays = options.retentionDays ?? DEFAULT_INDEX_RETENTION_DAYS;
    this.now = options.now ?? Date.now;
  }

  /** The index key of an original SOP Instance UID (nothing re-identifying on disk). */
  keyOf(originalSopInstanceUid: string): string {
    return createHmac('sha256', this.key).update(originalSopInstanceUid.trim()).digest('hex');
  }

  /**
   * Notes where an instance went. Not waited for: the sender's answer does not depend on it. Entries
   * recorded in one turn of the event loop go to a thread of their own in one message and are written
   * there (a file created in the main thread waited for the journal commit of the image's own fsync: a
   * third of the SCP's time; four pool trips per image cost 12 % of four-association throughput). A
   * commitment request for the instance looks only after settled(); not fsynced here: see makeDurable.
   */
  record(originalSopInstanceUid: string, entry: CommitmentEntry): void {
    this.batch.push([`${this.keyOf(originalSopInstanceUid)}.json`, JSON.stringify(entry)]);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Resolves once every entry recorded so far is written (not necessarily fsync'd). */
  async settled(): Promise<void> {
    this.flush();
    while (this.inFlight.size) await Promise.all([...this.inFlight.values()].map((b) => b.written));
  }

  /** Writes what is recorded, then stops the writer thread (a later record starts another). */
  async close(): Promise<void> {
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = undefined;
    await this.settled();
    const w = this.writer;
    this.writer = undefined;
    await w?.terminate();
  }

  /** Starts the writer thread now rather than at the first record (serve: so that the first images'
   * entries do not wait for a thread to start). */
  startWriter(): void {
    this.thread();
    this.prune();
    this.pruneTimer = setInterval(() => this.prune(), 3_600_000);
    this.pruneTimer.unref();
  }

  /** Removes, on the writer thread, the entries older than the retention; resolves when done. */
  prune(): Promise<void> {
    const now = this.now();
    const cut = now - this.retentionDays * DAY_MS;
    return this.post({ kind: 'prune', id: ++this.batchId, root: this.root, beforeDay: dayName(cut), legacyDir: this.legacyDir, legacyBeforeMs: cut });
  }

  private flush(): void {
    this.flushScheduled = false;
    if (!this.batch.length) return;
    const entries = this.batch;
    this.batch = [];
    const id = ++this.batchId;
    void this.post({ kind: 'write', id, dir: join(this.root, dayName(this.now())), entries, tempPrefix: `${this.tempPrefix}${id.toString(36)}-` });
  }

  private post(batch: IndexBatch): Promise<void> {
    let done!: () => void;
    const written = new Promise<void>((resolve) => (done = resolve));
    this.inFlight.set(batch.id, { kind: batch.kind, written, done });
    const w = this.thread();
    w.ref(); // done before the process may exit
    w.postMessage(batch);
    return written;
  }

  private thread(): Worker {
    if (this.writer) return this.writer;
    const w = new Worker(join(__dirname, 'commitment-index-thread.js'));
    w.on('message', (d: IndexBatchDone) => {
      const what = this.inFlight.get(d.id)?.kind === 'prune' ? 'commitment index entries past their retention not removed' : 'commitment index entry not written';
      for (const code of d.errors) this.onError(Object.assign(new Error(`${what}: ${code}`), { code }));
      this.inFlight.get(d.id)?.done();
      this.inFlight.delete(d.id);
      if (!this.inFlight.size) w.unref();
    });
    const lost = (why: string): void => {
      if (this.writer !== w) return;
      this.writer = undefined;
      // Entries of the batches in flight may be lost: those instances are reported failed (and sent again).
      if (this.inFlight.size) this.onError(new Error(`commitment index writer stopped (${why}); ${this.inFlight.size} batches may be lost`));
      for (const b of this.inFlight.values()) b.done();
      this.inFlight.clear();
    };
    w.on('error', (e) => lost(e.message));
    w.on('exit', (code) => lost(`exit ${code}`));
    w.unref();
    this.writer = w;
    return w;
  }

  /** Makes the entries of these instances, and the index folder, durable (fsync) before a report relies on them. */
  async makeDurable(originalSopInstanceUids: readonly string[]): Promise<void> {
    if (!originalSopInstanceUids.length) return;
    const sync = async (path: string): Promise<void> => {
      const fh = await open(path, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    };
    // A few at a time: the fsyncs of one group overlap in the thread pool. Then the folders that name them:
    // their day folders, and the folder naming those.
    const days = this.dayFolders();
    const files = [...new Set(originalSopInstanceUids.map((u) => this.entryIn(days, u)).filter((f): f is string => f !== undefined))];
    for (let i = 0; i < files.length; i += 4) await Promise.all(files.slice(i, i + 4).map(sync));
    const folders = [...new Set(files.map((f) => dirname(f)))];
    await Promise.all(folders.map(sync));
    if (folders.some((d) => dirname(d) === this.root)) {
      await sync(this.root);
      await sync(dirname(this.root)); // names the root, made with the first entry
    }
  }

  /** The file of an instance's newest entry, or undefined when there is none. */
  entryPath(originalSopInstanceUid: string): string | undefined {
    return this.entryIn(this.dayFolders(), originalSopInstanceUid);
  }

  /** entryPath, with the day folders read once by the caller (a request names many instances). */
  private entryIn(days: readonly string[], originalSopInstanceUid: string): string | undefined {
    const name = `${this.keyOf(originalSopInstanceUid)}.json`;
    for (const day of days) {
      const f = join(this.root, day, name);
      if (existsSync(f)) return f;
    }
    const legacy = join(this.legacyDir, name);
    return existsSync(legacy) ? legacy : undefined;
  }

  /** The day folders, newest first. */
  private dayFolders(): string[] {
    try {
      return readdirSync(this.root).filter((n) => DAY_NAME.test(n)).sort().reverse();
    } catch {
      return []; // no entries yet
    }
  }

  /** Where each instance stands now. */
  statesOf(originalSopInstanceUids: readonly string[]): CommitmentState[] {
    const days = this.dayFolders();
    return originalSopInstanceUids.map((u) => this.stateIn(days, u));
  }

  /** Where the instance stands now. */
  stateOf(originalSopInstanceUid: string): CommitmentState {
    return this.stateIn(this.dayFolders(), originalSopInstanceUid);
  }

  private stateIn(days: readonly string[], originalSopInstanceUid: string): CommitmentState {
    const file = this.entryIn(days, originalSopInstanceUid);
    let entry: CommitmentEntry;
    try {
      if (file === undefined) throw new Error('no entry');
      entry = JSON.parse(readFileSync(file, 'utf8')) as CommitmentEntry;
    } catch {
      return { state: 'failed', reason: FAILURE.NoSuchObjectInstance, why: 'never received' };
    }
    if (entry.q) return { state: 'committed' };
    let pending = false;
    for (const [name, type, uid] of entry.d ?? []) {
      if (type === 'folder') continue;
      const id = spoolId(uid);
      if (this.deadLetterOfThisCopy(name, id, file)) {
        return { state: 'failed', reason: FAILURE.ProcessingFailure, why: `refused by destination ${name} (dead letter)` };
      }
      if (existsSync(join(this.stateDir, 'spool', name, `${id}.dcm`))) pending = true;
    }
    return pending ? { state: 'pending' } : { state: 'committed' };
  }

  /** Whether the destination dead-lettered the copy the entry describes: its reason file (written when the
   * image became a dead letter) is not older than the entry. Without a readable reason file, any dead letter
   * counts (reporting failed is the safe side: the modality sends again). */
  private deadLetterOfThisCopy(destination: string, id: string, entryFile: string): boolean {
    const dir = join(this.stateDir, 'deadletter', destination);
    if (!existsSync(join(dir, `${id}.dcm`))) return false;
    try {
      return statSync(join(dir, `${id}.reason.json`)).mtimeMs >= statSync(entryFile).mtimeMs;
    } catch {
      return true;
    }
  }
}
