// The BatchIo thread (see batch-io.ts): reads inputs ahead into the shared ring, in file order,
// and carries out the main thread's answers, in the same order: write an output, then free the
// input's ring space. It never stops on an I/O error: each one is reported for its file.
import { receiveMessageOnPort, parentPort, workerData } from 'worker_threads';
import { closeSync, fstatSync, openSync } from 'fs';
import { writeFileAtomicSync } from '../deliver/folder';
import { errorCode } from '../observe/errors';
import { Answer, C, IoThreadData, R, SLOTS, W, readInto, setErrorAt } from './batch-io';

const data = workerData as IoThreadData;
const ring = Buffer.from(data.ring);
const control = new Int32Array(data.control);
const reads = new Int32Array(data.reads);
const readErrors = Buffer.from(data.readErrors);
const results = new Int32Array(data.results);
const writeErrors = Buffer.from(data.writeErrors);
/** Inputs larger than this are left for the main thread to read. */
const maxInput = (ring.length >>> 1) - data.slack;

/** Ring spans of inputs read and not yet released, oldest first. */
const spans: Array<{ index: number; start: number; end: number }> = [];
let readNext = 0;
/** An input opened whose span did not fit yet: kept open until it does. */
let waiting: { fd: number; size: number } | undefined;

function publishRead(index: number, start: number, size: number, state: number, error?: string): void {
  const at = (index % SLOTS) * 3;
  reads[at] = start;
  reads[at + 1] = size;
  reads[at + 2] = state;
  if (error !== undefined) setErrorAt(readErrors, index, error);
  Atomics.add(control, C.read, 1);
  progress();
}

function progress(): void {
  Atomics.add(control, C.progress, 1);
  Atomics.notify(control, C.progress);
}

/** Start of `length` free bytes after the newest span, wrapping to 0; -1 when there is none. */
function allocate(length: number): number {
  if (spans.length === 0) return 0;
  const tail = spans[0].start;
  const head = spans[spans.length - 1].end;
  if (head >= tail) {
    if (ring.length - head >= length) return head;
    if (length < tail) return 0;
    return -1;
  }
  return tail - head > length ? head : -1;
}

/** Reads the next input if there is room for it; false when it has to wait. */
function readAhead(): boolean {
  const index = readNext;
  if (!waiting) {
    let fd: number;
    try {
      fd = openSync(data.files[index], 'r');
    } catch (e) {
      publishRead(index, 0, 0, R.failed, errorCode(e));
      readNext++;
      return true;
    }
    try {
      waiting = { fd, size: fstatSync(fd).size };
    } catch (e) {
      closeSync(fd);
      publishRead(index, 0, 0, R.failed, errorCode(e));
      readNext++;
      return true;
    }
  }
  const { fd, size } = waiting;
  if (size > maxInput) {
    waiting = undefined;
    closeSync(fd);
    publishRead(index, 0, size, R.tooLarge);
    readNext++;
    return true;
  }
  // Room for the input and, after it, for the output's new bytes.
  const start = allocate(size + data.slack);
  if (start < 0) return false;
  waiting = undefined;
  let n: number;
  try {
    n = readInto(fd, ring, start, size);
  } catch (e) {
    closeSync(fd);
    publishRead(index, 0, 0, R.failed, errorCode(e));
    readNext++;
    return true;
  }
  closeSync(fd);
  spans.push({ index, start, end: start + n + data.slack });
  publishRead(index, start, n, R.inRing);
  readNext++;
  return true;
}

function handle(a: Answer): void {
  const index = a[0];
  if (a.length === 3) {
    const iov = a[2];
    const chunks: Buffer[] = [];
    for (let i = 0; i < iov.length; i += 2) chunks.push(ring.subarray(iov[i], iov[i] + iov[i + 1]));
    try {
      writeFileAtomicSync(a[1], chunks, { durable: data.durable });
      results[index % SLOTS] = W.written;
    } catch (e) {
      setErrorAt(writeErrors, index, errorCode(e));
      results[index % SLOTS] = W.failed;
    }
  }
  if (spans.length && spans[0].index === index) spans.shift();
  Atomics.add(control, C.handled, 1);
}

function run(): void {
  while (Atomics.load(control, C.stop) === 0) {
    const seen = Atomics.load(control, C.wake);
    let worked = false;
    for (let m = receiveMessageOnPort(parentPort!); m; m = receiveMessageOnPort(parentPort!)) {
      for (const a of m.message as Answer[]) handle(a);
      progress();
      worked = true;
    }
    // Read ahead while there is room; at most SLOTS inputs beyond what the main thread took.
    if (readNext < data.files.length && readNext < Atomics.load(control, C.taken) + SLOTS) {
      if (readAhead()) worked = true;
    }
    if (!worked) Atomics.wait(control, C.wake, seen, 1000);
  }
}

try {
  run();
} catch (e) {
  // Every file's I/O error is reported for that file; anything else is a bug. Say so and stop:
  // the main thread sees C.failed and ends the run instead of waiting for this thread forever.
  Buffer.from(data.fatal).write(String((e as Error)?.stack ?? e).slice(0, data.fatal.byteLength), 0, 'latin1');
  Atomics.store(control, C.failed, 1);
  progress();
}
