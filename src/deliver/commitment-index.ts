// What storage commitment needs to know about each received instance, without keeping its original
// UID: the index is keyed by HMAC-SHA-256 (a key derived from the salt, purpose 'commitment') of the
// original SOP Instance UID, and holds only where the de-identified copy went (destination names and
// the new SOP Instance UID) or that it was quarantined by policy.
//
// Whether an instance is durable is read from the delivery state on disk at the time of asking:
// folder destination: written before the sender was answered; dicom/dicomweb: committed once its spool
// file is gone, failed while it is a dead letter, pending while it is spooled.
//
// Durability: an entry is written (temp file, rename) without an fsync of its own, so that the C-STORE path
// pays no extra fsync per image. Before a report claims instances committed, their entries and the index
// folder are fsynced (makeDurable: one group flush per report, whichever process wrote them): a report never
// claims an instance whose entry a power cut could still take away. An entry lost before it was reported
// makes the instance "never received" (failed), and the modality sends it again.
//
// Layout: <stateDir>/commitment/index/<hex>.json
import { existsSync, readFileSync } from 'fs';
import { open } from 'fs/promises';
import { createHmac } from 'crypto';
import { join } from 'path';
import { deriveKey } from '../deid/plan';
import { writeFileAtomicSync } from './folder';
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

export class CommitmentIndex {
  readonly dir: string;
  private readonly key: Buffer;

  constructor(private readonly stateDir: string, salt: string) {
    this.dir = join(stateDir, 'commitment', 'index');
    this.key = deriveKey(salt, 'commitment');
  }

  /** The index key of an original SOP Instance UID (nothing re-identifying on disk). */
  keyOf(originalSopInstanceUid: string): string {
    return createHmac('sha256', this.key).update(originalSopInstanceUid.trim()).digest('hex');
  }

  /** Notes where an instance went (before its sender is answered Success); not fsynced here: see makeDurable. */
  record(originalSopInstanceUid: string, entry: CommitmentEntry): void {
    writeFileAtomicSync(join(this.dir, `${this.keyOf(originalSopInstanceUid)}.json`), [Buffer.from(JSON.stringify(entry))], { durable: false });
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
    // A few at a time: the fsyncs of one group overlap in the thread pool.
    const files = [...new Set(originalSopInstanceUids.map((u) => join(this.dir, `${this.keyOf(u)}.json`)))];
    for (let i = 0; i < files.length; i += 4) await Promise.all(files.slice(i, i + 4).map(sync));
    await sync(this.dir);
  }

  /** Where the instance stands now. */
  stateOf(originalSopInstanceUid: string): CommitmentState {
    const file = join(this.dir, `${this.keyOf(originalSopInstanceUid)}.json`);
    let entry: CommitmentEntry;
    try {
      entry = JSON.parse(readFileSync(file, 'utf8')) as CommitmentEntry;
    } catch {
      return { state: 'failed', reason: FAILURE.NoSuchObjectInstance, why: 'never received' };
    }
    if (entry.q) return { state: 'committed' };
    let pending = false;
    for (const [name, type, uid] of entry.d ?? []) {
      if (type === 'folder') continue;
      const id = spoolId(uid);
      if (existsSync(join(this.stateDir, 'deadletter', name, `${id}.dcm`))) {
        return { state: 'failed', reason: FAILURE.ProcessingFailure, why: `refused by destination ${name} (dead letter)` };
      }
      if (existsSync(join(this.stateDir, 'spool', name, `${id}.dcm`))) pending = true;
    }
    return pending ? { state: 'pending' } : { state: 'committed' };
  }
}
