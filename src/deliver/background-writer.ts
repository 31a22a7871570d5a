// Batch output written on a second thread. The main thread reads and de-identifies file N+1 while
// this thread creates, writes and renames file N: file creation and page-cache writes took 30-60 %
// of a batch run on these machines, and the main thread sat in those system calls.
//
// Bytes go through one shared ring buffer allocated once. The caller reads each input straight
// into the ring (inputBuffer), so the output's large values, which are slices of the input, are
// already there; only the new small pieces (headers, replaced values) are copied next to them.
// Handing a fresh buffer to another thread per file instead maps and unmaps memory each time,
// which cost more than the writes it moved (measured, earlier design); copying every output into
// the ring cost 100 ms per 2,000 files. Jobs are posted in small batches because every message
// wakes the other thread, which is expensive in a VM. Jobs finish in submission order, so the main
// thread learns of completions from one shared counter, without an event loop turn.
import { Worker } from 'worker_threads';
import { join } from 'path';
import { writeFileAtomicSync } from './folder';

export interface WriterThreadData {
  ring: SharedArrayBuffer;
  /** [0]: jobs finished. */
  control: SharedArrayBuffer;
  /** Per job slot (seq % MAX_IN_FLIGHT): 0 written, 1 failed. */
  status: SharedArrayBuffer;
  /** Per job slot: the failure's errno code or message, latin1, NUL-padded. */
  errors: SharedArrayBuffer;
  durable: boolean;
}

/** [seq, path, [offset, length, offset, length, ...] of the ring, in file order] */
export type WriteJob = [number, string, number[]];

export const MAX_IN_FLIGHT = 256;
export const ERROR_BYTES = 120;
/** Room kept after each input for the output's new bytes (meta group, replaced values). */
const SLACK = 64 << 10;
const BATCH_JOBS = 8;
const BATCH_BYTES = 1 << 20;

export interface Completion<T> {
  tag: T;
  /** Why the file could not be written; undefined when it was. */
  error: string | undefined;
}

interface Pending<T> {
  seq: number;
  /** Ring span the job occupies until it is written. */
  start: number;
  end: number;
  tag: T;
}

/**
 * Writes files atomically (writeFileAtomicSync semantics) on a worker thread. Completions are
 * reported, in submission order, to the callback given to the constructor, always on the caller's
 * thread from inside inputBuffer(), submit() or drain().
 */
export class BackgroundWriter<T> {
  private readonly ring: Buffer;
  private readonly control: Int32Array;
  private readonly status: Int32Array;
  private readonly errors: Buffer;
  private readonly worker: Worker;
  private readonly pending: Pending<T>[] = [];
  private batch: WriteJob[] = [];
  private batchBytes = 0;
  /** End of the newest job's span. */
  private head = 0;
  /** The span handed out by inputBuffer() and not yet claimed by submit(). */
  private reserved: { start: number; inputEnd: number } | undefined;
  private submitted = 0;
  private reported = 0;
  /** Largest output that goes through the ring; larger ones are written here, after a drain. */
  readonly maxJobBytes: number;

  constructor(private readonly onDone: (c: Completion<T>) => void, private readonly durable: boolean, ringBytes = 16 << 20) {
    const data: WriterThreadData = {
      ring: new SharedArrayBuffer(ringBytes),
      control: new SharedArrayBuffer(4 * Int32Array.BYTES_PER_ELEMENT),
      status: new SharedArrayBuffer(MAX_IN_FLIGHT * Int32Array.BYTES_PER_ELEMENT),
      errors: new SharedArrayBuffer(MAX_IN_FLIGHT * ERROR_BYTES),
      durable,
    };
    this.ring = Buffer.from(data.ring);
    this.control = new Int32Array(data.control);
    this.status = new Int32Array(data.status);
    this.errors = Buffer.from(data.errors);
    this.maxJobBytes = ringBytes >>> 1;
    this.worker = new Worker(join(__dirname, 'writer-thread.js'), { workerData: data });
    // A worker that dies takes its unfinished jobs with it: the main thread would wait forever.
    // Its own handler catches every write error, so this only fires on a bug or a crash.
    this.worker.on('error', (e) => {
      process.stderr.write(`dicom-deid-router: the writer thread failed: ${e.message}\n`);
      process.exit(3);
    });
  }

