// Storage SCP (C-ECHO, C-STORE): association negotiation by dcmjs-dimse's Scp, P-DATA by our own code.
//
// How it uses dcmjs-dimse (pinned to an exact version; see the notes at the end of this file for the
// internals relied on, and test/dimse-internals.test.ts, which names any that an upgrade removes):
// - We own the net.Server (bound to opts.host) and construct one Scp subclass per socket.
// - The library's PDU accumulator (Buffer.concat per socket chunk) is replaced with PduFramer. Association
//   PDUs (A-ASSOCIATE, A-RELEASE, A-ABORT) go to the library; P-DATA-TF PDUs never reach it: the DimseGuard
//   checks them, and PDataReceiver (pdata.ts) hands each C-STORE dataset fragment, as it arrives, to a
//   DatasetSink (opts.onStoreStream, or a sink collecting the dataset for opts.onStore) and answers C-ECHO.
//   The library's per-message work (a naturalized dcmjs command Dataset, a log line built with toString() even
//   with logging off, responses encoded through dcmjs) was most of our receive CPU per image.
// - The library's timers (socket timeout 180 s, 60 s PDU timeout that would abort an association while our
//   handler is still writing a big image) are disabled; this module has its own association-request and idle
//   timeouts that never fire while a C-STORE is being processed.
import * as net from 'net';
import { createListeningServer } from './tls';
import { STORAGE_COMMITMENT_SOP_CLASS, STORAGE_COMMITMENT_SOP_INSTANCE } from './syntaxes';
import { Scp, Implementation, constants, association as dimseAssociation } from 'dcmjs-dimse';
import type { Logger } from 'pino';
import { encodeCommandPData, encodeCStoreRspCommand, encodeNEventReportRqCommand, encodePData, encodeResponseCommand } from './dimse';
import { COMMAND, DimseGuard, GuardStep, type CommandInfo } from './dimse-guard';
import { PDataReceiver, type PDataHandler } from './pdata';
import { AssociationSlots, BufferedDatasets, DEFAULT_NETWORK_LIMITS, MAX_PDU_BYTES, MIN_PDU_BYTES, NetworkLimits, maxConnections } from './limits';
import { PDU_TYPE, PduFramer, PduFramingError } from './framer';
import { checkAssociateRq, associateRjPdu, abortPdu } from './associate-rq';
import { countRefusal, newScpStats, snapshotStats, RefusalKind, ScpStats } from './stats';
import { chooseTransferSyntax, isAcceptedAbstractSyntax, VERIFICATION_SOP_CLASS } from './syntaxes';
import type { CommitmentReplyChannel, DatasetSink, RunningScp, ScpOptions, StoreHandler, StoreStart } from './types';
import { isValidUid, TS } from '../dicom/uids';
import { errorMessage } from '../observe/errors';

type Association = dimseAssociation.Association;

const { PresentationContextResult, RejectResult, RejectSource, RejectReason, AbortSource, AbortReason } = constants;

export const STATUS_SUCCESS = 0x0000;
export const STATUS_PROCESSING_FAILURE = 0x0110;
export const STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122;
export const STATUS_OUT_OF_RESOURCES = 0xa700;
export const STATUS_UNRECOGNIZED_OPERATION = 0x0211;
/** N-ACTION failures (PS3.7 Annex C): the requested SOP instance is not one we know / is no valid UID, the
 * requested SOP class is not provided, the action type is not defined for the SOP class. */
const STATUS_NO_SUCH_SOP_INSTANCE = 0x0112;
const STATUS_INVALID_SOP_INSTANCE = 0x0117;
const STATUS_NO_SUCH_SOP_CLASS = 0x0118;
const STATUS_NO_SUCH_ACTION = 0x0123;
/** Action Type ID of "Request Storage Commitment" (PS3.4 J.3.2). */
const ACTION_REQUEST_STORAGE_COMMITMENT = 1;
/** Transfer syntaxes for the storage commitment context (its messages carry small non-pixel datasets). */
const COMMITMENT_TRANSFER_SYNTAXES: ReadonlySet<string> = new Set([TS.ExplicitLE, TS.ImplicitLE]);

const DEFAULT_CLOSE_GRACE_MS = 30_000;
/** After we end() a socket, destroy it if the peer has not closed within this time. */
const LINGER_MS = 2_000;
/** During close(): an association idle this long after its last answer is aborted. */
const CLOSE_QUIET_MS = 200;
/** Largest non-P-DATA PDU we accept (an A-ASSOCIATE-RQ with 128 contexts and many syntaxes is far smaller). */
const MAX_CONTROL_PDU = 1 << 20;

/** A warning (0x0001, 0xB000-0xBFFF) still means the instance was stored. */
function isStoredStatus(status: number): boolean {
  return status === 0x0000 || status === 0x0001 || (status >= 0xb000 && status <= 0xbfff);
}

type AssocResult = 'released' | 'aborted-by-peer' | 'aborted' | 'rejected' | 'closed' | 'error' | 'timeout';

/** Pause the socket while a dataset sink has more than this many bytes waiting to be written. */
const SINK_HIGH_WATER = 8 * 1024 * 1024;
const SINK_LOW_WATER = 2 * 1024 * 1024;

