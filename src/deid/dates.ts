// Date/time shifting for the offset action: DA, TM and DT values moved by a number of seconds,
// keeping each value's precision. A date and the time of the same moment are shifted together.
import { createHmac } from 'crypto';
import type { OffsetSpec } from '../config/types';

/** Seconds to shift for this patient: fixed, or derived from the key and PatientID so that all
 * of one patient's images move by the same amount (intervals survive) and patients differ. */
export function offsetSeconds(spec: OffsetSpec, key: Buffer, patientId: string): number {
  if (spec.kind === 'fixed') return spec.seconds;
  const h = createHmac('sha256', key).update(`patient\0${patientId}`).digest();
  const span = spec.maxDays - spec.minDays + 1;
  return (spec.minDays + (h.readUInt32BE(0) % span)) * 86400;
}

function pad(n: number, w: number): string {
  return String(n).padStart(w, '0');
}

/** Shifts a DA (YYYYMMDD), with its paired TM when there is one. Returns undefined when the value
 * is not a date we understand (the caller then removes it rather than keep an unshifted date). */
export function shiftDate(da: string, seconds: number, tm?: string): string | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(da.trim());
  if (!m) return undefined;
  const t = parseTime(tm ?? '');
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], t?.h ?? 0, t?.m ?? 0, t?.s ?? 0) + seconds * 1000;
  const d = new Date(ms);
  if (Number.isNaN(ms)) return undefined;
  return `${pad(d.getUTCFullYear(), 4)}${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)}`;
}

interface Time { h: number; m: number; s: number; frac: string; precision: 1 | 2 | 3 }

function parseTime(tm: string): Time | undefined {
  const m = /^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$/.exec(tm.trim());
  if (!m) return undefined;
  return {
    h: +m[1], m: m[2] ? +m[2] : 0, s: m[3] ? +m[3] : 0, frac: m[4] ?? '',
    precision: m[3] ? 3 : m[2] ? 2 : 1,
  };
}

/** Shifts a TM. With its paired DA, the time of day is the one of the shifted moment. */
export function shiftTime(tm: string, seconds: number): string | undefined {
  const t = parseTime(tm);
  if (!t) return undefined;
  let total = (t.h * 3600 + t.m * 60 + t.s + seconds) % 86400;
  if (total < 0) total += 86400;
  const h = Math.floor(total / 3600), mi = Math.floor((total % 3600) / 60), s = total % 60;
  if (t.precision === 1) return pad(h, 2);
  if (t.precision === 2) return pad(h, 2) + pad(mi, 2);
  return pad(h, 2) + pad(mi, 2) + pad(s, 2) + t.frac;
}

/** Shifts a DT (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]) keeping its precision and offset suffix. */
export function shiftDateTime(dt: string, seconds: number): string | undefined {
  const m = /^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$/.exec(dt.trim());
  if (!m) return undefined;
  const ms = Date.UTC(+m[1], m[2] ? +m[2] - 1 : 0, m[3] ? +m[3] : 1, m[4] ? +m[4] : 0, m[5] ? +m[5] : 0, m[6] ? +m[6] : 0) + seconds * 1000;
  const d = new Date(ms);
  const parts = [
    pad(d.getUTCFullYear(), 4), pad(d.getUTCMonth() + 1, 2), pad(d.getUTCDate(), 2),
    pad(d.getUTCHours(), 2), pad(d.getUTCMinutes(), 2), pad(d.getUTCSeconds(), 2),
  ];
  const present = [true, !!m[2], !!m[3], !!m[4], !!m[5], !!m[6]];
  let out = '';
  for (let i = 0; i < 6 && present[i]; i++) out += parts[i];
  return out + (m[6] && m[7] ? m[7] : '') + (m[8] ?? '');
}

/** DA tag -> TM tag of the same moment, for the pairs of PS3.3 that occur in images. */
export const DATE_TIME_PAIRS: ReadonlyMap<number, number> = new Map([
  [0x00080012, 0x00080013], [0x00080020, 0x00080030], [0x00080021, 0x00080031], [0x00080022, 0x00080032],
  [0x00080023, 0x00080033], [0x00080024, 0x00080034], [0x00080025, 0x00080035], [0x00100030, 0x00100032],
  [0x00181012, 0x00181014], [0x00181200, 0x00181201], [0x00320032, 0x00320033], [0x00320034, 0x00320035],
  [0x00321000, 0x00321001], [0x00321010, 0x00321011], [0x00321040, 0x00321041], [0x00321050, 0x00321051],
  [0x00380020, 0x00380021], [0x0038001a, 0x0038001b], [0x00380030, 0x00380032], [0x00400002, 0x00400003],
  [0x00400004, 0x00400005], [0x00400244, 0x00400245], [0x00400250, 0x00400251], [0x0040a121, 0x0040a122],
  [0x30080024, 0x30080025], [0x30080162, 0x30080164], [0x30080166, 0x30080168], [0x300a022c, 0x300a022e],
]);
