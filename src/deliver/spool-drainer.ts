// What every queue that drains a destination's spool does, whatever the protocol (C-STORE in
// ForwardQueue, STOW-RS in StowQueue): it knows the spool's entries and their states, scans the
// folder (oldest first), hands entries to its workers, backs off while the destination fails,
// restarts a worker that failed, moves images to the dead-letter folder, and reports its backlog.
// The subclass sends: it runs the workers and says what an answer means for an image.
//
// - An entry is pending (waiting for a worker), inflight (claimed by a worker) or delayed (a retry
//   not due yet). The spool file is the truth: what is known here is rebuilt by scanning at start.
// - Destination failures (not the image's fault) back off exponentially with full jitter, shared by
//   all workers; only an image the destination took resets the backoff.
// - No file descriptor left (EMFILE): the image goes back to the queue and the worker fails, to be
//   restarted after a backoff, rather than failing the image.
import type { Logger } from 'pino';
import { Part10Error, statusHex, type OpenedItem, type Spool, type SpoolEntry } from './spool';
import { errorMessage } from '../observe/errors';
import type { ForwardEvent } from '../observe/events';
import { Sleeper } from './sleeper';

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

export interface SpoolDrainerOptions {
  spool: Spool;
  logger: Logger;
  /** Backoff for an unreachable or failing destination (default 1 s → 60 s); also spaces per-image retries. */
  backoff?: BackoffOptions;
  /** Rescan the spool folder at least this often when idle (default 5 s). */
  rescanIntervalMs?: number;
  /** Backlog log period while the backlog is not empty (default 30 s). */
  statsIntervalMs?: number;
  /** Told of each image that leaves the spool (forwarded or dead-lettered). */
  onOutcome?: (e: Omit<ForwardEvent, 'destination'>) => void;
}

export interface SpoolDrainerStats {
  backlog: number;
  oldestAgeMs: number;
  inFlight: number;
  deadLetters: number;
}

export type DestinationState = 'unknown' | 'up' | 'down';

interface KnownEntry {
  size: number;
  mtimeMs: number;
  state: 'pending' | 'inflight' | 'delayed';
}

/** A spool file could not be opened for want of file descriptors: wait, do not give up on the image. */
function outOfDescriptors(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EMFILE' || code === 'ENFILE';
}

export abstract class SpoolDrainer {
  protected readonly spool: Spool;
  protected readonly log: Logger;
  private readonly destinationName: string;
  protected readonly backoff: BackoffOptions;
  protected readonly rescanIntervalMs: number;
  private readonly statsIntervalMs: number;
  private readonly onOutcome: SpoolDrainerOptions['onOutcome'];

  /** Every spool entry not yet delivered or dead-lettered, by id. */
  private readonly known = new Map<string, KnownEntry>();
  /** Ids waiting for a worker, in the order they are claimed. */
  protected pending: string[] = [];
  /** Retries not due yet: id -> due time. */
  private readonly delayed = new Map<string, number>();
  private deadLetters = 0;
  private state: DestinationState = 'unknown';
  /** Destination failures since the last image it took. */
  private consecutiveFailures = 0;
  /** No worker sends before this time (the destination backoff). */
  protected nextAttemptAt = 0;
  private workerRestarts = 0;
  private running = false;
  protected stopping = false;
  private workers: Promise<void>[] = [];
  private readonly sleeper = new Sleeper();
  protected scanRequested = true;
  private lastScanAt = 0;
  private scanning: Promise<void> | undefined;
  private statsTimer: NodeJS.Timeout | undefined;
  private notifyTimer: NodeJS.Timeout | undefined;

  constructor(opts: SpoolDrainerOptions, destinationName: string) {
    this.spool = opts.spool;
    this.destinationName = destinationName;
    this.log = opts.logger.child({ destination: destinationName });
    this.backoff = opts.backoff ?? { initialMs: 1000, maxMs: 60000 };
    this.rescanIntervalMs = opts.rescanIntervalMs ?? 5000;
    this.statsIntervalMs = opts.statsIntervalMs ?? 30000;
    this.onOutcome = opts.onOutcome;
  }

  // ---------------------------------------------------------------- what the subclass supplies

  /** How the logs name this kind of queue ('forward', 'STOW-RS'). */
  protected abstract readonly kind: string;
  /** Parallel workers (associations, HTTP connections). */
  protected abstract workerCount(): number;
  /** Runs worker `index` until stop(); throwing makes it restart after a backoff. */
  protected abstract worker(index: number): Promise<void>;
  /** Called by start() before the workers run (TLS files, HTTP agent). */
  protected onStart(): void {}
  /** stop()'s grace period is over: end the transfers still in flight. */
  protected abortInFlight(): void {}
  /** Called by stop() once every worker returned. */
  protected onStopped(): void {}
  /** Extra fields of the backlog log lines. */
  protected backlogLogFields(): Record<string, unknown> {
    return {};
  }

  // ---------------------------------------------------------------- public

  /** Start the workers; whatever is already in the spool is resumed. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.stopping = false;
    this.onStart();
    void this.spool.deadLetterCount().then(
      (n) => (this.deadLetters = n),
      () => undefined,
    );
    const n = Math.max(1, this.workerCount());
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
        // Re-enqueued while being sent: the ack sees the new file and keeps it; rescan to pick it up.
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
   * Finish the image in flight on each worker, then stop. After graceMs (default: no limit) the
   * transfers still in flight are aborted: their images stay in the spool for the next start.
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
        this.log.warn({ inFlight: stats.inFlight, backlog: stats.backlog, graceMs }, 'shutdown grace period over: aborting transfers; unsent images stay in the spool');
        this.abortInFlight();
      }
    }
    await all;
    this.workers = [];
    this.running = false;
    if (this.statsTimer) clearInterval(this.statsTimer);
    if (this.notifyTimer) clearTimeout(this.notifyTimer);
    this.statsTimer = this.notifyTimer = undefined;
    this.onStopped();
  }

  /** How often a failed worker was restarted. */
  get restarts(): number {
    return this.workerRestarts;
  }