/** Collects a whole C-STORE dataset for opts.onStore (used when no onStoreStream is given). */
class CollectingSink implements DatasetSink {
  private chunks: Buffer[] = [];
  private length = 0;
  backlogBytes = 0;
  readonly holdsWholeDataset = true;
  constructor(private readonly start: StoreStart, private readonly onStore: StoreHandler) {}
  write(fragment: Buffer): void {
    this.chunks.push(fragment);
    this.length += fragment.length;
  }
  whenBelow(): Promise<void> {
    return Promise.resolve();
  }
  end(): Promise<number> {
    const dataset = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.length);
    this.chunks = [];
    return this.onStore({ ...this.start, dataset });
  }
  abort(): void {
    this.chunks = [];
  }
}

interface ContextInfo {
  accepted: boolean;
  abstractSyntaxUid: string;
  transferSyntaxUid: string;
}

interface ServerState {
  opts: ScpOptions;
  log: Logger;
  maxPdu: number;
  limits: NetworkLimits;
  slots: AssociationSlots;
  connections: Set<Connection>;
  /** Datasets held in memory whole, over this endpoint's associations and those of endpoints sharing it. */
  buffered: BufferedDatasets;
  closing: boolean;
  nextAssociationId: number;
  /** C-STOREs handed to onStore and not yet settled, over all connections. */
  inFlight: number;
  onSettled: Array<() => void>;
  stats: ScpStats;
}

/** Counts a refusal and tells the application (metrics). */
function countRefused(state: ServerState, kind: RefusalKind, callingAe: string): void {
  countRefusal(state.stats, kind);
  try {
    state.opts.onRefused?.({ kind, callingAe });
  } catch (err) {
    state.log.warn({ err: errorMessage(err) }, 'onRefused observer failed');
  }
}

/** Internals of dcmjs-dimse's Network we touch; all optional so a changed library degrades gracefully. */
interface NetworkInternals {
  _processPdu?: (pdu: Buffer) => Promise<void>;
  lastPduTime?: number;
  timeoutIntervalId?: ReturnType<typeof setInterval>;
  association?: Association;
}

class Connection {
  readonly id: number;
  readonly peerAddress: string;
  readonly connectedAt = Date.now();
  lastActivity = Date.now();
  callingAe = '';
  calledAe = '';
  /** The peer's maximum receive PDU length (0 = unlimited), for our responses. */
  peerMaxPdu = 0;
  associated = false;
  associatedAt = 0;
  /** Holds an association slot (released when the connection closes). */
  holdsSlot = false;
  /** Set once the association is accepted. */
  dimseGuard: DimseGuard | undefined;
  /** Presentation contexts as negotiated, by id. */
  contexts = new Map<number, ContextInfo>();
  pdata!: PDataReceiver;
  unrecognizedLogged = false;
  result: AssocResult | undefined;
  detail: string | undefined;
  images = 0;
  failed = 0;
  bytes = 0;
  inFlight = 0;
  releasePending = false;
  /** The peer sent A-RELEASE-RQ: it may send no more P-DATA, so nothing we send can be answered. */
  releaseRequested = false;
  closed = false;
  /** N-EVENT-REPORT-RQs we sent, by Message ID, until their RSP (a timed-out one stays, its late RSP ignored). */
  readonly awaitedReports = new Map<number, { settle?: (status: number | Error) => void }>();
  private nextMessageId = 1;
  private lingerTimer: ReturnType<typeof setTimeout> | undefined;
  scp!: StorageScp;

  constructor(
    readonly server: ServerState,
    readonly socket: net.Socket,
  ) {
    this.id = server.nextAssociationId++;
    this.peerAddress = socket.remoteAddress ?? 'unknown';
  }

  get writable(): boolean {
    return !this.closed && !this.socket.destroyed && this.socket.writable;
  }

  /** Bytes of the dataset being received if it is held in memory whole (limits.maxBufferedBytesTotal). */
  get bufferedBytes(): number {
    return this.pdata?.receiving?.holdsWholeDataset ? (this.dimseGuard?.datasetBytes ?? 0) : 0;
  }

  /** Whether an N-EVENT-REPORT sent now could still be answered on this association. */
  get takesReports(): boolean {
    return this.associated && this.result === undefined && !this.releaseRequested && this.writable;
  }

  /** Sends an N-EVENT-REPORT-RQ with its dataset on pcId; resolves to the RSP status (see CommitmentReplyChannel). */
  sendEventReport(pcId: number, p: { sopClassUid: string; sopInstanceUid: string; eventTypeId: number }, dataset: Buffer, timeoutMs: number): Promise<number> {
    if (!this.takesReports) return Promise.reject(new Error('the association is no longer open'));
    const messageId = this.nextMessageId;
    this.nextMessageId = (this.nextMessageId % 0xffff) + 1;
    return new Promise<number>((resolve, reject) => {
      const entry: { settle?: (status: number | Error) => void } = {};
      const timer = setTimeout(() => entry.settle?.(new Error(`no N-EVENT-REPORT-RSP within ${timeoutMs} ms`)), timeoutMs);
      timer.unref();
      entry.settle = (v) => {
        clearTimeout(timer);
        entry.settle = undefined;
        if (v instanceof Error) reject(v);
        else {
          this.awaitedReports.delete(messageId);
          resolve(v);
        }
      };
      this.awaitedReports.set(messageId, entry);
      const command = encodeNEventReportRqCommand({ messageId, ...p });
      this.socket.write(Buffer.concat([encodeCommandPData(pcId, command, this.peerMaxPdu), encodePData(pcId, dataset, false, this.peerMaxPdu)]));
    });
  }

  /** The reports still waiting for an answer will not get one on this association. */
  failAwaitedReports(why: string): void {
    for (const entry of this.awaitedReports.values()) entry.settle?.(new Error(why));
  }

  setResult(r: AssocResult, detail?: string): void {
    if (this.result === undefined) {
      this.result = r;
      this.detail = detail;
    }
  }

