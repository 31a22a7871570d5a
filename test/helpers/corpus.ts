// The test corpus lives in the repository (test/data/corpus, see its README for provenance and
// licenses). Files with planted fake patient data are generated from the clean ones at test time
// (make-phi.ts), once per build of the tests, and shared by all test files.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'fs';
import { createHash } from 'crypto';
import { dirname, join, resolve } from 'path';
import { spawnSync } from 'child_process';
import { makePhiCorpus, type PhiTruth } from './make-phi';

/** The repository root: the nearest folder above this file that holds package.json. */
function repoRoot(): string {
  for (let d = __dirname; ; d = dirname(d)) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'test', 'data', 'corpus'))) return d;
    if (dirname(d) === d) throw new Error(`no repository root above ${__dirname}`);
  }
}

export const REPO_ROOT = repoRoot();
/** Real DICOM files from public MIT/BSD/Apache packages (MANIFEST.tsv there says which). */
export const CLEAN_DIR = join(REPO_ROOT, 'test', 'data', 'corpus', 'clean');

let phiDir: string | undefined;

/**
 * The folder of generated files with planted fake patient data: one per clean file that dcmjs can
 * rewrite, same names, plus phi_truth.json (what was planted where, and which files failed).
 * Made on first use; do not write into it (copy what you need to change).
 */
export function phiCorpusDir(): string {
  if (phiDir) return phiDir;
  // Keyed by the clean files and the generator, so a stale copy is never reused.
  const h = createHash('sha1');
  for (const f of readdirSync(CLEAN_DIR).sort()) h.update(f).update(String(statSync(join(CLEAN_DIR, f)).size));
  h.update(readFileSync(join(__dirname, 'make-phi.js')));
  const cacheRoot = join(REPO_ROOT, '.build-test', 'phi-corpus');
  const dir = join(cacheRoot, h.digest('hex').slice(0, 16));
  if (!existsSync(join(dir, 'phi_truth.json'))) {
    mkdirSync(cacheRoot, { recursive: true });
    const tmp = mkdtempSync(join(cacheRoot, 'tmp-'));
    const dcmdump = spawnSync('sh', ['-c', 'command -v dcmdump']).status === 0;
    makePhiCorpus(CLEAN_DIR, tmp, { checkWithDcmdump: dcmdump });
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another process made it first
    }
  }
  phiDir = dir;
  return dir;
}

export function phiTruth(): PhiTruth {
  return JSON.parse(readFileSync(join(phiCorpusDir(), 'phi_truth.json'), 'utf8')) as PhiTruth;
}

/** Names of the generated .dcm files (sorted). */
export function phiFiles(): string[] {
  return readdirSync(phiCorpusDir()).filter((f) => f.endsWith('.dcm')).sort();
}

/** A generated file with planted data, by the clean file's name. */
export function phiFile(name: string): string {
  return join(phiCorpusDir(), name);
}

/** A clean corpus file, by name. */
export function cleanFile(name: string): string {
  return join(CLEAN_DIR, name);
}

// Older names, kept for tests written before the corpus moved into the repository.
export const CORPUS_CLEAN = CLEAN_DIR;
/** @deprecated use phiCorpusDir(); evaluated on import. */
export const CORPUS_PHI = phiCorpusDir();
/** Always true now: the corpus travels with the repository. */
export function corpusAvailable(): boolean {
  return true;
}
/** @deprecated the corpus no longer comes from a workspace folder. */
export const SHARED = resolve(REPO_ROOT, 'test', 'data');
