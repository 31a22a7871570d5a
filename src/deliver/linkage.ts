// The honest broker's linkage log: for studies that turn it on, one line per new (patient, study)
// saying which original PatientID, PatientName, StudyInstanceUID and AccessionNumber became which
// de-identified ones. The file re-identifies subjects: it is created with mode 0600, never travels
// with the data, and each line is on disk (fdatasync) before the image it belongs to is answered
// or written.
import { closeSync, fchmodSync, fdatasyncSync, fstatSync, mkdirSync, openSync, readFileSync, writeSync, existsSync } from 'fs';
import { createHash } from 'crypto';
import { dirname } from 'path';
import { DicomObject, elementString, findElement } from '../dicom/dataset';
import { textDecoderFor } from '../dicom/charset';
import { fsyncDirSync } from './folder';

const LINKED = [
  ['PatientID', 0x00100020],
  ['PatientName', 0x00100010],
  ['StudyInstanceUID', 0x0020000d],
  ['AccessionNumber', 0x00080050],
] as const;
type LinkedName = (typeof LINKED)[number][0];

/** One line to append (unless the log already has its (patient, study)). */
export interface LinkageRecord {
  path: string;
  study: string;
  original: Record<LinkedName, string | null>;
  new: Record<LinkedName, string | null>;
}

function textOf(obj: DicomObject, tag: number): string | null {
  const el = findElement(obj.dataset, tag);
  if (!el?.value || el.value.length === 0) return el ? '' : null;
  const decode = textDecoderFor(elementString(findElement(obj.dataset, 0x00080005)));
  return decode(el.value).replace(/[\0 ]+$/, '').trim();
}

/** The record of an image: pure, no I/O. */
export function linkageRecord(path: string, study: string, input: DicomObject, output: DicomObject): LinkageRecord {
  const original = {} as LinkageRecord['original'];
  const now = {} as LinkageRecord['new'];
  for (const [name, tag] of LINKED) {
    original[name] = textOf(input, tag);
    now[name] = textOf(output, tag);
  }
  return { path, study, original, new: now };
}

/** (study, original patient, original study) -> a short digest, kept in memory to skip repeats. */
function keyOf(study: string, original: LinkageRecord['original']): string {
  return createHash('sha256').update(`${study}\0${original.PatientID ?? ''}\0${original.StudyInstanceUID ?? ''}`).digest('base64').slice(0, 22);
}

class LinkageFile {
  private fd: number | undefined;
  private readonly seen = new Set<string>();

  constructor(readonly path: string) {}

  private open(): number {
    if (this.fd !== undefined) return this.fd;
    const created = !existsSync(this.path);
    if (created) mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    else this.load();
    const fd = openSync(this.path, 'a', 0o600);
    try {
      // A file someone made readable to others is tightened: it re-identifies patients.
      if ((fstatSync(fd).mode & 0o077) !== 0) fchmodSync(fd, 0o600);
      if (created) {
        fdatasyncSync(fd);
        fsyncDirSync(dirname(this.path));
      }
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.fd = fd;
    return fd;
  }

  /** Lines of an earlier run: their (patient, study) are not written again. */
  private load(): void {
    for (const line of readFileSync(this.path, 'utf8').split('\n')) {
      if (!line) continue;
      try {
        const r = JSON.parse(line) as { study?: string; PatientID?: { original?: string | null }; StudyInstanceUID?: { original?: string | null } };
        this.seen.add(keyOf(r.study ?? '', { PatientID: r.PatientID?.original ?? null, StudyInstanceUID: r.StudyInstanceUID?.original ?? null } as LinkageRecord['original']));
      } catch {
        /* a line cut by a crash: its image was never answered, the line is written again */
      }
    }
  }

  /** Appends the record's line and syncs it, unless its (patient, study) is already there. */
  record(r: LinkageRecord): boolean {
    const fd = this.open();
    const key = keyOf(r.study, r.original);
    if (this.seen.has(key)) return false;
    const line: Record<string, unknown> = { time: new Date().toISOString(), study: r.study };
    for (const [name] of LINKED) line[name] = { original: r.original[name], new: r.new[name] };
    const bytes = Buffer.from(JSON.stringify(line) + '\n', 'utf8');
    // One write with O_APPEND: lines of several processes sharing the file never interleave.
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off);
    fdatasyncSync(fd);
    this.seen.add(key);
    return true;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** The linkage files of a process, one per path (studies may share one). */
export class LinkageLogs {
  private readonly files = new Map<string, LinkageFile>();

  /** Durably records the line of a new (patient, study); true when a line was written. */
  record(r: LinkageRecord): boolean {
    let f = this.files.get(r.path);
    if (!f) {
      f = new LinkageFile(r.path);
      this.files.set(r.path, f);
    }
    return f.record(r);
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}