  /** Half-close after pending writes are flushed; destroy if the peer lingers. */
  endSocket(): void {
    if (this.socket.destroyed) return;
    this.socket.end();
    if (!this.lingerTimer) {
      this.lingerTimer = setTimeout(() => this.socket.destroy(), LINGER_MS);
      this.lingerTimer.unref();
    }
  }

  /** Ends the association because of something the peer did (or something that failed while serving it):
   * logged once, counted, and answered with the given PDU (or an A-ABORT when associated), then closed. */
  refuse(kind: RefusalKind, detail: string, answer?: Buffer, fields?: Record<string, unknown>): void {
    if (this.result !== undefined) return;
    countRefused(this.server, kind, this.callingAe);
    this.server.log.warn({ associationId: this.id, callingAe: this.callingAe || undefined, peer: this.peerAddress, refusal: kind, detail, ...fields }, 'association refused or ended by us');
    const rejected = answer !== undefined && answer[0] === 0x03;
    if (rejected) this.server.stats.associationsRejected++;
    const timedOut = kind === 'idle-timeout' || kind === 'association-time-limit' || kind === 'association-request-timeout';
    this.setResult(rejected ? 'rejected' : timedOut ? 'timeout' : 'aborted', kind);
    if (answer) {
      if (this.writable) this.socket.write(answer);
      this.endSocket();
    } else {
      this.abortAndClose('aborted', kind);
    }
  }

  abortAndClose(result: AssocResult, detail?: string): void {
    this.setResult(result, detail);
    if (this.associated && this.writable) {
      try {
        this.scp.sendAbort(AbortSource.ServiceUser, AbortReason.NotSpecified);
      } catch {
        /* socket already gone */
      }
    }
    this.endSocket();
  }

  onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    // An image cut off mid-dataset: its sink removes whatever it started writing.
    const cut = this.pdata?.receiving;
    if (cut) {
      cut.abort();
      this.inFlight--;
      this.server.inFlight--;
    }
    this.bytes = this.pdata?.bytes ?? this.bytes;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.setResult('closed');
    this.failAwaitedReports('the association ended before the N-EVENT-REPORT-RSP');
    this.server.connections.delete(this);
    this.server.buffered.delete(this);
    if (this.holdsSlot) {
      this.holdsSlot = false;
      this.server.slots.release(this.callingAe);
    }
    const line = {
      associationId: this.id,
      callingAe: this.callingAe || undefined,
      calledAe: this.calledAe || undefined,
      peer: this.peerAddress,
      images: this.images,
      failed: this.failed,
      bytes: this.bytes,
      durationMs: Date.now() - this.connectedAt,
      result: this.result,
      detail: this.detail,
    };
    if (!this.callingAe && !this.calledAe) this.server.log.debug(line, `connection without association: ${this.result}`);
    else if (this.result === 'released') this.server.log.info(line, 'association released');
    else if (this.result === 'rejected') this.server.log.warn(line, 'association rejected');
    else this.server.log.info(line, `association ended: ${this.result}`);
    if (this.callingAe || this.calledAe) this.server.opts.onAssociationEnded?.({ ...line, callingAe: this.callingAe, calledAe: this.calledAe, result: line.result ?? 'closed' });
    this.server.onSettled.splice(0).forEach((f) => f());
  }

  /** Called whenever a C-STORE of this connection has been answered (or dropped). */
  afterStoreSettled(): void {
    if (this.inFlight > 0) return;
    if (this.releasePending) {
      this.releasePending = false;
      this.scp.finishRelease();
    }
  }
}

/** Scp methods dcmjs-dimse calls from its event listeners. */
const GUARDED_HANDLERS = ['associationRequested', 'associationReleaseRequested', 'abort'] as const;

/** Replaces each handler of this instance by a guarded call of the class's method (the bodies stay plain). */
function guardHandlers(scp: StorageScp): void {
  const self = scp as unknown as Record<string, (...args: unknown[]) => void>;
  for (const name of GUARDED_HANDLERS) {
    const handler = self[name].bind(scp);
    self[name] = (...args: unknown[]) => scp.guarded(name, () => handler(...args));
  }
}