  /**
   * A buffer of `size` bytes inside the ring for the next input, or undefined when the input is
   * too large for it (read it elsewhere). Valid until the next call or the next submit(); an input
   * that is not submitted (skipped, quarantined) simply gives its space back.
   */
  inputBuffer(size: number): Buffer | undefined {
    this.reserved = undefined;
    if (size + SLACK > this.maxJobBytes) return undefined;
    const start = this.reserve(size + SLACK);
    this.reserved = { start, inputEnd: start + size };
    return this.ring.subarray(start, start + size);
  }

  /** Queues one output. Chunks that lie in the current inputBuffer() are written from there;
   * the others are copied, so the caller may reuse its own buffers when this returns. */
  submit(path: string, chunks: readonly Buffer[], tag: T): void {
    const r = this.reserved;
    this.reserved = undefined;
    let total = 0;
    let foreign = 0;
    for (const c of chunks) {
      total += c.length;
      if (!r || !this.inside(c, r.start, r.inputEnd)) foreign += c.length;
    }
    let start: number;
    let room: number; // where foreign chunks are copied to
    if (r && foreign <= SLACK) {
      start = r.start;
      room = r.inputEnd;
    } else if (!r && total <= this.maxJobBytes) {
      start = this.reserve(total);
      room = start;
    } else {
      // Too large for the ring, or new bytes that do not fit beside the input: write it here.
      this.writeHere(path, chunks, tag);
      return;
    }
    const iov: number[] = [];
    for (const c of chunks) {
      if (c.length === 0) continue;
      let at: number;
      if (r && this.inside(c, r.start, r.inputEnd)) {
        at = c.byteOffset - this.ring.byteOffset;
      } else {
        at = room;
        room += c.copy(this.ring, at);
      }
      // Neighbouring pieces become one.
      const n = iov.length;
      if (n && iov[n - 2] + iov[n - 1] === at) iov[n - 1] += c.length;
      else iov.push(at, c.length);
    }
    const seq = this.submitted++;
    this.pending.push({ seq, start, end: room, tag });
    this.head = room;
    this.batch.push([seq, path, iov]);
    this.batchBytes += total;
    if (this.batch.length >= BATCH_JOBS || this.batchBytes >= BATCH_BYTES) this.post();
    this.collect();
  }

  /** Waits for every submitted file, reporting each. */
  drain(): void {
    this.post();
    while (this.reported < this.submitted) this.waitForOne();
  }

  async close(): Promise<void> {
    this.drain();
    await this.worker.terminate();
  }

  private inside(c: Buffer, from: number, to: number): boolean {
    if (c.buffer !== this.ring.buffer) return false;
    const at = c.byteOffset - this.ring.byteOffset;
    return at >= from && at + c.length <= to;
  }

  private writeHere(path: string, chunks: readonly Buffer[], tag: T): void {
    this.drain();
    let error: string | undefined;
    try {
      writeFileAtomicSync(path, chunks, { durable: this.durable });
    } catch (e) {
      error = errorText(e);
    }
    this.onDone({ tag, error });
  }

  private post(): void {
    if (!this.batch.length) return;
    this.worker.postMessage(this.batch);
    this.batch = [];
    this.batchBytes = 0;
  }

  /** Start of `length` free bytes after the newest job, wrapping to the start when the end is short. */
  private reserve(length: number): number {
    while (this.submitted - this.reported >= MAX_IN_FLIGHT) this.waitForOne();
    for (;;) {
      if (this.pending.length === 0) return 0;
      const tail = this.pending[0].start;
      if (this.head >= tail) {
        if (this.ring.length - this.head >= length) return this.head;
        if (length < tail) return 0;
      } else if (tail - this.head > length) {
        return this.head;
      }
      this.waitForOne();
    }
  }

  private waitForOne(): void {
    this.post(); // never wait for jobs the thread has not been given
    const done = Atomics.load(this.control, 0);
    if (done === this.reported) Atomics.wait(this.control, 0, done);
    this.collect();
  }

  private collect(): void {
    const done = Atomics.load(this.control, 0);
    while (this.reported < done) {
      const p = this.pending.shift() as Pending<T>;
      const slot = p.seq % MAX_IN_FLIGHT;
      let error: string | undefined;
      if (Atomics.load(this.status, slot) !== 0) {
        const raw = this.errors.subarray(slot * ERROR_BYTES, (slot + 1) * ERROR_BYTES);
        const end = raw.indexOf(0);
        error = raw.toString('latin1', 0, end < 0 ? raw.length : end);
      }
      this.reported++;
      this.onDone({ tag: p.tag, error });
    }
  }
}

export function errorText(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message ?? String(e);
}
