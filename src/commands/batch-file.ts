// One input file of a batch run: read (into one reused buffer) and de-identify it. Writing the
// result, or dropping it as a duplicate, is the caller's: it decides in input order.
import { closeSync, fstatSync, openSync, readSync } from 'fs';
import { DeidPipeline, ImageRejected } from '../pipeline';
import { looksLikeDicom } from '../dicom/read';
import type { QuarantineReason } from '../deliver/quarantine';

export type Stage = QuarantineReason['stage'];
export type Prepared =
  | { kind: 'skipped'; bytes: number }
  | { kind: 'ready'; rel: string; study: string; chunks: Buffer[]; bytes: number }
  | { kind: 'quarantine'; stage: Stage; reason: string; study?: string; bytes: number };

// One read buffer, reused for every file of this thread: a fresh buffer per file costs a page
// fault per 4 KiB on first touch, which was the largest single cost of a batch run. Safe because
// everything that refers to the input (output chunks are slices of it) is written out before
// processFile returns.
let readBuffer = Buffer.allocUnsafeSlow(4 << 20);

/** Where to read an input of `size` bytes; undefined: the reused buffer. */
export type InputBuffers = (size: number) => Buffer | undefined;

function readWhole(path: string, bufferFor?: InputBuffers): Buffer {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    let target = bufferFor?.(size);
    if (!target) {
      if (size > readBuffer.length) readBuffer = Buffer.allocUnsafeSlow(Math.max(size, readBuffer.length * 2));
      target = readBuffer;
    }
    let n = 0;
    while (n < size) {
      const got = readSync(fd, target, n, size - n, n);
      if (got === 0) break;
      n += got;
    }
    return target.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** The chunks of a 'ready' result are slices of a buffer that the next call reuses: write or
 * copy them before calling again. */
export function prepareFile(pipeline: DeidPipeline, path: string, bufferFor?: InputBuffers): Prepared {
  let bytes: Buffer;
  try {
    bytes = readWhole(path, bufferFor);
  } catch (e) {
    return { kind: 'quarantine', stage: 'read', reason: `cannot read the file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, bytes: 0 };
  }
  if (!looksLikeDicom(bytes)) return { kind: 'skipped', bytes: bytes.length };
  try {
    const r = pipeline.process({ kind: 'file', bytes });
    if (r.quarantine || !r.chunks || !r.relativePath) {
      return { kind: 'quarantine', stage: 'identify', reason: 'the study named by this image is not configured (unknownStudy: quarantine)', study: r.studyName, bytes: bytes.length };
    }
    return { kind: 'ready', rel: r.relativePath, study: r.studyName, chunks: r.chunks, bytes: bytes.length };
  } catch (e) {
    if (e instanceof ImageRejected) return { kind: 'quarantine', stage: e.stage, reason: e.message, bytes: bytes.length };
    throw e;
  }
}
