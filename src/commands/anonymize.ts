// Batch mode: INCOMING folder -> OUTGOING folder, as the original script did.
import { promises as fs, Dirent } from 'fs';
import { join, relative } from 'path';
import type { Logger } from 'pino';
import { DeidPipeline, ImageRejected } from '../pipeline';
import { looksLikeDicom } from '../dicom/read';
import { writeFileAtomic } from '../deliver/folder';
import { Quarantine } from '../deliver/quarantine';

export interface AnonymizeOptions {
  incoming: string;
  outgoing: string;
  quarantineDir: string;
  move: boolean;
  fsync: boolean;
  concurrency: number;
  progress: NodeJS.WriteStream | undefined;
  logger: Logger;
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

async function* walk(dir: string): AsyncGenerator<string> {
  let entries: Dirent[];
  entries = await fs.readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* walk(p);
    else if (e.isFile()) yield p;
  }
}

export async function runAnonymize(pipeline: DeidPipeline, o: AnonymizeOptions): Promise<BatchSummary> {
  const files: string[] = [];
  for await (const f of walk(o.incoming)) files.push(f);
  const quarantine = new Quarantine(o.quarantineDir);
  const s: BatchSummary = { processed: 0, quarantined: 0, duplicates: 0, skipped: 0, bytesIn: 0, perStudy: new Map(), seconds: 0 };
  const started = process.hrtime.bigint();
  let done = 0;
  let lastDraw = 0;
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

  // Two inputs can hold the same SOP instance (a resend, or one image in two encodings). The first
  // in path order wins, whatever the order in which workers finish, so that two runs over the same
  // input give the same output. Claims are made strictly in input order; writes stay parallel.
  const claimed = new Set<string>();
  let turn = 0;
  const waiting = new Map<number, () => void>();
  const inTurn = async (i: number, claim: () => boolean): Promise<boolean> => {
    if (turn !== i) await new Promise<void>((resolve) => waiting.set(i, resolve));
    try {
      return claim();
    } finally {
      turn++;
      const next = waiting.get(turn);
      if (next) {
        waiting.delete(turn);
        next();
      }
    }
  };
  const passTurn = (i: number) => inTurn(i, () => true);

  const one = async (file: string, index: number) => {
    const rel = relative(o.incoming, file);
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(file);
    } catch (e) {
      await passTurn(index);
      await quarantine.put([], { stage: 'read', reason: `cannot read the file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, source: rel });
      s.quarantined++;
      return;
    }
    s.bytesIn += bytes.length;
    if (!looksLikeDicom(bytes)) {
      await passTurn(index);
      s.skipped++;
      o.logger.debug({ file: rel }, 'skipped: not DICOM');
      return;
    }
    try {
      let r;
      try {
        r = pipeline.process({ kind: 'file', bytes });
      } catch (e) {
        await passTurn(index);
        throw e;
      }
      const path = r.relativePath;
      const first = await inTurn(index, () => {
        if (!path || claimed.has(path)) return !path;
        claimed.add(path);
        return true;
      });
      if (!first) {
        s.duplicates++;
        o.logger.info({ file: rel, output: path }, 'skipped: same SOP instance as an earlier input');
      } else if (r.quarantine || !r.chunks || !r.relativePath) {
        await quarantine.put([bytes], { stage: 'identify', reason: 'the study named by this image is not configured (unknownStudy: quarantine)', source: rel, study: r.studyName }, { durable: o.fsync });
        s.quarantined++;
      } else {
        await writeFileAtomic(join(o.outgoing, r.relativePath), r.chunks, { durable: o.fsync });
        s.processed++;
        s.perStudy.set(r.studyName, (s.perStudy.get(r.studyName) ?? 0) + 1);
      }
    } catch (e) {
      const stage = e instanceof ImageRejected ? e.stage : 'deliver';
      const reason = (e as Error).message;
      await quarantine.put([bytes], { stage, reason, source: rel }, { durable: o.fsync });
      s.quarantined++;
      o.logger.warn({ file: rel, stage, reason }, 'quarantined');
      return;
    }
    if (o.move) await fs.rm(file);
  };

  let next = 0;
  const workers = Array.from({ length: Math.max(1, o.concurrency) }, async () => {
    while (next < files.length) {
      const i = next++;
      await one(files[i], i);
      done++;
      draw();
    }
  });
  await Promise.all(workers);
  draw(true);
  s.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return s;
}

export function formatSummary(s: BatchSummary): string {
  const studies = [...s.perStudy.entries()].sort().map(([k, v]) => `${k}: ${v}`).join(', ');
  return `processed ${s.processed}, quarantined ${s.quarantined}, skipped non-DICOM ${s.skipped}, duplicate instances ${s.duplicates} in ${s.seconds.toFixed(1)} s` +
    (studies ? ` (per study: ${studies})` : '');
}
