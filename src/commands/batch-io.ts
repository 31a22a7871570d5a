// File input and output of a batch run. Two implementations of one interface: InlineIo does
// everything on the calling thread (small runs), BatchIo on a second thread, which reads the next
// inputs ahead and writes finished outputs behind while the main thread de-identifies: opening,
// reading, creating and writing files took 40-60 % of a batch run on these machines.
//
// BatchIo keeps bytes in one shared ring buffer, allocated once. The I/O thread reads each input
// into the ring with room after it; an output's large values are slices of its input, so they are
// written from where they were read, and only the new small pieces (meta group, replaced values)
// are copied into the room. (Handing a fresh buffer to another thread per file maps and unmaps
// memory each time, which cost more than the I/O it moved: measured, earlier design.)
//
// Everything happens in file order: the thread reads inputs in order, and the main thread answers
// each, in order, with "write this" or "release it" (skipped, quarantined, duplicate). Ring space
// is therefore freed in allocation order, and outcomes reach the main thread through shared
// counters, without an event loop turn in its synchronous loop. Answers travel in small batches:
// every message wakes the other thread, which is expensive in a VM.
import { Worker } from 'worker_threads';
import { join } from 'path';
import { closeSync, fstatSync, openSync, readSync, readdirSync } from 'fs';
import { childPath, writeFileAtomicSync } from '../deliver/folder';
import { errorCode } from '../observe/errors';

export type Input = { bytes: Buffer; error?: undefined } | { bytes?: undefined; error: string };

export interface Completion<T> {
  tag: T;
  /** Why the file could not be written; undefined when it was. */
  error: string | undefined;
}

/**
 * next() once per file, in order; answer each input with write() or release() before the next
 * call. An input's bytes are valid until it is answered. Write outcomes are reported in file
 * order to onDone (set it before the first write), on the calling thread, from inside any of
 * these calls.
 */
export interface FileIo<T> {
  onDone: (c: Completion<T>) => void;
  next(): Input;
  write(path: string, chunks: readonly Buffer[], tag: T): void;
  release(): void;
  /** Waits for every output and reports it. */
  close(): Promise<void>;
}

function unset(): never {
  throw new Error('FileIo: onDone was not set');
}

/** Below this many files, an I/O thread costs more to start than it saves. */
export const IO_THREAD_MIN_FILES = 32;

/** The FileIo for a run over `files`. Opened as early as possible: the I/O thread starts up, and
 * reads the first inputs, while the caller loads its configuration and modules. */
export function openFileIo<T>(files: readonly string[], durable: boolean): FileIo<T> {
  return files.length >= IO_THREAD_MIN_FILES ? new BatchIo<T>(files, durable) : new InlineIo<T>(files, durable);
}

/** Every regular file below dir, in path order (sorted by name at each level). */
export function listInputs(dir: string, out: string[] = []): string[] {
  const entries = readdirSync(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = childPath(dir, e.name);
    if (e.isDirectory()) listInputs(p, out);
    else if (e.isFile()) out.push(p);
  }
  return out;
}

// A read buffer reused file after file: a fresh buffer per file costs a page fault per 4 KiB on
// first touch, which was once the largest single cost of a batch run.
let readBuffer = Buffer.allocUnsafeSlow(4 << 20);

/** The whole file, in a buffer that the next call reuses. */
export function readWhole(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > readBuffer.length) readBuffer = Buffer.allocUnsafeSlow(Math.max(size, readBuffer.length * 2));
    return readBuffer.subarray(0, readInto(fd, readBuffer, 0, size));
  } finally {
    closeSync(fd);
  }
}

/** Reads up to `size` bytes of fd into buf at `at`; the count read (less only at end of file). */
export function readInto(fd: number, buf: Buffer, at: number, size: number): number {
  let n = 0;
  while (n < size) {
    const got = readSync(fd, buf, at + n, size - n, n);
    if (got === 0) break;
    n += got;
  }
  return n;
}

function readInput(path: string): Input {
  try {
    return { bytes: readWhole(path) };
  } catch (e) {
    return { error: errorCode(e) };
  }
}

function writeNow(path: string, chunks: readonly Buffer[], durable: boolean): string | undefined {
  try {
    writeFileAtomicSync(path, chunks, { durable });
    return undefined;
  } catch (e) {
    return errorCode(e);
  }
}

/** Everything on the calling thread. */
export class InlineIo<T> implements FileIo<T> {
  onDone: (c: Completion<T>) => void = unset;
  private i = 0;

  constructor(private readonly files: readonly string[], private readonly durable: boolean) {}

  next(): Input {
    if (this.i >= this.files.length) throw new Error('InlineIo: no more inputs');
    return readInput(this.files[this.i++]);
  }

  write(path: string, chunks: readonly Buffer[], tag: T): void {
    this.onDone({ tag, error: writeNow(path, chunks, this.durable) });
  }

  release(): void {}

  async close(): Promise<void> {}
}

// ---- BatchIo: the shared layout, used by both threads ----

