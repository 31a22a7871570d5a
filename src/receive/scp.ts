// Storage SCP (C-ECHO, C-STORE) on top of dcmjs-dimse's Scp, receiving datasets as raw bytes.
//
// How it uses dcmjs-dimse 0.3.3 (see the notes at the end of this file for the internals relied on):
// - We own the net.Server (bound to opts.host) and construct one Scp subclass per socket.
// - createStoreWritableStream / createDatasetFromStoreWritableStream are overridden so the C-STORE dataset is
//   collected as the PDV value buffers and concatenated once; it is never parsed or naturalized. The library's
//   Dataset handed to cStoreRequest is an empty placeholder that carries the raw bytes.
// - The library's PDU accumulator (Buffer.concat per socket chunk) is replaced with PduFramer.
// - The library's timers (socket timeout 180 s, 60 s PDU timeout that would abort an association while our
//   handler is still writing a big image) are disabled; this module has its own association-request and idle
//   timeouts that never fire while a C-STORE is being processed.
import * as net from 'net';
import { Writable } from 'stream';
import {
  Scp,
  Dataset,
  Implementation,
  constants,
  responses,
  association as dimseAssociation,
  requests as dimseRequests,
} from 'dcmjs-dimse';
import type { Logger } from 'pino';
import { encodeCommandPData, encodeCStoreRspCommand, encodeResponseCommand } from './dimse';
import { DimseGuard, GuardStep } from './dimse-guard';
import { AssociationSlots, DEFAULT_NETWORK_LIMITS, MAX_PDU_BYTES, MIN_PDU_BYTES, NetworkLimits, maxConnections } from './limits';
import { PduFramer, PduFramingError } from './framer';
import { checkAssociateRq, associateRjPdu, abortPdu } from './associate-rq';
import { countRefusal, newScpStats, snapshotStats, RefusalKind, ScpStats } from './stats';
import { chooseTransferSyntax, isAcceptedAbstractSyntax, VERIFICATION_SOP_CLASS } from './syntaxes';
import type { RunningScp, ScpOptions, StoreRequest } from './types';
import { errorMessage } from '../observe/errors';

type Association = dimseAssociation.Association;
type PresentationContext = dimseAssociation.PresentationContext;
type CStoreRequest = dimseRequests.CStoreRequest;
type CEchoRequest = dimseRequests.CEchoRequest;
type CStoreResponse = responses.CStoreResponse;
type CEchoResponse = responses.CEchoResponse;

const { PresentationContextResult, RejectResult, RejectSource, RejectReason, AbortSource, AbortReason } = constants;

export const STATUS_SUCCESS = 0x0000;
export const STATUS_PROCESSING_FAILURE = 0x0110;
export const STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122;
export const STATUS_OUT_OF_RESOURCES = 0xa700;
export const STATUS_UNRECOGNIZED_OPERATION = 0x0211;

const DEFAULT_CLOSE_GRACE_MS = 30_000;
/** After we end() a socket, destroy it if the peer has not closed within this time. */
const LINGER_MS = 2_000;
/** During close(): an association idle this long after its last answer is aborted. */
const CLOSE_QUIET_MS = 200;
/** Largest non-P-DATA PDU we accept (an A-ASSOCIATE-RQ with 128 contexts and many syntaxes is far smaller). */
const MAX_CONTROL_PDU = 1 << 20;
const PDU_ASSOCIATE_RQ = 0x01;
const PDU_P_DATA_TF = 0x04;
const PDU_RELEASE_RQ = 0x05;
const PDU_ABORT = 0x07;

/** A warning (0x0001, 0xB000-0xBFFF) still means the instance was stored. */
function isStoredStatus(status: number): boolean {
  return status === 0x0000 || status === 0x0001 || (status >= 0xb000 && status <= 0xbfff);
}

type AssocResult = 'released' | 'aborted-by-peer' | 'aborted' | 'rejected' | 'closed' | 'error' | 'timeout';

/** Collects the PDV value buffers of one C-STORE dataset. write() never applies backpressure: dcmjs-dimse
 * awaits 'drain' after a false return while later PDUs of the same socket chunk are already being processed,
 * which could reorder fragments. */
