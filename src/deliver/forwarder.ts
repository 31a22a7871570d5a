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
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import {
  StoreAssociation,
  type PresentationContextProposal,
  type TlsOptions,
} from './dimse-scu';
import { Part10Error, Spool, statusHex, type OpenedItem, type SpoolEntry } from './spool';
import { errorMessage } from '../observe/errors';
import type { ForwardEvent } from '../observe/events';
import { Sleeper } from './sleeper';

export type { SpoolItemInfo } from './spool';
export { Spool } from './spool';

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

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

export interface ForwardQueueOptions {
  destination: DicomDestination;
  spool: Spool;
  logger: Logger;
  /** Per-image failure statuses before the image is dead-lettered (default 3). */
  maxAttempts?: number;
  /** Backoff for an unreachable destination (default 1 s → 60 s); also spaces per-image retries. */
  backoff?: BackoffOptions;
  /** Images claimed per batch; contexts are negotiated for a batch (default 64). */
  batchSize?: number;
  /** Keep an idle association open this long for new work (default 2000 ms). */
  idleReleaseMs?: number;
  /** Backlog log period while the backlog is not empty (default 30 s). */
  statsIntervalMs?: number;
  /** Rescan the spool directory at least this often when idle (default 5 s). */
  rescanIntervalMs?: number;
  connectTimeoutMs?: number;
  associationTimeoutMs?: number;
  dimseTimeoutMs?: number;
  /** Largest PDU we take from the PACS (announced to it; anything longer aborts the association) and
   * largest we send, whatever the PACS announces (default 256 KiB). */
  maxPduLength?: number;
  /** Told of each image that leaves the spool (forwarded or dead-lettered). */
  onOutcome?: (e: Omit<ForwardEvent, 'destination'>) => void;
}

export interface ForwardStats {
  backlog: number;
  oldestAgeMs: number;
  inFlight: number;
  deadLetters: number;
}

/** Out of Resources (PS3.4 B.2.3: 0xA7xx): the PACS cannot take the image now; nothing is wrong with it. */
export function isTransientRefusal(status: number): boolean {
  return (status & 0xff00) === 0xa700;
}

