// The de-identification engine: a pure function of (encoded object, study plan). It never
// touches files or sockets; the batch command and the storage SCP both call it. Elements that the
// plan keeps are carried over as the same objects (same value slices), so they are written back
// byte for byte; pixel data is never decoded.
import { createHmac } from 'crypto';
import { DicomObject, Element, Item, elementString, findElement, makeElement } from '../dicom/dataset';
import { isPrivateCreator, isPrivateTag, lookupTag } from '../dicom/dictionary';
import { encodeString, encodeValue } from '../dicom/values';
import { BINARY_SIZE, MAX_LENGTH, isStringVr } from '../dicom/vr';
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, isStandardUid } from '../dicom/uids';
import { DATE_TIME_PAIRS, offsetSeconds, shiftDate, shiftDateTime, shiftTime } from './dates';
import { adoptMetaIdentity } from '../dicom/read';
import { isClassUidTag } from './plan';
import type { Op, StudyPlan } from './plan';
import { isStandardCodingScheme } from './code-schemes';
import type { OffsetSpec } from '../config/types';

export class DeidError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeidError';
  }
}

const T = {
  SpecificCharacterSet: 0x00080005,
  SOPClassUID: 0x00080016,
  SOPInstanceUID: 0x00080018,
  PatientID: 0x00100020,
  StudyInstanceUID: 0x0020000d,
  SeriesInstanceUID: 0x0020000e,
  PatientIdentityRemoved: 0x00120062,
  DeidentificationMethod: 0x00120063,
  DeidentificationMethodCodeSequence: 0x00120064,
  LongitudinalTemporalInformationModified: 0x00280303,
  CodeValue: 0x00080100,
  CodingSchemeDesignator: 0x00080102,
  CodeMeaning: 0x00080104,
} as const;

/**
 * Optional observer of the engine's decisions (the `explain` command): called once per element of
 * the input, at every depth, with the operation applied (`op`, when the plan decided) or a note
 * (private data, groups that never belong in a dataset), and the element written (undefined:
 * removed). Absent on the hot path, where it costs one test per element.
 */
export type DeidTrace = (input: Element, vr: string, op: Op | undefined, output: Element | undefined, note?: string) => void;

/** Per-image state the operations need: values of the original top-level dataset. */
interface Ctx {
  trace?: DeidTrace;
  plan: StudyPlan;
  charset: string | undefined;
  top: readonly Element[];
  /** Date offset per (spec) for this image's patient, computed once. */
  offsets: Map<OffsetSpec, number>;
  /** Identifying tokens of this patient, for the clean operation (built on first use). */
  tokens?: string[];
  syntaxLE: boolean;
}

/** De-identifies one object with a study's plan. Returns a new object; the input is not changed. */
export function deidentify(obj: DicomObject, plan: StudyPlan, trace?: DeidTrace): DicomObject {
  const ctx: Ctx = {
    trace,
    plan,
    charset: elementString(findElement(obj.dataset, T.SpecificCharacterSet)),
    top: obj.dataset,
    offsets: new Map(),
    syntaxLE: obj.syntax.littleEndian,
  };
  const dataset = addMethodAttributes(processElements(adoptMetaIdentity(obj.meta, obj.dataset), ctx), ctx, obj);
  const sopClass = elementString(findElement(dataset, T.SOPClassUID)) ?? elementString(findElement(obj.meta, 0x00020002));
  const sopInstance = elementString(findElement(dataset, T.SOPInstanceUID));
  const meta: Element[] = [META_VERSION];
  if (sopClass) meta.push(str(0x00020002, 'UI', sopClass));
  if (sopInstance) meta.push(str(0x00020003, 'UI', sopInstance));
  meta.push(transferSyntaxElement(obj.transferSyntaxUid), META_IMPLEMENTATION_CLASS, META_IMPLEMENTATION_VERSION);
  return { ...obj, meta, dataset, hadMeta: true };
}