class StorageScp extends Scp {
  constructor(private readonly conn: Connection) {
    super(conn.socket, {});
    const socket = conn.socket;
    const internals = this as unknown as NetworkInternals;
    // The library's own timers: socket idle timeout (180 s) and an interval whose checks need `connected`,
    // which only dcmjs-dimse's Server sets. Disable both; our server-wide timer replaces them.
    socket.setTimeout(0);
    if (internals.timeoutIntervalId !== undefined) {
      clearInterval(internals.timeoutIntervalId);
      internals.timeoutIntervalId = undefined;
    }
    if (typeof internals._processPdu !== 'function') throw new Error('dcmjs-dimse internal Network._processPdu is missing');
    {
      const processPdu = internals._processPdu.bind(this);
      conn.pdata = new PDataReceiver(this.pdataHandler());
      socket.removeAllListeners('data');
      // Control PDUs (the A-ASSOCIATE-RQ above all) may be larger than the max PDU length, which covers P-DATA.
      const framer = new PduFramer(Math.max(conn.server.maxPdu, MAX_CONTROL_PDU), conn.server.maxPdu);
      const pass = (pdu: Buffer): void => {
        processPdu(pdu).catch((err: unknown) => this.handlerFailed('PDU processing', err));
      };
      const onPdu = (pdu: Buffer): void => {
        if (conn.result !== undefined) return; // ending: whatever else the peer sends is not acted on
        internals.lastPduTime = conn.lastActivity;
        const type = pdu[0];
        if (!conn.associated && type !== PDU_TYPE.AssociateRq && type !== PDU_TYPE.Abort) {
          conn.refuse('malformed-pdu', `PDU type ${type} before the association`, abortPdu(AbortSource.ServiceProvider, AbortReason.UnexpectedPdu));
          return;
        }
        if (type === PDU_TYPE.AssociateRq && !conn.associated && this.refuseBadAssociateRq(pdu)) return;
        if (type === PDU_TYPE.PDataTf && conn.dimseGuard) {
          for (const step of conn.dimseGuard.inspect(pdu)) {
            if (conn.result !== undefined) return;
            if (step.kind === 'pass') conn.pdata.onPdu(step.pdu);
            else this.guardAction(step);
          }
          // Bounded memory: stop reading while the image being received has too much waiting to be written.
          const sink = conn.pdata.receiving;
          if (sink && sink.backlogBytes > SINK_HIGH_WATER && !socket.isPaused()) {
            socket.pause();
            void sink.whenBelow(SINK_LOW_WATER).then(() => socket.resume());
          }
          return;
        }
        if (type === PDU_TYPE.ReleaseRq && conn.dimseGuard?.receivingDataset) {
          conn.refuse('malformed-pdu', 'A-RELEASE-RQ in the middle of a dataset', abortPdu(AbortSource.ServiceProvider, AbortReason.UnexpectedPdu));
          return;
        }
        pass(pdu);
      };
      socket.on('data', (chunk: Buffer) => {
        conn.lastActivity = Date.now();
        try {
          framer.push(chunk, onPdu);
        } catch (err) {
          socket.removeAllListeners('data');
          if (!(err instanceof PduFramingError)) {
            this.handlerFailed('PDU', err);
            return;
          }
          conn.refuse(err.reason === 'too-large' ? 'pdu-too-large' : 'malformed-pdu', err.message, abortPdu(AbortSource.ServiceProvider, AbortReason.InvalidPduParameter));
        }
      });
    }
    // dcmjs-dimse's event emitter (async-event-emitter2) turns an exception thrown by a one-argument listener
    // into a rejected promise nobody handles, which ends the process: every listener and handler is guarded.
    this.on('networkError', (err: Error) =>
      this.guarded('networkError', () => {
        // Socket errors, timeouts and exceptions thrown while decoding a PDU or DIMSE message end up here.
        if (!conn.closed) {
          conn.setResult('error', err?.message);
          socket.destroy();
        }
      }),
    );
    this.on('close', () => this.guarded('close', () => conn.onClosed()));
    guardHandlers(this);
  }

