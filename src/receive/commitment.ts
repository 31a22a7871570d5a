// Storage Commitment Push Model SCP (PS3.4 Annex J): the N-ACTION-RQ names original SOP instances; each
// is reported committed once it is durable in every destination of its study (see commitment-index.ts),
// failed when it never arrived or became a dead letter. A request with instances still in a spool waits
// until they settle, up to timeLimitMs; then what is still pending is reported failed.
//
// Pending requests are kept on disk, encrypted (AES-256-GCM, key derived from the salt), so that they are
// answered after a restart without the original UIDs lying on disk in clear. The N-EVENT-REPORT goes back on
// the requesting association while it is open (PS3.4 J.3.3.1.2 allows it; the SCU may release at any time);
// when that association is gone, or the report is not acknowledged there, it goes on a new association to
// the station's Commitment address. A request leaves the disk only once a report was acknowledged.
import { createCipheriv, createDecipheriv, randomBytes } from 'crypto';
import { mkdirSync, readdirSync, readFileSync, unlinkSync } from 'fs';
import { join } from 'path';
import type { Logger } from 'pino';
import { deriveKey } from '../deid/plan';
import { readDataset } from '../dicom/read';
import { elementString, findElement, makeElement, type Element } from '../dicom/dataset';
import { elementChunks } from '../dicom/write';
import { transferSyntaxInfo } from '../dicom/uids';
import { writeFileAtomicSync } from '../deliver/folder';
import { CommitmentIndex, FAILURE } from '../deliver/commitment-index';
import { STORAGE_COMMITMENT_SOP_CLASS, STORAGE_COMMITMENT_SOP_INSTANCE } from './syntaxes';
import type { CommitmentReplyChannel, CommitmentRequest } from './types';
import { errorMessage } from '../observe/errors';

export interface ReportAddress { aeTitle: string; host: string; port: number }

export interface CommitmentServiceOptions {
  index: CommitmentIndex;
  stateDir: string;
  salt: string;
  logger: Logger;
  /** Our AE title (calling AE of the report association). */
  aeTitle: string;
  /** Where a station's reports go, by the calling AE title of its request. */
  reportAddress(callingAe: string): ReportAddress | undefined;
  /** Instances still spooled after this are reported failed (default 1 h). */
  timeLimitMs?: number;
  /** How often pending requests are looked at (default 1 s). */
  pollMs?: number;
  /** Try the requesting association first, while it is open (default true). */
  sameAssociation?: boolean;
  /** How long an N-EVENT-REPORT-RSP is awaited on the requesting association (default 30 s). */
  sameAssociationTimeoutMs?: number;
}

interface PendingRequest {
  transactionUid: string;
  callingAe: string;
  /** [SOP class, original SOP instance] */
  items: Array<[string, string]>;
  deadline: number;
  /** Report could not be sent before: next attempt not before. */
  retryAt?: number;
}

const STATUS_SUCCESS = 0x0000;
const STATUS_INVALID_ARGUMENT = 0x0115;
const STATUS_NO_SUCH_ACTION = 0x0123;
/** Event Type IDs (PS3.4 J.3.3): every instance committed / some failed. */
const EVENT_SUCCESS = 1;
const EVENT_FAILURES_EXIST = 2;

type Committed = Array<[string, string]>;
type Failed = Array<[string, string, number]>;

function uiElement(tag: number, uid: string): Element {
  return makeElement(tag, 'UI', Buffer.from(uid.length % 2 ? `${uid}\0` : uid, 'latin1'));
}

function usElement(tag: number, v: number, littleEndian: boolean): Element {
  const b = Buffer.alloc(2);
  if (littleEndian) b.writeUInt16LE(v);
  else b.writeUInt16BE(v);
  return makeElement(tag, 'US', b);
}

/** The Event Information of a Storage Commitment Result (PS3.4 J.3.3, Table J.3-2) in a transfer syntax. */
export function eventInformation(transactionUid: string, ok: Committed, failed: Failed, transferSyntaxUid: string): Buffer {
  const { syntax } = transferSyntaxInfo(transferSyntaxUid);
  const sequence = (tag: number, items: Element[][]): Element => makeElement(tag, 'SQ', null, false, items.map((elements) => ({ elements, undefinedLength: false })));
  const elements: Element[] = [uiElement(0x00081195, transactionUid)];
  if (failed.length) {
    elements.push(sequence(0x00081198, failed.map(([c, i, f]) => [uiElement(0x00081150, c), uiElement(0x00081155, i), usElement(0x00081197, f, syntax.littleEndian)])));
  }
  if (ok.length) elements.push(sequence(0x00081199, ok.map(([c, i]) => [uiElement(0x00081150, c), uiElement(0x00081155, i)])));
  return Buffer.concat(elementChunks(elements, syntax));
}

