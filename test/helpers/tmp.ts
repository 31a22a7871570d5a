// Temp dirs under the OS temp dir that never outlive the process that made them (a test file, a bench):
// removed at exit, pass or fail, after every test hook has stopped its servers. Without this every
// `npm test` left hundreds of dirs in /tmp.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made = new Set<string>();

function removeAll(): void {
  for (const d of made) {
    try {
      rmSync(d, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // a dir still in use must not turn a passing run into a crash at exit
    }
  }
  made.clear();
}
process.once('exit', removeAll);

/** A new empty dir under the OS temp dir (prefix + random suffix), removed with its contents when the process exits. */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.add(d);
  return d;
}
