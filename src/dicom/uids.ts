// Transfer syntaxes and what they mean for the byte layout of a dataset.

export const TS = {
  ImplicitLE: '1.2.840.10008.1.2',
  ExplicitLE: '1.2.840.10008.1.2.1',
  DeflatedExplicitLE: '1.2.840.10008.1.2.1.99',
  ExplicitBE: '1.2.840.10008.1.2.2',
} as const;

export interface Syntax { explicit: boolean; littleEndian: boolean }
export const IMPLICIT_LE: Syntax = { explicit: false, littleEndian: true };
export const EXPLICIT_LE: Syntax = { explicit: true, littleEndian: true };
export const EXPLICIT_BE: Syntax = { explicit: true, littleEndian: false };

export interface TransferSyntaxInfo { syntax: Syntax; deflated: boolean; encapsulated: boolean }

/** Layout of a transfer syntax. Every TS not listed here is an encapsulated (compressed) one. */
export function transferSyntaxInfo(uid: string): TransferSyntaxInfo {
  switch (uid) {
    case TS.ImplicitLE: return { syntax: IMPLICIT_LE, deflated: false, encapsulated: false };
    case TS.ExplicitLE: return { syntax: EXPLICIT_LE, deflated: false, encapsulated: false };
    case TS.DeflatedExplicitLE: return { syntax: EXPLICIT_LE, deflated: true, encapsulated: false };
    case TS.ExplicitBE: return { syntax: EXPLICIT_BE, deflated: false, encapsulated: false };
    default: return { syntax: EXPLICIT_LE, deflated: false, encapsulated: true };
  }
}

/** PS3.5 9.1: components of digits without leading zeros, dot separated, at most 64 chars. */
export function isValidUid(uid: string): boolean {
  return uid.length > 0 && uid.length <= 64 && /^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$/.test(uid);
}

/** UIDs under the DICOM root are defined by the standard (classes, transfer syntaxes, well-known
 * frames of reference, coding schemes): they identify no one and must never be remapped. */
export function isStandardUid(uid: string): boolean {
  return uid.startsWith('1.2.840.10008.');
}

/** Our implementation UID, under the 2.25 (UUID-derived) root: 2.25 + a fixed random UUID as integer. */
export const IMPLEMENTATION_CLASS_UID = '2.25.263470392658114328217385447325127311364';
export const IMPLEMENTATION_VERSION_NAME = 'DEIDROUTER_01';
