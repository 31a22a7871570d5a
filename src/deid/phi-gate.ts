// The PHI gate: after de-identification and before delivery, the output is searched for the
// input's own identifiers (its patient's name, IDs, birth date, accession number, address, phone,
// the names of its physicians and operators, its institution, its original UIDs). A pure function
// of (input, output, plan): it reads no files, and its answer names where an identifier was found
// and which kind it is, never the value.
//
// Cost: the identifiers of one image are gathered once (a handful of needles), then every element
// of the output is visited once; only text-bearing values are decoded, and only those at least as
// long as the shortest needle. The result is O(tags) with a small constant, on the network hot path.
import { DicomObject, Element, elementString, findElement } from '../dicom/dataset';
import { formatTag, isPrivateTag, lookupTag } from '../dicom/dictionary';
import { byteEncodingOf, textDecoderFor, TextDecoderFn } from '../dicom/charset';
import type { Op, StudyPlan } from './plan';

export type IdentifierKind =
  | 'PatientName' | 'PatientID' | 'OtherPatientIDs' | 'IssuerOfPatientID' | 'PatientBirthDate'
  | 'AccessionNumber' | 'PatientAddress' | 'PatientTelephoneNumbers' | 'ReferringPhysicianName'
  | 'PerformingPhysicianName' | 'OperatorsName' | 'InstitutionName'
  | 'StudyInstanceUID' | 'SeriesInstanceUID' | 'SOPInstanceUID' | 'FrameOfReferenceUID';

/** One identifier found in the output: the attribute path (keywords, item indexes, private tags as
 * (gggg,eeee)) and the kind of identifier. Never the value. */
export interface PhiHit { path: string; kind: IdentifierKind }

/** How a needle must be delimited in the text around it:
 * WORD: a person's name component, not part of a longer word (a letter or digit on either side
 *   continues the word);
 * TOKEN: an ID, date, number or institution: a digit next to a digit, or a letter next to a
 *   letter, continues it ("MRN12345" holds ID 12345; "123456" does not);
 * UID: a digit or dot next to it continues the UID (1.2.3 is not in 1.2.3.4). */
const WORD = 0;
const TOKEN = 1;
const UID = 2;

interface Needle {
  /** Upper case, as decoded from the input. */
  text: string;
  kind: IdentifierKind;
  mode: number;
  /** The needle is a person's name component: not looked for in code strings (CS, AE). */
  name: boolean;
  /** A date: also looked for in DA and DT values. */
  date: boolean;
  /** Prefilter keys (see BIGRAMS), per encoding, made on first use. */
  keys?: Partial<Record<KeyEncoding, number[]>>;
}

/** How values are looked at: as bytes of Latin-1 or UTF-8 text, or decoded to characters. */
type KeyEncoding = 'latin1' | 'utf8' | 'chars';

/** Where each kind comes from in the input, top level. */
const SOURCES: ReadonlyArray<readonly [IdentifierKind, number]> = [
  ['PatientName', 0x00100010], ['PatientID', 0x00100020], ['OtherPatientIDs', 0x00101000],
  ['OtherPatientIDs', 0x00101002], ['IssuerOfPatientID', 0x00100021], ['PatientBirthDate', 0x00100030],
  ['AccessionNumber', 0x00080050], ['PatientAddress', 0x00101040], ['PatientTelephoneNumbers', 0x00102154],
  ['ReferringPhysicianName', 0x00080090], ['PerformingPhysicianName', 0x00081050], ['OperatorsName', 0x00081070],
  ['InstitutionName', 0x00080080], ['StudyInstanceUID', 0x0020000d], ['SeriesInstanceUID', 0x0020000e],
  ['SOPInstanceUID', 0x00080018], ['FrameOfReferenceUID', 0x00200052],
];

const T = {
  SpecificCharacterSet: 0x00080005,
  PatientID: 0x00100020,
  OtherPatientIDsSequence: 0x00101002,
} as const;

/** Attributes the engine itself writes (PS3.15 method attributes): their text is ours. */
function isMethodAttribute(tag: number): boolean {
  return tag === 0x00120062 || tag === 0x00120063 || tag === 0x00120064 || tag === 0x00280303;
}

/** VRs whose values are numbers, times or ages: never searched (a PatientID of 1234 is not found
 * in InstanceNumber 1234). Binary VRs are searched only in private elements. */
