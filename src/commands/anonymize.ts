// Batch mode: INCOMING folder -> OUTGOING folder, as the original script did.
//
// Files are read, de-identified and written to temporary files by worker threads (one per core),
// and committed here in input order: renamed into place, or dropped when an earlier input already
// produced the same SOP instance (one image sent twice, or in two encodings). Committing in input
// order makes two runs over the same input give the same output, whatever the thread timing.
import { readdirSync, readFileSync, renameSync, rmSync, unlinkSync } from 'fs';
import { availableParallelism } from 'os';
import { dirname, join, relative } from 'path';
import { Worker } from 'worker_threads';
import type { LogSink } from '../observe/logger';
import type { RouterConfig } from '../config/types';
import { DeidPipeline } from '../pipeline';
import { Quarantine } from '../deliver/quarantine';
import { fsyncDirSync } from '../deliver/folder';
import { FileResult, processFile } from './batch-file';
import type { BatchJob, BatchWorkerData } from './batch-worker';

export interface AnonymizeOptions {
  incoming: string;
  outgoing: string;
  quarantineDir: string;
  move: boolean;
  fsync: boolean;
  /** Worker threads; 0 or 1 processes in this thread. Default: cores - 1 from 4 cores on, else 0. */
  concurrency?: number;
  progress: NodeJS.WriteStream | undefined;
  logger: LogSink;
}

export interface BatchSummary {
  processed: number;
  quarantined: number;
  /** Inputs holding a SOP instance an earlier input (in path order) already produced. */
  duplicates: number;
  skipped: number;
  bytesIn: number;
  perStudy: Map<string, number>;
  seconds: number;
}

