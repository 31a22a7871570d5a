// Checking and encoding of values we write (config `value`s, dummies, hashes, shifted dates).
import { BINARY_SIZE, MAX_LENGTH, isStringVr } from './vr';
import { isValidUid } from './uids';
import { Syntax } from './uids';

const DA_RE = /^\d{8}$/;
const TM_RE = /^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$/;
const DT_RE = /^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$/;
const IS_RE = /^[+-]?\d+$/;
const DS_RE = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const CS_RE = /^[A-Z0-9 _]*$/;
const AS_RE = /^\d{3}[DWMY]$/;

/** Why `value` is not a valid value of `vr` (one value; multiple values separated by `\`), or
 * undefined when it is valid. */
export function checkValue(vr: string, value: string): string | undefined {
  if (vr === 'SQ') return 'a sequence cannot be set to a value';
  if (['OB', 'OW', 'OD', 'OF', 'OL', 'OV', 'UN'].includes(vr)) return `values of VR ${vr} are binary; only clear, delete or keep apply`;
  const parts = vr === 'LT' || vr === 'ST' || vr === 'UT' || vr === 'UR' ? [value] : value.split('\\');
  for (const p of parts) {
    const max = MAX_LENGTH[vr];
    if (vr === 'PN') {
      for (const g of p.split('=')) if (g.length > 64) return `"${p}" has a component group over 64 characters`;
    } else if (max !== undefined && p.length > max) return `"${p}" is longer than ${max} characters allowed for ${vr}`;
    const bad = (what: string) => `"${p}" is not a valid ${vr} (${what})`;
    switch (vr) {
      case 'DA': if (!DA_RE.test(p) || !validDate(p)) return bad('YYYYMMDD'); break;
      case 'TM': if (!TM_RE.test(p)) return bad('HHMMSS.FFFFFF'); break;
      case 'DT': if (!DT_RE.test(p)) return bad('YYYYMMDDHHMMSS.FFFFFF&ZZXX'); break;
      case 'IS': if (!IS_RE.test(p.trim())) return bad('integer'); break;
      case 'DS': if (!DS_RE.test(p.trim())) return bad('decimal'); break;
      case 'CS': if (!CS_RE.test(p)) return bad('upper-case letters, digits, space, underscore'); break;
      case 'AS': if (!AS_RE.test(p)) return bad('nnnD/W/M/Y'); break;
      case 'UI': if (!isValidUid(p)) return bad('digits and dots, no leading zeros, at most 64'); break;
      case 'AE': if (/[\\\x00-\x1f]/.test(p)) return bad('no control characters'); break;
      case 'US': case 'SS': case 'UL': case 'SL': case 'UV': case 'SV':
        if (!IS_RE.test(p.trim())) return bad('integer'); break;
      case 'FL': case 'FD': if (!DS_RE.test(p.trim())) return bad('number'); break;
      case 'AT': if (!/^[0-9A-Fa-f]{8}$/.test(p)) return bad('gggg eeee as 8 hex digits'); break;
      default: break;
    }
  }
  return undefined;
}

function validDate(s: string): boolean {
  const y = +s.slice(0, 4), m = +s.slice(4, 6), d = +s.slice(6, 8);
  if (m < 1 || m > 12 || d < 1) return false;
  return d <= new Date(Date.UTC(y, m, 0)).getUTCDate();
}

/** Encodes a string value of a string VR, padded to even length. */
export function encodeString(vr: string, text: string, charset?: string): Buffer {
  const utf8 = (charset ?? '').toUpperCase().includes('ISO_IR 192');
  let b = Buffer.from(text, utf8 ? 'utf8' : 'latin1');
  if (b.length & 1) {
    const padded = Buffer.allocUnsafe(b.length + 1);
    b.copy(padded);
    padded[b.length] = vr === 'UI' ? 0x00 : 0x20;
    b = padded;
  }
  return b;
}

/** Encodes a value of any VR from its text form (binary numbers in the dataset's byte order). */
export function encodeValue(vr: string, text: string, syntax: Syntax, charset?: string): Buffer {
  if (isStringVr(vr)) return encodeString(vr, text, charset);
  const size = BINARY_SIZE[vr];
  if (!size) throw new Error(`cannot encode a value of VR ${vr}`);
  const parts = text === '' ? [] : text.split('\\');
  const b = Buffer.alloc(parts.length * size);
  const le = syntax.littleEndian;
  parts.forEach((p, i) => {
    const o = i * size;
    switch (vr) {
      case 'US': le ? b.writeUInt16LE(+p, o) : b.writeUInt16BE(+p, o); break;
      case 'SS': le ? b.writeInt16LE(+p, o) : b.writeInt16BE(+p, o); break;
      case 'UL': le ? b.writeUInt32LE(+p, o) : b.writeUInt32BE(+p, o); break;
      case 'SL': le ? b.writeInt32LE(+p, o) : b.writeInt32BE(+p, o); break;
      case 'FL': le ? b.writeFloatLE(+p, o) : b.writeFloatBE(+p, o); break;
      case 'FD': le ? b.writeDoubleLE(+p, o) : b.writeDoubleBE(+p, o); break;
      case 'UV': le ? b.writeBigUInt64LE(BigInt(p), o) : b.writeBigUInt64BE(BigInt(p), o); break;
      case 'SV': le ? b.writeBigInt64LE(BigInt(p), o) : b.writeBigInt64BE(BigInt(p), o); break;
      case 'AT': {
        const g = parseInt(p.slice(0, 4), 16), e = parseInt(p.slice(4), 16);
        if (le) { b.writeUInt16LE(g, o); b.writeUInt16LE(e, o + 2); } else { b.writeUInt16BE(g, o); b.writeUInt16BE(e, o + 2); }
        break;
      }
    }
  });
  return b;
}
