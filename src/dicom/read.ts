// Reader for encoded DICOM: Part-10 files (with or without preamble/meta) and bare datasets as
// they arrive over the network. Explicit and implicit VR, little and big endian, deflated,
// sequences and items of defined and undefined length, encapsulated pixel data.
import { inflateRawSync } from 'zlib';
import { DicomObject, DicomParseError, Element, Item, findElement, getString, makeElement } from './dataset';
import { implicitVr, tagsWithVr } from './dictionary';
import { isKnownVr, slotHasLongLength, vrAtSlot, vrSlot } from './vr';
import { EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, Syntax, TS, transferSyntaxInfo } from './uids';

/** Bounds on what one dataset may make the reader do (hostile or broken input). */
export interface ReadLimits {
  /** Largest inflated size of a deflated dataset, in bytes. */
  maxInflatedBytes: number;
  /** Deepest nesting of sequences. */
  maxSequenceDepth: number;
}

export const DEFAULT_READ_LIMITS: ReadLimits = { maxInflatedBytes: 256 * 1024 * 1024, maxSequenceDepth: 32 };

/** A dataset refused because it exceeds a ReadLimits bound (not because it is malformed). */
export class DicomLimitError extends DicomParseError {
  constructor(message: string) {
    super(message);
    this.name = 'DicomLimitError';
  }
}

const ITEM = 0xfffee000;
const ITEM_DELIM = 0xfffee00d;
const SEQ_DELIM = 0xfffee0dd;
const UNDEFINED = 0xffffffff;

// Callers check bounds before reading a header, so the hot reads below index the bytes directly
// (Buffer's read methods re-check them on every call).
class Reader {
  private readonly le: boolean;

  constructor(readonly buf: Buffer, readonly syntax: Syntax, readonly limits: ReadLimits = DEFAULT_READ_LIMITS) {
    this.le = syntax.littleEndian;
  }

