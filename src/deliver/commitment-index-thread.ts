// The thread behind CommitmentIndex (commitment-index.ts): writes batches of index entries, each to a temp
// file renamed into place, and removes the entries older than the retention, with plain system calls. One
// message per batch instead of four trips through libuv's pool per image (open, write, close, rename): on a
// 2-core host every such hand-off is a context switch taken from the storage SCP's event loop (12 % of
// four-association throughput in scp-bench); and a day's folder of entries is removed without holding the
// event loop.
import { parentPort } from 'node:worker_threads';
import * as fs from 'node:fs';
import { join } from 'node:path';
import type { IndexBatch, IndexBatchDone } from './commitment-index';

const DAY_NAME = /^\d{4}-\d{2}-\d{2}$/;

function write(b: Extract<IndexBatch, { kind: 'write' }>, errors: string[]): void {
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
}

/** Lists a folder; a missing one is empty. */
function list(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

function prune(b: Extract<IndexBatch, { kind: 'prune' }>, errors: string[]): void {
  for (const day of list(b.root)) {
    if (!DAY_NAME.test(day) || day >= b.beforeDay) continue;
    try {
      fs.rmSync(join(b.root, day), { recursive: true, force: true });
    } catch (e) {
      errors.push((e as NodeJS.ErrnoException).code ?? String(e));
    }
  }
  // Entries of earlier versions, flat: by age. The folder goes once it is empty.
  const legacy = list(b.legacyDir);
  let left = legacy.length;
  for (const name of legacy) {
    const f = join(b.legacyDir, name);
    try {
      if (fs.statSync(f).mtimeMs < b.legacyBeforeMs) {
        fs.rmSync(f, { force: true });
        left--;
      }
    } catch (e) {
      errors.push((e as NodeJS.ErrnoException).code ?? String(e));
    }
  }
  if (legacy.length && !left) {
    try {
      fs.rmdirSync(b.legacyDir);
    } catch {
      /* an entry appeared meanwhile, or it is gone already */
    }
  }
}

parentPort!.on('message', (b: IndexBatch) => {
  const errors: string[] = [];
  try {
    if (b.kind === 'write') write(b, errors);
    else prune(b, errors);
  } catch (e) {
    errors.push((e as NodeJS.ErrnoException).code ?? String(e));
  }
  const done: IndexBatchDone = { id: b.id, errors };
  parentPort!.postMessage(done);
});