function listFiles(dir: string, out: string[] = []): string[] {
  const entries = readdirSync(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) listFiles(p, out);
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** Below this many files, starting threads costs more than it saves. */
const MIN_FILES_FOR_WORKERS = 64;
const JOB_SIZE = 8;

export async function runAnonymize(config: RouterConfig, salt: string, o: AnonymizeOptions): Promise<BatchSummary> {
  const started = process.hrtime.bigint();
  const files = listFiles(o.incoming);
  const quarantine = new Quarantine(o.quarantineDir);
  const s: BatchSummary = { processed: 0, quarantined: 0, duplicates: 0, skipped: 0, bytesIn: 0, perStudy: new Map(), seconds: 0 };
  const claimed = new Set<string>();
  let lastDraw = 0;
  let done = 0;
  const draw = (final = false) => {
    if (!o.progress) return;
    const now = Date.now();
    if (!final && now - lastDraw < 100) return;
    lastDraw = now;
    const secs = Number(process.hrtime.bigint() - started) / 1e9;
    const width = 30;
    const filled = files.length ? Math.round((done / files.length) * width) : width;
    o.progress.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${files.length} files, ${(s.bytesIn / 1e6).toFixed(1)} MB, ${(done / Math.max(secs, 1e-3)).toFixed(0)} files/s, ${s.quarantined} quarantined ${final ? '\n' : ''}`);
  };

  /** Applies one result; called strictly in input order. */
  const commit = async (index: number, r: FileResult): Promise<void> => {
    const file = files[index];
    const rel = relative(o.incoming, file);
    s.bytesIn += r.bytes;
    let handled = true;
    if (r.kind === 'skipped') {
      s.skipped++;
      handled = false;
      o.logger.debug({ file: rel }, 'skipped: not DICOM');
    } else if (r.kind === 'written') {
      if (claimed.has(r.rel)) {
        unlinkSync(r.tmp);
        s.duplicates++;
        o.logger.debug({ file: rel, output: r.rel }, 'skipped: same SOP instance as an earlier input');
      } else {
        claimed.add(r.rel);
        const final = join(o.outgoing, r.rel);
        renameSync(r.tmp, final);
        if (o.fsync) fsyncDirSync(dirname(final));
        s.processed++;
        s.perStudy.set(r.study, (s.perStudy.get(r.study) ?? 0) + 1);
      }
    } else {
      let original: Buffer[] = [];
      try {
        original = [readFileSync(file)];
      } catch {
        /* unreadable: the reason file says so */
      }
      await quarantine.put(original, { stage: r.stage, reason: r.reason, source: rel, study: r.study }, { durable: o.fsync });
      s.quarantined++;
      handled = original.length > 0;
      o.logger.warn({ file: rel, stage: r.stage, reason: r.reason }, 'quarantined');
    }
    if (o.move && handled) rmSync(file);
    done++;
    draw();
  };

  // Measured on 2 cores: one thread beats two workers (each worker loads and warms up the engine
  // on its own, and the main thread still commits); workers pay off from 4 cores on.
  const cores = availableParallelism();
  const threads = Math.max(0, Math.floor(o.concurrency ?? (cores >= 4 ? cores - 1 : 0)));
  if (threads <= 1 || files.length < MIN_FILES_FOR_WORKERS) {
    const pipeline = new DeidPipeline(config, salt);
    for (let i = 0; i < files.length; i++) await commit(i, processFile(pipeline, files[i], o.outgoing, o.fsync));
  } else {
    await runWithWorkers(config, salt, o, files, threads, commit);
  }
  draw(true);
  s.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return s;
}

async function runWithWorkers(
  config: RouterConfig, salt: string, o: AnonymizeOptions, files: string[], threads: number,
  commit: (index: number, r: FileResult) => Promise<void>,
): Promise<void> {
  const data: BatchWorkerData = { config, salt, outgoing: o.outgoing, fsync: o.fsync };
  const pending = new Map<number, FileResult>();
  let nextToCommit = 0;
  let nextToSend = 0;
  let committing = Promise.resolve();
  let failure: Error | undefined;

  await new Promise<void>((resolve, reject) => {
    const workers: Worker[] = [];
    let finished = false;
    const finish = (e?: Error) => {
      if (finished) return;
      finished = true;
      for (const w of workers) void w.terminate();
      if (e) reject(e);
      else resolve();
    };
    const send = (w: Worker) => {
      if (nextToSend >= files.length) return;
      const items: BatchJob['items'] = [];
      while (items.length < JOB_SIZE && nextToSend < files.length) items.push({ index: nextToSend, path: files[nextToSend++] });
      w.postMessage({ items } satisfies BatchJob);
    };
    const drain = () => {
      committing = committing.then(async () => {
        while (!failure && pending.has(nextToCommit)) {
          const r = pending.get(nextToCommit) as FileResult;
          pending.delete(nextToCommit);
          await commit(nextToCommit, r);
          nextToCommit++;
        }
        if (nextToCommit === files.length) finish();
      }).catch((e: Error) => {
        failure = e;
        finish(e);
      });
    };
    for (let t = 0; t < threads; t++) {
      const w = new Worker(join(__dirname, 'batch-worker.js'), { workerData: data });
      workers.push(w);
      w.on('message', (results: Array<{ index: number; result: FileResult }>) => {
        for (const { index, result } of results) pending.set(index, result);
        send(w);
        drain();
      });
      w.on('error', (e) => finish(new Error(`batch worker failed: ${e.message}`)));
      w.on('exit', (code) => {
        if (!finished && code !== 0) finish(new Error(`batch worker exited with code ${code}`));
      });
      // Two jobs in flight per worker: it never waits for us between jobs.
      send(w);
      send(w);
    }
    if (files.length === 0) finish();
  });
}

export function formatSummary(s: BatchSummary): string {
  const studies = [...s.perStudy.entries()].sort().map(([k, v]) => `${k}: ${v}`).join(', ');
  return `processed ${s.processed}, quarantined ${s.quarantined}, skipped non-DICOM ${s.skipped}, duplicate instances ${s.duplicates} in ${s.seconds.toFixed(1)} s` +
    (studies ? ` (per study: ${studies})` : '');
}
