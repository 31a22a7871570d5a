// Drains a destination's spool into a research PACS by C-STORE, never losing an image.
//
// - A spool file is deleted only after the PACS answered Success or a Warning status for it
//   (at-least-once delivery: a crash between the answer and the delete re-sends the image).
// - Associations stay open while there is work; each carries one presentation context per
//   (SOP class, transfer syntax) pair of its batch, so every image goes in its own transfer syntax and
//   the dataset bytes sent are the spool file's bytes after the file meta.
// - Up to maxAssociations workers per destination.
// - PACS down, association rejected or aborted, network errors, and a PACS out of resources (0xA7xx
//   statuses, transient by definition): exponential backoff with full jitter; these never count against
//   an image. Any other failure status counts one attempt; after maxAttempts the image moves to the
//   dead-letter folder with a reason file and the rest keep flowing.
// - A worker that fails (spool folder gone for a moment, no file descriptor left) is restarted with
//   backoff; the images it held go back to the queue.
// - stop(graceMs) gives the images on the wire that long, then aborts: whatever is unsent stays spooled.
// Logs carry SOP instance UIDs, statuses and counts only (never dataset values).
// The queue itself (spool entries, scans, backoff, worker restarts, dead letters) is SpoolDrainer's;
// this file is what is particular to C-STORE: associations, batches, and what a status means.
import * as fs from 'node:fs';
import {
  StoreAssociation,
  type PresentationContextProposal,
  type TlsOptions,
} from './dimse-scu';
import { statusHex, type OpenedItem } from './spool';
import { errorMessage } from '../observe/errors';
import { SpoolDrainer, type SpoolDrainerOptions, type SpoolDrainerStats } from './spool-drainer';

export type { SpoolItemInfo } from './spool';
export { Spool } from './spool';
export type { BackoffOptions } from './spool-drainer';

export interface DicomDestination {
  name: string;
  aeTitle: string;
  host: string;
  port: number;
  callingAeTitle: string;
  /** Parallel associations to this destination (default 2). */
  maxAssociations?: number;
  tls?: {
    caFile?: string;
    certFile?: string;
    keyFile?: string;
    rejectUnauthorized?: boolean;
    servername?: string;
  };
}

export interface ForwardQueueOptions extends SpoolDrainerOptions {
  destination: DicomDestination;
  /** Per-image failure statuses before the image is dead-lettered (default 3). */
  maxAttempts?: number;
  /** Images claimed per batch; contexts are negotiated for a batch (default 64). */
  batchSize?: number;
  /** Keep an idle association open this long for new work (default 2000 ms). */
  idleReleaseMs?: number;
  connectTimeoutMs?: number;
  associationTimeoutMs?: number;
  dimseTimeoutMs?: number;
  /** Largest PDU we take from the PACS (announced to it; anything longer aborts the association) and
   * largest we send, whatever the PACS announces (default 256 KiB). */
  maxPduLength?: number;
}

export type ForwardStats = SpoolDrainerStats;

/** Out of Resources (PS3.4 B.2.3: 0xA7xx): the PACS cannot take the image now; nothing is wrong with it. */
export function isTransientRefusal(status: number): boolean {
  return (status & 0xff00) === 0xa700;
}

/** Statuses after which the PACS has the image (PS3.7 C.4.2.1.4 / Annex C: Success and Warning). */
export function isStored(status: number): boolean {
  return (
    status === 0x0000 ||
    status === 0xb000 || // coercion of data elements
    status === 0xb007 || // data set does not match SOP class
    status === 0xb006 || // elements discarded
    status === 0x0001 || // generic warning
    status === 0x0107 || // attribute list error (warning)
    status === 0x0116 // attribute value out of range (warning)
  );
}

/** Images up to this size are read ahead into memory while the previous one is in flight. */
const PREFETCH_MAX = 8 * 1024 * 1024;