const SKIP = 0; // numbers, times, ages, binary numbers
const TEXT = 1; // free text and names: every needle
const CODE = 2; // code strings (CS, AE): no name components
const DATE = 3; // DA, DT: dates only
const BLOB = 4; // OB, OW ...: searched in private elements only
const UIDS = 5;
const VR_CLASS: Readonly<Record<string, number>> = {
  DS: SKIP, IS: SKIP, TM: SKIP, AS: SKIP, US: SKIP, SS: SKIP, UL: SKIP, SL: SKIP, FL: SKIP, FD: SKIP, AT: SKIP, UV: SKIP, SV: SKIP, SQ: SKIP,
  LO: TEXT, SH: TEXT, PN: TEXT, LT: TEXT, ST: TEXT, UT: TEXT, UC: TEXT, UR: TEXT, UN: TEXT,
  CS: CODE, AE: CODE, DA: DATE, DT: DATE,
  OB: BLOB, OW: BLOB, OD: BLOB, OF: BLOB, OL: BLOB, OV: BLOB, UI: UIDS,
};

/** Kinds whose source attribute the study's own rules keep on purpose (a tag rule, a VR rule or
 * an option of the profile that keeps it): those values are expected in the output. */
const deliberateCache = new WeakMap<StudyPlan, Set<IdentifierKind>>();
function deliberatelyKept(plan: StudyPlan): Set<IdentifierKind> {
  let kept = deliberateCache.get(plan);
  if (!kept) {
    kept = new Set();
    for (const [kind, tag] of SOURCES) {
      const vr = lookupTag(tag)?.vr ?? 'UN';
      const op = plan.tagOps.get(tag) ?? plan.vrOps.get(vr) ?? plan.baseOps.get(tag);
      if (op && (op.op === 'keep' || op.op === 'recurse')) kept.add(kind);
    }
    deliberateCache.set(plan, kept);
  }
  return kept;
}

/** Values the study's rules set (value) or derive with a key (hash, regen) carry no input text. */
function setByRule(op: Op | undefined): boolean {
  return op !== undefined && (op.op === 'value' || op.op === 'hash' || op.op === 'regen');
}

/** The identifiers of one input image. */
interface Needles {
  text: Needle[];
  /** Original UIDs -> kind, compared whole against every UI value. */
  uids: Map<string, IdentifierKind>;
  uidLengths: Set<number>;
  /** Length of the shortest text needle: shorter values cannot hold one. */
  minLength: number;
  /** Shortest of any needle or UID. */
  minAny: number;
}

/** Values that stand for a removed identifier (ours is ANONYMIZED): not identifiers themselves. */
const PLACEHOLDERS = new Set([
  'ANONYMIZED', 'ANONYMISED', 'ANONYMOUS', 'ANON', 'DEIDENTIFIED', 'DE-IDENTIFIED', 'REMOVED', 'UNKNOWN', 'NONE',
  'NULL', 'N/A', 'NA', '---', '----', 'XXX', 'XXXX',
]);

/** Attributes that are not searched for some kinds: the maker of a device named like the
 * institution is the maker (vendors' own test images), a coding scheme is not a person. */
const NOT_SEARCHED_FOR: ReadonlyMap<number, ReadonlySet<IdentifierKind>> = new Map([
  [0x00080070, new Set<IdentifierKind>(['InstitutionName'])], // Manufacturer
  [0x00081090, new Set<IdentifierKind>(['InstitutionName'])], // ManufacturerModelName
]);
const CODE_ATTRIBUTES = new Set([0x00080102, 0x00080103]); // CodingSchemeDesignator, CodingSchemeVersion

const MIN_NAME = 2;
const MIN_ID = 3;

function values(el: Element | undefined, decode: TextDecoderFn): string[] {
  if (!el?.value || el.value.length === 0) return [];
  const out: string[] = [];
  for (const part of decode(el.value).split('\\')) {
    let end = part.length;
    while (end > 0 && (part.charCodeAt(end - 1) === 0 || part.charCodeAt(end - 1) === 0x20)) end--;
    const v = part.slice(0, end).trim();
    if (v !== '') out.push(v);
  }
  return out;
}
const TRAILING_PAD = /[\0 ]+$/;