const META_VERSION = makeElement(0x00020001, 'OB', Buffer.from([0, 1]));
const META_IMPLEMENTATION_CLASS = str(0x00020012, 'UI', IMPLEMENTATION_CLASS_UID);
const META_IMPLEMENTATION_VERSION = str(0x00020013, 'SH', IMPLEMENTATION_VERSION_NAME);
const transferSyntaxElements = new Map<string, Element>();
function transferSyntaxElement(uid: string): Element {
  let e = transferSyntaxElements.get(uid);
  if (!e) {
    e = str(0x00020010, 'UI', uid);
    // A handful of syntaxes in practice; a stream of made-up ones must not grow the map forever.
    if (transferSyntaxElements.size < 64) transferSyntaxElements.set(uid, e);
  }
  return e;
}

function str(tag: number, vr: string, text: string, charset?: string): Element {
  return makeElement(tag, vr, encodeString(vr, text, charset));
}

function processElements(elements: readonly Element[], ctx: Ctx): Element[] {
  const out: Element[] = [];
  // Private creators of this item: block (group<<8|xx) -> creator name.
  let creators: Map<number, string> | undefined;
  for (const el of elements) {
    const tag = el.tag;
    const group = tag >>> 16;
    if ((tag & 0xffff) === 0 || tag === 0xfffcfffc) { // group lengths, trailing padding: recomputed/dropped
      if (ctx.trace) ctx.trace(el, el.vr, undefined, undefined, 'encoding: group length or padding, not copied');
      continue;
    }
    // Command (0000) and file meta (0002) groups never belong in a stored dataset: the meta is
    // made anew, and copies inside the dataset carry AE titles and private information.
    if (group === 0x0000 || group === 0x0002) {
      if (ctx.trace) ctx.trace(el, el.vr, undefined, undefined, 'safety net: group 0000/0002 inside the dataset');
      continue;
    }
    if (isPrivateTag(tag)) {
      if (group <= 0x0007) { // groups 1, 3, 5, 7 may not be used at all
        if (ctx.trace) ctx.trace(el, el.vr, undefined, undefined, 'private removal: groups 1-7 are not private groups');
        continue;
      }
      if (!creators) creators = privateCreators(elements);
      const kept = keepPrivate(el, creators, ctx.plan);
      let r: Element | undefined;
      if (!kept) r = undefined;
      else if (el.items) r = withItems(el, processItems(el.items, ctx));
      // Safety net: UIDs in kept private data are mapped like public ones, so references into
      // the study stay consistent and no original UID survives.
      else if (el.vr === 'UI' && ctx.plan.uidNetOp) r = applyOp(el, 'UI', ctx.plan.uidNetOp, elements, ctx) as Element;
      else r = el;
      if (r) out.push(r);
      if (ctx.trace) ctx.trace(el, el.vr, undefined, r, !kept ? 'private removal' : r !== el && !el.items ? 'safety net: UID in kept private data' : 'private data kept');
      continue;
    }
    const vr = effectiveVr(el);
    const op = resolveOp(el, vr, ctx.plan);
    const r = applyOp(el, vr, op, elements, ctx);
    if (r) out.push(r);
    if (ctx.trace) ctx.trace(el, vr, op, r);
  }
  return out;
}

// Elements and item lists are made in one way each (makeElement; push onto []), as the reader
// makes them: an object or array of another hidden class reaching the optimised writer after
// warm-up deoptimises it (measured: writeElements was compiled three times per batch run).
function processItems(items: readonly Item[], ctx: Ctx): Item[] {
  const out: Item[] = [];
  for (const it of items) out.push({ elements: processElements(it.elements, ctx), undefinedLength: it.undefinedLength });
  return out;
}

function withItems(el: Element, items: Item[]): Element {
  return makeElement(el.tag, el.vr, el.value, el.undefinedLength, items, el.itemSyntax, el.encapsulated);
}

/** VR the value really has: the dictionary's when the element came as UN (or as OB, which
 * faulty converters use for anything). A sequence attribute whose value could not be read as
 * one stays UN: an opaque value, which the safety nets remove. */
function effectiveVr(el: Element): string {
  if (el.items) return 'SQ';
  if (el.vr !== 'UN' && el.vr !== 'OB') return el.vr;
  const d = lookupTag(el.tag)?.vr;
  if (d === undefined) return el.vr;
  return d === 'SQ' ? 'UN' : d;
}

/** Attributes a VR-wide rule must not touch: breaking them would break the image itself. */
function exemptFromVrRules(tag: number): boolean {
  const group = tag >>> 16;
  return tag === T.SpecificCharacterSet || tag === T.SOPClassUID || group === 0x0028 || group === 0x7fe0 || group === 0x0002;
}

