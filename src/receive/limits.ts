// Network-side limits of the storage SCP (router.yaml `limits`), their safe defaults, and the bookkeeping of
// concurrent associations. Reader-level limits (inflated size, sequence depth) live in src/dicom/read.ts.

export interface NetworkLimits {
  /** Associations open at once, over all callers. Beyond: A-ASSOCIATE-RJ transient, local limit exceeded. */
  maxAssociations: number;
  /** Associations open at once from one calling AE title. Beyond: the same rejection. */
  maxAssociationsPerCaller: number;
  /** Largest P-DATA-TF PDU we accept (variable field length); announced in the A-ASSOCIATE-AC. Bigger: A-ABORT. */
  maxPduBytes: number;
  /** Largest C-STORE dataset. Bigger: answered 0xA700 (Out of Resources), its data dropped as it arrives. */
  maxDatasetBytes: number;
  /** Largest dataset held in memory whole (one that cannot be streamed: deflated, unreadable before its bulk
   * data, or with no streaming store). Bigger: the same 0xA700. */
  maxBufferedBytes: number;
  /** All datasets held in memory whole at one moment, over every association. An image that would take the
   * sum beyond it is answered the same 0xA700 (the sender tries again later), so that many callers sending
   * large unstreamable images at once cannot take more memory than this. */
  maxBufferedBytesTotal: number;
  /** An association with no PDU received for this long, and nothing being stored, is aborted. */
  idleTimeoutMs: number;
  /** An association open this long is aborted at its next quiet moment (nothing being stored). */
  associationTimeLimitMs: number;
  /** A connection that sends no A-ASSOCIATE-RQ within this time is closed. */
  associationRequestTimeoutMs: number;
}

export const MIN_PDU_BYTES = 4096;
export const MAX_PDU_BYTES = 4 * 1024 * 1024;
/** A dataset is handed on as one Buffer and written with one writev: both stop short of 2 GiB. */
export const MAX_DATASET_BYTES = 2 * 1024 * 1024 * 1024 - 1;

export const DEFAULT_NETWORK_LIMITS: Readonly<NetworkLimits> = {
  maxAssociations: 32,
  maxAssociationsPerCaller: 8,
  maxPduBytes: 262144,
  maxDatasetBytes: 1024 * 1024 * 1024,
  maxBufferedBytes: 256 * 1024 * 1024,
  maxBufferedBytesTotal: 512 * 1024 * 1024,
  idleTimeoutMs: 300_000,
  associationTimeLimitMs: 3_600_000,
  associationRequestTimeoutMs: 30_000,
};

/**
 * Connections (associated or not) beyond this many are not kept: a new one first displaces the oldest
 * connection that has not sent its A-ASSOCIATE-RQ yet, so idle sockets cannot lock out real callers.
 */
export function maxConnections(limits: NetworkLimits): number {
  return 2 * limits.maxAssociations + 16;
}

/** Whatever holds a dataset in memory whole (an association receiving one), with its current size. */
export interface BufferHolder {
  readonly bufferedBytes: number;
}

/** The datasets held in memory whole now, over every association of every endpoint sharing this
 * (limits.maxBufferedBytesTotal). Summed on demand: a few dozen associations at most. */
export class BufferedDatasets {
  private readonly holders = new Set<BufferHolder>();

  add(h: BufferHolder): void {
    this.holders.add(h);
  }

  delete(h: BufferHolder): void {
    this.holders.delete(h);
  }

  heldExcept(h: BufferHolder): number {
    let n = 0;
    for (const x of this.holders) if (x !== h) n += x.bufferedBytes;
    return n;
  }
}

/** Counts open associations, in total and per calling AE title (case-insensitive). */
export class AssociationSlots {
  private total = 0;
  private readonly perCaller = new Map<string, number>();

  constructor(private readonly limits: Pick<NetworkLimits, 'maxAssociations' | 'maxAssociationsPerCaller'>) {}

  /** Takes a slot for callingAe, or says which limit is reached. */
  acquire(callingAe: string): 'ok' | 'total' | 'caller' {
    const key = callingAe.trim().toUpperCase();
    if (this.total >= this.limits.maxAssociations) return 'total';
    const n = this.perCaller.get(key) ?? 0;
    if (n >= this.limits.maxAssociationsPerCaller) return 'caller';
    this.total++;
    this.perCaller.set(key, n + 1);
    return 'ok';
  }

  release(callingAe: string): void {
    const key = callingAe.trim().toUpperCase();
    const n = this.perCaller.get(key) ?? 0;
    if (n <= 0) return;
    this.total--;
    if (n === 1) this.perCaller.delete(key);
    else this.perCaller.set(key, n - 1);
  }

  get open(): number {
    return this.total;
  }
}
