// Drains a destination's spool into a DICOMweb archive by STOW-RS (PS3.18 10.5), never losing an image.
//
// - One instance per request: `multipart/related; type="application/dicom"`, the spool file streamed from
//   disk as the single part (never loaded whole), with a Content-Length so no chunked encoding is needed.
// - The outcome comes from the response's DICOM JSON: our instance in ReferencedSOPSequence (0008,1199) is
//   delivered; in FailedSOPSequence (0008,1198) it is refused, with its FailureReason (0008,1197).
// - Refused (a failed instance, 409 Conflict, any other 4xx that is about the request): dead letter with the
//   reason, at once; the rest keep flowing. Server errors (5xx), 401/403/408/429 and network errors mean the
//   archive is not taking anything now: the image goes back to the queue and every worker backs off
//   (exponential, full jitter).
// - The same spool as a dicom destination: an image is deleted only after the archive took it (at least once).
// Logs carry new SOP instance UIDs, HTTP statuses and counts only; never credentials or dataset values.
import * as http from 'node:http';
import * as https from 'node:https';
import type { Logger } from 'pino';
import { loadTls, type DicomDestination } from './forwarder';
import { Part10Error, Spool, statusHex, type OpenedItem, type SpoolEntry } from './spool';
import { errorMessage } from '../observe/errors';
import type { ForwardEvent } from '../observe/events';
import { displayUrl, stowUrl } from './dicomweb-url';
import { Sleeper } from './sleeper';

export interface DicomwebDestination {
  name: string;
  /** DICOMweb base URL (…/dicom-web); STOW-RS goes to <url>/studies. */
  url: string;
  auth?: { bearer?: string; basic?: { username: string; password: string } };
  tls?: DicomDestination['tls'];
  /** Parallel HTTP requests (default 2). */
  maxConnections?: number;
}

export interface StowQueueOptions {
  destination: DicomwebDestination;
  spool: Spool;
  logger: Logger;
  /** Backoff while the archive is unreachable or failing (default 1 s → 60 s). */
  backoff?: { initialMs: number; maxMs: number };
  /** Whole request (upload and answer) timeout (default 120 s). */
  requestTimeoutMs?: number;
  /** Rescan the spool folder at least this often when idle (default 5 s). */
  rescanIntervalMs?: number;
  /** Backlog log period while there is a backlog (default 30 s). */
  statsIntervalMs?: number;
  /** Each image that leaves the spool (as the C-STORE forwarder reports it). */
  onOutcome?: (e: Omit<ForwardEvent, 'destination'>) => void;
}

/** What one STOW-RS request said about our instance. */
export type StowOutcome =
  | { kind: 'stored'; warning?: string }
  | { kind: 'refused'; reason: string; failureReason?: number }
  | { kind: 'retry'; reason: string };

const SQ_FAILED = '00081198';
const SQ_REFERENCED = '00081199';
const TAG_REF_SOP_INSTANCE = '00081155';
const TAG_FAILURE_REASON = '00081197';
const TAG_WARNING_REASON = '00081196';
/** Responses larger than this are not parsed (a STOW-RS answer for one instance is a few KB). */
const MAX_RESPONSE_BYTES = 4 << 20;

type JsonItem = Record<string, { vr?: string; Value?: unknown[] }>;

function sequenceItems(body: unknown, tag: string): JsonItem[] {
  const el = (body as JsonItem | undefined)?.[tag];
  return Array.isArray(el?.Value) ? (el.Value as JsonItem[]) : [];
}

function firstValue(item: JsonItem, tag: string): unknown {
  const v = item[tag]?.Value;
  return Array.isArray(v) ? v[0] : undefined;
}

/**
 * Reads a STOW-RS answer for one instance. `body` is the parsed DICOM JSON (undefined when there was none
 * or it was not JSON). Exported for tests.
 */