/** Identifiers of the patient and the visit (everything but the UIDs), decoded from the input. */
function patientNeedles(top: readonly Element[], kept: Set<IdentifierKind>, decode: TextDecoderFn): Needle[] {
  const out: Needle[] = [];
  // What the kept kinds would look for: a value the study keeps on purpose is no alarm, also where
  // another identifier has the same value (OtherPatientIDs repeating a kept PatientID).
  const keptTexts = new Set<string>();
  const add = (text: string, kind: IdentifierKind, mode: number, name = false, date = false) => {
    const t = text.toUpperCase();
    if (t.length < (name ? MIN_NAME : MIN_ID) || PLACEHOLDERS.has(t)) return;
    if (kept.has(kind)) {
      keptTexts.add(t);
      return;
    }
    for (const n of out) if (n.text === t && n.kind === kind) return; // a handful of needles: a scan beats a set
    out.push({ text: t, kind, mode, name, date });
  };
  for (const [kind, tag] of SOURCES) {
    if (UID_KINDS.has(kind)) continue;
    const el = findElement(top, tag);
    if (!el) continue;
    switch (kind) {
      case 'PatientName': case 'ReferringPhysicianName': case 'PerformingPhysicianName': case 'OperatorsName':
        for (const v of values(el, decode)) {
          // Component groups (alphabetic = ideographic = phonetic), then family, given and middle
          // names. Prefixes and suffixes (DR, MR, JR) are titles, not identifiers.
          for (const group of v.split('=')) {
            for (const component of group.split('^').slice(0, 3)) add(component.trim(), kind, WORD, true);
          }
        }
        break;
      case 'OtherPatientIDs':
        if (el.items) {
          for (const it of el.items) for (const v of values(findElement(it.elements, T.PatientID), decode)) add(v, kind, TOKEN);
        } else for (const v of values(el, decode)) add(v, kind, TOKEN);
        break;
      case 'PatientBirthDate':
        for (const v of values(el, decode)) {
          const m = /^(\d{4})(\d{2})(\d{2})$/.exec(v);
          if (!m) continue;
          const [, y, mo, d] = m;
          for (const f of [`${y}${mo}${d}`, `${y}-${mo}-${d}`, `${d}.${mo}.${y}`, `${mo}/${d}/${y}`]) add(f, kind, TOKEN, false, true);
        }
        break;
      default: // IDs, accession, address, telephone, institution: whole values
        for (const v of values(el, decode)) add(v, kind, TOKEN);
    }
  }
  return keptTexts.size ? out.filter((n) => !keptTexts.has(n.text)) : out;
}

const UID_KINDS: ReadonlySet<IdentifierKind> = new Set(['StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID', 'FrameOfReferenceUID']);
const PATIENT_SOURCE_TAGS = [T.SpecificCharacterSet, ...SOURCES.filter(([k]) => !UID_KINDS.has(k)).map(([, t]) => t)];
const UID_SOURCE_TAGS = SOURCES.filter(([k]) => UID_KINDS.has(k)).map(([, t]) => t);
const UID_SOURCE_KINDS = SOURCES.filter(([k]) => UID_KINDS.has(k)).map(([k]) => k);

/** The raw values the patient needles come from (and the character set they are decoded with),
 * as one string: each value as Latin-1 (every byte kept) after its length, so that equal keys
 * mean equal values. */
function patientKey(top: readonly Element[]): string {
  let key = '';
  for (let i = 0; i < PATIENT_SOURCE_TAGS.length; i++) {
    const el = findElement(top, PATIENT_SOURCE_TAGS[i]);
    if (el === undefined) key += '-';
    else if (el.items) {
      key += `S${el.items.length}`;
      for (const it of el.items) key += keyPart(findElement(it.elements, T.PatientID)?.value);
    } else key += keyPart(el.value);
  }
  return key;
}

function keyPart(v: Buffer | null | undefined): string {
  return v ? `${v.length}:${v.toString('latin1')}` : '-';
}

/** Patient needles per plan, by patientKey. The images of a run belong to a few patients, often
 * interleaved (a folder per series, an export sorted by UID): each patient's needles are made
 * once. Bounded: the oldest patient goes first. */
const patientCache = new WeakMap<StudyPlan, Map<string, Needle[]>>();
const PATIENTS_CACHED = 256;