export interface IoThreadData {
  files: string[];
  ring: SharedArrayBuffer;
  control: SharedArrayBuffer;
  reads: SharedArrayBuffer;
  readErrors: SharedArrayBuffer;
  results: SharedArrayBuffer;
  writeErrors: SharedArrayBuffer;
  /** Why the thread stopped, when C.failed is set. */
  fatal: SharedArrayBuffer;
  durable: boolean;
  slack: number;
}

/** Indexes of the shared Int32 counters. */
export const C = {
  /** Inputs read (or failed) so far: published by the I/O thread. */
  read: 0,
  /** Answers handled (written, failed or released) so far: published by the I/O thread. As every
   * input gets exactly one answer, in order, input i is handled once handled > i. */
  handled: 1,
  /** Inputs the main thread has taken: the I/O thread reuses a read slot only after that. */
  taken: 2,
  /** Bumped by the main thread when it posts answers or takes an input: wakes the I/O thread. */
  wake: 3,
  /** Bumped by the I/O thread on every read and every handled batch: wakes the main thread. */
  progress: 4,
  /** Set by the main thread once everything is answered: the thread returns. */
  stop: 5,
  /** Set by the I/O thread when it fails outside any one file's I/O (a bug): the main thread,
   * which waits in a loop that no event can interrupt, stops the run instead of waiting forever. */
  failed: 6,
} as const;

/** Read slot states (reads: [offset, size, state] per slot). */
export const R = { inRing: 0, failed: 1, tooLarge: 2 } as const;
/** Write results (results: one per slot). */
export const W = { written: 0, failed: 1 } as const;

/** [index] releases input `index`; [index, path, [offset, length, ...]] writes it first. */
export type Answer = [number] | [number, string, number[]];

/** Inputs read ahead, and writes not yet reported, are each at most this many. */
export const SLOTS = 256;
export const ERROR_BYTES = 120;
const BATCH_ANSWERS = 8;
const BATCH_BYTES = 1 << 20;

export function errorAt(area: Buffer, index: number): string {
  const raw = area.subarray((index % SLOTS) * ERROR_BYTES, (index % SLOTS + 1) * ERROR_BYTES);
  const end = raw.indexOf(0);
  return raw.toString('latin1', 0, end < 0 ? raw.length : end);
}

export function setErrorAt(area: Buffer, index: number, text: string): void {
  const at = (index % SLOTS) * ERROR_BYTES;
  area.fill(0, at, at + ERROR_BYTES);
  area.write(text.slice(0, ERROR_BYTES), at, 'latin1');
}

interface Current {
  index: number;
  /** Ring span of the input's bytes; inRing false: read on this thread (too large) or failed. */
  start: number;
  end: number;
  inRing: boolean;
}

export class BatchIo<T> implements FileIo<T> {
  private readonly ring: Buffer;
  private readonly control: Int32Array;
  private readonly reads: Int32Array;
  private readonly readErrors: Buffer;
  private readonly results: Int32Array;
  private readonly writeErrors: Buffer;
  private readonly fatal: Buffer;
  private readonly worker: Worker;
  private readonly slack = 64 << 10;
  /** Writes answered and not yet reported: [index, tag], in order. */
  private readonly pending: Array<[number, T]> = [];
  private answers: Answer[] = [];
  private answerBytes = 0;
  private nextIndex = 0;
  private answered = 0;
  private current: Current | undefined;
  onDone: (c: Completion<T>) => void = unset;

  constructor(private readonly files: readonly string[], private readonly durable: boolean, ringBytes = 16 << 20) {
    const data: IoThreadData = {
      files: [...files],
      ring: new SharedArrayBuffer(ringBytes),
      control: new SharedArrayBuffer(8 * Int32Array.BYTES_PER_ELEMENT),
      reads: new SharedArrayBuffer(SLOTS * 3 * Int32Array.BYTES_PER_ELEMENT),
      readErrors: new SharedArrayBuffer(SLOTS * ERROR_BYTES),
      results: new SharedArrayBuffer(SLOTS * Int32Array.BYTES_PER_ELEMENT),
      writeErrors: new SharedArrayBuffer(SLOTS * ERROR_BYTES),
      fatal: new SharedArrayBuffer(ERROR_BYTES * 4),
      durable,
      slack: this.slack,
    };
    this.ring = Buffer.from(data.ring);
    this.control = new Int32Array(data.control);
    this.reads = new Int32Array(data.reads);
    this.readErrors = Buffer.from(data.readErrors);
    this.results = new Int32Array(data.results);
    this.writeErrors = Buffer.from(data.writeErrors);
    this.fatal = Buffer.from(data.fatal);
    this.worker = new Worker(join(__dirname, 'batch-io-thread.js'), { workerData: data });
    // The thread reports its own failures through C.failed (see batch-io-thread.ts); this is for
    // an error after the main thread has stopped waiting.
    this.worker.on('error', (e) => {
      process.stderr.write(`dicom-deid-router: the batch I/O thread failed: ${e.message}\n`);
      process.exit(3);
    });
  }