// The fall-through operations, made once: most elements of an image end up here.
const KEEP: Op = { op: 'keep' };
const RECURSE: Op = { op: 'recurse' };

/** `vr`: effectiveVr(el), which the caller has already worked out. */
function resolveOp(el: Element, vr: string, plan: StudyPlan): Op {
  if (plan.vrOps.size === 0) {
    const op = plan.mergedOps.get(el.tag); // tag rule, else profile row
    if (op) return op;
  } else {
    const tagOp = plan.tagOps.get(el.tag);
    if (tagOp) return tagOp;
    if (!exemptFromVrRules(el.tag)) {
      const vrOp = plan.vrOps.get(vr);
      if (vrOp) return vrOp;
    }
    const base = plan.baseOps.get(el.tag);
    if (base) return base;
  }
  return plan.basicProfile ? unlistedOp(el, vr, plan) : el.items ? RECURSE : KEEP;
}

// The safety nets' operations, one object each, so that a trace can tell which net decided.
const NET_OVERLAY: Op = { op: 'delete' };
const NET_PATIENT_GROUP: Op = { op: 'delete' };
const NET_PERSON_NAME: Op = { op: 'clear' };
const NET_OPAQUE: Op = { op: 'delete' };
const NET_UNKNOWN_PUBLIC: Op = { op: 'delete' };

/** Which safety net an operation of unlistedOp stands for (the UID net is plan.uidNetOp). */
export const SAFETY_NETS: ReadonlyMap<Op, string> = new Map<Op, string>([
  [NET_OVERLAY, 'overlay or curve group (60xx, 50xx)'],
  [NET_PATIENT_GROUP, 'group 0010 attribute the table does not list'],
  [NET_PERSON_NAME, 'person name (PN) the table does not list'],
  [NET_OPAQUE, 'opaque public value (UN)'],
  [NET_UNKNOWN_PUBLIC, 'public attribute no dictionary knows'],
]);

/**
 * The safety nets: what the Basic Profile does with an attribute that neither Table E.1-1 nor a
 * study rule names. They fail closed, so that the next attribute a vendor or the standard adds
 * is covered too, not only the ones known today.
 */
function unlistedOp(el: Element, vr: string, plan: StudyPlan): Op {
  const group = el.tag >>> 16;
  // Curves and overlays, whole groups: descriptions, labels and comments are free text.
  if ((group & 0xff00) === 0x5000 || (group & 0xff00) === 0x6000) return NET_OVERLAY;
  // The patient module is where new identifiers appear (alternative calendars, registration
  // numbers, issuer qualifiers): what the table does not keep goes.
  if (group === 0x0010) return NET_PATIENT_GROUP;
  switch (vr) {
    case 'PN': return NET_PERSON_NAME; // a person's name in a newer attribute, or in SR content
    case 'UI': return plan.uidNetOp && !isClassUidTag(el.tag) ? plan.uidNetOp : KEEP;
    case 'UN': return NET_OPAQUE; // an opaque public value: unknown tag, or a sequence we could not read
  }
  if (el.items) return RECURSE;
  return lookupTag(el.tag) ? KEEP : NET_UNKNOWN_PUBLIC; // a public attribute no dictionary knows
}

