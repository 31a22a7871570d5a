// Batch mode: INCOMING folder -> OUTGOING folder, as the original script did.
//
// One thread de-identifies every file, in path order; a second one (BatchIo) reads the inputs
// ahead and writes the outputs behind it, for runs of 32 files or more. Measured on 2 cores, worker
// threads that each de-identify a share of the files lost: each warms up the engine on its own.
// Because claims are made in input order, an input holding a SOP instance that an earlier input
// already produced (one image sent twice, or in two encodings) is dropped the same way in every
// run: two runs over the same input give the same output.
import { createHash } from 'crypto';
import { readFileSync, rmSync } from 'fs';
import { basename, relative, resolve } from 'path';
import type { RouterConfig } from '../config/types';
import type { LogSink } from '../observe/logger';
import { DeidPipeline } from '../pipeline';
import { Quarantine } from '../deliver/quarantine';
import { childPath } from '../deliver/folder';
import { Completion, FileIo, listInputs, openFileIo } from './batch-io';
import { prepareInput, Prepared, Stage } from './batch-file';
import { LinkageLogs } from '../deliver/linkage';
import { errorCode } from '../observe/errors';

export interface AnonymizeOptions {
  incoming: string;
  outgoing: string;
  quarantineDir: string;
  move: boolean;
  fsync: boolean;
  progress: NodeJS.WriteStream | undefined;
  logger: LogSink;
}

export interface BatchSummary {
  processed: number;
  quarantined: number;
  /** Inputs holding a SOP instance an earlier input (in path order) already produced. */
  duplicates: number;
  skipped: number;
  /** Delivered with BurnedInUnknown: flag. */
  burnedInFlagged: number;
  bytesIn: number;
  perStudy: Map<string, number>;
  seconds: number;
}

/** What runAnonymize hands to FileIo with each output. */
export interface OutputTag {
  file: string;
  study: string;
}

/** `opened`: the inputs and their FileIo, when the caller opened them early (see openFileIo). */
export async function runAnonymize(config: RouterConfig, salt: string, options: AnonymizeOptions, opened?: { files: string[]; io: FileIo<OutputTag> }): Promise<BatchSummary> {
  // Normal absolute folders: paths below them are then built by concatenation (childPath).
  const o = { ...options, incoming: resolve(options.incoming), outgoing: resolve(options.outgoing) };
  const started = process.hrtime.bigint();
  const files = opened?.files ?? listInputs(o.incoming);
  const io = opened?.io ?? openFileIo<OutputTag>(files, o.fsync);
  const quarantine = new Quarantine(o.quarantineDir);
  const pipeline = new DeidPipeline(config, salt);
  const s: BatchSummary = { processed: 0, quarantined: 0, duplicates: 0, skipped: 0, burnedInFlagged: 0, bytesIn: 0, perStudy: new Map(), seconds: 0 };
  const linkage = new LinkageLogs();
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

  // Neither log lines nor the reason file name the input path: exports are often named after the
  // patient (DOE^JOHN_19770707/...). The reason carries the input's SHA-256 instead, which finds
  // the input again (sha256sum) without saying whose it is.
  const toQuarantine = (file: string, stage: Stage, reason: string, study?: string) => {
    let original: Buffer[] = [];
    try {
      original = [readFileSync(file)];
    } catch {
      /* unreadable: the reason file says so */
    }
    const entry = quarantine.put(original, { stage, reason, source: 'anonymize', sha256: original.length ? createHash('sha256').update(original[0]).digest('hex') : undefined, study }, { durable: o.fsync });
    s.quarantined++;
    o.logger.warn({ quarantined: basename(entry), stage, reason }, 'quarantined');
    if (o.move && original.length) rmSync(file);
  };

  const written = (file: string, study: string) => {
    s.processed++;
    s.perStudy.set(study, (s.perStudy.get(study) ?? 0) + 1);
    if (o.move) rmSync(file);
  };
  const notWritten = (file: string, error: string) => toQuarantine(file, 'deliver', `cannot write the result: ${error}`);
  io.onDone = (c: Completion<OutputTag>) => (c.error === undefined ? written(c.tag.file, c.tag.study) : notWritten(c.tag.file, c.error));

  try {
    for (const file of files) {
      const input = io.next();
      const p: Prepared = input.error !== undefined
        ? { kind: 'quarantine', stage: 'read', reason: `cannot read the file: ${input.error}`, bytes: 0 }
        : prepareInput(pipeline, input.bytes);
      s.bytesIn += p.bytes;
      let linkageError: string | undefined;
      if (p.kind === 'ready' && !claimed.has(p.rel) && p.linkage) {
        // The line is on disk before the output is handed to the writer.
        try {
          linkage.record(p.linkage);
        } catch (e) {
          linkageError = `linkage log not written: ${errorCode(e)}`;
        }
      }
      if (p.kind === 'ready' && !claimed.has(p.rel) && linkageError === undefined) {
        claimed.add(p.rel);
        if (p.phiWarning) o.logger.warn({ study: p.study, output: p.rel, phiGate: p.phiWarning }, 'PHI gate found identifiers; written (PhiGate: warn)');
        if (p.burnedInFlag) {
          // Counted in the summary line; one info line per image was most of a run's log (and of its
          // time, in runs of screen captures).
          s.burnedInFlagged++;
          o.logger.debug({ study: p.study, output: p.rel, reason: p.burnedInFlag }, 'burned-in annotation unknown; written');
        }
        io.write(childPath(o.outgoing, p.rel), p.chunks, { file, study: p.study }); // rel: checked UIDs, sanitised study name
      } else if (linkageError !== undefined) {
        io.release();
        toQuarantine(file, 'deliver', linkageError, p.kind === 'ready' ? p.study : undefined);
      } else {
        io.release();
        if (p.kind === 'skipped') {
          s.skipped++;
          o.logger.debug({}, 'skipped a file that is not DICOM');
        } else if (p.kind === 'quarantine') {
          toQuarantine(file, p.stage, p.reason, p.study);
        } else {
          s.duplicates++;
          o.logger.debug({ output: p.rel }, 'skipped: same SOP instance as an earlier input');
          if (o.move) rmSync(file);
        }
      }
      done++;
      draw();
    }
  } finally {
    await io.close();
    linkage.close();
  }
  draw(true);
  s.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return s;
}

export function formatSummary(s: BatchSummary): string {
  const studies = [...s.perStudy.entries()].sort().map(([k, v]) => `${k}: ${v}`).join(', ');
  return `processed ${s.processed}, quarantined ${s.quarantined}, skipped non-DICOM ${s.skipped}, duplicate instances ${s.duplicates} in ${s.seconds.toFixed(1)} s` +
    (studies ? ` (per study: ${studies})` : '') +
    (s.burnedInFlagged ? `; burned-in annotation unknown, flagged and written: ${s.burnedInFlagged}` : '');
}
