// Public types of the storage SCP network layer. Nothing here knows about de-identification.
import type { ServerTls } from './tls';
import type { Logger } from 'pino';
import type { AssociationSummary, RefusalEvent } from '../observe/events';
import type { ScpStats } from './stats';
import type { BufferedDatasets, NetworkLimits } from './limits';

/** A C-STORE whose dataset is arriving: what the command and the association say. */
export interface StoreStart {
  callingAeTitle: string;
  calledAeTitle: string;
  peerAddress: string;
  associationId: number;
  sopClassUid: string;
  sopInstanceUid: string;
  transferSyntaxUid: string;
}

/**
 * Receives one C-STORE dataset while it arrives (opts.onStoreStream). write() gets the PDV values in order
 * (views into received PDUs, not copied; the sink may keep them); end() comes after the last one and resolves
 * to the status to answer, only once the image is safe; abort() when the association ends before that (the
 * sink must leave nothing behind). While backlogBytes exceeds the SCP's limit, the socket is paused until
 * whenBelow() resolves: memory stays bounded for any object size.
 */
export interface DatasetSink {
  write(fragment: Buffer): void;
  readonly backlogBytes: number;
  /** True while the dataset is held in memory whole rather than streamed (limits.maxBufferedBytes applies). */
  readonly holdsWholeDataset?: boolean;
  whenBelow(bytes: number): Promise<void>;
  end(): Promise<number>;
  abort(): void;
}

/** One received C-STORE, handed to the application: its start (the association's AE titles and peer, the
 * association's sequence number within this SCP from 1, the command's affected SOP class and instance, the
 * accepted context's transfer syntax) and its whole dataset. */
export interface StoreRequest extends StoreStart {
  /** The dataset bytes exactly as received on the wire (no file meta; still deflated for Deflated TS). */
  dataset: Buffer;
}

/**
 * Resolves to the DIMSE status to answer (0x0000 success, 0xA700 out of resources, 0xC000 cannot understand ...).
 * Resolve only once the image is safe (e.g. durably on disk). A rejection is answered with 0x0110 (Processing failure).
 */
export interface StoreHandler {
  (req: StoreRequest): Promise<number>;
}

export interface AssociationPolicy {
  /** Our AE title; the called AE title must match it (trimmed, case-insensitive). */
  aeTitle: string;
  isKnownCaller(callingAe: string): boolean;
  allowUnknownCallers: boolean;
}

export interface ScpOptions {
  host: string;
  /** 0 picks a free port; RunningScp.port tells which. */
  port: number;
  policy: AssociationPolicy;
  onStore: StoreHandler;
  /** When set, C-STORE datasets are handed over while they arrive instead of whole to onStore. */
  onStoreStream?: (req: StoreStart) => DatasetSink;
  logger: Logger;
  /** Max PDU length we advertise (what peers may send us). Default 262144, clamped to [4096, 4194304]. */
  maxPduLength?: number;
  /** Implementation Class UID / Version Name we announce in the A-ASSOCIATE-AC (default: dcmjs-dimse's). */
  implementationClassUid?: string;
  /** At most 16 characters. */
  implementationVersionName?: string;
  /** Close a connection that sent no A-ASSOCIATE-RQ within this time. Default 30 000 ms. */
  associationRequestTimeoutMs?: number;
  /** Abort an association idle this long (no PDU received and no C-STORE being processed). Default 300 000 ms. */
  idleTimeoutMs?: number;
  /** Network limits (router.yaml `limits`); each one not given keeps its default (src/receive/limits.ts). */
  limits?: Partial<NetworkLimits>;
  /** Shared by the endpoints of one process, so that limits.maxBufferedBytesTotal bounds them together
   * (default: this endpoint's own). */
  bufferedDatasets?: BufferedDatasets;
  /** DICOM TLS on this endpoint (PEM contents). */
  tls?: ServerTls;
  /** Told of every association when it ends (metrics, status page). */
  onAssociationEnded?: (a: AssociationSummary) => void;
  /** Something refused or ended by us because of a limit or a bad peer (also counted in RunningScp.stats()). */
  onRefused?: (r: RefusalEvent) => void;
  /** Storage Commitment Push Model SCP: each N-ACTION-RQ's dataset; resolves to the N-ACTION-RSP status.
   * Absent: the SOP class is not accepted. */
  onCommitmentRequest?: (req: CommitmentRequest) => Promise<number>;
}

export interface RunningScp {
  /** The port actually bound. */
  port: number;
  /**
   * Stop accepting connections, let in-flight C-STOREs finish and be answered, then abort the remaining
   * associations and close their sockets. After graceMs (default 30 000) everything is closed regardless.
   */
  close(opts?: { graceMs?: number }): Promise<void>;
  /** Counters since start: associations, stores, and what was refused or ended by us and why. */
  stats(): ScpStats;
}

/** An N-ACTION-RQ of the Storage Commitment Push Model SOP Class (PS3.4 J.3.2). */
export interface CommitmentRequest {
  callingAeTitle: string;
  associationId: number;
  actionTypeId: number;
  transferSyntaxUid: string;
  /** The action information (TransactionUID, ReferencedSOPSequence) as received. */
  dataset: Buffer;
  /** The association the request came on, for its result (absent for a request resumed after a restart). */
  sameAssociation?: CommitmentReplyChannel;
}

/** Sends a storage commitment result back on the association of its request (PS3.4 J.3.3.1.2: the SCP may try
 * the same association; the SCU is free to release it at any time, so the caller keeps another way). */
export interface CommitmentReplyChannel {
  /** True while the association is established and the peer has not asked to release it. */
  readonly open: boolean;
  /** Sends an N-EVENT-REPORT-RQ (Storage Commitment Push Model, its well-known instance) carrying the event
   * information, encoded in the request's transfer syntax, after the N-ACTION-RSP; resolves to the status of the
   * N-EVENT-REPORT-RSP. Rejects when the association ends first or no answer comes within timeoutMs. */
  eventReport(eventTypeId: number, dataset: Buffer, timeoutMs: number): Promise<number>;
}
