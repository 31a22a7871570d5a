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
// The queue itself (spool entries, scans, backoff, worker restarts, dead letters) is SpoolDrainer's.
import * as http from 'node:http';
import * as https from 'node:https';
import { loadTls, type DicomDestination } from './forwarder';
import { statusHex, type OpenedItem } from './spool';
import { errorMessage } from '../observe/errors';
import { displayUrl, stowUrl } from './dicomweb-url';
import { SpoolDrainer, type SpoolDrainerOptions } from './spool-drainer';

export interface DicomwebDestination {
  name: string;
  /** DICOMweb base URL (…/dicom-web); STOW-RS goes to <url>/studies. */
  url: string;
  auth?: { bearer?: string; basic?: { username: string; password: string } };
  tls?: DicomDestination['tls'];
  /** Parallel HTTP requests (default 2). */
  maxConnections?: number;
}

export interface StowQueueOptions extends SpoolDrainerOptions {
  destination: DicomwebDestination;
  /** Whole request (upload and answer) timeout (default 120 s). */
  requestTimeoutMs?: number;
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

export class StowQueue extends SpoolDrainer {
  protected readonly kind = 'STOW-RS';
  private readonly dest: DicomwebDestination;
  private readonly requestTimeoutMs: number;
  private readonly endpoint: URL;
  private agent: http.Agent | undefined;

  constructor(opts: StowQueueOptions) {
    super(opts, opts.destination.name);
    this.dest = opts.destination;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 120_000;
    this.endpoint = stowUrl(opts.destination.url);
  }

  protected workerCount(): number {
    return this.dest.maxConnections ?? 2;
  }

  protected override onStart(): void {
    const agentOpts = { keepAlive: true, maxSockets: Math.max(1, this.workerCount()) };
    this.agent = this.endpoint.protocol === 'https:'
      ? new https.Agent({ ...agentOpts, ...(this.dest.tls ? loadTls(this.dest.tls) : {}) })
      : new http.Agent(agentOpts);
  }

  /** Destroying the agent's sockets ends the requests in flight; their images stay spooled. */
  protected override abortInFlight(): void {
    this.agent?.destroy();
  }

  protected override onStopped(): void {
    this.agent?.destroy();
  }

  protected override backlogLogFields(): Record<string, unknown> {
    return { url: displayUrl(this.dest.url) };
  }

  /** The archive answered: it is up, and the backoff starts again from the beginning. */
  private answered(): void {
    this.resetBackoff();
    this.markUp();
  }

  // ---------------------------------------------------------------- the worker

  protected async worker(): Promise<void> {
    while (!this.stopping) {
      const wait = this.nextAttemptAt - Date.now();
      if (wait > 0) {
        await this.sleep(wait);
        continue;
      }
      const [item] = await this.claim(1);
      if (!item) {
        if (this.pending.length) continue; // the one claimed could not be opened; try the next
        const due = this.promoteDue();
        await this.sleep(Math.min(this.rescanIntervalMs, due ? due - Date.now() : Infinity));
        if (!this.stopping) this.scanRequested = true;
        continue;
      }
      let outcome: StowOutcome;
      try {
        outcome = await this.post(item);
      } catch (e) {
        outcome = { kind: 'retry', reason: errorMessage(e) };
      }
      if (outcome.kind === 'stored') {
        this.answered();
        if (outcome.warning) this.log.warn({ sopInstanceUid: item.sopInstanceUid, warning: outcome.warning }, 'stored with warning');
        else this.log.debug({ sopInstanceUid: item.sopInstanceUid }, 'stored');
        await this.delivered(item, 0);
      } else if (outcome.kind === 'refused') {
        this.answered();
        await this.spool.release(item);
        await this.toDeadLetter(item.id, outcome.failureReason ?? null, outcome.reason, 1, item);
      } else {
        await this.spool.release(item);
        this.unclaim(item.id, true);
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
}
