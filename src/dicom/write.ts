// Writer for the encoded-dataset model. Output is a list of chunks (headers we build plus value
// slices of the input) joined once at the end, so untouched values are copied exactly once.
import { deflateRawSync } from 'zlib';
import { DicomObject, Element, Item } from './dataset';
import { hasLongLength } from './vr';
import { EXPLICIT_LE, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Syntax } from './uids';

const UNDEFINED = 0xffffffff;
/** Deflated files are rare and small; the fastest level costs a few percent of size, not 5x time. */
const DEFLATE_OPTIONS = { level: 1 };

function header(tag: number, vr: string, length: number, syntax: Syntax): Buffer {
  const le = syntax.littleEndian;
  let h: Buffer;
  if (!syntax.explicit) {
    h = Buffer.allocUnsafe(8);
    if (le) h.writeUInt32LE(length >>> 0, 4);
    else h.writeUInt32BE(length >>> 0, 4);
  } else if (hasLongLength(vr)) {
    h = Buffer.allocUnsafe(12);
    h.write(vr, 4, 'latin1');
    h.writeUInt16LE(0, 6);
    if (le) h.writeUInt32LE(length >>> 0, 8);
    else h.writeUInt32BE(length >>> 0, 8);
  } else {
    if (length > 0xffff) throw new RangeError(`value too long for VR ${vr}: ${length} bytes`);
    h = Buffer.allocUnsafe(8);
    h.write(vr, 4, 'latin1');
    if (le) h.writeUInt16LE(length, 6);
    else h.writeUInt16BE(length, 6);
  }
  if (le) {
    h.writeUInt16LE(tag >>> 16, 0);
    h.writeUInt16LE(tag & 0xffff, 2);
  } else {
    h.writeUInt16BE(tag >>> 16, 0);
    h.writeUInt16BE(tag & 0xffff, 2);
  }
  return h;
}

function itemTag(tag: number, length: number, syntax: Syntax): Buffer {
  const h = Buffer.allocUnsafe(8);
  if (syntax.littleEndian) {
    h.writeUInt16LE(tag >>> 16, 0);
    h.writeUInt16LE(tag & 0xffff, 2);
    h.writeUInt32LE(length >>> 0, 4);
  } else {
    h.writeUInt16BE(tag >>> 16, 0);
    h.writeUInt16BE(tag & 0xffff, 2);
    h.writeUInt32BE(length >>> 0, 4);
  }
  return h;
}

function headerSize(vr: string, syntax: Syntax): number {
  return syntax.explicit && hasLongLength(vr) ? 12 : 8;
}

/** Encoded size of elements; sequences of defined length need it for their length fields. */
export function encodedSize(elements: readonly Element[], syntax: Syntax): number {
  let n = 0;
  for (const el of elements) n += elementSize(el, syntax);
  return n;
}

function elementSize(el: Element, syntax: Syntax): number {
  const h = headerSize(el.vr, syntax);
  if (el.items) return h + itemsSize(el.items, el.itemSyntax ?? syntax) + (el.undefinedLength ? 8 : 0);
  if (el.encapsulated) return h + el.encapsulated.length;
  return h + (el.value ? el.value.length : 0);
}

function itemsSize(items: readonly Item[], syntax: Syntax): number {
  let n = 0;
  for (const it of items) n += 8 + encodedSize(it.elements, syntax) + (it.undefinedLength ? 8 : 0);
  return n;
}

export function writeElements(elements: readonly Element[], syntax: Syntax, out: Buffer[]): void {
  for (const el of elements) {
    if (el.items) {
      const inner = el.itemSyntax ?? syntax;
      const len = el.undefinedLength ? UNDEFINED : itemsSize(el.items, inner);
      out.push(header(el.tag, el.vr, len, syntax));
      for (const it of el.items) {
        out.push(itemTag(0xfffee000, it.undefinedLength ? UNDEFINED : encodedSize(it.elements, inner), inner));
        writeElements(it.elements, inner, out);
        if (it.undefinedLength) out.push(itemTag(0xfffee00d, 0, inner));
      }
      if (el.undefinedLength) out.push(itemTag(0xfffee0dd, 0, inner));
    } else if (el.encapsulated) {
      out.push(header(el.tag, el.vr, UNDEFINED, syntax));
      out.push(el.encapsulated);
    } else {
      const v = el.value ?? EMPTY;
      // Odd lengths from the input are written as read: keep means keep.
      out.push(header(el.tag, el.vr, v.length, syntax));
      if (v.length) out.push(v);
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** Chunks of a complete Part-10 file: zero preamble, DICM, meta group with its length, dataset
 * (deflated again when the transfer syntax is the deflated one). */
export function part10Chunks(obj: DicomObject): Buffer[] {
  const metaBody: Buffer[] = [];
  writeElements(obj.meta.filter((e) => e.tag !== 0x00020000), EXPLICIT_LE, metaBody);
  const metaLen = metaBody.reduce((n, b) => n + b.length, 0);
  const groupLength = header(0x00020000, 'UL', 4, EXPLICIT_LE);
  const lenValue = Buffer.allocUnsafe(4);
  lenValue.writeUInt32LE(metaLen, 0);
  const preamble = Buffer.alloc(132);
  preamble.write('DICM', 128, 'latin1');
  const out: Buffer[] = [preamble, groupLength, lenValue, ...metaBody];
  if (obj.deflated) {
    const body: Buffer[] = [];
    writeElements(obj.dataset, obj.syntax, body);
    out.push(deflateRawSync(Buffer.concat(body), DEFLATE_OPTIONS));
  } else {
    writeElements(obj.dataset, obj.syntax, out);
  }
  return out;
}

export function writePart10(obj: DicomObject): Buffer {
  return Buffer.concat(part10Chunks(obj));
}

/** The dataset alone, in its transfer syntax (for sending by C-STORE). */
export function writeDataset(obj: DicomObject): Buffer {
  const out: Buffer[] = [];
  writeElements(obj.dataset, obj.syntax, out);
  const raw = Buffer.concat(out);
  return obj.deflated ? deflateRawSync(raw, DEFLATE_OPTIONS) : raw;
}

/** A Part-10 file around dataset bytes as received (e.g. by C-STORE), without re-encoding them:
 * the original of a failed image is kept exactly as it came. */
export function part10FromRawDataset(dataset: Buffer, sopClassUid: string, sopInstanceUid: string, transferSyntaxUid: string): Buffer[] {
  const str = (tag: number, vr: string, v: string): Element => {
    let b = Buffer.from(v, 'latin1');
    if (b.length & 1) b = Buffer.concat([b, Buffer.from([vr === 'UI' ? 0 : 0x20])]);
    return { tag, vr, value: b, undefinedLength: false };
  };
  const meta: Element[] = [
    { tag: 0x00020001, vr: 'OB', value: Buffer.from([0, 1]), undefinedLength: false },
    str(0x00020002, 'UI', sopClassUid),
    str(0x00020003, 'UI', sopInstanceUid),
    str(0x00020010, 'UI', transferSyntaxUid),
    str(0x00020012, 'UI', IMPLEMENTATION_CLASS_UID),
    str(0x00020013, 'SH', IMPLEMENTATION_VERSION_NAME),
  ];
  const head = part10Chunks({ meta, dataset: [], transferSyntaxUid, syntax: EXPLICIT_LE, deflated: false, hadMeta: true });
  return [...head, dataset];
}