  next(): Input {
    if (this.current) throw new Error('BatchIo: the previous input was not answered');
    if (this.nextIndex >= this.files.length) throw new Error('BatchIo: no more inputs');
    const index = this.nextIndex++;
    while (Atomics.load(this.control, C.read) <= index) this.waitForProgress();
    const at = (index % SLOTS) * 3;
    const start = this.reads[at];
    const size = this.reads[at + 1];
    const state = this.reads[at + 2];
    const error = state === R.failed ? errorAt(this.readErrors, index) : undefined;
    // Taken: from here on the thread may reuse this read slot. No wake-up: a thread held back by
    // the slot limit is SLOTS inputs ahead, and the answers posted meanwhile wake it.
    Atomics.add(this.control, C.taken, 1);
    if (state === R.inRing) {
      this.current = { index, start, end: start + size, inRing: true };
      return { bytes: this.ring.subarray(start, start + size) };
    }
    this.current = { index, start: 0, end: 0, inRing: false };
    if (error !== undefined) return { error };
    return readInput(this.files[index]); // too large for the ring: read here
  }

  write(path: string, chunks: readonly Buffer[], tag: T): void {
    const cur = this.take();
    let foreign = 0;
    let total = 0;
    for (const c of chunks) {
      total += c.length;
      if (!cur.inRing || !this.inside(c, cur)) foreign += c.length;
    }
    if (!cur.inRing || foreign > this.slack) {
      // Too large for the ring, or more new bytes than the room beside the input: written here
      // once every earlier output is reported (outcomes stay in order); the input is released
      // only after, since the chunks may still point into it.
      this.waitUntil(() => this.pending.length === 0);
      const error = writeNow(path, chunks, this.durable);
      this.answer([cur.index]);
      this.onDone({ tag, error });
      return;
    }
    // At most SLOTS unreported writes: result slots are reused after that.
    this.waitUntil(() => this.pending.length === 0 || this.pending[0][0] > cur.index - SLOTS);
    const iov: number[] = [];
    let room = cur.end;
    for (const c of chunks) {
      if (c.length === 0) continue;
      let at: number;
      if (this.inside(c, cur)) {
        at = c.byteOffset - this.ring.byteOffset;
      } else {
        at = room;
        room += c.copy(this.ring, at);
      }
      const n = iov.length; // neighbouring pieces become one
      if (n && iov[n - 2] + iov[n - 1] === at) iov[n - 1] += c.length;
      else iov.push(at, c.length);
    }
    this.pending.push([cur.index, tag]);
    this.answerBytes += total;
    this.answer([cur.index, path, iov]);
  }

  release(): void {
    this.answer([this.take().index]);
  }

  async close(): Promise<void> {
    if (this.current) this.release();
    this.waitUntil(() => Atomics.load(this.control, C.handled) >= this.answered);
    this.collect();
    Atomics.store(this.control, C.stop, 1);
    this.wakeThread();
    await this.worker.terminate();
  }

  private take(): Current {
    const cur = this.current;
    if (!cur) throw new Error('BatchIo: no input to answer');
    this.current = undefined;
    return cur;
  }

  private inside(c: Buffer, cur: Current): boolean {
    if (c.buffer !== this.ring.buffer) return false;
    const at = c.byteOffset - this.ring.byteOffset;
    return at >= cur.start && at + c.length <= cur.end;
  }

  private answer(a: Answer): void {
    this.answers.push(a);
    this.answered++;
    if (this.answers.length >= BATCH_ANSWERS || this.answerBytes >= BATCH_BYTES) this.post();
    this.collect();
  }

  private post(): void {
    if (!this.answers.length) return;
    this.worker.postMessage(this.answers);
    this.answers = [];
    this.answerBytes = 0;
    this.wakeThread();
  }

  private wakeThread(): void {
    Atomics.add(this.control, C.wake, 1);
    Atomics.notify(this.control, C.wake);
  }

  private waitUntil(ok: () => boolean): void {
    this.collect();
    while (!ok()) this.waitForProgress();
  }

  /** Posts queued answers (the thread may need them to free ring space), then sleeps until the
   * thread reports progress. */
  private waitForProgress(): void {
    const seen = Atomics.load(this.control, C.progress);
    this.post();
    this.collect();
    // The timeout only bounds a lost wake-up; every state change also bumps `progress`.
    Atomics.wait(this.control, C.progress, seen, 1000);
    if (Atomics.load(this.control, C.failed)) throw new Error(`the batch I/O thread failed: ${this.fatal.toString('latin1').replace(/\0+$/, '')}`);
    this.collect();
  }

  private collect(): void {
    const handled = Atomics.load(this.control, C.handled);
    while (this.pending.length && this.pending[0][0] < handled) {
      const [index, tag] = this.pending.shift() as [number, T];
      const failed = this.results[index % SLOTS] === W.failed;
      this.onDone({ tag, error: failed ? errorAt(this.writeErrors, index) : undefined });
    }
  }
}