export class ForwardQueue extends SpoolDrainer {
  protected readonly kind = 'forward';
  private readonly dest: DicomDestination;
  private readonly opts: ForwardQueueOptions;
  private readonly maxAttempts: number;
  private readonly batchSize: number;
  private readonly idleReleaseMs: number;

  /** Consecutive association failures while an image was being sent (in memory only). */
  private interruptions = new Map<string, number>();
  private pendingAcks = new Set<Promise<void>>();
  private prefetched = new Map<OpenedItem, Promise<Buffer | undefined>>();
  /** Associations open now, so that stop() can abort them when its grace period ends. */
  private open = new Set<StoreAssociation>();
  private tlsOptions: TlsOptions | undefined;

  constructor(opts: ForwardQueueOptions) {
    super(opts, opts.destination.name);
    this.opts = opts;
    this.dest = opts.destination;
    this.maxAttempts = opts.maxAttempts ?? 3;
    this.batchSize = opts.batchSize ?? 64;
    this.idleReleaseMs = opts.idleReleaseMs ?? 2000;
  }

  protected workerCount(): number {
    return this.dest.maxAssociations ?? 2;
  }

  protected override onStart(): void {
    if (this.dest.tls) this.tlsOptions = loadTls(this.dest.tls);
  }

  protected override abortInFlight(): void {
    for (const a of this.open) a.abort();
  }

  protected override forget(id: string): void {
    super.forget(id);
    this.interruptions.delete(id);
  }

  private async returnItems(items: OpenedItem[]): Promise<void> {
    for (let i = items.length - 1; i >= 0; i--) {
      await this.releaseItem(items[i]);
      this.unclaim(items[i].id, true);
    }
  }

  /** Close an item's file (after any read-ahead on it finished); the image stays in the spool. */
  private async releaseItem(item: OpenedItem): Promise<void> {
    await this.takePrefetched(item);
    await this.spool.release(item);
  }

  // ---------------------------------------------------------------- the worker

