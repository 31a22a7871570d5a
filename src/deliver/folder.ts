// Atomic, durable file writes: temp file in the target folder, fsync, rename, fsync the folder.
// A reader never sees a half-written file, and after the promise resolves the file survives a
// crash or power loss.
import { promises as fs } from 'fs';
import { dirname, join } from 'path';
import { randomBytes } from 'crypto';

const madeDirs = new Set<string>();

async function ensureDir(dir: string): Promise<void> {
  if (madeDirs.has(dir)) return;
  await fs.mkdir(dir, { recursive: true });
  madeDirs.add(dir);
}

export async function writeFileAtomic(path: string, chunks: readonly Buffer[], opts: { durable?: boolean } = {}): Promise<void> {
  const durable = opts.durable ?? true;
  const dir = dirname(path);
  await ensureDir(dir);
  const tmp = join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const fh = await fs.open(tmp, 'w', 0o644);
  try {
    let pending = chunks.slice();
    while (pending.length) {
      const batch = pending.slice(0, 1024); // IOV_MAX
      const { bytesWritten } = await fh.writev(batch);
      let written = bytesWritten;
      let i = 0;
      while (i < batch.length && written >= batch[i].length) {
        written -= batch[i].length;
        i++;
      }
      pending = i < batch.length ? [batch[i].subarray(written), ...pending.slice(i + 1)] : pending.slice(batch.length);
    }
    if (durable) await fh.sync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fs.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  try {
    await fs.rename(tmp, path);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
  if (durable) await syncDir(dir);
}

export async function syncDir(dir: string): Promise<void> {
  const dh = await fs.open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