export function stowOutcome(httpStatus: number, body: unknown, sopInstanceUid: string): StowOutcome {
  const mine = (it: JsonItem) => String(firstValue(it, TAG_REF_SOP_INSTANCE) ?? '').trim() === sopInstanceUid;
  const failed = sequenceItems(body, SQ_FAILED).find(mine);
  if (failed) {
    const fr = firstValue(failed, TAG_FAILURE_REASON);
    const code = typeof fr === 'number' ? fr : undefined;
    return { kind: 'refused', failureReason: code, reason: `HTTP ${httpStatus}, FailureReason ${code === undefined ? 'not given' : statusHex(code)}` };
  }
  const referenced = sequenceItems(body, SQ_REFERENCED).find(mine);
  if (httpStatus >= 200 && httpStatus < 300) {
    if (referenced) {
      const wr = firstValue(referenced, TAG_WARNING_REASON);
      return { kind: 'stored', warning: typeof wr === 'number' ? `WarningReason ${statusHex(wr)}` : httpStatus === 202 ? 'HTTP 202' : undefined };
    }
    // 200 means every instance was stored (PS3.18 10.5.3); 202 without our instance listed does not say so.
    if (httpStatus === 200) return { kind: 'stored' };
    return { kind: 'refused', reason: `HTTP ${httpStatus} without this instance in ReferencedSOPSequence` };
  }
  if (httpStatus === 401 || httpStatus === 403 || httpStatus === 407 || httpStatus === 408 || httpStatus === 429 || httpStatus >= 500) {
    return { kind: 'retry', reason: `HTTP ${httpStatus}` };
  }
  if (httpStatus >= 400) return { kind: 'refused', reason: `HTTP ${httpStatus}${httpStatus === 409 ? ' Conflict' : ''}` };
  return { kind: 'retry', reason: `unexpected HTTP ${httpStatus}` };
}

interface Tracked {
  size: number;
  mtimeMs: number;
  state: 'pending' | 'inflight' | 'delayed';
}

export class StowQueue {
  private readonly dest: DicomwebDestination;
  private readonly spool: Spool;
  private readonly log: Logger;
  private readonly backoff: { initialMs: number; maxMs: number };
  private readonly requestTimeoutMs: number;
  private readonly rescanIntervalMs: number;
  private readonly statsIntervalMs: number;
  private readonly endpoint: URL;
  private readonly onOutcome: StowQueueOptions['onOutcome'];
  private agent: http.Agent | undefined;

  private known = new Map<string, Tracked>();
  private pending: string[] = [];
  private running = false;
  private stopping = false;
  private workers: Promise<void>[] = [];
  private readonly sleeper = new Sleeper();
  private scanRequested = true;
  private lastScanAt = 0;
  private scanning: Promise<void> | undefined;
  private state: 'unknown' | 'up' | 'down' = 'unknown';
  private consecutiveFailures = 0;
  private nextAttemptAt = 0;
  private deadLetters = 0;
  private statsTimer: NodeJS.Timeout | undefined;

  constructor(opts: StowQueueOptions) {
    this.dest = opts.destination;
    this.spool = opts.spool;
    this.log = opts.logger.child({ destination: opts.destination.name });
    this.backoff = opts.backoff ?? { initialMs: 1000, maxMs: 60000 };
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 120_000;
    this.rescanIntervalMs = opts.rescanIntervalMs ?? 5000;
    this.statsIntervalMs = opts.statsIntervalMs ?? 30_000;
    this.endpoint = stowUrl(opts.destination.url);
    this.onOutcome = opts.onOutcome;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.stopping = false;
    const n = Math.max(1, this.dest.maxConnections ?? 2);
    const agentOpts = { keepAlive: true, maxSockets: n };
    this.agent = this.endpoint.protocol === 'https:'
      ? new https.Agent({ ...agentOpts, ...(this.dest.tls ? loadTls(this.dest.tls) : {}) })
      : new http.Agent(agentOpts);
    void this.spool.deadLetterCount().then((c) => (this.deadLetters = c), () => undefined);
    for (let i = 0; i < n; i++) {
      this.workers.push(this.worker().catch((e: unknown) => this.log.error({ err: errorMessage(e) }, 'STOW-RS worker crashed')));
    }
    this.statsTimer = setInterval(() => this.logBacklog('periodic'), this.statsIntervalMs);
    this.statsTimer.unref();
  }

