// The thread behind CommitmentIndex.record (commitment-index.ts): writes a batch of index entries, each
// to a temp file renamed into place, with plain system calls. One message per batch instead of four
// trips through libuv's pool per image (open, write, close, rename): on a 2-core host every such
// hand-off is a context switch taken from the storage SCP's event loop (12 % of four-association
// throughput in scp-bench).
import { parentPort } from 'node:worker_threads';
import * as fs from 'node:fs';
import { join } from 'node:path';
import type { IndexBatch, IndexBatchDone } from './commitment-index';

parentPort!.on('message', (b: IndexBatch) => {
  const errors: string[] = [];
  try {
    fs.mkdirSync(b.dir, { recursive: true });
  } catch {
    /* the writes below say why */
  }
  b.entries.forEach(([name, data], i) => {
    const tmp = join(b.dir, `${b.tempPrefix}${i.toString(36)}.tmp`);
    try {
      fs.writeFileSync(tmp, data);
      fs.renameSync(tmp, join(b.dir, name));
    } catch (e) {
      errors.push((e as NodeJS.ErrnoException).code ?? String(e));
      try {
        fs.unlinkSync(tmp);
      } catch {
        /* never made */
      }
    }
  });
  const done: IndexBatchDone = { id: b.id, errors };
  parentPort!.postMessage(done);
});