function seqItems(el: Element | undefined): Element[][] {
  return (el?.items ?? []).map((i) => i.elements);
}

export class CommitmentService {
  private readonly dir: string;
  private readonly key: Buffer;
  private readonly log: Logger;
  private readonly pending = new Map<string, PendingRequest>();
  /** The associations requests came on (in memory only: a request resumed after a restart has none). */
  private readonly channels = new Map<string, { channel: CommitmentReplyChannel; transferSyntaxUid: string }>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  /** Requests whose report is being sent. */
  private readonly reporting = new Set<string>();

  constructor(private readonly opts: CommitmentServiceOptions) {
    this.dir = join(opts.stateDir, 'commitment', 'requests');
    this.key = deriveKey(opts.salt, 'commitment-request');
    this.log = opts.logger.child({ service: 'storage-commitment' });
  }

  /** Loads the requests an earlier run left unanswered, and starts looking at them. */
  start(): void {
    mkdirSync(this.dir, { recursive: true });
    for (const f of readdirSync(this.dir)) {
      if (!f.endsWith('.req')) continue;
      try {
        this.pending.set(f, this.decrypt(readFileSync(join(this.dir, f))));
      } catch (e) {
        this.log.error({ file: f, err: errorMessage(e) }, 'unreadable pending commitment request (another salt?); left in place');
      }
    }
    if (this.pending.size) this.log.info({ requests: this.pending.size }, 'resuming pending storage commitment requests');
    this.timer = setInterval(() => void this.poll(), this.opts.pollMs ?? 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The N-ACTION-RQ handler: validates and keeps the request; the answer (N-ACTION-RSP status) is immediate. */
  async handle(req: CommitmentRequest): Promise<number> {
    if (req.actionTypeId !== 1) return STATUS_NO_SUCH_ACTION;
    let parsed: PendingRequest;
    try {
      const ds = readDataset(req.dataset, req.transferSyntaxUid).dataset;
      const transactionUid = elementString(findElement(ds, 0x00081195))?.trim();
      const items = seqItems(findElement(ds, 0x00081199)).map((e): [string, string] => [
        elementString(findElement(e, 0x00081150))?.trim() ?? '',
        elementString(findElement(e, 0x00081155))?.trim() ?? '',
      ]);
      if (!transactionUid || !items.length || items.some(([c, i]) => !c || !i)) return STATUS_INVALID_ARGUMENT;
      parsed = { transactionUid, callingAe: req.callingAeTitle, items, deadline: Date.now() + (this.opts.timeLimitMs ?? 3_600_000) };
    } catch {
      return STATUS_INVALID_ARGUMENT;
    }
    const name = `${Date.now()}-${randomBytes(6).toString('hex')}.req`;
    mkdirSync(this.dir, { recursive: true });
    writeFileAtomicSync(join(this.dir, name), [this.encrypt(parsed)]);
    this.pending.set(name, parsed);
    if (req.sameAssociation && this.opts.sameAssociation !== false) this.channels.set(name, { channel: req.sameAssociation, transferSyntaxUid: req.transferSyntaxUid });
    this.log.info({ associationId: req.associationId, callingAe: req.callingAeTitle, instances: parsed.items.length }, 'storage commitment requested');
    setImmediate(() => void this.poll());
    return STATUS_SUCCESS;
  }

  private async poll(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const now = Date.now();
      // Entries of instances answered just before the request may still be on their way to disk.
      await this.opts.index.settled();
      for (const [name, r] of [...this.pending]) {
        if (this.reporting.has(name) || (r.retryAt && r.retryAt > now)) continue;
        const states = this.opts.index.statesOf(r.items.map(([, uid]) => uid));
        const waiting = states.some((s) => s.state === 'pending');
        if (waiting && now < r.deadline) continue;
        const ok: Committed = [];
        const failed: Failed = [];
        r.items.forEach(([cls, uid], i) => {
          const s = states[i];
          if (s.state === 'committed') ok.push([cls, uid]);
          else failed.push([cls, uid, s.state === 'failed' ? s.reason : FAILURE.ProcessingFailure]);
        });
        // Each report on its own: a modality slow to acknowledge (up to the 30 s wait on its association)
        // or a report address that is down holds up only its own report, not the others'.
        this.reporting.add(name);
        void this.settle(name, r, ok, failed, waiting).finally(() => this.reporting.delete(name));
      }
    } finally {
      this.busy = false;
    }
  }

  private async settle(name: string, r: PendingRequest, ok: Committed, failed: Failed, timedOut: boolean): Promise<void> {
    try {
      // What the report claims committed must stay so: its index entries are made durable first.
      await this.opts.index.makeDurable(ok.map(([, uid]) => uid));
      const via = await this.report(name, r, ok, failed);
      this.pending.delete(name);
      try {
        unlinkSync(join(this.dir, name));
      } catch {
        /* gone */
      }
      this.log.info({ callingAe: r.callingAe, committed: ok.length, failed: failed.length, timedOut, association: via }, 'storage commitment reported');
    } catch (e) {
      r.retryAt = Date.now() + 5000;
      this.log.warn({ callingAe: r.callingAe, err: errorMessage(e) }, 'storage commitment report not delivered; will retry');
    }
  }

  /** Sends the result: on the requesting association if it is open and acknowledges it, else on a new one. */
  private async report(name: string, r: PendingRequest, ok: Committed, failed: Failed): Promise<'same' | 'new'> {
    const same = this.channels.get(name);
    // One attempt on the requesting association: after that, the new-association path (which retries).
    this.channels.delete(name);
    if (same?.channel.open) {
      try {
        const data = eventInformation(r.transactionUid, ok, failed, same.transferSyntaxUid);
        const status = await same.channel.eventReport(failed.length ? EVENT_FAILURES_EXIST : EVENT_SUCCESS, data, this.opts.sameAssociationTimeoutMs ?? 30_000);
        if (status === STATUS_SUCCESS) return 'same';
        this.log.warn({ callingAe: r.callingAe, status: `0x${status.toString(16).padStart(4, '0')}` }, 'storage commitment report refused on the requesting association; sending it on a new association');
      } catch (e) {
        this.log.info({ callingAe: r.callingAe, reason: errorMessage(e) }, 'storage commitment report not acknowledged on the requesting association; sending it on a new association');
      }
    }
    await this.reportOnNewAssociation(r, ok, failed);
    return 'new';
  }

  /** N-EVENT-REPORT-RQ on a new association to the station's Commitment address (we are SCP of the SOP class). */
  private reportOnNewAssociation(r: PendingRequest, ok: Committed, failed: Failed): Promise<void> {
    const to = this.opts.reportAddress(r.callingAe);
    if (!to) return Promise.reject(new Error(`no Commitment address configured for the station of ${r.callingAe}`));
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const dimse = require('dcmjs-dimse') as typeof import('dcmjs-dimse');
    const { Client, Dataset, requests } = dimse;
    const body: Record<string, unknown> = { TransactionUID: r.transactionUid };
    if (ok.length) body.ReferencedSOPSequence = ok.map(([c, i]) => ({ ReferencedSOPClassUID: c, ReferencedSOPInstanceUID: i }));
    if (failed.length) body.FailedSOPSequence = failed.map(([c, i, f]) => ({ ReferencedSOPClassUID: c, ReferencedSOPInstanceUID: i, FailureReason: f }));
    const request = new requests.NEventReportRequest(STORAGE_COMMITMENT_SOP_CLASS, STORAGE_COMMITMENT_SOP_INSTANCE, failed.length ? 2 : 1);
    request.setDataset(new Dataset(body, '1.2.840.10008.1.2'));
    return new Promise<void>((resolve, reject) => {
      const client = new Client();
      let status: number | undefined;
      let err: Error | undefined;
      request.on('response', (rsp: { getStatus(): number }) => (status = rsp.getStatus()));
      client.on('associationRejected', () => (err = new Error('association rejected')));
      client.on('networkError', (e: Error) => (err = new Error(`network error: ${e.message}`)));
      client.on('closed', () => {
        if (status === STATUS_SUCCESS) resolve();
        else reject(err ?? new Error(status === undefined ? 'no N-EVENT-REPORT-RSP' : `N-EVENT-REPORT-RSP status 0x${status.toString(16)}`));
      });
      client.addRequest(request);
      client.send(to.host, to.port, this.opts.aeTitle, to.aeTitle, { connectTimeout: 10_000, associationTimeout: 30_000, pduTimeout: 30_000 });
    });
  }

  private encrypt(r: PendingRequest): Buffer {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    const body = Buffer.concat([c.update(JSON.stringify(r), 'utf8'), c.final()]);
    return Buffer.concat([iv, c.getAuthTag(), body]);
  }

  private decrypt(b: Buffer): PendingRequest {
    const d = createDecipheriv('aes-256-gcm', this.key, b.subarray(0, 12));
    d.setAuthTag(b.subarray(12, 28));
    return JSON.parse(Buffer.concat([d.update(b.subarray(28)), d.final()]).toString('utf8')) as PendingRequest;
  }
}