  stats(): SpoolDrainerStats {
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

  /** Current view of the destination: 'up' after it answered, 'down' after a failure. */
  get destinationState(): DestinationState {
    return this.state;
  }

  // ---------------------------------------------------------------- scheduling

  protected wakeAll(): void {
    this.sleeper.wakeAll();
  }

  protected sleep(ms: number): Promise<void> {
    return this.stopping ? Promise.resolve() : this.sleeper.sleep(ms);
  }

  /** Add spool files we have not seen to the pending list (oldest first). */
  private scan(): Promise<void> {
    if (!this.scanning) {
      this.scanRequested = false;
      this.lastScanAt = Date.now();
      this.scanning = (async () => {
        const ids = await this.spool.listIds();
        const fresh: SpoolEntry[] = [];
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

  /** Move delayed entries that are due to the pending list; returns when the next one is due. */
  protected promoteDue(): number | undefined {
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

  /** Claim up to n images and open each file (meta only). An image that cannot be opened is
   * dead-lettered (not Part 10), retried later (other errors) or put back (no descriptor left). */
  protected async claim(n: number): Promise<OpenedItem[]> {
    this.promoteDue();
    if (this.scanRequested || (this.pending.length === 0 && Date.now() - this.lastScanAt >= this.rescanIntervalMs)) {
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
          this.retryAt(r.id, Date.now() + this.backoff.maxMs);
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
  protected unclaim(id: string, front: boolean): void {
    const k = this.known.get(id);
    if (!k) return;
    k.state = 'pending';
    if (front) this.pending.unshift(id);
    else this.pending.push(id);
  }

  /** Send a claimed image again, not before `due`. */
  protected retryAt(id: string, due: number): void {
    const k = this.known.get(id);
    if (!k) return;
    k.state = 'delayed';
    this.delayed.set(id, due);
  }

  protected backoffDelay(n: number): number {
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(n, 30));
    return Math.random() * cap; // full jitter
  }

  /** The destination took an image: the next attempt need not wait. */
  protected resetBackoff(): void {
    this.consecutiveFailures = 0;
    this.nextAttemptAt = 0;
  }

  /** The destination answered. This alone does not reset the backoff (see resetBackoff). */
  protected markUp(): void {
    if (this.state !== 'up') {
      this.state = 'up';
      this.logBacklog('destination up');
    }
  }

  /** The destination failed: every worker waits for the next backoff. */
  protected markDown(err: unknown): void {
    this.consecutiveFailures++;
    const delay = this.backoffDelay(this.consecutiveFailures);
    this.nextAttemptAt = Math.max(this.nextAttemptAt, Date.now() + delay);
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
      { event, state: this.state, ...this.backlogLogFields(), backlog: s.backlog, backlogBytes: bytes, oldestAgeMs: s.oldestAgeMs, inFlight: s.inFlight, deadLetters: s.deadLetters, ...extra },
      `${this.kind} ${this.destinationName}: ${event}, backlog ${s.backlog}`,
    );
  }

  // ---------------------------------------------------------------- outcomes

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
        this.log.error({ err: errorMessage(e), worker: index, restartInMs: delay, restarts: this.workerRestarts }, `${this.kind} worker failed; restarting`);
        // Not woken by new work: only stop() ends the wait early.
        for (const until = Date.now() + delay; !this.stopping && Date.now() < until; ) await this.sleep(until - Date.now());
      }
    }
  }

  /** The destination has the image: delete its spool file. Never throws: a file that cannot be
   * deleted, or was replaced meanwhile by a newer copy, is sent again. */
  protected async delivered(item: OpenedItem, status: number): Promise<void> {
    try {
      if (await this.spool.ack(item)) {
        this.known.delete(item.id);
        this.onOutcome?.({ outcome: 'forwarded', status, bytes: item.size });
      } else this.unclaim(item.id, false); // replaced meanwhile by a newer copy: send that too
    } catch (e) {
      this.log.error({ sopInstanceUid: item.sopInstanceUid, err: errorMessage(e) }, 'cannot delete delivered spool file; it will be sent again');
      this.unclaim(item.id, false);
    }
  }

  /** Park an image in the dead-letter folder with its reason; the others keep flowing. Never throws.
   * `refused`: the copy that was tried; if a newer copy replaced it in the spool meanwhile (the modality
   * sent the image again), that one is not condemned for the old one's refusal but sent. */
  protected async toDeadLetter(id: string, status: number | null, message: string, attempts: number, refused?: Pick<OpenedItem, 'ino' | 'mtimeMs'>): Promise<void> {
    try {
      if (!(await this.spool.deadLetter(id, { status, message, attempts, sopInstanceUid: id }, refused))) {
        this.log.info({ sopInstanceUid: id }, 'refused copy replaced by a newer one in the spool; sending that one');
        this.unclaim(id, false);
        return;
      }
      this.deadLetters++;
      this.onOutcome?.({ outcome: 'dead-letter', status, bytes: 0 });
      this.forget(id);
      this.log.error({ sopInstanceUid: id, status: status === null ? null : statusHex(status), message, attempts }, 'image moved to dead letters');
    } catch (e) {
      this.log.error({ sopInstanceUid: id, err: errorMessage(e) }, 'cannot move image to dead letters');
      this.forget(id);
    }
  }

  /** An image left the queue for good (dead letter). */
  protected forget(id: string): void {
    this.known.delete(id);
  }
}
