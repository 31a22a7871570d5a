// Writer for the encoded-dataset model. Output is a list of chunks: packed headers and short values,
// and slices of the input for everything large, so pixel data is copied only by the kernel.
import { deflateRawSync } from 'zlib';
import { DicomObject, Element, Item } from './dataset';
import { hasLongLength } from './vr';
import { EXPLICIT_LE, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Syntax } from './uids';

const UNDEFINED = 0xffffffff;
/** Whoever chose the deflated syntax chose size: zlib's default level (level 1 tripled the size
 * of the corpus's deflated image to save 2 ms). */
const DEFLATE_OPTIONS = {};

/**
 * Output under construction. Headers and short values are packed into one scratch buffer; values
 * of BIG bytes or more (pixel data, long text) stay as slices of their source, so the bulk of a
 * file is never copied before the kernel copies it. Packing replaced one small Buffer per header,
 * which cost more in allocation and garbage collection than the copying it avoided.
 */
class Out {
  static readonly BIG = 512;
  readonly chunks: Buffer[] = [];
  private buf: Buffer;
  private start = 0;
  private pos = 0;

  constructor(scratch = 4000) { // under half of Buffer.poolSize: carved from the shared pool
    this.buf = Buffer.allocUnsafe(scratch);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.flush();
    this.buf = Buffer.allocUnsafe(Math.max(n, this.buf.length * 2));
    this.start = this.pos = 0;
  }

  private flush(): void {
    if (this.pos > this.start) this.chunks.push(this.buf.subarray(this.start, this.pos));
    this.start = this.pos;
  }

  private tag(tag: number, le: boolean): void {
    const b = this.buf;
    if (le) {
      b.writeUInt16LE(tag >>> 16, this.pos);
      b.writeUInt16LE(tag & 0xffff, this.pos + 2);
    } else {
      b.writeUInt16BE(tag >>> 16, this.pos);
      b.writeUInt16BE(tag & 0xffff, this.pos + 2);
    }
  }

  header(tag: number, vr: string, length: number, syntax: Syntax): void {
    this.room(12);
    const b = this.buf;
    const le = syntax.littleEndian;
    this.tag(tag, le);
    if (!syntax.explicit) {
      if (le) b.writeUInt32LE(length >>> 0, this.pos + 4);
      else b.writeUInt32BE(length >>> 0, this.pos + 4);
      this.pos += 8;
    } else if (hasLongLength(vr)) {
      b[this.pos + 4] = vr.charCodeAt(0);
      b[this.pos + 5] = vr.charCodeAt(1);
      b.writeUInt16LE(0, this.pos + 6);
      if (le) b.writeUInt32LE(length >>> 0, this.pos + 8);
      else b.writeUInt32BE(length >>> 0, this.pos + 8);
      this.pos += 12;
    } else {
      if (length > 0xffff) throw new RangeError(`value too long for VR ${vr}: ${length} bytes`);
      b[this.pos + 4] = vr.charCodeAt(0);
      b[this.pos + 5] = vr.charCodeAt(1);
      if (le) b.writeUInt16LE(length, this.pos + 6);
      else b.writeUInt16BE(length, this.pos + 6);
      this.pos += 8;
    }
  }

  item(tag: number, length: number, syntax: Syntax): void {
    this.room(8);
    this.tag(tag, syntax.littleEndian);
    if (syntax.littleEndian) this.buf.writeUInt32LE(length >>> 0, this.pos + 4);
    else this.buf.writeUInt32BE(length >>> 0, this.pos + 4);
    this.pos += 8;
  }

  bytes(v: Buffer): void {
    if (v.length >= Out.BIG) {
      this.flush();
      this.chunks.push(v);
      return;
    }
    this.room(v.length);
    v.copy(this.buf, this.pos);
    this.pos += v.length;
  }

  finish(): Buffer[] {
    this.flush();
    return this.chunks;
  }
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

function writeElements(elements: readonly Element[], syntax: Syntax, out: Out): void {
  for (const el of elements) {
    if (el.items) {
      const inner = el.itemSyntax ?? syntax;
      out.header(el.tag, el.vr, el.undefinedLength ? UNDEFINED : itemsSize(el.items, inner), syntax);
      for (const it of el.items) {
        out.item(0xfffee000, it.undefinedLength ? UNDEFINED : encodedSize(it.elements, inner), inner);
        writeElements(it.elements, inner, out);
        if (it.undefinedLength) out.item(0xfffee00d, 0, inner);
      }
      if (el.undefinedLength) out.item(0xfffee0dd, 0, inner);
    } else if (el.encapsulated) {
      out.header(el.tag, el.vr, UNDEFINED, syntax);
      out.bytes(el.encapsulated);
    } else {
      const v = el.value ?? EMPTY;
      // Odd lengths from the input are written as read: keep means keep.
      out.header(el.tag, el.vr, v.length, syntax);
      if (v.length) out.bytes(v);
    }
  }
}

const EMPTY = Buffer.alloc(0);

const PREAMBLE = Buffer.alloc(128);

/** Chunks of a complete Part-10 file: zero preamble, DICM, meta group with its length, dataset
 * (deflated again when the transfer syntax is the deflated one). */
export function part10Chunks(obj: DicomObject): Buffer[] {
  const meta = obj.meta.filter((e) => e.tag !== 0x00020000);
  const out = new Out();
  out.bytes(PREAMBLE);
  out.bytes(DICM);
  out.header(0x00020000, 'UL', 4, EXPLICIT_LE);
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32LE(encodedSize(meta, EXPLICIT_LE), 0);
  out.bytes(len);
  writeElements(meta, EXPLICIT_LE, out);
  if (obj.deflated) {
    const body = new Out();
    writeElements(obj.dataset, obj.syntax, body);
    out.bytes(deflateRawSync(Buffer.concat(body.finish()), DEFLATE_OPTIONS));
  } else {
    writeElements(obj.dataset, obj.syntax, out);
  }
  return out.finish();
}
const DICM = Buffer.from('DICM', 'latin1');

/** Encoded elements of a dataset (no file meta), as chunks: large values are slices of their source. */
export function elementChunks(elements: readonly Element[], syntax: Syntax): Buffer[] {
  const out = new Out();
  writeElements(elements, syntax, out);
  return out.finish();
}

/** The header of one element (tag, VR, length) as `syntax` encodes it; length undefined: 0xFFFFFFFF. */
export function elementHeader(tag: number, vr: string, length: number | undefined, syntax: Syntax): Buffer {
  const out = new Out(16);
  out.header(tag, vr, length ?? UNDEFINED, syntax);
  return Buffer.concat(out.finish());
}

export function writePart10(obj: DicomObject): Buffer {
  return Buffer.concat(part10Chunks(obj));
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
