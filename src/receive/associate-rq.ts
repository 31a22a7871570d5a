// Checks a raw A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) before dcmjs-dimse reads it.
//
// Why: dcmjs-dimse renumbers a presentation context whose ID it has already seen (ID + 2, and so on), so a
// request with more than 128 contexts, or with repeated IDs, ends up with IDs above 255 that its
// A-ASSOCIATE-AC writer cannot encode (RangeError). PS3.8 allows at most 128 contexts (odd IDs 1-255, each
// once); anything else is refused here, before the library sees it.

/** Most presentation contexts one association can carry: the odd IDs 1 to 255. */
export const MAX_PRESENTATION_CONTEXTS = 128;

const ITEM_APPLICATION_CONTEXT = 0x10;
const ITEM_PRESENTATION_CONTEXT = 0x20;
const ITEM_USER_INFORMATION = 0x50;
const SUB_ITEM_ABSTRACT_SYNTAX = 0x30;
const SUB_ITEM_TRANSFER_SYNTAX = 0x40;
/** Fixed fields after the 6-byte PDU header: version, reserved, called AE, calling AE, reserved. */
const FIXED_FIELDS = 68;

export type AssociateRqProblem =
  /** Well formed, but asks for more than we (or the standard) allow: answer with an A-ASSOCIATE-RJ. */
  | { kind: 'refuse'; why: string }
  /** Not a valid PDU: answer with an A-ABORT (invalid PDU parameter). */
  | { kind: 'malformed'; why: string };

/**
 * Returns what is wrong with an A-ASSOCIATE-RQ (the whole PDU, header included), or undefined if dcmjs-dimse
 * can be given it safely. Reads only lengths and IDs; nothing of the peer's data goes into the reason.
 */
export function checkAssociateRq(pdu: Buffer): AssociateRqProblem | undefined {
  if (pdu.length < 6 + FIXED_FIELDS) return { kind: 'malformed', why: 'A-ASSOCIATE-RQ shorter than its fixed fields' };
  const end = 6 + pdu.readUInt32BE(2);
  if (end !== pdu.length) return { kind: 'malformed', why: 'A-ASSOCIATE-RQ length field does not match its size' };
  const ids = new Set<number>();
  let contexts = 0;
  let badId: string | undefined;
  let off = 6 + FIXED_FIELDS;
  while (off < end) {
    if (off + 4 > end) return { kind: 'malformed', why: 'truncated item header' };
    const type = pdu[off];
    const len = pdu.readUInt16BE(off + 2);
    const body = off + 4;
    if (body + len > end) return { kind: 'malformed', why: `item 0x${type.toString(16)} overruns the PDU` };
    if (type === ITEM_PRESENTATION_CONTEXT) {
      contexts++;
      if (len < 4) return { kind: 'malformed', why: 'presentation context item too short' };
      const id = pdu[body];
      if (id % 2 === 0) badId ??= `presentation context ID ${id} is not odd`;
      else if (ids.has(id)) badId ??= `presentation context ID ${id} proposed twice`;
      ids.add(id);
      const problem = checkSubItems(pdu, body + 4, body + len);
      if (problem) return { kind: 'malformed', why: problem };
    } else if (type === ITEM_USER_INFORMATION) {
      const problem = checkSubItems(pdu, body, body + len);
      if (problem) return { kind: 'malformed', why: problem };
    } else if (type !== ITEM_APPLICATION_CONTEXT) {
      return { kind: 'malformed', why: `unknown item type 0x${type.toString(16)}` };
    }
    off = body + len;
  }
  if (contexts > MAX_PRESENTATION_CONTEXTS) {
    return { kind: 'refuse', why: `${contexts} presentation contexts proposed (at most ${MAX_PRESENTATION_CONTEXTS})` };
  }
  return badId === undefined ? undefined : { kind: 'malformed', why: badId };
}

/** Sub-items (type, reserved, 2-byte length) must tile [from, to) exactly. */
function checkSubItems(pdu: Buffer, from: number, to: number): string | undefined {
  let off = from;
  while (off < to) {
    if (off + 4 > to) return 'truncated sub-item header';
    const len = pdu.readUInt16BE(off + 2);
    const type = pdu[off];
    if ((type === SUB_ITEM_ABSTRACT_SYNTAX || type === SUB_ITEM_TRANSFER_SYNTAX) && len === 0) return 'empty syntax UID';
    off += 4 + len;
  }
  return off === to ? undefined : 'sub-item overruns its item';
}

/** A-ASSOCIATE-RJ PDU (PS3.8 9.3.4). */
export function associateRjPdu(result: number, source: number, reason: number): Buffer {
  return Buffer.from([0x03, 0, 0, 0, 0, 4, 0, result, source, reason]);
}

/** A-ABORT PDU (PS3.8 9.3.8). */
export function abortPdu(source: number, reason: number): Buffer {
  return Buffer.from([0x07, 0, 0, 0, 0, 4, 0, 0, source, reason]);
}