  /** Runs one handler; an exception ends this association (logged without its message, which may quote
   * received values; counted) and never reaches the library or the process. */
  guarded(where: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.handlerFailed(where, err);
    }
  }

  private handlerFailed(where: string, err: unknown): void {
    const conn = this.conn;
    try {
      conn.server.log.debug({ associationId: conn.id, where, err: errorMessage(err) }, 'handler error detail');
      if (conn.closed) return;
      // Before the association exists, the peer is told with an A-ASSOCIATE-RJ (transient: it may retry).
      const answer = conn.associated || where !== 'associationRequested'
        ? undefined
        : associateRjPdu(RejectResult.Transient, RejectSource.ServiceProviderAcse, RejectReason.NoReasonGiven);
      conn.refuse('handler-error', where, answer, { errorType: err instanceof Error ? err.name : typeof err });
      if (!conn.associated && !answer) conn.socket.destroy();
    } catch {
      conn.socket.destroy();
    }
  }

  /** Refuses an A-ASSOCIATE-RQ that dcmjs-dimse must not see (see associate-rq.ts). */
  private refuseBadAssociateRq(pdu: Buffer): boolean {
    const problem = checkAssociateRq(pdu);
    if (!problem) return false;
    if (problem.kind === 'refuse') {
      this.conn.refuse('too-many-presentation-contexts', problem.why, associateRjPdu(RejectResult.Permanent, RejectSource.ServiceProviderAcse, RejectReason.NoReasonGiven));
    } else {
      this.conn.refuse('malformed-pdu', problem.why, abortPdu(AbortSource.ServiceProvider, AbortReason.InvalidPduParameter));
    }
    return true;
  }

  /** Carries out what the DimseGuard decided for a P-DATA-TF PDU (see dimse-guard.ts). */
  private guardAction(step: Exclude<GuardStep, { kind: 'pass' }>): void {
    const conn = this.conn;
    const { stats, log } = conn.server;
    switch (step.kind) {
      case 'abort':
        conn.refuse('malformed-pdu', step.why, abortPdu(AbortSource.ServiceProvider, AbortReason.InvalidPduParameter));
        return;
      case 'dataset-too-large': {
        // Forget the C-STORE being received: its sink lets go of (and removes) what it has.
        if (conn.pdata.dropDataset()) {
          conn.inFlight--;
          conn.server.inFlight--;
        }
        countRefused(conn.server, 'dataset-too-large', conn.callingAe);
        log.warn({ associationId: conn.id, callingAe: conn.callingAe, refusal: 'dataset-too-large', bytes: step.bytes, limits: { maxDatasetBytes: conn.server.limits.maxDatasetBytes, maxBufferedBytes: conn.server.limits.maxBufferedBytes, maxBufferedBytesTotal: conn.server.limits.maxBufferedBytesTotal, heldByOthers: conn.server.buffered.heldExcept(conn) } }, 'C-STORE dataset over the limit: dropping it, will answer 0xA700');
        return;
      }
      case 'answer-too-large':
        conn.failed++;
        stats.storesFailed++;
        this.sendCommand(step.pcId, encodeCStoreRspCommand({ sopClassUid: step.command.sopClassUid, sopInstanceUid: step.command.sopInstanceUid, messageIdBeingRespondedTo: step.command.messageId, status: STATUS_OUT_OF_RESOURCES }));
        return;
      case 'unrecognized':
        countRefused(conn.server, 'unrecognized-operation', conn.callingAe);
        if (!conn.unrecognizedLogged) {
          conn.unrecognizedLogged = true;
          log.warn({ associationId: conn.id, callingAe: conn.callingAe, refusal: 'unrecognized-operation', commandField: `0x${step.command.field.toString(16).padStart(4, '0')}` }, 'DIMSE operation not provided: answered 0x0211 (logged once per association)');
        }
        this.sendCommand(step.pcId, encodeResponseCommand({ commandField: step.command.field | 0x8000, messageIdBeingRespondedTo: step.command.messageId, status: STATUS_UNRECOGNIZED_OPERATION, sopClassUid: step.command.sopClassUid }));
        return;
      case 'forget-partial-command':
        conn.pdata.forgetCommand();
        return;
      case 'cancel':
        // PS3.7 9.3.2.3: no response. Our C-STOREs are answered as usual; nothing else can be pending.
        stats.cancels++;
        log.debug({ associationId: conn.id, messageIdBeingRespondedTo: step.command.messageId }, 'C-CANCEL received');
        return;
    }
  }

  private sendCommand(pcId: number, command: Buffer): void {
    if (this.conn.writable) this.conn.socket.write(encodeCommandPData(pcId, command, this.conn.peerMaxPdu));
  }

  override associationRequested(association: Association): void {
    const conn = this.conn;
    const { policy } = conn.server.opts;
    conn.callingAe = (association.getCallingAeTitle() ?? '').trim();
    conn.calledAe = (association.getCalledAeTitle() ?? '').trim();
    const reject = (result: number, source: number, reason: number, why: string): void => {
      conn.setResult('rejected', why);
      conn.server.stats.associationsRejected++;
      this.sendAssociationReject(result, source, reason);
      conn.endSocket();
    };
    if (conn.associated) {
      // A second A-ASSOCIATE-RQ on an established association is a protocol error.
      conn.abortAndClose('error', 'unexpected A-ASSOCIATE-RQ');
      return;
    }
    if (conn.server.closing) {
      reject(RejectResult.Transient, RejectSource.ServiceProviderPresentation, RejectReason.TemporaryCongestion, 'server shutting down');
      return;
    }
    if (conn.calledAe.toUpperCase() !== policy.aeTitle.trim().toUpperCase()) {
      reject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.CalledAeNotRecognized, 'called AE not recognized');
      return;
    }
    let known = false;
    try {
      known = policy.isKnownCaller(conn.callingAe);
    } catch (err) {
      conn.server.log.warn({ associationId: conn.id, err: errorMessage(err) }, 'isKnownCaller threw; treating caller as unknown');
    }
    if (!known && !policy.allowUnknownCallers) {
      reject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.CallingAeNotRecognized, 'calling AE not recognized');
      return;
    }
    const slot = conn.server.slots.acquire(conn.callingAe);
    if (slot !== 'ok') {
      const kind = slot === 'total' ? 'too-many-associations' : 'too-many-associations-per-caller';
      conn.refuse(kind, `${conn.server.slots.open} associations open`, associateRjPdu(RejectResult.Transient, RejectSource.ServiceProviderPresentation, RejectReason.LocalLimitExceeded));
      return;
    }
    conn.holdsSlot = true;

    for (const { id } of association.getPresentationContexts()) {
      const ctx = association.getPresentationContext(id);
      const abstract = (ctx.getAbstractSyntaxUid() ?? '').trim();
      if (!isAcceptedAbstractSyntax(abstract) && !(abstract === STORAGE_COMMITMENT_SOP_CLASS && conn.server.opts.onCommitmentRequest)) {
        ctx.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
        continue;
      }
      const proposedTs = ctx.getTransferSyntaxUids();
      const ts = abstract === STORAGE_COMMITMENT_SOP_CLASS
        ? proposedTs.map((t) => t.trim()).find((t) => COMMITMENT_TRANSFER_SYNTAXES.has(t))
        : chooseTransferSyntax(proposedTs);
      if (ts === undefined) {
        ctx.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
        continue;
      }
      ctx.setResult(PresentationContextResult.Accept, ts);
      conn.contexts.set(id, { accepted: true, abstractSyntaxUid: abstract, transferSyntaxUid: ts });
      // SCP/SCU role selection: the requester may only be the SCU of the services we provide, and only if it
      // proposed that role (PS3.7 D.3.3.4: an acceptor grants no role that was not proposed). For storage
      // commitment, that is what lets our N-EVENT-REPORT go back on this association (we are its SCP).
      if (ctx.getUserRole() !== undefined || ctx.getProviderRole() !== undefined) {
        ctx.setUserRole(ctx.getUserRole() !== false);
        ctx.setProviderRole(false);
      }
    }

    // sendAssociationAccept() advertises min(association max PDU, Implementation max PDU) as our max receive
    // length, and Implementation's class UID / version. Implementation is process-global (dcmjs-dimse's Client
    // reads it too), so change it only for the duration of this synchronous call.
    conn.peerMaxPdu = association.getMaxPduLength() ?? 0;
    association.setMaxPduLength(conn.server.maxPdu);
    const { implementationClassUid, implementationVersionName } = conn.server.opts;
    const prev = {
      pdu: Implementation.getMaxPduLength(),
      uid: Implementation.getImplementationClassUid(),
      version: Implementation.getImplementationVersion(),
    };
    try {
      Implementation.setMaxPduLength(Math.max(prev.pdu, conn.server.maxPdu));
      if (implementationClassUid) Implementation.setImplementationClassUid(implementationClassUid);
      if (implementationVersionName) Implementation.setImplementationVersion(implementationVersionName.slice(0, 16));
      this.sendAssociationAccept();
    } finally {
      Implementation.setMaxPduLength(prev.pdu);
      Implementation.setImplementationClassUid(prev.uid);
      Implementation.setImplementationVersion(prev.version);
    }
    conn.associated = true;
    conn.associatedAt = Date.now();
    const proposed = new Set(association.getPresentationContexts().map((c) => c.id));
    const { maxDatasetBytes, maxBufferedBytes, maxBufferedBytesTotal } = conn.server.limits;
    // A dataset held in memory whole gets its own limit and what the other associations leave of the
    // server-wide budget (an O(associations) sum, per PDU of such a dataset only).
    const datasetLimit = (): number =>
      conn.pdata.receiving?.holdsWholeDataset
        ? Math.min(maxDatasetBytes, maxBufferedBytes, Math.max(0, maxBufferedBytesTotal - conn.server.buffered.heldExcept(conn)))
        : maxDatasetBytes;
    conn.dimseGuard = new DimseGuard(datasetLimit, (pcId) => proposed.has(pcId));
    conn.server.buffered.add(conn);
    conn.dimseGuard.allowNAction = conn.server.opts.onCommitmentRequest !== undefined;
    conn.dimseGuard.awaitsResponse = (_field, messageId) => conn.awaitedReports.has(messageId);
    conn.server.stats.associationsAccepted++;
    conn.lastActivity = Date.now();
  }

  override associationReleaseRequested(): void {
    const conn = this.conn;
    conn.releaseRequested = true;
    conn.failAwaitedReports('the peer released the association before the N-EVENT-REPORT-RSP');
    if (conn.inFlight > 0) {
      // Answer the outstanding C-STOREs first (a well-behaved peer never does this).
      conn.releasePending = true;
      return;
    }
    this.finishRelease();
  }

  finishRelease(): void {
    const conn = this.conn;
    conn.setResult('released');
    if (conn.writable) this.sendAssociationReleaseResponse();
    conn.endSocket();
  }

  override abort(source: number, reason: number): void {
    this.conn.setResult('aborted-by-peer', `source ${source}, reason ${reason}`);
    this.conn.socket.destroy();
  }

  /** What P-DATA-TF messages do on this association (the DimseGuard has checked them). */
  private pdataHandler(): PDataHandler {
    const conn = this.conn;
    const server = conn.server;
    const settled = (): void => {
      conn.inFlight--;
      server.inFlight--;
      conn.lastActivity = Date.now();
      conn.afterStoreSettled();
      server.onSettled.splice(0).forEach((f) => f());
    };
    return {
      beginStore: (pcId, cmd) => {
        conn.inFlight++;
        server.inFlight++;
        const ctx = conn.contexts.get(pcId);
        const start: StoreStart = {
          callingAeTitle: conn.callingAe,
          calledAeTitle: conn.calledAe,
          peerAddress: conn.peerAddress,
          associationId: conn.id,
          sopClassUid: cmd.sopClassUid.trim(),
          sopInstanceUid: cmd.sopInstanceUid.trim(),
          transferSyntaxUid: ctx?.transferSyntaxUid ?? '',
        };
        if (!ctx?.accepted || ctx.abstractSyntaxUid === VERIFICATION_SOP_CLASS) {
          server.log.warn({ associationId: conn.id, pcId }, 'C-STORE on a presentation context that was not accepted for storage');
          return new CollectingSink(start, async () => STATUS_SOP_CLASS_NOT_SUPPORTED);
        }
        if (server.opts.onStoreStream) return server.opts.onStoreStream(start);
        return new CollectingSink(start, server.opts.onStore);
      },
      endStore: (pcId, cmd, sink) => {
        let p: Promise<number>;
        try {
          p = Promise.resolve(sink.end());
        } catch (err) {
          p = Promise.reject(err);
        }
        p.then(
          (status) => {
            if (typeof status === 'number' && Number.isInteger(status) && status >= 0 && status <= 0xffff) return status;
            server.log.warn({ associationId: conn.id, status: String(status) }, 'store handler resolved to an invalid status');
            return STATUS_PROCESSING_FAILURE;
          },
          (err: unknown) => {
            server.log.warn({ associationId: conn.id, err: errorMessage(err) }, 'store handler failed');
            return STATUS_PROCESSING_FAILURE;
          },
        )
          .then((status) => {
            if (isStoredStatus(status)) {
              conn.images++;
              server.stats.storesSucceeded++;
            } else {
              conn.failed++;
              server.stats.storesFailed++;
            }
            this.sendCommand(pcId, encodeCStoreRspCommand({ sopClassUid: cmd.sopClassUid, sopInstanceUid: cmd.sopInstanceUid, messageIdBeingRespondedTo: cmd.messageId, status }));
          })
          .catch((err: unknown) => server.log.error({ associationId: conn.id, err: errorMessage(err) }, 'C-STORE answer failed'))
          .finally(settled);
      },
      command: (pcId, cmd) => {
        // The DimseGuard lets only C-ECHO and C-STORE through; a C-STORE without dataset is a failure.
        const echo = cmd.field === COMMAND.CEchoRq;
        this.sendCommand(pcId, encodeResponseCommand({
          commandField: cmd.field | 0x8000, messageIdBeingRespondedTo: cmd.messageId, sopClassUid: cmd.sopClassUid,
          sopInstanceUid: echo ? undefined : cmd.sopInstanceUid,
          status: echo ? STATUS_SUCCESS : STATUS_PROCESSING_FAILURE,
        }));
      },
      unsupported: (pcId, cmd) => {
        this.sendCommand(pcId, encodeResponseCommand({ commandField: cmd.field | 0x8000, messageIdBeingRespondedTo: cmd.messageId, status: STATUS_UNRECOGNIZED_OPERATION, sopClassUid: cmd.sopClassUid }));
      },
      action: (pcId, cmd, dataset) => {
        const handler = server.opts.onCommitmentRequest;
        let rspWritten!: () => void;
        const afterRsp = new Promise<void>((resolve) => (rspWritten = resolve));
        const answer = (status: number): void => {
          this.sendCommand(pcId, encodeResponseCommand({ commandField: 0x8130, messageIdBeingRespondedTo: cmd.messageId, status, sopClassUid: STORAGE_COMMITMENT_SOP_CLASS, sopInstanceUid: STORAGE_COMMITMENT_SOP_INSTANCE }));
          rspWritten();
        };
        const ctx = conn.contexts.get(pcId);
        if (!handler || ctx?.abstractSyntaxUid !== STORAGE_COMMITMENT_SOP_CLASS) return answer(STATUS_UNRECOGNIZED_OPERATION);
        const refused = actionRefusal(cmd);
        if (refused !== undefined) {
          server.log.warn({ associationId: conn.id, callingAe: conn.callingAe, status: `0x${refused.toString(16).padStart(4, '0')}`, actionTypeId: cmd.actionTypeId }, 'N-ACTION refused');
          return answer(refused);
        }
        // The result goes back on this association while it is open, after the N-ACTION-RSP.
        const sameAssociation: CommitmentReplyChannel = {
          get open() {
            return conn.takesReports;
          },
          eventReport: async (eventTypeId, data, timeoutMs) => {
            await afterRsp;
            return conn.sendEventReport(pcId, { sopClassUid: STORAGE_COMMITMENT_SOP_CLASS, sopInstanceUid: STORAGE_COMMITMENT_SOP_INSTANCE, eventTypeId }, data, timeoutMs);
          },
        };
        handler({ callingAeTitle: conn.callingAe, associationId: conn.id, actionTypeId: cmd.actionTypeId ?? 0, transferSyntaxUid: ctx.transferSyntaxUid ?? '', dataset, sameAssociation }).then(
          answer,
          (err: unknown) => {
            server.log.warn({ associationId: conn.id, err: errorMessage(err) }, 'storage commitment request failed');
            answer(STATUS_PROCESSING_FAILURE);
          },
        );
      },
      response: (_pcId, cmd) => {
        conn.lastActivity = Date.now();
        conn.awaitedReports.get(cmd.messageId)?.settle?.(cmd.status ?? STATUS_PROCESSING_FAILURE);
        conn.awaitedReports.delete(cmd.messageId);
      },
      protocolError: (reason) => conn.refuse('malformed-pdu', reason, abortPdu(AbortSource.ServiceProvider, AbortReason.InvalidPduParameter)),
    };
  }
}