function applyOp(el: Element, vr: string, op: Op, siblings: readonly Element[], ctx: Ctx): Element | undefined {
  if (el.items) {
    // Sequences: remove, empty, or keep and de-identify every item.
    if (op.op === 'delete') return undefined;
    if (op.op === 'clear') return withItems(el, []);
    if (op.op === 'dummyCode') return withItems(el, dummyCodeItems());
    if (op.op !== 'keep' && op.op !== 'recurse') return undefined; // a value action on a sequence
    return withItems(el, processItems(el.items, ctx));
  }
  switch (op.op) {
    case 'keep':
      return el;
    case 'recurse':
    case 'dummyCode':
      // A sequence operation on a value that is not a sequence: a sequence attribute whose value
      // could not be read as one. Opaque, so it goes.
      return undefined;
    case 'codeMeaning':
      if (isStandardCodingScheme(elementString(findElement(siblings, T.CodingSchemeDesignator)))) return el;
      return op.clean ? cleanElement(el, vr, ctx) : withValue(el, dummyValue(vr, ctx));
    case 'delete':
      return undefined;
    case 'clear':
      return withValue(el, EMPTY);
    case 'dummy':
      if (vr === 'UI') return mapUids(el, ctx.plan.uidKey, undefined, ctx);
      return withValue(el, dummyValue(vr, ctx));
    case 'value':
      if (op.text === undefined || op.text === '') return withValue(el, EMPTY);
      return withValue(el, isStringVr(vr) ? encodeString(vr, op.text, ctx.charset) : encodeValue(vr, op.text, { explicit: true, littleEndian: ctx.syntaxLE }, ctx.charset));
    case 'hash':
      return hashElement(el, vr, op.key, ctx);
    case 'regen':
      if (vr !== 'UI') return withValue(el, EMPTY);
      return mapUids(el, op.key, op.entropy, ctx);
    case 'offset':
      return offsetElement(el, vr, op.offset, op.key, siblings, ctx);
    case 'clean':
      return cleanElement(el, vr, ctx);
  }
}

const EMPTY = Buffer.alloc(0);

/** One code item in a private scheme (PS3.16 8.2: designators starting with 99), standing for a
 * person or institution removed. Valid wherever a code sequence is type 1. */
function dummyCodeItems(): Item[] {
  return [{
    elements: [str(T.CodeValue, 'SH', 'DEIDENTIFIED'), str(T.CodingSchemeDesignator, 'SH', '99DEIDROUTER'), str(T.CodeMeaning, 'LO', DUMMY_TEXT)],
    undefinedLength: false,
  }];
}

function withValue(el: Element, value: Buffer): Element {
  return makeElement(el.tag, el.vr, value);
}

function text(el: Element): string {
  return elementString(el) ?? '';
}

const DUMMY_TEXT = 'ANONYMIZED';

function dummyValue(vr: string, ctx: Ctx): Buffer {
  switch (vr) {
    case 'DA': return encodeString(vr, '19000101');
    case 'TM': return encodeString(vr, '000000');
    case 'DT': return encodeString(vr, '19000101000000');
    case 'AS': return encodeString(vr, '000Y');
    case 'DS': case 'IS': return encodeString(vr, '0');
    case 'AE': case 'CS': case 'SH': case 'LO': case 'LT': case 'ST': case 'UT': case 'UC': case 'PN':
      return encodeString(vr, DUMMY_TEXT, ctx.charset);
    case 'UR': return encodeString(vr, '');
    default: {
      const size = BINARY_SIZE[vr];
      return size ? Buffer.alloc(size) : EMPTY; // zeros of the VR's size; OB/OW/UN: empty
    }
  }
}

/** Keyed, deterministic UID mapping: the same original UID gives the same 2.25 UID in every file,
 * process and machine that shares the key. UIDs defined by the standard are left alone. */
export function mapUid(uid: string, key: Buffer, entropy: string | undefined, plan: StudyPlan): string {
  // Standard UIDs identify classes and syntaxes, not people; a value without a dot ("0", seen in
  // the wild as a placeholder) is not a UID of anything.
  if (uid === '' || isStandardUid(uid) || !uid.includes('.') || uid === IMPLEMENTATION_CLASS_UID) return uid;
  const cacheable = key === plan.uidKey && entropy === undefined;
  if (cacheable) {
    const hit = plan.uidCache.get(uid);
    if (hit) return hit;
  }
  const h = createHmac('sha256', key).update(uid);
  if (entropy !== undefined) h.update('\0').update(entropy);
  const d = h.digest();
  // 2.25 takes a UUID as one integer (ISO/IEC 9834-8). Make the 128 bits a well-formed UUID:
  // version 8 (RFC 9562, application-defined), RFC variant.
  d[6] = (d[6] & 0x0f) | 0x80;
  d[8] = (d[8] & 0x3f) | 0x80;
  const n = BigInt('0x' + d.subarray(0, 16).toString('hex'));
  const out = `2.25.${n.toString(10)}`;
  if (cacheable) plan.uidCache.set(uid, out);
  return out;
}

