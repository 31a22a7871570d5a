// DIMSE command sets and P-DATA-TF framing, by hand, for both directions: the storage SCP's responses and
// the forwarder's C-STORE-RQs (src/deliver/dimse-scu.ts). dcmjs-dimse built every response through dcmjs
// (naturalized command Dataset -> denaturalize -> WriteBufferStream), which cost ~0.35 ms of CPU per image. A
// command set is a tiny group 0000, always Implicit VR Little Endian (PS3.7 6.3.1).

const COMMAND_FIELD_C_STORE_RSP = 0x8001;
const COMMAND_DATA_SET_TYPE_NONE = 0x0101;

export function uidValue(uid: string): Buffer {
  const s = uid.length % 2 === 1 ? `${uid}\0` : uid;
  return Buffer.from(s, 'latin1');
}

export function element(group: number, elem: number, value: Buffer): Buffer {
  const b = Buffer.allocUnsafe(8 + value.length);
  b.writeUInt16LE(group, 0);
  b.writeUInt16LE(elem, 2);
  b.writeUInt32LE(value.length, 4);
  value.copy(b, 8);
  return b;
}

export function us(v: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16LE(v & 0xffff, 0);
  return b;
}

/** A command set: its elements (in tag order) after their (0000,0000) group length. */
function withGroupLength(elems: Buffer[]): Buffer {
  const gl = Buffer.allocUnsafe(4);
  gl.writeUInt32LE(elems.reduce((n, e) => n + e.length, 0), 0);
  return Buffer.concat([element(0x0000, 0x0000, gl), ...elems]);
}

/** The command set of a C-STORE-RSP, Implicit VR LE, with its (0000,0000) group length. */
export function encodeCStoreRspCommand(p: {
  sopClassUid: string;
  sopInstanceUid: string;
  messageIdBeingRespondedTo: number;
  status: number;
}): Buffer {
  const elems = [
    element(0x0000, 0x0002, uidValue(p.sopClassUid)),
    element(0x0000, 0x0100, us(COMMAND_FIELD_C_STORE_RSP)),
    element(0x0000, 0x0120, us(p.messageIdBeingRespondedTo)),
    element(0x0000, 0x0800, us(COMMAND_DATA_SET_TYPE_NONE)),
    element(0x0000, 0x0900, us(p.status)),
    element(0x0000, 0x1000, uidValue(p.sopInstanceUid)),
  ];
  return withGroupLength(elems);
}

/**
 * P-DATA-TF PDU(s) carrying a command set on presentation context pcId, split into PDVs so that no PDU exceeds
 * the peer's maximum PDU length (0 = unlimited).
 */
export function encodeCommandPData(pcId: number, command: Buffer, peerMaxPdu: number): Buffer {
  return encodePData(pcId, command, true, peerMaxPdu);
}

/** P-DATA-TF PDU(s) carrying a command set or a (small, whole) dataset, as encodeCommandPData. */
export function encodePData(pcId: number, value: Buffer, command: boolean, peerMaxPdu: number): Buffer {
  // A PDU's length field covers its PDV items (4-byte length + pcId + control header + fragment).
  const maxFragment = peerMaxPdu > 0 ? Math.max(1, peerMaxPdu - 6) : Math.max(1, value.length);
  const pdus: Buffer[] = [];
  let off = 0;
  do {
    const frag = value.subarray(off, off + maxFragment);
    off += frag.length;
    const last = off >= value.length;
    const pdu = Buffer.allocUnsafe(6 + 6 + frag.length);
    writePdvHeader(pdu, pcId, command, last, frag.length);
    frag.copy(pdu, 12);
    pdus.push(pdu);
  } while (off < value.length);
  return pdus.length === 1 ? pdus[0] : Buffer.concat(pdus);
}

/** The command set of an N-EVENT-REPORT-RQ (PS3.7 10.3.1) whose Event Information dataset follows. */
export function encodeNEventReportRqCommand(p: { messageId: number; sopClassUid: string; sopInstanceUid: string; eventTypeId: number }): Buffer {
  const elems = [
    element(0x0000, 0x0002, uidValue(p.sopClassUid)),
    element(0x0000, 0x0100, us(0x0100)),
    element(0x0000, 0x0110, us(p.messageId)),
    element(0x0000, 0x0800, us(0x0000)),
    element(0x0000, 0x1000, uidValue(p.sopInstanceUid)),
    element(0x0000, 0x1002, us(p.eventTypeId)),
  ];
  return withGroupLength(elems);
}

/** The command set of any DIMSE response (PS3.7 9.3 / 10.3), Implicit VR LE, with its group length; the
 * affected SOP class is included when known. Used for the answers we give without dcmjs-dimse. */
export function encodeResponseCommand(p: { commandField: number; messageIdBeingRespondedTo: number; status: number; sopClassUid?: string; sopInstanceUid?: string }): Buffer {
  const elems: Buffer[] = [];
  if (p.sopClassUid) elems.push(element(0x0000, 0x0002, uidValue(p.sopClassUid)));
  elems.push(
    element(0x0000, 0x0100, us(p.commandField)),
    element(0x0000, 0x0120, us(p.messageIdBeingRespondedTo)),
    element(0x0000, 0x0800, us(COMMAND_DATA_SET_TYPE_NONE)),
    element(0x0000, 0x0900, us(p.status)),
  );
  if (p.sopInstanceUid !== undefined) elems.push(element(0x0000, 0x1000, uidValue(p.sopInstanceUid)));
  return withGroupLength(elems);
}

/** The 12 bytes before a PDV's fragment when the PDU carries that one PDV: PDU header (type 4, length) and
 * PDV item header (length, presentation context, control header: bit 0 command, bit 1 last fragment). */
export function pdvHeader(pcId: number, command: boolean, last: boolean, fragmentLength: number): Buffer {
  const h = Buffer.allocUnsafe(12);
  writePdvHeader(h, pcId, command, last, fragmentLength);
  return h;
}

function writePdvHeader(b: Buffer, pcId: number, command: boolean, last: boolean, fragmentLength: number): void {
  b[0] = 0x04;
  b[1] = 0;
  b.writeUInt32BE(6 + fragmentLength, 2);
  b.writeUInt32BE(2 + fragmentLength, 6);
  b[10] = pcId;
  b[11] = (command ? 1 : 0) | (last ? 2 : 0);
}