/** The failure status for an N-ACTION-RQ that is not a storage commitment request we can take, if so. */
function actionRefusal(cmd: CommandInfo): number | undefined {
  if (cmd.sopClassUid !== STORAGE_COMMITMENT_SOP_CLASS) return STATUS_NO_SUCH_SOP_CLASS;
  if (!isValidUid(cmd.sopInstanceUid)) return STATUS_INVALID_SOP_INSTANCE;
  if (cmd.sopInstanceUid !== STORAGE_COMMITMENT_SOP_INSTANCE) return STATUS_NO_SUCH_SOP_INSTANCE;
  if (cmd.actionTypeId !== ACTION_REQUEST_STORAGE_COMMITMENT) return STATUS_NO_SUCH_ACTION;
  return undefined;
}

function clampPdu(n: number): number {
  if (!Number.isFinite(n)) return DEFAULT_NETWORK_LIMITS.maxPduBytes;
  return Math.min(MAX_PDU_BYTES, Math.max(MIN_PDU_BYTES, Math.floor(n)));
}

/** The limits in force: defaults, then the older single options, then opts.limits. */
function resolveLimits(opts: ScpOptions): NetworkLimits {
  const l: NetworkLimits = { ...DEFAULT_NETWORK_LIMITS };
  if (opts.maxPduLength !== undefined) l.maxPduBytes = opts.maxPduLength;
  if (opts.idleTimeoutMs !== undefined) l.idleTimeoutMs = opts.idleTimeoutMs;
  if (opts.associationRequestTimeoutMs !== undefined) l.associationRequestTimeoutMs = opts.associationRequestTimeoutMs;
  for (const [k, v] of Object.entries(opts.limits ?? {})) if (v !== undefined) (l as unknown as Record<string, number>)[k] = v;
  l.maxPduBytes = clampPdu(l.maxPduBytes);
  return l;
}

