// Counters of the storage SCP: what it refused or ended, and why. Read with RunningScp.stats().

/** Why an association or a message was refused or ended by us. */
export type RefusalKind =
  | 'malformed-pdu' // a PDU that does not parse (A-ABORT)
  | 'too-many-presentation-contexts' // A-ASSOCIATE-RQ beyond PS3.8's 128 (A-ASSOCIATE-RJ)
  | 'handler-error' // an exception while handling the association or one of its messages (A-ABORT)
  | 'too-many-associations' // limits.maxAssociations (A-ASSOCIATE-RJ transient)
  | 'too-many-associations-per-caller' // limits.maxAssociationsPerCaller (A-ASSOCIATE-RJ transient)
  | 'pdu-too-large' // a P-DATA PDU above the max PDU length we announced (A-ABORT)
  | 'dataset-too-large' // a dataset above limits.maxDatasetBytes (0xA700 or A-ABORT)
  | 'idle-timeout' // no PDU within limits.idleSeconds (A-ABORT)
  | 'association-time-limit' // association open longer than limits.associationSeconds (A-ABORT)
  | 'association-request-timeout' // connection without A-ASSOCIATE-RQ (closed)
  | 'unrecognized-operation' // a DIMSE command we do not provide (0x0211)
  | 'connection-displaced'; // at the connection cap, the oldest connection without A-ASSOCIATE-RQ makes room (closed)

export interface ScpStats {
  connections: number;
  associationsAccepted: number;
  associationsRejected: number;
  /** C-STOREs answered with a stored status (success or warning) / any other status. */
  storesSucceeded: number;
  storesFailed: number;
  /** C-CANCEL requests received (no response is due; the cancelled C-STORE, if any, is answered as usual). */
  cancels: number;
  refused: Partial<Record<RefusalKind, number>>;
}

export function newScpStats(): ScpStats {
  return { connections: 0, associationsAccepted: 0, associationsRejected: 0, storesSucceeded: 0, storesFailed: 0, cancels: 0, refused: {} };
}

export function countRefusal(stats: ScpStats, kind: RefusalKind): void {
  stats.refused[kind] = (stats.refused[kind] ?? 0) + 1;
}

export function snapshotStats(stats: ScpStats): ScpStats {
  return { ...stats, refused: { ...stats.refused } };
}
