// Splits a TCP byte stream into DICOM upper-layer PDUs (PS3.8 9.3: 1 byte type, 1 reserved, 4 byte length).
//
// Replaces dcmjs-dimse's accumulator, which Buffer.concat()s the partial PDU with every incoming socket chunk
// (quadratic in the number of chunks per PDU: a 256 KB PDU arriving in 16 KB chunks was copied ~8 times).
// Here chunks are queued and each PDU is assembled with at most one copy; a PDU that lies inside one chunk is
// returned as a view without copying.

export class PduFramingError extends Error {
  /** too-large: a PDU longer than the limit for its type; malformed: not a DICOM PDU. */
  constructor(message: string, readonly reason: 'too-large' | 'malformed' = 'malformed') {
    super(message);
  }
}

/** Upper-layer PDU types (PS3.8 9.3), for the SCP and the SCU alike. */
export const PDU_TYPE = { AssociateRq: 0x01, AssociateAc: 0x02, AssociateRj: 0x03, PDataTf: 0x04, ReleaseRq: 0x05, ReleaseRp: 0x06, Abort: 0x07 } as const;

const MIN_PDU_TYPE = PDU_TYPE.AssociateRq;
const MAX_PDU_TYPE = PDU_TYPE.Abort;

export class PduFramer {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Total length (header included) of the PDU being assembled, or -1 while its header is incomplete. */
  private needed = -1;

  /**
   * @param maxPduBytes largest acceptable PDU length field (header excluded)
   * @param maxPDataBytes largest acceptable P-DATA-TF length field, when lower (the max PDU length we announced)
   */
  constructor(
    private readonly maxPduBytes: number,
    private readonly maxPDataBytes = maxPduBytes,
  ) {}

  /** Feed a socket chunk; calls onPdu for each complete PDU (whole PDU including the 6-byte header), in order. */
  push(chunk: Buffer, onPdu: (pdu: Buffer) => void): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.needed < 0) {
        if (this.buffered < 6) return;
        const head = this.peek(6);
        const type = head[0];
        if (type < MIN_PDU_TYPE || type > MAX_PDU_TYPE) throw new PduFramingError(`unknown PDU type 0x${type.toString(16)}`);
        const length = head.readUInt32BE(2);
        const limit = type === PDU_TYPE.PDataTf ? Math.min(this.maxPduBytes, this.maxPDataBytes) : this.maxPduBytes;
        if (length > limit) throw new PduFramingError(`PDU of type ${type}, length ${length}, exceeds limit ${limit}`, 'too-large');
        this.needed = length + 6;
      }
      if (this.buffered < this.needed) return;
      const pdu = this.take(this.needed);
      this.needed = -1;
      onPdu(pdu);
    }
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  /** The first n buffered bytes (n small), without consuming them. */
  private peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) return first;
    return Buffer.concat(this.chunks, Math.min(this.buffered, 64)).subarray(0, n);
  }

  /** Consume the first n buffered bytes (n <= buffered). */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    this.buffered -= n;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const want = n - off;
      if (c.length <= want) {
        c.copy(out, off);
        off += c.length;
        this.chunks.shift();
      } else {
        c.copy(out, off, 0, want);
        off += want;
        this.chunks[0] = c.subarray(want);
      }
    }
    return out;
  }
}
