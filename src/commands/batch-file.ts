// One input file of a batch run: read, identify, de-identify, and write the result to a temporary
// file beside its final place. Renaming it into place (or dropping it as a duplicate) is the
// coordinator's job, in input order. Synchronous on purpose: this runs in worker threads, where
// blocking calls are the cheapest way to do several small file operations per image.
import { closeSync, fstatSync, fsyncSync, openSync, readSync } from 'fs';
import { dirname, join } from 'path';
import { threadId } from 'worker_threads';
import { DeidPipeline, ImageRejected } from '../pipeline';
import { ensureDirSync, writeAllSync } from '../deliver/folder';
import { looksLikeDicom } from '../dicom/read';

export type FileResult =
  | { kind: 'skipped'; bytes: number }
  | { kind: 'written'; rel: string; tmp: string; study: string; bytes: number }
  | { kind: 'quarantine'; stage: 'read' | 'identify' | 'deidentify' | 'deliver'; reason: string; study?: string; bytes: number };

let tmpCounter = 0;

// One read buffer, reused for every file of this thread: a fresh buffer per file costs a page
// fault per 4 KiB on first touch, which was the largest single cost of a batch run. Safe because
// everything that refers to the input (output chunks are slices of it) is written out before
// processFile returns.
let readBuffer = Buffer.allocUnsafeSlow(4 << 20);

function readWhole(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > readBuffer.length) readBuffer = Buffer.allocUnsafeSlow(Math.max(size, readBuffer.length * 2));
    let n = 0;
    while (n < size) {
      const got = readSync(fd, readBuffer, n, size - n, n);
      if (got === 0) break;
      n += got;
    }
    return readBuffer.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

export function processFile(pipeline: DeidPipeline, path: string, outgoing: string, fsync: boolean): FileResult {
  let bytes: Buffer;
  try {
    bytes = readWhole(path);
  } catch (e) {
    return { kind: 'quarantine', stage: 'read', reason: `cannot read the file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, bytes: 0 };
  }
  if (!looksLikeDicom(bytes)) return { kind: 'skipped', bytes: bytes.length };
  try {
    const r = pipeline.process({ kind: 'file', bytes });
    if (r.quarantine || !r.chunks || !r.relativePath) {
      return { kind: 'quarantine', stage: 'identify', reason: 'the study named by this image is not configured (unknownStudy: quarantine)', study: r.studyName, bytes: bytes.length };
    }
    const final = join(outgoing, r.relativePath);
    const dir = dirname(final);
    ensureDirSync(dir, fsync);
    const tmp = join(dir, `.tmp-${process.pid}-${threadId}-${++tmpCounter}`);
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeAllSync(fd, r.chunks);
      if (fsync) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return { kind: 'written', rel: r.relativePath, tmp, study: r.studyName, bytes: bytes.length };
  } catch (e) {
    if (e instanceof ImageRejected) return { kind: 'quarantine', stage: e.stage, reason: e.message, bytes: bytes.length };
    return { kind: 'quarantine', stage: 'deliver', reason: `cannot write the result: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, bytes: bytes.length };
  }
}