/** A spool file could not be opened for want of file descriptors: wait, do not give up on the image. */
function outOfDescriptors(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EMFILE' || code === 'ENFILE';
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

type DestState = 'unknown' | 'up' | 'down';

/** Images up to this size are read ahead into memory while the previous one is in flight. */
const PREFETCH_MAX = 8 * 1024 * 1024;

interface Known {
  size: number;
  mtimeMs: number;
  state: 'pending' | 'inflight' | 'delayed';
}

export class ForwardQueue {
  private readonly dest: DicomDestination;
  private readonly spool: Spool;
  private readonly log: Logger;
  private readonly maxAttempts: number;
  private readonly backoff: BackoffOptions;
  private readonly batchSize: number;
  private readonly idleReleaseMs: number;
  private readonly statsIntervalMs: number;
  private readonly rescanIntervalMs: number;
  private readonly opts: ForwardQueueOptions;

  private known = new Map<string, Known>();
  private pending: string[] = [];
  private delayed = new Map<string, number>(); // id -> due time
  private deadLetters = 0;
  /** Consecutive association failures while an image was being sent (in memory only). */
  private interruptions = new Map<string, number>();
  private pendingAcks = new Set<Promise<void>>();
  private prefetched = new Map<OpenedItem, Promise<Buffer | undefined>>();
  private state: DestState = 'unknown';
  /** Failures (connection, association, 0xA7xx) since the last image the PACS stored. */
  private consecutiveFailures = 0;
  /** Associations open now, so that stop() can abort them when its grace period ends. */
  private open = new Set<StoreAssociation>();
  private workerRestarts = 0;
  private nextConnectAt = 0;
  private running = false;
  private stopping = false;
  private workers: Promise<void>[] = [];
  private readonly sleeper = new Sleeper();
  private scanRequested = true;
  private lastScanAt = 0;
  private scanning: Promise<void> | undefined;
  private statsTimer: NodeJS.Timeout | undefined;
  private notifyTimer: NodeJS.Timeout | undefined;
  private tlsOptions: TlsOptions | undefined;

  constructor(opts: ForwardQueueOptions) {
    this.opts = opts;
    this.dest = opts.destination;
    this.spool = opts.spool;
    this.log = opts.logger.child({ destination: opts.destination.name });
    this.maxAttempts = opts.maxAttempts ?? 3;
    this.backoff = opts.backoff ?? { initialMs: 1000, maxMs: 60000 };
    this.batchSize = opts.batchSize ?? 64;
    this.idleReleaseMs = opts.idleReleaseMs ?? 2000;
    this.statsIntervalMs = opts.statsIntervalMs ?? 30000;
    this.rescanIntervalMs = opts.rescanIntervalMs ?? 5000;
  }

  /** Start the workers; whatever is already in the spool is resumed. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.stopping = false;
    if (this.dest.tls) this.tlsOptions = loadTls(this.dest.tls);
    void this.spool.deadLetterCount().then(
      (n) => (this.deadLetters = n),
      () => undefined,
    );
    const n = Math.max(1, this.dest.maxAssociations ?? 2);
    for (let i = 0; i < n; i++) this.workers.push(this.supervise(i));
    this.statsTimer = setInterval(() => this.logBacklog('periodic'), this.statsIntervalMs);
    this.statsTimer.unref();
  }

  /** A new item was enqueued. With its entry (what Spool.enqueue returns) it is queued at once;
   * without, the spool folder is rescanned: a listing per image would be O(backlog) each. */
  notify(entry?: SpoolEntry): void {
    if (entry) {
      const k = this.known.get(entry.id);
      if (!k) {
        this.known.set(entry.id, { size: entry.size, mtimeMs: entry.mtimeMs, state: 'pending' });
        this.pending.push(entry.id);
      } else if (k.state === 'inflight') {
        // Re-enqueued while being sent: ack() sees the new file and keeps it; rescan to pick it up.
        this.scanRequested = true;
      }
    } else {
      this.scanRequested = true;
    }
    if (!this.running) return;
    if (entry && this.sleeper.sleeping) {
      this.wakeAll();
      return;
    }
    if (this.notifyTimer) return;
    // Coalesce bursts of notifications into one directory scan.
    this.notifyTimer = setTimeout(() => {
      this.notifyTimer = undefined;
      this.wakeAll();
    }, 20);
    this.notifyTimer.unref?.();
  }

  /**
   * Finish the image in flight on each association, release them, stop. After graceMs (default: no
   * limit) the associations still open are aborted: their images stay in the spool for the next start.
   */
  async stop(graceMs?: number): Promise<void> {
    if (!this.running) return;
    this.stopping = true;
    this.wakeAll();
    const all = Promise.all(this.workers);
    if (graceMs !== undefined) {
      let timer: NodeJS.Timeout | undefined;
      const expired = await Promise.race([
        all.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), Math.max(0, graceMs)))),
      ]);
      clearTimeout(timer);
      if (expired) {
        const stats = this.stats();
        this.log.warn({ inFlight: stats.inFlight, backlog: stats.backlog, graceMs }, 'shutdown grace period over: aborting associations; unsent images stay in the spool');
        for (const a of this.open) a.abort();
      }
    }
    await all;
    this.workers = [];
    this.running = false;
    if (this.statsTimer) clearInterval(this.statsTimer);
    if (this.notifyTimer) clearTimeout(this.notifyTimer);
    this.statsTimer = this.notifyTimer = undefined;
  }

  /** How often a failed worker was restarted. */
  get restarts(): number {
    return this.workerRestarts;
  }

  stats(): ForwardStats {
    const now = Date.now();
    let oldest = now;
    let inFlight = 0;
    for (const k of this.known.values()) {
      if (k.mtimeMs < oldest) oldest = k.mtimeMs;
      if (k.state === 'inflight') inFlight++;
    }
    return {
      backlog: this.known.size,
      oldestAgeMs: this.known.size ? Math.max(0, now - oldest) : 0,
      inFlight,
      deadLetters: this.deadLetters,
    };
  }

  /** Current view of the destination: 'up' after an accepted association, 'down' after a failure. */
  get destinationState(): DestState {
    return this.state;
  }

  // ---------------------------------------------------------------- scheduling

  private wakeAll(): void {
    this.sleeper.wakeAll();
  }

  private sleep(ms: number): Promise<void> {
    return this.stopping ? Promise.resolve() : this.sleeper.sleep(ms);
  }


  /** Add spool files we have not seen to the pending list (oldest first). */
  private scan(): Promise<void> {
    if (!this.scanning) {
      this.scanRequested = false;
      this.scanning = (async () => {
        const ids = await this.spool.listIds();
        const fresh: Array<{ id: string; mtimeMs: number; size: number }> = [];
        const present = new Set(ids);
        for (const id of ids) {
          if (this.known.has(id)) continue;
          const e = await this.spool.statEntry(id);
          if (e && !this.known.has(id)) fresh.push(e);
        }
        // Forget pending entries whose file vanished (e.g. removed by an operator).
        for (const [id, k] of this.known) {
          if (k.state === 'pending' && !present.has(id)) {
            this.known.delete(id);
          }
        }
        this.pending = this.pending.filter((id) => this.known.get(id)?.state === 'pending');
        fresh.sort((a, b) => a.mtimeMs - b.mtimeMs);
        for (const e of fresh) {
          this.known.set(e.id, { size: e.size, mtimeMs: e.mtimeMs, state: 'pending' });
          this.pending.push(e.id);
        }
      })().finally(() => {
        this.scanning = undefined;
      });
    }
    return this.scanning;
  }

  private promoteDue(): number | undefined {
    const now = Date.now();
    let next: number | undefined;
    for (const [id, due] of this.delayed) {
      if (due <= now) {
        this.delayed.delete(id);
        const k = this.known.get(id);
        if (k) {
          k.state = 'pending';
          this.pending.push(id);
        }
      } else if (next === undefined || due < next) next = due;
    }
    return next;
  }

  /** Claim up to n ids; opens each file (meta only). */
  private async claim(n: number): Promise<OpenedItem[]> {
    this.promoteDue();
    const now = Date.now();
    if (this.scanRequested || (this.pending.length === 0 && now - this.lastScanAt >= this.rescanIntervalMs)) {
      this.lastScanAt = now;
      await this.scan();
    }
    const ids: string[] = [];
    while (ids.length < n && this.pending.length) {
      const id = this.pending.shift()!;
      const k = this.known.get(id);
      if (!k || k.state !== 'pending') continue;
      k.state = 'inflight';
      ids.push(id);
    }
    // Open in parallel (file meta and dataset head only).
    const opened = await Promise.all(ids.map((id) => this.spool.open(id).then((item) => ({ id, item }), (err: unknown) => ({ id, err }))));
    const out: OpenedItem[] = [];
    let starved: unknown;
    for (const r of opened) {
      if ('err' in r) {
        if (outOfDescriptors(r.err)) {
          // Not the image's fault: back to the front of the queue.
          starved = r.err;
          this.unclaim(r.id, true);
        } else if (r.err instanceof Part10Error) {
          await this.toDeadLetter(r.id, null, `unreadable spool file: ${r.err.message}`, 0);
        } else {
          this.log.error({ sopInstanceUid: r.id, err: errorMessage(r.err) }, 'cannot open spool file; will retry');
          const k = this.known.get(r.id);
          if (k) {
            k.state = 'delayed';
            this.delayed.set(r.id, Date.now() + this.backoff.maxMs);
          }
        }
      } else if (!r.item) {
        this.known.delete(r.id);
      } else {
        const k = this.known.get(r.id);
        if (k) k.size = r.item.size;
        out.push(r.item);
      }
    }
    // Nothing could be opened for want of descriptors: fail the worker, which restarts after a backoff.
    if (starved && out.length === 0) throw starved;
    return out;
  }

  /** Put a claimed id back (front of the queue: it was interrupted, not failed). */
  private unclaim(id: string, front: boolean): void {
    const k = this.known.get(id);
    if (!k) return;
    k.state = 'pending';
    if (front) this.pending.unshift(id);
    else this.pending.push(id);
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

  private backoffDelay(n: number): number {
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(n, 30));
    return Math.random() * cap; // full jitter
  }

  /** An association was accepted. The backoff is reset only by a stored image: a PACS that accepts
   * associations and then aborts them, or answers 0xA700 to everything, still backs off. */
  private markUp(): void {
    if (this.state !== 'up') {
      this.state = 'up';
      this.logBacklog('destination up');
    }
  }

  private markDown(err: unknown): void {
    this.consecutiveFailures++;
    const delay = this.backoffDelay(this.consecutiveFailures);
    this.nextConnectAt = Math.max(this.nextConnectAt, Date.now() + delay);
    if (this.state !== 'down') {
      this.state = 'down';
      this.logBacklog('destination down', { err: errorMessage(err) });
    } else {
      this.log.debug({ err: errorMessage(err), retryInMs: Math.round(delay) }, 'destination still down');
    }
  }

  private logBacklog(event: string, extra: Record<string, unknown> = {}): void {
    const s = this.stats();
    if (event === 'periodic' && s.backlog === 0) return;
    let bytes = 0;
    for (const k of this.known.values()) bytes += k.size;
    this.log[event === 'destination down' ? 'warn' : 'info'](
      { event, state: this.state, backlog: s.backlog, backlogBytes: bytes, oldestAgeMs: s.oldestAgeMs, inFlight: s.inFlight, deadLetters: s.deadLetters, ...extra },
      `forward ${this.dest.name}: ${event}, backlog ${s.backlog}`,
    );
  }

  // ---------------------------------------------------------------- the worker

  /** Runs worker `index` until stop(); a worker that fails is restarted after a backoff (reset once
   * a worker has run for longer than the longest backoff). */
  private async supervise(index: number): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      const t0 = Date.now();
      try {
        await this.worker(index);
        return;
      } catch (e) {
        if (this.stopping) return;
        failures = Date.now() - t0 > this.backoff.maxMs ? 1 : failures + 1;
        this.workerRestarts++;
        const delay = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(failures - 1, 30));
        this.log.error({ err: errorMessage(e), worker: index, restartInMs: delay, restarts: this.workerRestarts }, 'forward worker failed; restarting');
        // Not woken by new work: only stop() ends the wait early.
        for (const until = Date.now() + delay; !this.stopping && Date.now() < until; ) await this.sleep(until - Date.now());
      }
    }
  }

  private async worker(index: number): Promise<void> {
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
          const wait = this.nextConnectAt - Date.now();
          if (wait > 0) {
            await this.sleep(wait);
            if (this.stopping) break;
            if (this.nextConnectAt - Date.now() > 0) continue; // woken early (notify); wait again
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
            await this.imageFailed(item.id, item.sopInstanceUid, null, `PACS did not accept presentation context ${item.commandSopClassUid} / ${item.transferSyntaxUid}`);
            continue;
          }
          if (item.datasetLength % 2 !== 0) {
            // PS3.5 7.1: values, hence datasets, have even length; DICOM peers abort on odd PDV fragments
            // (dcmtk: "Odd Fragment Length"). Sending it unchanged is impossible: park it for an operator.
            batch.shift();
            await this.releaseItem(item);
            await this.toDeadLetter(item.id, null, `odd dataset length ${item.datasetLength}: cannot be sent unchanged`, 0);
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
              await this.imageFailed(item.id, item.sopInstanceUid, null, `association failed ${n} times while sending this image: ${errorMessage(e)}`);
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
            this.consecutiveFailures = 0;
            this.nextConnectAt = 0;
            if (status !== 0) this.log.warn({ sopInstanceUid: item.sopInstanceUid, status: statusHex(status), comment }, 'stored with warning');
            else this.log.debug({ sopInstanceUid: item.sopInstanceUid }, 'stored');
            // Delete in the background: the next C-STORE does not wait for the unlink.
            const p = this.spool.ack(item).then(
              (deleted) => {
                if (deleted) {
                  this.known.delete(item.id);
                  this.opts.onOutcome?.({ outcome: 'forwarded', status, bytes: item.size });
                } else this.unclaim(item.id, false); // replaced meanwhile by a newer copy: send that too
              },
              (e: unknown) => {
                this.log.error({ sopInstanceUid: item.sopInstanceUid, err: errorMessage(e) }, 'cannot delete delivered spool file; it will be sent again');
                this.unclaim(item.id, false);
              },
            );
            this.pendingAcks.add(p);
            void p.finally(() => this.pendingAcks.delete(p));
          } else {
            await this.releaseItem(item);
            await this.imageFailed(item.id, item.sopInstanceUid, status, comment ?? '');
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

  private async imageFailed(id: string, sopInstanceUid: string, status: number | null, message: string): Promise<void> {
    let attempts: number;
    try {
      attempts = await this.spool.recordFailure(id, status, message);
    } catch (e) {
      this.log.error({ sopInstanceUid, err: errorMessage(e) }, 'cannot record failure');
      attempts = 1;
    }
    const fields = { sopInstanceUid, status: status === null ? null : statusHex(status), message, attempts, maxAttempts: this.maxAttempts };
    if (attempts >= this.maxAttempts) {
      await this.toDeadLetter(id, status, message, attempts);
    } else {
      this.log.warn(fields, 'PACS refused image; will retry');
      const k = this.known.get(id);
      if (k) {
        k.state = 'delayed';
        this.delayed.set(id, Date.now() + this.backoffDelay(attempts) + this.backoff.initialMs / 2);
      }
    }
  }

  private async toDeadLetter(id: string, status: number | null, message: string, attempts: number): Promise<void> {
    try {
      await this.spool.deadLetter(id, { status, message, attempts, sopInstanceUid: id });
      this.deadLetters++;
      this.opts.onOutcome?.({ outcome: 'dead-letter', status, bytes: 0 });
      this.known.delete(id);
      this.interruptions.delete(id);
      this.log.error({ sopInstanceUid: id, status: status === null ? null : statusHex(status), message, attempts }, 'image moved to dead letters');
    } catch (e) {
      this.log.error({ sopInstanceUid: id, err: errorMessage(e) }, 'cannot move image to dead letters');
      this.known.delete(id);
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