/** Ends a connection past one of its time limits (association request, idle, total). */
function enforceTimeLimits(conn: Connection, now: number, limits: NetworkLimits): void {
  if (!conn.associated) {
    if (now - conn.connectedAt > limits.associationRequestTimeoutMs) {
      conn.refuse('association-request-timeout', `no A-ASSOCIATE-RQ within ${limits.associationRequestTimeoutMs} ms`);
      conn.socket.destroy();
    }
  } else if (conn.inFlight === 0 && !conn.releasePending) {
    if (now - conn.lastActivity > limits.idleTimeoutMs) conn.refuse('idle-timeout', `nothing received for ${limits.idleTimeoutMs} ms`);
    else if (now - conn.associatedAt > limits.associationTimeLimitMs) conn.refuse('association-time-limit', `open for more than ${limits.associationTimeLimitMs} ms`);
  }
}

/** A new connection beyond maxConnections() displaces the oldest one still without an A-ASSOCIATE-RQ. */
function makeRoomFor(state: ServerState): boolean {
  if (state.connections.size < maxConnections(state.limits)) return true;
  for (const conn of state.connections) {
    if (!conn.associated && conn.result === undefined) {
      conn.refuse('connection-displaced', 'the oldest connection without A-ASSOCIATE-RQ makes room for a new one');
      conn.socket.destroy();
      return true;
    }
  }
  return false;
}