  protected async worker(index: number): Promise<void> {
    let assoc: StoreAssociation | undefined;
    let batch: OpenedItem[] = [];
    /** The next batch, claimed while the current one is being sent. */
    let nextBatch: Promise<OpenedItem[]> | undefined;
    try {
      while (!this.stopping) {
        // Extra associations only for a backlog the first cannot keep up with: a PACS that serves
        // one association at a time (dcmtk storescp without --fork) would otherwise make the
        // second wait for the first to go idle, holding its images that long.
        if (index > 0 && !assoc && batch.length === 0 && this.pending.length < this.batchSize * index) {
          await this.sleep(this.rescanIntervalMs);
          continue;
        }
        if (batch.length === 0) {
          batch = nextBatch ? await nextBatch : await this.claim(this.batchSize);
          nextBatch = undefined;
          if (batch.length === 0) batch = await this.claim(this.batchSize);
        }
        if (batch.length === 0) {
          // Nothing to do: keep an open association a little for new work, then release it.
          const due = this.promoteDue();
          const wait = assoc ? this.idleReleaseMs : Math.min(this.rescanIntervalMs, due ? due - Date.now() : Infinity);
          const t0 = Date.now();
          await this.sleep(wait);
          if (assoc && Date.now() - t0 >= this.idleReleaseMs && this.pending.length === 0 && !this.scanRequested) {
            await assoc.release();
            assoc = undefined;
          }
          if (!this.scanRequested && Date.now() - t0 >= wait) this.scanRequested = true;
          continue;
        }

        // Reuse the association if it carries every (SOP class, TS) pair of this batch.
        if (assoc && (!assoc.isOpen || batch.some((it) => assoc!.contextFor(it.commandSopClassUid, it.transferSyntaxUid) === undefined))) {
          await assoc.release();
          assoc = undefined;
        }
        if (!assoc) {
          const wait = this.nextAttemptAt - Date.now();
          if (wait > 0) {
            await this.sleep(wait);
            if (this.stopping) break;
            if (this.nextAttemptAt - Date.now() > 0) continue; // woken early (notify); wait again
          }
          try {
            assoc = await StoreAssociation.connect({
              host: this.dest.host,
              port: this.dest.port,
              callingAeTitle: this.dest.callingAeTitle,
              calledAeTitle: this.dest.aeTitle,
              contexts: contextsFor(batch),
              maxPduLength: this.opts.maxPduLength,
              connectTimeoutMs: this.opts.connectTimeoutMs,
              associationTimeoutMs: this.opts.associationTimeoutMs,
              dimseTimeoutMs: this.opts.dimseTimeoutMs,
              tls: this.tlsOptions,
            });
          } catch (e) {
            this.markDown(e);
            continue; // keep the batch; retry after backoff
          }
          for (const a of this.open) if (!a.isOpen) this.open.delete(a);
          this.open.add(assoc);
          if (this.stopping) break;
          this.markUp();
          this.log.debug({ worker: index, images: batch.length, contexts: assoc.acceptedContexts.length, maxPdu: assoc.maxPduLength }, 'association open');
        }

        // Send the batch, one image at a time.
        while (batch.length) {
          const item = batch[0];
          const pcId = assoc.contextFor(item.commandSopClassUid, item.transferSyntaxUid);
          if (pcId === undefined) {
            batch.shift();
            await this.releaseItem(item);
            await this.imageFailed(item, null, `PACS did not accept presentation context ${item.commandSopClassUid} / ${item.transferSyntaxUid}`);
            continue;
          }
          if (item.datasetLength % 2 !== 0) {
            // PS3.5 7.1: values, hence datasets, have even length; DICOM peers abort on odd PDV fragments
            // (dcmtk: "Odd Fragment Length"). Sending it unchanged is impossible: park it for an operator.
            batch.shift();
            await this.releaseItem(item);
            await this.toDeadLetter(item.id, null, `odd dataset length ${item.datasetLength}: cannot be sent unchanged`, 0, item);
            continue;
          }
          let status: number;
          let comment: string | undefined;
          try {
            // Read the next image while this one is on the wire and the PACS is answering; near the end of
            // the batch, claim (open) the next batch too.
            if (batch[1]) this.prefetch(batch[1]);
            if (batch.length <= 4 && !nextBatch && !this.stopping && this.pending.length > 0) {
              nextBatch = this.claim(this.batchSize);
              nextBatch.catch(() => undefined); // a failure surfaces where it is awaited
            }
            const pre = await this.takePrefetched(item);
            const r = await assoc.cStore(
              pcId,
              item.commandSopClassUid,
              item.commandSopInstanceUid,
              pre ?? { fh: item.fh, offset: item.datasetOffset, length: item.datasetLength },
            );
            status = r.status;
            comment = r.errorComment;
          } catch (e) {
            // Association or network failure: not the image's fault, unless it keeps happening while this
            // same image is on the wire (a PACS that aborts on one malformed image); then it counts as an
            // attempt every second time, so a poison image cannot block the queue forever.
            assoc.abort();
            assoc = undefined;
            if (this.stopping) {
              // Aborted by stop() at the end of its grace period: not the image's fault.
              await this.returnItems(batch);
              batch = [];
              break;
            }
            const n = (this.interruptions.get(item.id) ?? 0) + 1;
            this.interruptions.set(item.id, n);
            this.markDown(e);
            if (n % 2 === 0) {
              batch.shift();
              await this.releaseItem(item);
              await this.imageFailed(item, null, `association failed ${n} times while sending this image: ${errorMessage(e)}`);
            }
            await this.returnItems(batch);
            batch = [];
            break;
          }
          this.interruptions.delete(item.id);
          batch.shift();
          if (isTransientRefusal(status)) {
            // The PACS is out of resources: like a PACS that is down. The image goes to the back of the
            // queue (if only it is refused, the others still flow), the association is released, and the
            // next one waits for the backoff.
            await this.releaseItem(item);
            this.unclaim(item.id, false);
            await this.returnItems(batch);
            batch = [];
            await assoc.release();
            assoc = undefined;
            this.markDown(new Error(`PACS out of resources (${statusHex(status)}${comment ? `: ${comment}` : ''})`));
            break;
          }
          if (isStored(status)) {
            this.resetBackoff();
            if (status !== 0) this.log.warn({ sopInstanceUid: item.sopInstanceUid, status: statusHex(status), comment }, 'stored with warning');
            else this.log.debug({ sopInstanceUid: item.sopInstanceUid }, 'stored');
            // Delete in the background: the next C-STORE does not wait for the unlink.
            const p = this.delivered(item, status);
            this.pendingAcks.add(p);
            void p.finally(() => this.pendingAcks.delete(p));
          } else {
            await this.releaseItem(item);
            await this.imageFailed(item, status, comment ?? '');
          }
          if (this.stopping) break;
        }
      }
    } finally {
      // Also when the worker failed: every image it held goes back to the queue, its association is
      // released, and nothing here may throw in its turn.
      const claimed = nextBatch ? await nextBatch.catch(() => [] as OpenedItem[]) : [];
      await this.returnItems([...batch, ...claimed]);
      if (assoc) await assoc.release().catch(() => undefined);
      await Promise.all([...this.pendingAcks]);
    }
  }

