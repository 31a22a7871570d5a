import { existsSync } from 'fs';
import { join, resolve } from 'path';

// Tests run from the repository root (npm test); shared/ sits beside the clone.
export const SHARED = process.env.DEID_SHARED_DIR ?? resolve(process.cwd(), '..', 'shared');
export const CORPUS_CLEAN = join(SHARED, 'corpus', 'clean');
export const CORPUS_PHI = join(SHARED, 'corpus', 'phi');

export function corpusAvailable(): boolean {
  return existsSync(join(CORPUS_PHI, 'phi_truth.json'));
}