function mapUids(el: Element, key: Buffer, entropyTags: number[] | undefined, ctx: Ctx): Element {
  const v = text(el);
  if (!v) return el;
  let entropy: string | undefined;
  if (entropyTags?.length) entropy = entropyTags.map((t) => elementString(findElement(ctx.top, t)) ?? '').join('\\');
  const mapped = v.split('\\').map((u) => mapUid(u.trim().replace(/\0/g, ''), key, entropy, ctx.plan)).join('\\');
  return withValue(el, encodeString('UI', mapped));
}

function hashElement(el: Element, vr: string, key: Buffer, ctx: Ctx): Element {
  const raw = el.value;
  if (!raw || raw.length === 0) return el;
  if (vr === 'UI') return mapUids(el, key, undefined, ctx);
  const single = vr === 'LT' || vr === 'ST' || vr === 'UT';
  const values = single ? [text(el)] : text(el).split('\\');
  const out = values.map((v) => {
    const s = v.trim();
    if (!s) return '';
    const d = createHmac('sha256', key).update(s, 'latin1').digest();
    if (vr === 'IS' || vr === 'DS') return (d.readUIntBE(0, 6) % 1e11).toString(10);
    const width = Math.min(MAX_LENGTH[vr] ?? 64, vr === 'SH' || vr === 'CS' || vr === 'AE' ? 16 : 32);
    return d.toString('hex').toUpperCase().slice(0, width);
  });
  return withValue(el, encodeString(vr, out.join('\\')));
}

function patientOffset(spec: OffsetSpec, key: Buffer, ctx: Ctx): number {
  let s = ctx.offsets.get(spec);
  if (s === undefined) {
    s = offsetSeconds(spec, key, elementString(findElement(ctx.top, T.PatientID)) ?? '');
    ctx.offsets.set(spec, s);
  }
  return s;
}

/** Shifts DA/DT/TM. A value we cannot parse is removed, never passed through unshifted. */
function offsetElement(el: Element, vr: string, spec: OffsetSpec, key: Buffer, siblings: readonly Element[], ctx: Ctx): Element | undefined {
  const v = text(el);
  if (!v) return el;
  const secs = patientOffset(spec, key, ctx);
  // The time of each date, value by value: a multi-valued DA and its TM are pairs of moments.
  let pairedTimes: string[] | undefined;
  if (vr === 'DA') {
    const tmTag = DATE_TIME_PAIRS.get(el.tag);
    pairedTimes = tmTag !== undefined ? elementString(findElement(siblings, tmTag))?.split('\\') : undefined;
  }
  const shift = (part: string, index: number): string | undefined => {
    if (vr === 'DA') return shiftDate(part, secs, pairedTimes?.[index]);
    if (vr === 'TM') return shiftTime(part, secs);
    if (vr === 'DT') return shiftDateTime(part, secs);
    return undefined;
  };
  const parts = v.split('\\').map(shift);
  if (parts.some((p) => p === undefined)) return withValue(el, EMPTY);
  return withValue(el, encodeString(vr, parts.join('\\')));
}


/** Clean: keep descriptive text but blank out this patient's identifying tokens found in it. */
function cleanElement(el: Element, vr: string, ctx: Ctx): Element {
  if (!isStringVr(vr) || vr === 'UI' || !el.value) return el;
  if (!ctx.tokens) ctx.tokens = identifyingTokens(ctx.top);
  let v = el.value.toString('latin1');
  let changed = false;
  for (const t of ctx.tokens) {
    const re = new RegExp(t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'gi');
    if (re.test(v)) {
      v = v.replace(re, '*'.repeat(t.length));
      changed = true;
    }
  }
  return changed ? withValue(el, Buffer.from(v, 'latin1')) : el;
}

function identifyingTokens(top: readonly Element[]): string[] {
  const tokens = new Set<string>();
  const add = (s: string | undefined, split: boolean) => {
    if (!s) return;
    for (const p of split ? s.split(/[\^=\\ ,]+/) : [s]) if (p.trim().length >= 3) tokens.add(p.trim());
  };
  for (const tag of [0x00100010, 0x00101001, 0x00101060, 0x00080090, 0x00081050, 0x00081060, 0x00081070]) add(elementString(findElement(top, tag)), true);
  for (const tag of [0x00100020, 0x00101000, 0x00080050, 0x00100030, 0x00101040, 0x00102154]) add(elementString(findElement(top, tag)), false);
  return [...tokens].sort((a, b) => b.length - a.length);
}

