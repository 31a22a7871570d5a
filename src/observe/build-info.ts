// The version this process runs, for build_info and the status page.
import { existsSync, readFileSync } from 'fs';
import { dirname, join } from 'path';

export interface BuildInfo { version: string; revision: string }

let cached: BuildInfo | undefined;

/** package.json's version (found upward from this file: dist/ and the test build differ in depth);
 * the revision comes from DEID_BUILD_REVISION, which the image build sets. */
export function buildInfo(): BuildInfo {
  if (cached) return cached;
  let version = 'unknown';
  for (let dir = __dirname; dirname(dir) !== dir; dir = dirname(dir)) {
    const p = join(dir, 'package.json');
    if (!existsSync(p)) continue;
    try {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'dicom-deid-router') {
        version = pkg.version ?? version;
        break;
      }
    } catch {
      /* not ours; keep looking */
    }
  }
  cached = { version, revision: process.env.DEID_BUILD_REVISION || 'unknown' };
  return cached;
}