class RawCollector extends Writable {
  readonly chunks: Buffer[] = [];
  length = 0;
  constructor(readonly pcId: number) {
    super({ highWaterMark: 0x7fffffff, decodeStrings: false });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
    cb();
  }
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    for (const c of chunks) {
      this.chunks.push(c.chunk);
      this.length += c.chunk.length;
    }
    cb();
  }
  /** Dropped (dataset over the limit): let go of the data at once. */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.chunks.length = 0;
    this.length = 0;
    cb(err);
  }
  /** One copy: the dataset as a single compact Buffer (PDV values are views into whole PDUs). */
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

/** Placeholder Dataset the library attaches to the CStoreRequest: no elements, just our raw bytes. */
class RawDataset extends Dataset {
  constructor(
    public raw: Buffer | undefined,
    transferSyntaxUid: string,
    readonly pcId: number,
    readonly pcAccepted: boolean,
    readonly abstractSyntaxUid: string,
  ) {
    super({}, transferSyntaxUid);
  }
}

interface ServerState {
  opts: ScpOptions;
  log: Logger;
  maxPdu: number;
  limits: NetworkLimits;
  slots: AssociationSlots;
  connections: Set<Connection>;
  closing: boolean;
  nextAssociationId: number;
  /** C-STOREs handed to onStore and not yet settled, over all connections. */
  inFlight: number;
  onSettled: Array<() => void>;
  stats: ScpStats;
}