function patientNeedlesOf(top: readonly Element[], plan: StudyPlan): Needle[] {
  let byKey = patientCache.get(plan);
  if (!byKey) {
    byKey = new Map();
    patientCache.set(plan, byKey);
  }
  const key = patientKey(top);
  let needles = byKey.get(key);
  if (!needles) {
    const decode = textDecoderFor(elementString(findElement(top, T.SpecificCharacterSet)));
    needles = patientNeedles(top, deliberatelyKept(plan), decode);
    if (byKey.size >= PATIENTS_CACHED) byKey.delete(byKey.keys().next().value as string);
    byKey.set(key, needles);
  }
  return needles;
}

function collectNeedles(input: DicomObject, plan: StudyPlan): Needles {
  const top = input.dataset;
  const patient = patientNeedlesOf(top, plan);
  const kept = deliberatelyKept(plan);
  // Original UIDs (those of the standard identify no one); one the study keeps on purpose is not
  // looked for, also where another kind has the same value.
  const uids = new Map<string, IdentifierKind>();
  let keptUids: string[] | undefined;
  for (let i = 0; i < UID_SOURCE_TAGS.length; i++) {
    const u = elementString(findElement(top, UID_SOURCE_TAGS[i]));
    if (!u || u.startsWith('1.2.840.10008.')) continue;
    const kind = UID_SOURCE_KINDS[i];
    if (kept.has(kind)) (keptUids ??= []).push(u);
    else uids.set(u, kind);
  }
  if (keptUids) for (const u of keptUids) uids.delete(u);
  let minLength = Infinity;
  for (const n of patient) if (n.text.length < minLength) minLength = n.text.length;
  let minUid = Infinity;
  const uidLengths = new Set<number>();
  let text = patient;
  if (uids.size !== 0) {
    text = patient.slice();
    for (const [u, kind] of uids) {
      // Also looked for inside text; a UID too short for that ("1", a placeholder seen in the
      // wild) is still compared whole with every UI value.
      if (u.length >= MIN_ID) {
        text.push({ text: u, kind, mode: UID, name: false, date: false });
        if (u.length < minLength) minLength = u.length;
      }
      if (u.length < minUid) minUid = u.length;
      uidLengths.add(u.length);
    }
  }
  return { text, uids, uidLengths, minLength, minAny: Math.min(minLength, minUid) };
}

function isWordChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) ||
    (c >= 0xc0 && c <= 0x24f && c !== 0xd7 && c !== 0xf7) || (c >= 0x370 && c <= 0x52f);
}
function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** Whether hay[at] (a neighbour of the needle's edge character e) continues the needle. */
function continues(hay: string, at: number, e: number, mode: number): boolean {
  if (at < 0 || at >= hay.length) return false;
  const c = hay.charCodeAt(at);
  if (mode === UID) return isDigit(c) || c === 0x2e;
  if (!isWordChar(e)) return false; // CJK and symbols: no word boundaries to respect
  if (mode === WORD) return isWordChar(c);
  return isDigit(e) ? isDigit(c) : isWordChar(c) && !isDigit(c);
}

/** Whether the needle occurs at hay[i] (hay in upper case) with nothing continuing it. */
function occursAt(hay: string, i: number, n: Needle): boolean {
  const t = n.text;
  return hay.startsWith(t, i) && !continues(hay, i - 1, t.charCodeAt(0), n.mode) && !continues(hay, i + t.length, t.charCodeAt(t.length - 1), n.mode);
}

function contains(hay: string, n: Needle): boolean {
  for (let i = hay.indexOf(n.text); i >= 0; i = hay.indexOf(n.text, i + 1)) if (occursAt(hay, i, n)) return true;
  return false;
}

// Prefilter: instead of one indexOf per needle and value, one pass over each value looks up each
// pair of adjacent bytes (or characters) in a table holding, per pair, a bit mask of the needles
// that start with it, in either case. Only values with such a pair are decoded and compared.
// The table is shared by all images: filled with one image's needles, emptied when its walk ends
// (the gate runs to completion). Needles past 32 share bits: more comparisons, same answers.
const BIGRAMS = new Uint32Array(65536);

function needleKeys(n: Needle, enc: KeyEncoding): number[] {
  let keys = n.keys?.[enc];
  if (!keys) {
    keys = [];
    const a = n.text.charCodeAt(0);
    const b = n.text.charCodeAt(1);
    if (a < 0x80 && b < 0x80) {
      // ASCII is the same in every encoding here; only letters have another case.
      const al = a >= 0x41 && a <= 0x5a ? a + 0x20 : a;
      const bl = b >= 0x41 && b <= 0x5a ? b + 0x20 : b;
      keys.push((a << 8) | b);
      if (bl !== b) keys.push((a << 8) | bl);
      if (al !== a) keys.push((al << 8) | b);
      if (al !== a && bl !== b) keys.push((al << 8) | bl);
    } else {
      const x0 = n.text[0];
      const y0 = n.text[1];
      for (const x of new Set([x0, x0.toLowerCase()])) {
        for (const y of new Set([y0, y0.toLowerCase()])) {
          if (enc === 'chars') keys.push(((x.charCodeAt(0) & 0xff) << 8) | (y.charCodeAt(0) & 0xff));
          else {
            const bytes = Buffer.from(x + y, enc);
            keys.push((bytes[0] << 8) | bytes[1]);
          }
        }
      }
    }
    if (a < 0x80 && b < 0x80) n.keys = { latin1: keys, utf8: keys, chars: keys };
    else n.keys = enc === 'latin1' ? { ...n.keys, latin1: keys } : enc === 'utf8' ? { ...n.keys, utf8: keys } : { ...n.keys, chars: keys };
  }
  return keys;
}

/** Fills the table with the needles; returns the keys set, to clear them afterwards. */
function fillBigrams(needles: readonly Needle[], enc: KeyEncoding): number[] {
  const set: number[] = [];
  for (let j = 0; j < needles.length; j++) {
    for (const k of needleKeys(needles[j], enc)) {
      if (BIGRAMS[k] === 0) set.push(k);
      BIGRAMS[k] |= 1 << (j & 31);
    }
  }
  return set;
}

interface Walk {
  needles: Needles;
  plan: StudyPlan;
  /** How the prefilter table was filled. */
  enc: KeyEncoding;
  hits: PhiHit[];
  /** path segments of the current item: [tag, itemIndex, tag, itemIndex, ...] */
  stack: number[];
}

function pathOf(stack: readonly number[], tag: number): string {
  const parts: string[] = [];
  const name = (t: number) => (isPrivateTag(t) ? formatTag(t) : lookupTag(t)?.keyword ?? formatTag(t));
  for (let i = 0; i < stack.length; i += 2) parts.push(`${name(stack[i])}[${stack[i + 1]}]`);
  parts.push(name(tag));
  return parts.join('.');
}

function hit(w: Walk, tag: number, kind: IdentifierKind): void {
  const path = pathOf(w.stack, tag);
  if (!w.hits.some((h) => h.path === path && h.kind === kind)) w.hits.push({ path, kind });
}

function wanted(n: Needle, code: boolean, cls: number, skip: ReadonlySet<IdentifierKind> | undefined): boolean {
  return !(code && n.name) && !(cls === DATE && !n.date) && !(skip !== undefined && skip.has(n.kind));
}

/** Compares the needles of a prefilter mask with a value (decoded, any case). */
function compare(w: Walk, tag: number, text: string, cls: number, mask: number): void {
  const code = cls === CODE || CODE_ATTRIBUTES.has(tag);
  const skip = NOT_SEARCHED_FOR.get(tag);
  const upper = text.toUpperCase();
  const needles = w.needles.text;
  for (let j = 0; j < needles.length; j++) {
    if ((mask & (1 << (j & 31))) === 0) continue;
    const n = needles[j];
    if (wanted(n, code, cls, skip) && upper.length >= n.text.length && contains(upper, n)) hit(w, tag, n.kind);
  }
}

/** Searches a value whose bytes are Latin-1 or UTF-8 text: the prefilter runs on the bytes, and
 * only a value that passes it is decoded. */
function scanBytes(w: Walk, tag: number, v: Buffer, cls: number, decode: TextDecoderFn): void {
  let mask = 0;
  for (let i = 0, end = v.length - 1; i < end; i++) mask |= BIGRAMS[(v[i] << 8) | v[i + 1]];
  if (mask !== 0) compare(w, tag, decode(v), cls, mask);
}

/** Searches a decoded value (other character sets). */
function scanChars(w: Walk, tag: number, text: string, cls: number): void {
  let mask = 0;
  for (let i = 0, end = text.length - 1; i < end; i++) mask |= BIGRAMS[((text.charCodeAt(i) & 0xff) << 8) | (text.charCodeAt(i + 1) & 0xff)];
  if (mask !== 0) compare(w, tag, text, cls, mask);
}

/** Compares the UIDs of a UI value with the originals. Most values are one new UID whose length
 * differs from every original's: those are settled without making a string. */
function scanUids(w: Walk, tag: number, v: Buffer): void {
  let end = v.length;
  while (end > 0 && (v[end - 1] === 0 || v[end - 1] === 0x20)) end--;
  if (v.indexOf(0x5c) < 0) {
    if (!w.needles.uidLengths.has(end)) return;
    const kind = w.needles.uids.get(v.toString('latin1', 0, end).trim());
    if (kind) hit(w, tag, kind);
    return;
  }
  for (const u of v.toString('latin1', 0, end).split('\\')) {
    const kind = w.needles.uids.get(u.replace(TRAILING_PAD, '').trim());
    if (kind) hit(w, tag, kind);
  }
}

function walk(elements: readonly Element[], w: Walk, decode: TextDecoderFn): void {
  const { needles, plan } = w;
  if (w.stack.length > 0) {
    const cs = findElement(elements, T.SpecificCharacterSet);
    if (cs?.value) decode = textDecoderFor(elementString(cs)); // an item may declare its own
  }
  const enc = byteEncodingOf(decode) ?? 'chars';
  const rules = plan.tagOps.size > 0 || plan.vrOps.size > 0;
  for (const el of elements) {
    const tag = el.tag;
    if (el.items) {
      for (let i = 0; i < el.items.length; i++) {
        w.stack.push(tag, i);
        walk(el.items[i].elements, w, decode);
        w.stack.length -= 2;
      }
      continue;
    }
    const v = el.value;
    if (v === null || v.length < needles.minAny || isMethodAttribute(tag)) continue;
    let vr = el.vr;
    if (vr === 'UN' && (tag & 0x10000) === 0) vr = lookupTag(tag)?.vr ?? 'UN';
    let cls = VR_CLASS[vr] ?? SKIP;
    if (cls === SKIP) continue;
    if (cls === UIDS) {
      if (needles.uids.size !== 0) scanUids(w, tag, v);
      continue;
    }
    if (v.length < needles.minLength) continue;
    if (rules && (setByRule(plan.tagOps.get(tag)) || setByRule(plan.vrOps.get(vr)))) continue;
    if (cls === BLOB) {
      // Private binary blobs (vendor headers) often carry the patient's data as plain text.
      if ((tag & 0x10000) === 0) continue;
      cls = TEXT;
    }
    if (enc !== w.enc) compare(w, tag, decode(v), cls, -1); // an item in another character set: no prefilter
    else if (enc === 'chars') scanChars(w, tag, decode(v), cls);
    else scanBytes(w, tag, v, cls, decode);
  }
}

/**
 * Searches a de-identified object for the identifiers of the object it was made from.
 * Identifiers whose source attribute the plan keeps on purpose (PatientID: keep, the
 * retainUIDs option ...) are not looked for; values a study rule sets or hashes are not searched.
 */
export function phiGate(input: DicomObject, output: DicomObject, plan: StudyPlan): PhiHit[] {
  const needles = collectNeedles(input, plan);
  if (needles.text.length === 0 && needles.uids.size === 0) return [];
  const decode = textDecoderFor(elementString(findElement(output.dataset, T.SpecificCharacterSet)));
  const enc = byteEncodingOf(decode) ?? 'chars';
  const w: Walk = { needles, plan, enc, hits: [], stack: [] };
  const keys = fillBigrams(needles.text, enc);
  try {
    walk(output.meta, w, decode);
    walk(output.dataset, w, decode);
  } finally {
    for (const k of keys) BIGRAMS[k] = 0;
  }
  return w.hits;
}

/** A one-line, value-free description of hits, for quarantine reasons and logs. */
export function describeHits(hits: readonly PhiHit[], max = 8): string {
  const parts = hits.slice(0, max).map((h) => `${h.path} holds the ${h.kind}`);
  if (hits.length > max) parts.push(`and ${hits.length - max} more`);
  return parts.join('; ');
}
