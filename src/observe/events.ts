// What the running node reports about its work, for the metrics and the status page. The network
// layer and the forwarder call these few typed hooks and know nothing of Prometheus or HTML; every
// field is a count, a configured name, an AE title, a peer address, a status or a reason: never a
// value read from a patient's image.

/** One association (a TCP connection that sent an A-ASSOCIATE-RQ), reported when it ends. */
export interface AssociationSummary {
  associationId: number;
  callingAe: string;
  calledAe: string;
  peer: string;
  images: number;
  failed: number;
  bytes: number;
  durationMs: number;
  /** released, aborted-by-peer, aborted, rejected, closed, error, timeout */
  result: string;
  detail?: string;
}

/** An association, connection or DIMSE message refused or ended by the storage SCP: a limit, a bad PDU, an
 * operation we do not provide. `kind` is one of src/receive/stats.ts RefusalKind. */
export interface RefusalEvent {
  kind: string;
  callingAe: string;
}

/** What became of one received image. `station` and `study` are configured names. */
export interface ImageEvent {
  callingAe: string;
  station: string;
  study: string;
  /** stored: delivered (written or spooled) and answered Success; quarantined: kept aside (the
   * sender may have been answered Success or a failure, see `status`); failed: answered a failure. */
  outcome: 'stored' | 'quarantined' | 'failed';
  /** DIMSE status answered. */
  status: number;
  bytes: number;
  /** Read + identify + de-identify + encode, seconds (absent when the image never got that far). */
  deidentifySeconds?: number;
  /** Durable write or spooling to every destination, seconds. */
  storeSeconds?: number;
  /** For quarantined and failed images: the stage and the reason (texts of our own, no data). */
  stage?: string;
  reason?: string;
  /** Checks that let a stored image through with a note: burned-in-unknown (BurnedInUnknown:
   * flag), phi-gate-warn (PhiGate: warn). */
  flags?: string[];
}

/** A spooled image leaving a forwarding destination. */
export interface ForwardEvent {
  destination: string;
  /** forwarded: the PACS answered Success or a warning; dead-letter: given up, kept aside. */
  outcome: 'forwarded' | 'dead-letter';
  status: number | null;
  bytes: number;
}

/** A configuration reload (SIGHUP) and its result. */
export interface ReloadEvent {
  ok: boolean;
  /** The problems of a refused configuration, or the notes of an applied one. */
  messages: string[];
}

/** The hooks; every one optional, so a part reports only what it knows. */
export interface NodeObserver {
  associationEnded?(a: AssociationSummary): void;
  image?(i: ImageEvent): void;
  forwarded?(f: ForwardEvent): void;
  reloaded?(r: ReloadEvent): void;
  refused?(r: RefusalEvent): void;
}

/** The state of one destination now (pulled when metrics are scraped or the page is drawn). */
export interface DestinationView {
  name: string;
  type: 'folder' | 'dicom' | 'dicomweb';
  /** folder: its path; dicom: AE@host:port; dicomweb: the base URL without credentials */
  target: string;
  /** folder: writable or not; dicom: the forwarder's view (unknown before the first association). */
  state: 'up' | 'down' | 'unknown';
  backlog: number;
  oldestAgeSeconds: number;
  inFlight: number;
  deadLetters: number;
}

/** Several observers as one. */
export function fanOut(...observers: NodeObserver[]): Required<NodeObserver> {
  return {
    associationEnded: (a) => observers.forEach((o) => o.associationEnded?.(a)),
    image: (i) => observers.forEach((o) => o.image?.(i)),
    forwarded: (f) => observers.forEach((o) => o.forwarded?.(f)),
    reloaded: (r) => observers.forEach((o) => o.reloaded?.(r)),
    refused: (r) => observers.forEach((o) => o.refused?.(r)),
  };
}