/** Internals of dcmjs-dimse's Network we touch; all optional so a changed library degrades gracefully. */
interface NetworkInternals {
  _processPdu?: (pdu: Buffer) => Promise<void>;
  lastPduTime?: number;
  timeoutIntervalId?: ReturnType<typeof setInterval>;
  association?: Association;
  /** The DIMSE message being received, and the streams collecting its command / dataset. */
  dimse?: unknown;
  dimseStream?: unknown;
  dimseStoreStream?: Writable;
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
  unrecognizedLogged = false;
  result: AssocResult | undefined;
  detail: string | undefined;
  images = 0;
  failed = 0;
  bytes = 0;
  inFlight = 0;
  releasePending = false;
  closed = false;
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
    countRefusal(this.server.stats, kind);
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
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.setResult('closed');
    this.server.connections.delete(this);
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
const GUARDED_HANDLERS = ['associationRequested', 'associationReleaseRequested', 'abort', 'cEchoRequest', 'cStoreRequest', 'cCancelRequest'] as const;

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
    if (typeof internals._processPdu === 'function') {
      const processPdu = internals._processPdu.bind(this);
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
        if (!conn.associated && type !== PDU_ASSOCIATE_RQ && type !== PDU_ABORT) {
          conn.refuse('malformed-pdu', `PDU type ${type} before the association`, abortPdu(AbortSource.ServiceProvider, AbortReason.UnexpectedPdu));
          return;
        }
        if (type === PDU_ASSOCIATE_RQ && !conn.associated && this.refuseBadAssociateRq(pdu)) return;
        if (type === PDU_P_DATA_TF && conn.dimseGuard) {
          for (const step of conn.dimseGuard.inspect(pdu)) {
            if (conn.result !== undefined) return;
            if (step.kind === 'pass') pass(step.pdu);
            else this.guardAction(step);
          }
          return;
        }
        if (type === PDU_RELEASE_RQ && conn.dimseGuard?.receivingDataset) {
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
    const internals = this as unknown as NetworkInternals;
    const { stats, log } = conn.server;
    switch (step.kind) {
      case 'abort':
        conn.refuse('malformed-pdu', step.why, abortPdu(AbortSource.ServiceProvider, AbortReason.InvalidPduParameter));
        return;
      case 'dataset-too-large': {
        // Forget the C-STORE the library is collecting, and release what it holds now rather than at the end.
        const stream = internals.dimseStoreStream;
        internals.dimse = undefined;
        internals.dimseStream = undefined;
        internals.dimseStoreStream = undefined;
        stream?.destroy();
        countRefusal(stats, 'dataset-too-large');
        log.warn({ associationId: conn.id, callingAe: conn.callingAe, refusal: 'dataset-too-large', limit: conn.server.limits.maxDatasetBytes }, 'C-STORE dataset over the limit: dropping it, will answer 0xA700');
        return;
      }
      case 'answer-too-large':
        conn.failed++;
        stats.storesFailed++;
        this.sendCommand(step.pcId, encodeCStoreRspCommand({ sopClassUid: step.command.sopClassUid, sopInstanceUid: step.command.sopInstanceUid, messageIdBeingRespondedTo: step.command.messageId, status: STATUS_OUT_OF_RESOURCES }));
        return;
      case 'unrecognized':
        countRefusal(stats, 'unrecognized-operation');
        if (!conn.unrecognizedLogged) {
          conn.unrecognizedLogged = true;
          log.warn({ associationId: conn.id, callingAe: conn.callingAe, refusal: 'unrecognized-operation', commandField: `0x${step.command.field.toString(16).padStart(4, '0')}` }, 'DIMSE operation not provided: answered 0x0211 (logged once per association)');
        }
        this.sendCommand(step.pcId, encodeResponseCommand({ commandField: step.command.field | 0x8000, messageIdBeingRespondedTo: step.command.messageId, status: STATUS_UNRECOGNIZED_OPERATION, sopClassUid: step.command.sopClassUid }));
        return;
      case 'forget-partial-command':
        internals.dimseStream = undefined;
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
      if (!isAcceptedAbstractSyntax(abstract)) {
        ctx.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
        continue;
      }
      const ts = chooseTransferSyntax(ctx.getTransferSyntaxUids());
      if (ts === undefined) {
        ctx.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
        continue;
      }
      ctx.setResult(PresentationContextResult.Accept, ts);
      // SCP/SCU role selection: the requester may only be the SCU of the services we provide.
      if (ctx.getUserRole() !== undefined || ctx.getProviderRole() !== undefined) {
        ctx.setUserRole(true);
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
    conn.dimseGuard = new DimseGuard(conn.server.limits.maxDatasetBytes, (pcId) => proposed.has(pcId));
    conn.server.stats.associationsAccepted++;
    conn.lastActivity = Date.now();
  }

  override associationReleaseRequested(): void {
    const conn = this.conn;
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

  override cEchoRequest(request: CEchoRequest, callback: (response: CEchoResponse) => void): void {
    const rsp = responses.CEchoResponse.fromRequest(request);
    rsp.setStatus(STATUS_SUCCESS);
    callback(rsp);
  }

  override createStoreWritableStream(acceptedPresentationContext: PresentationContext, _request: CStoreRequest): Writable {
    return new RawCollector(acceptedPresentationContext.getPresentationContextId());
  }

  override createDatasetFromStoreWritableStream(
    writable: Writable,
    acceptedPresentationContext: PresentationContext,
    callback: (dataset: Dataset) => void,
  ): void {
    const collector = writable as RawCollector;
    const pc = acceptedPresentationContext;
    const raw = collector.toBuffer();
    collector.chunks.length = 0;
    callback(
      new RawDataset(
        raw,
        pc.getAcceptedTransferSyntaxUid() ?? '',
        pc.getPresentationContextId(),
        pc.getResult() === PresentationContextResult.Accept,
        pc.getAbstractSyntaxUid(),
      ),
    );
  }

  override cStoreRequest(request: CStoreRequest, callback: (response: CStoreResponse) => void): void {
    const conn = this.conn;
    const server = conn.server;
    const ds = request.getDataset();
    request.setDataset(undefined as unknown as Dataset); // drop our reference holder from the request
    const sopClassUid = (request.getAffectedSopClassUid() ?? '').trim();
    const sopInstanceUid = (request.getAffectedSopInstanceUid() ?? '').trim();

    const answer = (status: number, pcId?: number): void => {
      if (isStoredStatus(status)) {
        conn.images++;
        server.stats.storesSucceeded++;
      } else {
        conn.failed++;
        server.stats.storesFailed++;
      }
      if (!conn.writable) return;
      try {
        if (pcId !== undefined) {
          // Hand-encoded response: dcmjs-dimse's path (naturalized command -> dcmjs write) costs more CPU
          // than everything else per image.
          const command = encodeCStoreRspCommand({
            sopClassUid,
            sopInstanceUid,
            messageIdBeingRespondedTo: request.getMessageId(),
            status,
          });
          conn.socket.write(encodeCommandPData(pcId, command, conn.peerMaxPdu));
        } else {
          const rsp = responses.CStoreResponse.fromRequest(request);
          rsp.setStatus(status);
          callback(rsp);
        }
      } catch (err) {
        server.log.warn({ associationId: conn.id, err: errorMessage(err) }, 'could not send C-STORE-RSP');
      }
    };

    if (!(ds instanceof RawDataset) || ds.raw === undefined) {
      server.log.warn({ associationId: conn.id }, 'C-STORE without dataset');
      answer(STATUS_PROCESSING_FAILURE);
      return;
    }
    const dataset = ds.raw;
    ds.raw = undefined;
    conn.bytes += dataset.length;
    if (!ds.pcAccepted || ds.abstractSyntaxUid === VERIFICATION_SOP_CLASS) {
      server.log.warn({ associationId: conn.id, pcId: ds.pcId }, 'C-STORE on a presentation context that was not accepted for storage');
      answer(STATUS_SOP_CLASS_NOT_SUPPORTED, ds.pcId);
      return;
    }

    const req: StoreRequest = {
      callingAeTitle: conn.callingAe,
      calledAeTitle: conn.calledAe,
      peerAddress: conn.peerAddress,
      associationId: conn.id,
      sopClassUid,
      sopInstanceUid,
      transferSyntaxUid: ds.getTransferSyntaxUid(),
      dataset,
    };
    conn.inFlight++;
    server.inFlight++;
    let p: Promise<number>;
    try {
      p = Promise.resolve(server.opts.onStore(req));
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
      .then((status) => answer(status, ds.pcId))
      .catch((err: unknown) => server.log.error({ associationId: conn.id, err: errorMessage(err) }, 'C-STORE answer failed'))
      .finally(() => {
        conn.inFlight--;
        server.inFlight--;
        conn.lastActivity = Date.now();
        conn.afterStoreSettled();
        server.onSettled.splice(0).forEach((f) => f());
      });
  }
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
    closing: false,
    nextAssociationId: 1,
    inFlight: 0,
    onSettled: [],
    stats: newScpStats(),
  };
  const { associationRequestTimeoutMs: assocRqTimeout, idleTimeoutMs: idleTimeout, associationTimeLimitMs } = limits;

  const server = net.createServer({ noDelay: true }, (socket) => {
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
  });

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
      if (!conn.associated) {
        if (now - conn.connectedAt > assocRqTimeout) {
          conn.refuse('association-request-timeout', `no A-ASSOCIATE-RQ within ${assocRqTimeout} ms`);
          conn.socket.destroy();
        }
      } else if (conn.inFlight === 0 && !conn.releasePending) {
        if (now - conn.lastActivity > idleTimeout) conn.refuse('idle-timeout', `nothing received for ${idleTimeout} ms`);
        else if (now - conn.associatedAt > associationTimeLimitMs) conn.refuse('association-time-limit', `open for more than ${associationTimeLimitMs} ms`);
      }
    }
  }, Math.max(50, Math.min(1000, Math.floor(Math.min(assocRqTimeout, idleTimeout, associationTimeLimitMs) / 4))));
  timer.unref();

  state.log.info({ host: opts.host, port, aeTitle: opts.policy.aeTitle, limits }, 'storage SCP listening');

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

// dcmjs-dimse 0.3.3 internals relied on (verified in build/dcmjs-dimse.min.js):
// - Network constructor calls _wrapSocket(), which adds a socket 'data' listener feeding its accumulator, which
//   emits whole PDUs to `async _processPdu(buffer)`. We replace the 'data' listener and call _processPdu.
// - _processPDataTf() writes each PDV value (a view into the PDU buffer, smart-buffer readBuffer does not
//   copy) to createStoreWritableStream()'s stream; `await`s 'drain' only when write() returns false.
// - On the last dataset fragment it calls createDatasetFromStoreWritableStream(stream, pc, cb); cb sets the
//   Dataset on the request and emits cStoreRequest. Nothing else reads the dataset on the SCP side.
// - The callbacks given to cStoreRequest/cEchoRequest send the response on the presentation context the
//   request came on; they must be called at most once.