  /** A new image was spooled (its entry queues it at once; without one the folder is rescanned). */
  notify(entry?: SpoolEntry): void {
    if (entry) {
      const k = this.known.get(entry.id);
      if (!k) {
        this.known.set(entry.id, { size: entry.size, mtimeMs: entry.mtimeMs, state: 'pending' });
        this.pending.push(entry.id);
      } else if (k.state !== 'pending') this.scanRequested = true;
    } else this.scanRequested = true;
    this.wakeAll();
  }

  /** Let each request in flight finish, then stop. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.stopping = true;
    this.wakeAll();
    await Promise.all(this.workers);
    this.workers = [];
    this.running = false;
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.agent?.destroy();
  }

  stats(): { backlog: number; oldestAgeMs: number; inFlight: number; deadLetters: number } {
    const now = Date.now();
    let inFlight = 0;
    let oldest = now;
    for (const k of this.known.values()) {
      if (k.state === 'inflight') inFlight++;
      if (k.mtimeMs < oldest) oldest = k.mtimeMs;
    }
    return { backlog: this.known.size, oldestAgeMs: now - oldest, inFlight, deadLetters: this.deadLetters };
  }

  get destinationState(): 'unknown' | 'up' | 'down' {
    return this.state;
  }

  // ---------------------------------------------------------------- scheduling

  private wakeAll(): void {
    this.sleeper.wakeAll();
  }

  private sleep(ms: number): Promise<void> {
    return this.stopping ? Promise.resolve() : this.sleeper.sleep(ms);
  }


  private scan(): Promise<void> {
    if (!this.scanning) {
      this.scanRequested = false;
      this.lastScanAt = Date.now();
      this.scanning = (async () => {
        const fresh: SpoolEntry[] = [];
        for (const id of await this.spool.listIds()) {
          if (this.known.has(id)) continue;
          const e = await this.spool.statEntry(id);
          if (e && !this.known.has(id)) fresh.push(e);
        }
        fresh.sort((a, b) => a.mtimeMs - b.mtimeMs);
        for (const e of fresh) {
          this.known.set(e.id, { size: e.size, mtimeMs: e.mtimeMs, state: 'pending' });
          this.pending.push(e.id);
        }
      })().finally(() => (this.scanning = undefined));
    }
    return this.scanning;
  }

  private async claim(): Promise<string | undefined> {
    if (this.scanRequested || (this.pending.length === 0 && Date.now() - this.lastScanAt >= this.rescanIntervalMs)) await this.scan();
    while (this.pending.length) {
      const id = this.pending.shift()!;
      const k = this.known.get(id);
      if (!k || k.state !== 'pending') continue;
      k.state = 'inflight';
      return id;
    }
    return undefined;
  }

  private requeue(id: string): void {
    const k = this.known.get(id);
    if (!k) return;
    k.state = 'pending';
    this.pending.unshift(id);
  }

  private markUp(): void {
    this.consecutiveFailures = 0;
    this.nextAttemptAt = 0;
    if (this.state !== 'up') {
      this.state = 'up';
      this.logBacklog('destination up');
    }
  }

  private markDown(reason: string): void {
    this.consecutiveFailures++;
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(this.consecutiveFailures, 30));
    const delay = Math.random() * cap; // full jitter
    this.nextAttemptAt = Math.max(this.nextAttemptAt, Date.now() + delay);
    if (this.state !== 'down') {
      this.state = 'down';
      this.logBacklog('destination down', { err: reason });
    } else this.log.debug({ err: reason, retryInMs: Math.round(delay) }, 'destination still down');
  }

  private logBacklog(event: string, extra: Record<string, unknown> = {}): void {
    const s = this.stats();
    if (event === 'periodic' && s.backlog === 0) return;
    this.log[event === 'destination down' ? 'warn' : 'info'](
      { event, state: this.state, url: displayUrl(this.dest.url), ...s, ...extra },
      `STOW-RS ${this.dest.name}: ${event}, backlog ${s.backlog}`,
    );
  }

  // ---------------------------------------------------------------- the worker

  private async worker(): Promise<void> {
    while (!this.stopping) {
      const wait = this.nextAttemptAt - Date.now();
      if (wait > 0) {
        await this.sleep(wait);
        continue;
      }
      const id = await this.claim();
      if (id === undefined) {
        await this.sleep(this.rescanIntervalMs);
        if (!this.stopping) this.scanRequested = true;
        continue;
      }
      let item: OpenedItem | undefined;
      try {
        item = await this.spool.open(id);
      } catch (e) {
        if (e instanceof Part10Error) await this.toDeadLetter(id, `unreadable spool file: ${e.message}`);
        else {
          this.log.error({ sopInstanceUid: id, err: errorMessage(e) }, 'cannot open spool file; will retry');
          this.requeue(id);
          await this.sleep(this.backoff.maxMs);
        }
        continue;
      }
      if (!item) {
        this.known.delete(id);
        continue;
      }
      let outcome: StowOutcome;
      try {
        outcome = await this.post(item);
      } catch (e) {
        outcome = { kind: 'retry', reason: errorMessage(e) };
      }
      if (outcome.kind === 'stored') {
        this.markUp();
        if (outcome.warning) this.log.warn({ sopInstanceUid: item.sopInstanceUid, warning: outcome.warning }, 'stored with warning');
        else this.log.debug({ sopInstanceUid: item.sopInstanceUid }, 'stored');
        try {
          if (await this.spool.ack(item)) {
            this.known.delete(id);
            this.onOutcome?.({ outcome: 'forwarded', status: 0, bytes: item.size });
          } else this.requeue(id); // replaced by a newer copy meanwhile: send that one too
        } catch (e) {
          this.log.error({ sopInstanceUid: item.sopInstanceUid, err: errorMessage(e) }, 'cannot delete delivered spool file; it will be sent again');
          this.requeue(id);
        }
      } else if (outcome.kind === 'refused') {
        this.markUp(); // the archive answered: it is up
        await this.spool.release(item);
        await this.toDeadLetter(id, outcome.reason, outcome.failureReason ?? null);
      } else {
        await this.spool.release(item);
        this.requeue(id);
        this.markDown(outcome.reason);
      }
    }
  }

  /** One STOW-RS request carrying the spool file as its only part. */
  private post(item: OpenedItem): Promise<StowOutcome> {
    const boundary = `deid-${item.ino.toString(36)}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    const head = Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\nContent-Length: ${item.size}\r\n\r\n`, 'latin1');
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
    const headers: http.OutgoingHttpHeaders = {
      'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
      'Content-Length': head.length + item.size + tail.length,
      Accept: 'application/dicom+json, application/json',
    };
    const auth = this.dest.auth;
    if (auth?.bearer) headers.Authorization = `Bearer ${auth.bearer}`;
    else if (auth?.basic) headers.Authorization = `Basic ${Buffer.from(`${auth.basic.username}:${auth.basic.password}`).toString('base64')}`;
    const lib = this.endpoint.protocol === 'https:' ? https : http;
    return new Promise<StowOutcome>((resolve, reject) => {
      const req = lib.request(this.endpoint, { method: 'POST', headers, agent: this.agent, timeout: this.requestTimeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => {
          n += c.length;
          if (n <= MAX_RESPONSE_BYTES) chunks.push(c);
        });
        res.on('error', reject);
        res.on('end', () => {
          let body: unknown;
          const type = String(res.headers['content-type'] ?? '');
          if (/json/i.test(type) && n <= MAX_RESPONSE_BYTES) {
            try {
              body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              body = undefined;
            }
          }
          resolve(stowOutcome(res.statusCode ?? 0, body, item.commandSopInstanceUid));
        });
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.requestTimeoutMs} ms`)));
      req.on('error', reject);
      req.write(head);
      const file = item.fh.createReadStream({ start: 0, end: Math.max(0, item.size - 1), autoClose: false });
      file.on('error', (e) => req.destroy(e));
      file.on('end', () => req.end(tail));
      file.pipe(req, { end: false });
    });
  }

  private async toDeadLetter(id: string, message: string, status: number | null = null): Promise<void> {
    try {
      await this.spool.deadLetter(id, { status, message, attempts: 1, sopInstanceUid: id });
      this.deadLetters++;
      this.onOutcome?.({ outcome: 'dead-letter', status, bytes: 0 });
      this.log.error({ sopInstanceUid: id, message }, 'image moved to dead letters');
    } catch (e) {
      this.log.error({ sopInstanceUid: id, err: errorMessage(e) }, 'cannot move image to dead letters');
    }
    this.known.delete(id);
  }
}
