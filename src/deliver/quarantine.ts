// Quarantine: images we could not process are kept, untouched, with the reason beside them, so
// nothing is ever silently dropped. The reason file carries no patient data: only the stage,
// the message (which the engine keeps free of values) and where the image came from. The folder
// holds original patient data: it is made mode 0700.
import { join } from 'path';
import { randomBytes } from 'crypto';
import { writeFileAtomicSync } from './folder';

export interface QuarantineReason {
  stage: 'read' | 'identify' | 'deidentify' | 'phi-gate' | 'burned-in' | 'deliver';
  reason: string;
  /** Where it came from, without a path: `anonymize`, or the calling AE and peer address. */
  source: string;
  /** SHA-256 of the original bytes (batch), to find the input again without naming it. */
  sha256?: string;
  study?: string;
  time?: string;
}

export class Quarantine {
  constructor(readonly dir: string) {}

  /** Stores the original bytes and a .reason.json; returns the stored file's path. */
  put(original: readonly Buffer[], reason: QuarantineReason, opts: { durable?: boolean } = {}): string {
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const name = `${stamp}-${randomBytes(4).toString('hex')}`;
    const file = join(this.dir, `${name}.dcm`);
    const w = { ...opts, dirMode: 0o700 };
    writeFileAtomicSync(file, original, w);
    const body = JSON.stringify({ ...reason, time: reason.time ?? new Date().toISOString() }, null, 1) + '\n';
    writeFileAtomicSync(join(this.dir, `${name}.reason.json`), [Buffer.from(body)], w);
    return file;
  }
}