/** Start a storage SCP bound to opts.host:opts.port. */
export async function startStorageScp(opts: ScpOptions): Promise<RunningScp> {
  const limits = resolveLimits(opts);
  const state: ServerState = {
    opts,
    log: opts.logger,
    maxPdu: limits.maxPduBytes,
    limits,
    slots: new AssociationSlots(limits),
    connections: new Set(),
    buffered: opts.bufferedDatasets ?? new BufferedDatasets(),
    closing: false,
    nextAssociationId: 1,
    inFlight: 0,
    onSettled: [],
    stats: newScpStats(),
  };
  const { associationRequestTimeoutMs: assocRqTimeout, idleTimeoutMs: idleTimeout, associationTimeLimitMs } = limits;

  const server = createListeningServer(opts.tls, (socket) => {
    socket.setNoDelay(true);
    if (state.closing || !makeRoomFor(state)) {
      socket.destroy();
      return;
    }
    state.stats.connections++;
    const conn = new Connection(state, socket);
    try {
      conn.scp = new StorageScp(conn);
    } catch (err) {
      state.log.error({ err: errorMessage(err) }, 'could not set up association');
      socket.destroy();
      return;
    }
    state.connections.add(conn);
  }, state.log);

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen({ host: opts.host, port: opts.port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => state.log.error({ err: err.message }, 'storage SCP server error'));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;

  const timer = setInterval(() => {
    const now = Date.now();
    for (const conn of state.connections) {
      if (conn.closed || conn.result !== undefined) continue;
      // A timer callback that threw would end the process: one connection's failure stays its own.
      try {
        enforceTimeLimits(conn, now, limits);
      } catch (err) {
        state.log.warn({ associationId: conn.id, err: errorMessage(err) }, 'time limit check failed; closing the connection');
        conn.socket.destroy();
      }
    }
  }, Math.max(50, Math.min(1000, Math.floor(Math.min(assocRqTimeout, idleTimeout, associationTimeLimitMs) / 4))));
  timer.unref();

  state.log.info({ host: opts.host, port, tls: opts.tls !== undefined, aeTitle: opts.policy.aeTitle, limits }, 'storage SCP listening');

  let closePromise: Promise<void> | undefined;
  const close = (closeOpts?: { graceMs?: number }): Promise<void> => {
    if (closePromise) return closePromise;
    state.closing = true;
    const graceMs = closeOpts?.graceMs ?? DEFAULT_CLOSE_GRACE_MS;
    const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
    // Associations with nothing in flight that have been quiet for CLOSE_QUIET_MS are aborted; one whose
    // C-STORE was just answered gets that long to release (or to send its next image, which is processed).
    const sweep = (): void => {
      const now = Date.now();
      for (const conn of state.connections) {
        if (conn.result !== undefined) continue;
        if (!conn.associated) conn.socket.destroy();
        else if (conn.inFlight === 0 && !conn.releasePending && now - conn.lastActivity >= CLOSE_QUIET_MS) {
          conn.abortAndClose('aborted', 'server shutting down');
        }
      }
    };
    sweep();
    closePromise = (async () => {
      const deadline = Date.now() + graceMs;
      const quiet = (): boolean => state.connections.size === 0 && state.inFlight === 0;
      while (!quiet() && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, Math.min(50, Math.max(1, deadline - Date.now())));
          state.onSettled.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
        sweep();
      }
      if (!quiet()) {
        state.log.warn({ connections: state.connections.size, inFlight: state.inFlight }, 'close grace period over; destroying connections');
        for (const conn of state.connections) conn.socket.destroy();
      }
      clearInterval(timer);
      await serverClosed;
      state.log.info({ port }, 'storage SCP closed');
    })();
    return closePromise;
  };

  return { port, close, stats: () => snapshotStats(state.stats) };
}

// dcmjs-dimse internals relied on (version pinned in package.json; test/dimse-internals.test.ts checks them):
// - Network's constructor calls _wrapSocket(), which adds a socket 'data' listener feeding its accumulator,
//   which emits whole PDUs to `async _processPdu(buffer)`. We replace the 'data' listener and call
//   _processPdu for every PDU but P-DATA-TF.
// - `timeoutIntervalId` holds the library's interval timer (cleared), `lastPduTime` its activity clock.
// - Public API: associationRequested / associationReleaseRequested / abort overrides, sendAssociationAccept,
//   sendAssociationReject, sendAssociationReleaseResponse, sendAbort, Implementation's setters.