function privateCreators(elements: readonly Element[]): Map<number, string> {
  const m = new Map<number, string>();
  for (const e of elements) {
    if (isPrivateCreator(e.tag)) m.set(((e.tag >>> 16) << 8) | (e.tag & 0xff), elementString(e) ?? '');
  }
  return m;
}

function keepPrivate(el: Element, creators: Map<number, string>, plan: StudyPlan): boolean {
  if (!plan.removePrivate) return true;
  if (!plan.keepPrivate.length) return false;
  const group = el.tag >>> 16;
  if (isPrivateCreator(el.tag)) {
    const name = elementString(el) ?? '';
    return plan.keepPrivate.some((k) => k.creator === name);
  }
  const elNo = el.tag & 0xffff;
  if (elNo < 0x1000) return false; // (gggg,0001-000F) and unowned elements
  const creator = creators.get((group << 8) | (elNo >>> 8));
  if (creator === undefined) return false;
  const rule = plan.keepPrivate.find((k) => k.creator === creator);
  if (!rule) return false;
  return rule.elements.length === 0 || rule.elements.includes((group << 8) | (elNo & 0xff));
}

/** The method attributes of a plan, per VR encoding: the same for every image of a study. */
const methodAttributeCache = new WeakMap<StudyPlan, { explicit: Element[]; implicit: Element[] }>();

function methodAttributes(plan: StudyPlan, explicit: boolean): Element[] {
  let cached = methodAttributeCache.get(plan);
  if (!cached) {
    const make = (implicit: boolean): Element[] => {
      const add: Element[] = [];
      if (plan.basicProfile) add.push(str(T.PatientIdentityRemoved, 'CS', plan.identityRemoved ? 'YES' : 'NO'));
      add.push(makeElement(T.DeidentificationMethod, 'LO', encodeString('LO', plan.methodText.join('\\'))));
      if (plan.methodCodes.length) {
        add.push(makeElement(T.DeidentificationMethodCodeSequence, 'SQ', null, false, plan.methodCodes.map(([code, meaning]) => ({
          elements: [str(T.CodeValue, 'SH', code), str(T.CodingSchemeDesignator, 'SH', 'DCM'), str(T.CodeMeaning, 'LO', meaning)],
          undefinedLength: false,
        }))));
      }
      if (plan.basicProfile) add.push(str(T.LongitudinalTemporalInformationModified, 'CS', plan.longitudinal));
      if (implicit) for (const a of add) a.vr = lookupTag(a.tag)?.vr ?? a.vr;
      return add; // in tag order
    };
    cached = { explicit: make(false), implicit: make(true) };
    methodAttributeCache.set(plan, cached);
  }
  return explicit ? cached.explicit : cached.implicit;
}

/** PS3.15 E.1.1: record that and how the object was de-identified. The elements are shared
 * between outputs; nothing changes an element once it is made. */
function addMethodAttributes(dataset: Element[], ctx: Ctx, obj: DicomObject): Element[] {
  const add = methodAttributes(ctx.plan, obj.syntax.explicit);
  // One merge of two tag-ordered lists; an added attribute replaces one the image had.
  const merged: Element[] = [];
  let i = 0;
  for (const e of dataset) {
    while (i < add.length && add[i].tag < e.tag) merged.push(add[i++]);
    const replaced = ((e.tag >>> 16) === 0x0012 || e.tag === T.LongitudinalTemporalInformationModified) && add.some((a) => a.tag === e.tag);
    if (!replaced) merged.push(e);
  }
  while (i < add.length) merged.push(add[i++]);
  return merged;
}

/** New identifying UIDs of a de-identified object, for paths and logs. */
export function objectUids(obj: DicomObject): { sopClassUid?: string; sopInstanceUid?: string; studyInstanceUid?: string; seriesInstanceUid?: string } {
  return {
    sopClassUid: elementString(findElement(obj.dataset, T.SOPClassUID)),
    sopInstanceUid: elementString(findElement(obj.dataset, T.SOPInstanceUID)),
    studyInstanceUid: elementString(findElement(obj.dataset, T.StudyInstanceUID)),
    seriesInstanceUid: elementString(findElement(obj.dataset, T.SeriesInstanceUID)),
  };
}
