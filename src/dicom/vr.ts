// Value Representation facts (PS3.5 6.2) the reader, writer and actions need.

/** VRs whose explicit-VR header has 2 reserved bytes and a 32-bit length. */
const LONG_LENGTH = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
export function hasLongLength(vr: string): boolean {
  return LONG_LENGTH.has(vr);
}

const ALL_VRS = new Set([
  'AE', 'AS', 'AT', 'CS', 'DA', 'DS', 'DT', 'FD', 'FL', 'IS', 'LO', 'LT', 'OB', 'OD', 'OF', 'OL', 'OV', 'OW',
  'PN', 'SH', 'SL', 'SQ', 'SS', 'ST', 'SV', 'TM', 'UC', 'UI', 'UL', 'UN', 'UR', 'US', 'UT', 'UV',
]);
export function isKnownVr(vr: string): boolean {
  return ALL_VRS.has(vr);
}
export const KNOWN_VRS: readonly string[] = [...ALL_VRS];

// The reader meets a VR as two bytes, for every element. One table indexed by those bytes gives
// the (interned) VR string and its header form without building a string first.
const VR_SLOTS: Array<string | undefined> = new Array(26 * 26).fill(undefined);
const LONG_SLOTS = new Uint8Array(26 * 26);
for (const vr of ALL_VRS) {
  const i = (vr.charCodeAt(0) - 65) * 26 + (vr.charCodeAt(1) - 65);
  VR_SLOTS[i] = vr;
  LONG_SLOTS[i] = LONG_LENGTH.has(vr) ? 1 : 0;
}
/** Slot of the VR spelled by bytes c0 c1, or -1 when they spell no known VR. */
export function vrSlot(c0: number, c1: number): number {
  const a = c0 - 65;
  const b = c1 - 65;
  if (a < 0 || a > 25 || b < 0 || b > 25) return -1;
  const i = a * 26 + b;
  return VR_SLOTS[i] === undefined ? -1 : i;
}
export function vrAtSlot(slot: number): string {
  return VR_SLOTS[slot] as string;
}
export function slotHasLongLength(slot: number): boolean {
  return LONG_SLOTS[slot] === 1;
}

/** Character-string VRs: values are text, padded to even length with a space (UI: NUL). */
const STRING_VRS = new Set(['AE', 'AS', 'CS', 'DA', 'DS', 'DT', 'IS', 'LO', 'LT', 'PN', 'SH', 'ST', 'TM', 'UC', 'UI', 'UR', 'UT']);
export function isStringVr(vr: string): boolean {
  return STRING_VRS.has(vr);
}

/** Maximum length of one value, in characters (PN: per component group). */
export const MAX_LENGTH: Readonly<Record<string, number>> = {
  AE: 16, AS: 4, CS: 16, DA: 8, DS: 16, DT: 26, IS: 12, LO: 64, LT: 10240, PN: 64, SH: 16, ST: 1024,
  TM: 14, UI: 64, UC: 0xfffffffe, UR: 0xfffffffe, UT: 0xfffffffe,
};

/** Fixed byte size of one binary numeric value. */
export const BINARY_SIZE: Readonly<Record<string, number>> = {
  US: 2, SS: 2, UL: 4, SL: 4, FL: 4, FD: 8, AT: 4, UV: 8, SV: 8,
};