  /** Start reading an image's dataset bytes into memory (only images up to PREFETCH_MAX bytes). */
  private prefetch(item: OpenedItem): void {
    if (this.prefetched.has(item) || item.datasetLength > PREFETCH_MAX) return;
    const p = (async () => {
      const buf = Buffer.allocUnsafe(item.datasetLength);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await item.fh.read(buf, got, buf.length - got, item.datasetOffset + got);
        if (bytesRead === 0) return undefined;
        got += bytesRead;
      }
      return buf;
    })().catch(() => undefined);
    this.prefetched.set(item, p);
  }

  private async takePrefetched(item: OpenedItem): Promise<Buffer | undefined> {
    const p = this.prefetched.get(item);
    if (!p) return undefined;
    this.prefetched.delete(item);
    return p;
  }

  private async imageFailed(item: OpenedItem, status: number | null, message: string): Promise<void> {
    const { id, sopInstanceUid } = item;
    let attempts: number;
    try {
      attempts = await this.spool.recordFailure(id, status, message);
    } catch (e) {
      this.log.error({ sopInstanceUid, err: errorMessage(e) }, 'cannot record failure');
      attempts = 1;
    }
    const fields = { sopInstanceUid, status: status === null ? null : statusHex(status), message, attempts, maxAttempts: this.maxAttempts };
    if (attempts >= this.maxAttempts) {
      await this.toDeadLetter(id, status, message, attempts, item);
    } else {
      this.log.warn(fields, 'PACS refused image; will retry');
      this.retryAt(id, Date.now() + this.backoffDelay(attempts) + this.backoff.initialMs / 2);
    }
  }
}

function contextsFor(items: OpenedItem[]): PresentationContextProposal[] {
  const seen = new Set<string>();
  const out: PresentationContextProposal[] = [];
  for (const it of items) {
    const key = `${it.commandSopClassUid}|${it.transferSyntaxUid}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ abstractSyntaxUid: it.commandSopClassUid, transferSyntaxUid: it.transferSyntaxUid });
  }
  return out;
}

export function loadTls(t: NonNullable<DicomDestination['tls']>): TlsOptions {
  return {
    ca: t.caFile ? fs.readFileSync(t.caFile) : undefined,
    cert: t.certFile ? fs.readFileSync(t.certFile) : undefined,
    key: t.keyFile ? fs.readFileSync(t.keyFile) : undefined,
    rejectUnauthorized: t.rejectUnauthorized ?? true,
    servername: t.servername,
  };
}