  u16(pos: number): number {
    const b = this.buf;
    return this.le ? b[pos] | (b[pos + 1] << 8) : (b[pos] << 8) | b[pos + 1];
  }
  u32(pos: number): number {
    const b = this.buf;
    return this.le
      ? (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16) | (b[pos + 3] << 24)) >>> 0
      : ((b[pos] << 24) | (b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]) >>> 0;
  }
  tag(pos: number): number {
    const b = this.buf;
    return this.le
      ? ((b[pos + 1] << 24) | (b[pos] << 16) | (b[pos + 3] << 8) | b[pos + 2]) >>> 0
      : ((b[pos] << 24) | (b[pos + 1] << 16) | (b[pos + 2] << 8) | b[pos + 3]) >>> 0;
  }

  /** Reads elements from pos until end, or until an item delimiter when inItem is set. */
  readElements(pos: number, end: number, inItem: boolean, depth = 0): { elements: Element[]; pos: number } {
    const elements: Element[] = [];
    const buf = this.buf;
    while (pos < end) {
      if (pos + 8 > end) throw new DicomParseError('truncated element header', pos);
      const tag = this.tag(pos);
      if (tag === 0 && !inItem && isZeroPadding(buf, pos, end)) return { elements, pos: end };
      if (tag === ITEM_DELIM) {
        if (!inItem) throw new DicomParseError('item delimiter outside an item', pos);
        return { elements, pos: pos + 8 };
      }
      if (tag === SEQ_DELIM || tag === ITEM) throw new DicomParseError('unexpected item tag in dataset', pos);
      let vr: string;
      let length: number;
      let valuePos: number;
      if (this.syntax.explicit) {
        const slot = vrSlot(buf[pos + 4], buf[pos + 5]);
        if (slot < 0 && tag >>> 16 === 0 && pos + 8 <= end) {
          // A command-group element without a VR (seen: a zero-length (0000,0000) with VR bytes 00 00
          // opening an explicit dataset), as dcmtk and pydicom tolerate: skip it as implicit VR.
          // Group 0000 never belongs in a stored dataset anyway.
          const skip = pos + 8 + this.u32(pos + 4);
          if (skip > end) throw new DicomParseError('truncated command group element', pos);
          pos = skip;
          continue;
        }
        if (slot < 0) {
          throw new DicomParseError(`invalid VR bytes 0x${buf[pos + 4].toString(16)} 0x${buf[pos + 5].toString(16)}`, pos);
        }
        vr = vrAtSlot(slot);
        if (slotHasLongLength(slot)) {
          if (pos + 12 > end) throw new DicomParseError('truncated element header', pos);
          length = this.u32(pos + 8);
          valuePos = pos + 12;
        } else {
          length = this.u16(pos + 6);
          valuePos = pos + 8;
        }
      } else {
        vr = implicitVr(tag);
        length = this.u32(pos + 4);
        valuePos = pos + 8;
      }

      if (length === UNDEFINED) {
        if (vr === 'SQ') {
          const r = this.readItems(valuePos, end, true, this.syntax, depth + 1);
          elements.push(makeElement(tag, vr, null, true, r.items));
          pos = r.pos;
        } else if (vr === 'UN' || isSequenceTag(tag)) {
          // PS3.5 6.2.2: a UN of undefined length holds an implicit VR little endian sequence. A
          // sequence attribute that arrived with another VR (OB from a faulty converter) is read
          // as the sequence it is, in whichever encoding its first element shows.
          const syntax = vr === 'UN' ? IMPLICIT_LE : this.itemSyntaxAt(valuePos, end);
          const r = this.readItems(valuePos, end, true, syntax, depth + 1);
          elements.push(syntax === IMPLICIT_LE && !(this.le && !this.syntax.explicit)
            ? makeElement(tag, 'UN', null, true, r.items, IMPLICIT_LE)
            : makeElement(tag, 'SQ', null, true, r.items));
          pos = r.pos;
        } else {
          // Encapsulated pixel data (or another encapsulated value): skip fragments, keep bytes.
          const stop = this.skipFragments(valuePos, end);
          elements.push(makeElement(tag, vr, null, true, undefined, undefined, buf.subarray(valuePos, stop)));
          pos = stop;
        }
        continue;
      }

      const valueEnd = valuePos + length;
      if (valueEnd > end) {
        throw new DicomParseError(`value of ${tag.toString(16).padStart(8, '0')} runs past the end of the data`, pos);
      }
      if (vr === 'SQ') {
        const r = this.readItems(valuePos, valueEnd, false, this.syntax, depth + 1);
        elements.push(makeElement(tag, vr, null, false, r.items));
      } else if (this.syntax.explicit && length > 0 && isSequenceTag(tag)) {
        // A sequence attribute that arrived with another VR (UN after an implicit-VR hop, OB from a
        // faulty converter). Its value is a sequence: read it, so that it is de-identified like
        // any other. What cannot be read stays an opaque value, which the engine removes.
        elements.push(this.readMisencodedSequence(tag, vr, valuePos, valueEnd, depth + 1));
      } else {
        elements.push(makeElement(tag, vr, buf.subarray(valuePos, valueEnd)));
      }
      pos = valueEnd;
    }
    if (inItem) throw new DicomParseError('item without delimiter at end of data', pos);
    return { elements, pos };
  }

  /** The items of a defined-length value of a sequence attribute that came with another VR: tried
   * as implicit VR little endian (PS3.5 6.2.2), then in the dataset's own syntax. */
  readMisencodedSequence(tag: number, vr: string, valuePos: number, valueEnd: number, depth: number): Element {
    const first = this.itemSyntaxAt(valuePos, valueEnd);
    const other = first === IMPLICIT_LE ? (this.le ? this.syntax : undefined) : IMPLICIT_LE;
    for (const syntax of other ? [first, other] : [first]) {
      try {
        const r = this.readItems(valuePos, valueEnd, false, syntax, depth);
        // Written back as it came (a UN holding implicit VR LE items, the form PS3.5 6.2.2
        // defines, with its length recomputed), or as a real SQ when the items are in the
        // dataset's own syntax.
        return syntax === IMPLICIT_LE
          ? makeElement(tag, 'UN', null, false, r.items, IMPLICIT_LE)
          : makeElement(tag, 'SQ', null, false, r.items);
      } catch (e) {
        if (e instanceof DicomLimitError) throw e;
      }
    }
    return makeElement(tag, vr, this.buf.subarray(valuePos, valueEnd));
  }

  /** Syntax of the items of a sequence that came without its VR: explicit (the dataset's own)
   * when the first element of the first item spells a VR, else implicit VR little endian. */
  itemSyntaxAt(pos: number, end: number): Syntax {
    if (!this.syntax.explicit || !this.le) return IMPLICIT_LE;
    const e = pos + 8; // first element of the first item
    if (e + 6 <= end && vrSlot(this.buf[e + 4], this.buf[e + 5]) >= 0) return this.syntax;
    return IMPLICIT_LE;
  }

  readItems(pos: number, end: number, undefinedLength: boolean, syntax: Syntax, depth = 1): { items: Item[]; pos: number } {
    if (depth > this.limits.maxSequenceDepth) {
      throw new DicomLimitError(`sequences nested deeper than ${this.limits.maxSequenceDepth} levels`);
    }
    const items: Item[] = [];
    const reader = syntax === this.syntax ? this : new Reader(this.buf, syntax, this.limits);
    while (pos < end) {
      if (pos + 8 > end) throw new DicomParseError('truncated item header', pos);
      const tag = reader.tag(pos);
      const len = reader.u32(pos + 4);
      if (tag === SEQ_DELIM) {
        if (!undefinedLength) throw new DicomParseError('sequence delimiter in a defined-length sequence', pos);
        return { items, pos: pos + 8 };
      }
      if (tag !== ITEM) throw new DicomParseError(`expected an item, found tag ${tag.toString(16)}`, pos);
      if (len === UNDEFINED) {
        const r = reader.readElements(pos + 8, end, true, depth);
        items.push({ elements: r.elements, undefinedLength: true });
        pos = r.pos;
      } else {
        const itemEnd = pos + 8 + len;
        if (itemEnd > end) throw new DicomParseError('item runs past the end of its sequence', pos);
        const r = reader.readElements(pos + 8, itemEnd, false, depth);
        items.push({ elements: r.elements, undefinedLength: false });
        pos = itemEnd;
      }
    }
    if (undefinedLength) throw new DicomParseError('sequence without delimiter at end of data', pos);
    return { items, pos };
  }

  skipFragments(pos: number, end: number): number {
    // Fragment item tags are always little endian: encapsulation only exists in LE syntaxes.
    while (pos + 8 <= end) {
      const tag = ((this.buf.readUInt16LE(pos) << 16) | this.buf.readUInt16LE(pos + 2)) >>> 0;
      const len = this.buf.readUInt32LE(pos + 4);
      if (tag === SEQ_DELIM) return pos + 8;
      if (tag !== ITEM || len === UNDEFINED) throw new DicomParseError('malformed encapsulated fragment', pos);
      pos += 8 + len;
      if (pos > end) throw new DicomParseError('fragment runs past the end of the data', pos);
    }
    throw new DicomParseError('encapsulated value without sequence delimiter', pos);
  }
}

