// Entry point of the BackgroundWriter's thread: write each job's bytes from the shared ring, in
// order, then publish the outcome before counting the job as finished.
import { parentPort, workerData } from 'worker_threads';
import { writeFileAtomicSync } from './folder';
import { ERROR_BYTES, MAX_IN_FLIGHT, WriteJob, WriterThreadData, errorText } from './background-writer';

const data = workerData as WriterThreadData;
const ring = Buffer.from(data.ring);
const control = new Int32Array(data.control);
const status = new Int32Array(data.status);
const errors = Buffer.from(data.errors);

function write([seq, path, iov]: WriteJob): void {
  const slot = seq % MAX_IN_FLIGHT;
  try {
    const chunks: Buffer[] = [];
    for (let i = 0; i < iov.length; i += 2) chunks.push(ring.subarray(iov[i], iov[i] + iov[i + 1]));
    writeFileAtomicSync(path, chunks, { durable: data.durable });
    Atomics.store(status, slot, 0);
  } catch (e) {
    const at = slot * ERROR_BYTES;
    errors.fill(0, at, at + ERROR_BYTES);
    errors.write(errorText(e).slice(0, ERROR_BYTES), at, 'latin1');
    Atomics.store(status, slot, 1);
  }
  Atomics.add(control, 0, 1);
  Atomics.notify(control, 0);
}

parentPort?.on('message', (jobs: WriteJob[]) => {
  for (const job of jobs) write(job);
});