let sequenceTags: Set<number> | undefined;
/** A public attribute whose dictionary VR is SQ: its value is a sequence whatever VR it came with.
 * Asked for every element the reader meets, so one hash lookup (a Set made on first use). */
export function isSequenceTag(tag: number): boolean {
  if (!sequenceTags) sequenceTags = tagsWithVr('SQ');
  return sequenceTags.has(tag);
}

/** Some writers pad a file with NUL bytes after the last element. */
function isZeroPadding(buf: Buffer, pos: number, end: number): boolean {
  for (let i = pos; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Reads a dataset (no meta) in the given transfer syntax, e.g. as received by C-STORE. An
 * uncompressed dataset whose bytes show another uncompressed encoding than announced is read in
 * the one it really has (and written back in it). */
export function readDataset(buf: Buffer, transferSyntaxUid: string, limits: ReadLimits = DEFAULT_READ_LIMITS): DicomObject {
  const info = transferSyntaxInfo(transferSyntaxUid);
  const data = info.deflated ? inflate(buf, limits) : buf;
  let syntax = info.syntax;
  let ts = transferSyntaxUid;
  if (!info.deflated && !info.encapsulated) {
    syntax = detectSyntax(data, 0, syntax);
    ts = syntaxUid(syntax);
  }
  const { elements } = new Reader(data, syntax, limits).readElements(0, data.length, false);
  return { meta: [], dataset: elements, transferSyntaxUid: ts, syntax, deflated: info.deflated, hadMeta: false };
}

function inflate(buf: Buffer, limits: ReadLimits): Buffer {
  try {
    // Output arrives in chunkSize pieces that are joined at the end: the 16 KB default made
    // inflating a 260 KB dataset 2.5 times slower than one large piece. maxOutputLength stops a
    // deflate bomb (1 MB inflating to 1 GB) before it takes the memory.
    return inflateRawSync(buf, { chunkSize: 1 << 20, maxOutputLength: limits.maxInflatedBytes });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new DicomLimitError(`deflated dataset inflates to more than ${limits.maxInflatedBytes} bytes`);
    }
    throw new DicomParseError('deflated dataset does not inflate');
  }
}

function syntaxUid(syntax: Syntax): string {
  if (!syntax.explicit) return TS.ImplicitLE;
  return syntax.littleEndian ? TS.ExplicitLE : TS.ExplicitBE;
}

/** Groups a dataset's first element has in practice, read in the right byte order. */
const FIRST_GROUPS = new Set([0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028]);

/**
 * The uncompressed encoding a dataset really has, from its first element, as dcmtk and pydicom
 * decide it: the byte order from the group number, explicit VR when the two bytes after the tag
 * spell a VR. Leading command-group (0000) elements, which some writers leave in, are skipped.
 * `declared` is returned when the bytes do not say otherwise.
 */
export function detectSyntax(buf: Buffer, pos: number, declared: Syntax | undefined): Syntax {
  while (pos + 8 <= buf.length && buf[pos] === 0 && buf[pos + 1] === 0) {
    // (0000,xxxx): skip by its length, read either way (the bogus ones seen are zero length).
    const explicitLen = vrSlot(buf[pos + 4], buf[pos + 5]) >= 0 ? buf.readUInt16LE(pos + 6) : -1;
    pos += explicitLen >= 0 ? 8 + explicitLen : 8 + buf.readUInt32LE(pos + 4);
  }
  if (pos + 6 > buf.length) return declared ?? EXPLICIT_LE;
  const le = buf.readUInt16LE(pos);
  const be = buf.readUInt16BE(pos);
  let littleEndian = declared?.littleEndian ?? true;
  if (littleEndian && !FIRST_GROUPS.has(le) && FIRST_GROUPS.has(be)) littleEndian = false;
  else if (!littleEndian && !FIRST_GROUPS.has(be) && FIRST_GROUPS.has(le)) littleEndian = true;
  let explicit = vrSlot(buf[pos + 4], buf[pos + 5]) >= 0;
  // Two length bytes of an implicit VR element can spell a VR by chance: when implicit VR was
  // announced, believe the bytes only if the implicit reading runs past the end.
  if (explicit && declared && !declared.explicit && littleEndian && pos + 8 + buf.readUInt32LE(pos + 4) <= buf.length) explicit = false;
  if (!littleEndian) return EXPLICIT_BE; // implicit VR big endian does not exist
  const s = explicit ? EXPLICIT_LE : IMPLICIT_LE;
  return declared && declared.explicit === s.explicit && declared.littleEndian ? declared : s;
}

/** "DICM" at buf[at]: compared byte by byte, without making a string (asked twice per file). */
function hasDicmAt(buf: Buffer, at: number): boolean {
  return buf.length >= at + 4 && buf[at] === 0x44 && buf[at + 1] === 0x49 && buf[at + 2] === 0x43 && buf[at + 3] === 0x4d;
}

/** True when the bytes look like DICOM at all: a Part-10 preamble, or a bare dataset whose first
 * element is a plausible group 0002/0008 element. Used to skip non-DICOM files quietly. */
export function looksLikeDicom(buf: Buffer): boolean {
  if (hasDicmAt(buf, 128) || hasDicmAt(buf, 0)) return true;
  return sniffBareDataset(buf) !== undefined;
}

function sniffBareDataset(buf: Buffer): Syntax | undefined {
  let pos = 0;
  // Leading command-group elements (0000,xxxx), as detectSyntax skips them.
  while (pos + 8 <= buf.length && buf[pos] === 0 && buf[pos + 1] === 0 && pos < 64) {
    pos += vrSlot(buf[pos + 4], buf[pos + 5]) >= 0 ? 8 + buf.readUInt16LE(pos + 6) : 8 + buf.readUInt32LE(pos + 4);
  }
  if (pos + 8 > buf.length) return undefined;
  const le = buf.readUInt16LE(pos);
  const be = buf.readUInt16BE(pos);
  const plausible = (g: number) => g === 0x0002 || g === 0x0008 || g === 0x0010;
  if (!plausible(le) && !plausible(be)) return undefined;
  if (vrSlot(buf[pos + 4], buf[pos + 5]) >= 0) return plausible(le) ? EXPLICIT_LE : EXPLICIT_BE;
  if (plausible(le) && buf.readUInt32LE(pos + 4) < buf.length) return IMPLICIT_LE;
  return undefined;
}

/** Reads a Part-10 file, or a bare dataset file without preamble/meta (encoding sniffed). */
export function readPart10(buf: Buffer, limits: ReadLimits = DEFAULT_READ_LIMITS): DicomObject {
  let pos: number;
  if (hasDicmAt(buf, 128)) pos = 132;
  else if (hasDicmAt(buf, 0)) pos = 4;
  else {
    if (!sniffBareDataset(buf)) throw new DicomParseError('not a DICOM file (no DICM prefix and no recognisable dataset)');
    pos = 0;
  }
  // File meta: explicit VR little endian, elements of group 0002 only. The group length is not
  // trusted (some writers omit or miscount it): read while the group is 0002. A bare file may
  // have none, or an implicit-VR one, which the dataset reader then meets (and the engine drops).
  let metaEnd = pos;
  while (metaEnd + 8 <= buf.length && buf.readUInt16LE(metaEnd) === 0x0002) {
    const slot = vrSlot(buf[metaEnd + 4], buf[metaEnd + 5]);
    if (slot < 0) break; // implicit-VR meta is malformed; stop at the last good element
    metaEnd = slotHasLongLength(slot) ? metaEnd + 12 + buf.readUInt32LE(metaEnd + 8) : metaEnd + 8 + buf.readUInt16LE(metaEnd + 6);
  }
  if (metaEnd > buf.length) throw new DicomParseError('file meta information runs past the end of the file', pos);
  const meta = new Reader(buf, EXPLICIT_LE, limits).readElements(pos, metaEnd, false).elements;
  const declaredTs = getString(meta, 0x00020010);
  const info = declaredTs ? transferSyntaxInfo(declaredTs) : undefined;
  let syntax: Syntax;
  let ts: string;
  const deflated = info?.deflated ?? false;
  if (info && (info.deflated || info.encapsulated)) {
    syntax = info.syntax;
    ts = declaredTs as string;
  } else {
    // Uncompressed, or no TransferSyntaxUID at all: the bytes say which encoding it really is.
    syntax = detectSyntax(buf, metaEnd, info?.syntax);
    ts = info && syntax === info.syntax ? (declaredTs as string) : syntaxUid(syntax);
  }
  const body = deflated ? inflate(buf.subarray(metaEnd), limits) : buf;
  const start = deflated ? 0 : metaEnd;
  const { elements } = new Reader(body, syntax, limits).readElements(start, body.length, false);
  return { meta, dataset: elements, transferSyntaxUid: ts, syntax, deflated, hadMeta: meta.length > 0 };
}

/**
 * A dataset without SOPClassUID / SOPInstanceUID whose file meta (or a group 0002 left inside the
 * dataset) has MediaStorageSOPClassUID / MediaStorageSOPInstanceUID: the file says what it is,
 * as dcmtk and pydicom take it. Returns the dataset with the element inserted in tag order (the
 * reader itself stays faithful to the bytes; the engine calls this).
 */
export function adoptMetaIdentity(meta: readonly Element[], dataset: Element[]): Element[] {
  let out = dataset;
  for (const [from, to] of [[0x00020002, 0x00080016], [0x00020003, 0x00080018]] as const) {
    if (findElement(out, to)) continue;
    const source = findElement(meta, from) ?? findElement(out, from);
    if (!source?.value || source.value.length === 0) continue;
    const el = makeElement(to, 'UI', source.value);
    let i = 0;
    while (i < out.length && out[i].tag < to) i++;
    out = [...out.slice(0, i), el, ...out.slice(i)];
  }
  return out;
}
