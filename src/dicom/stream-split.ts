// Splits a dataset arriving in pieces (C-STORE PDVs) into runs of whole top-level elements, which
// are small and parsed as usual, and bulk values (pixel data, large OB/OW/UN), whose bytes are
// handed on as they arrive, never held whole. Memory stays bounded by the largest non-bulk element.
//
// A bulk value is a top-level, non-sequence element past the groups the de-identification engine
// and the study rules look values up in (tag > (0028,FFFF): patient, study, series, equipment and
// image pixel module attributes all come before), of at least `bulkMin` bytes, or encapsulated
// (undefined length, fragments). Everything before the first bulk value is therefore complete when
// the bulk value starts: the de-identified header can be written before the bulk data arrives.
import { DicomParseError } from './dataset';
import { implicitVr } from './dictionary';
import { isSequenceTag } from './read';
import { slotHasLongLength, vrAtSlot, vrSlot } from './vr';
import type { Syntax } from './uids';

const ITEM = 0xfffee000;
const ITEM_DELIM = 0xfffee00d;
const SEQ_DELIM = 0xfffee0dd;
const UNDEFINED = 0xffffffff;
const NEED_MORE = -1;
/** Elements at or below this tag are never bulk (see the header comment). */
export const LAST_HEADER_TAG = 0x0028ffff;
export const DEFAULT_BULK_MIN = 64 * 1024;

export interface SplitHandler {
  /** One or more whole top-level elements, as encoded. */
  elements(bytes: Buffer): void;
  /** A bulk value starts; `length` undefined: encapsulated (items and the sequence delimiter follow as data). */
  bulkStart(tag: number, vr: string, length: number | undefined): void;
  /** The next bytes of the bulk value (views into the pushed buffers). */
  bulkData(bytes: Buffer): void;
  bulkEnd(): void;
}

type Mode = 'head' | 'value' | 'fragments';

export class DatasetSplitter {
  private mode: Mode = 'head';
  /** head: bytes not yet handed on, as pushed. */
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** head: do not try to parse before this many bytes are buffered. */
  private want = 0;
  /** value: bytes of the bulk value still to come. */
  private remaining = 0;
  /** fragments: the item header being read (8 bytes) and the bytes of the current fragment still to come. */
  private itemHead = Buffer.alloc(8);
  private itemHeadLen = 0;
  private fragmentLeft = 0;
  private readonly le: boolean;

  constructor(private readonly syntax: Syntax, private readonly h: SplitHandler, private readonly bulkMin = DEFAULT_BULK_MIN) {
    this.le = syntax.littleEndian;
  }

  push(chunk: Buffer): void {
    while (chunk.length) {
      if (this.mode === 'head') {
        this.chunks.push(chunk);
        this.buffered += chunk.length;
        if (this.buffered < this.want) return;
        chunk = this.parseHead();
      } else if (this.mode === 'value') {
        const n = Math.min(this.remaining, chunk.length);
        this.h.bulkData(chunk.subarray(0, n));
        this.remaining -= n;
        chunk = chunk.subarray(n);
        if (this.remaining === 0) this.endBulk();
      } else {
        chunk = this.pushFragments(chunk);
      }
    }
  }

  /** The dataset is complete: hands on the last elements; throws if a bulk value is unfinished. */
  end(): void {
    if (this.mode !== 'head') throw new DicomParseError('dataset ends inside a value');
    if (this.buffered) this.h.elements(this.take());
  }

  private endBulk(): void {
    this.mode = 'head';
    this.want = 0;
    this.h.bulkEnd();
  }

  private take(): Buffer {
    const b = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
    this.chunks = [];
    this.buffered = 0;
    return b;
  }

  /** Parses buffered whole elements; returns the bytes left over after a bulk value started (or empty). */
  private parseHead(): Buffer {
    const buf = this.take();
    let pos = 0;
    for (;;) {
      const r = this.nextElement(buf, pos);
      if (r.end >= 0) {
        pos = r.end;
        if (pos < buf.length) continue;
        // Every byte is whole elements; hand them on now, so a long run of them is not kept.
        if (pos > 0) this.h.elements(buf);
        this.want = 0;
        return EMPTY;
      }
      if (r.bulk) {
        if (pos > 0) this.h.elements(buf.subarray(0, pos));
        this.h.bulkStart(r.bulk.tag, r.bulk.vr, r.bulk.length);
        if (r.bulk.length === undefined) {
          this.mode = 'fragments';
          this.itemHeadLen = 0;
          this.fragmentLeft = 0;
        } else {
          this.mode = 'value';
          this.remaining = r.bulk.length;
          if (this.remaining === 0) this.endBulk();
        }
        return buf.subarray(r.bulk.valuePos);
      }
      // Need more bytes: hand on the whole elements before, keep the rest.
      if (pos > 0) this.h.elements(buf.subarray(0, pos));
      const rest = buf.subarray(pos);
      this.chunks = [rest];
      this.buffered = rest.length;
      this.want = Math.max(rest.length + 1, r.want - pos);
      return EMPTY;
    }
  }

  private pushFragments(chunk: Buffer): Buffer {
    let i = 0;
    while (i < chunk.length) {
      if (this.fragmentLeft > 0) {
        const n = Math.min(this.fragmentLeft, chunk.length - i);
        this.fragmentLeft -= n;
        i += n;
        continue;
      }
      const n = Math.min(8 - this.itemHeadLen, chunk.length - i);
      chunk.copy(this.itemHead, this.itemHeadLen, i, i + n);
      this.itemHeadLen += n;
      i += n;
      if (this.itemHeadLen < 8) break;
      this.itemHeadLen = 0;
      const tag = ((this.itemHead.readUInt16LE(0) << 16) | this.itemHead.readUInt16LE(2)) >>> 0;
      const len = this.itemHead.readUInt32LE(4);
      if (tag === SEQ_DELIM) {
        this.h.bulkData(chunk.subarray(0, i));
        this.endBulk();
        return chunk.subarray(i);
      }
      if (tag !== ITEM || len === UNDEFINED) throw new DicomParseError('malformed encapsulated fragment');
      this.fragmentLeft = len;
    }
    this.h.bulkData(chunk);
    return EMPTY;
  }

  private u16(b: Buffer, p: number): number {
    return this.le ? b[p] | (b[p + 1] << 8) : (b[p] << 8) | b[p + 1];
  }
  private u32(b: Buffer, p: number): number {
    return this.le ? b.readUInt32LE(p) : b.readUInt32BE(p);
  }
  private tag(b: Buffer, p: number): number {
    return ((this.u16(b, p) << 16) | this.u16(b, p + 2)) >>> 0;
  }

  /** end >= 0: a whole element ends there; bulk: a bulk value starts; else `want` bytes are needed. */
  private nextElement(buf: Buffer, pos: number): { end: number; want: number; bulk?: { tag: number; vr: string; length: number | undefined; valuePos: number } } {
    const h = this.header(buf, pos, this.syntax);
    if (!h) return { end: NEED_MORE, want: pos + 12 };
    const { tag, vr, length, valuePos } = h;
    const eligible = tag > LAST_HEADER_TAG && tag !== ITEM && tag !== ITEM_DELIM && tag !== SEQ_DELIM;
    // A sequence attribute that arrived as OB or UN is a whole element, never bulk: the engine must
    // read and de-identify its items (the buffered reader does, and a stand-in would be removed).
    const sequence = vr !== 'SQ' && isSequenceTag(tag);
    if (length === UNDEFINED) {
      if (vr === 'SQ' || vr === 'UN' || !this.syntax.explicit || sequence) {
        const itemSyntax = vr === 'SQ' || !this.syntax.explicit ? this.syntax : this.misencodedItemSyntax(buf, valuePos);
        if (!itemSyntax) return { end: NEED_MORE, want: 0 };
        const end = this.skipItems(buf, valuePos, itemSyntax);
        return { end, want: 0 };
      }
      if (eligible) return { end: NEED_MORE, want: 0, bulk: { tag, vr, length: undefined, valuePos } };
      return { end: this.skipFragments(buf, valuePos), want: 0 };
    }
    if (BULK_VRS.has(vr) && eligible && length >= this.bulkMin && !sequence) return { end: NEED_MORE, want: 0, bulk: { tag, vr, length, valuePos } };
    const end = valuePos + length;
    return end <= buf.length ? { end, want: 0 } : { end: NEED_MORE, want: end };
  }

  private header(buf: Buffer, pos: number, syntax: Syntax): { tag: number; vr: string; length: number; valuePos: number } | undefined {
    if (pos + 8 > buf.length) return undefined;
    const le = syntax.littleEndian;
    const u16 = (p: number) => (le ? buf[p] | (buf[p + 1] << 8) : (buf[p] << 8) | buf[p + 1]);
    const tag = ((u16(pos) << 16) | u16(pos + 2)) >>> 0;
    if (tag === ITEM || tag === ITEM_DELIM || tag === SEQ_DELIM) return { tag, vr: '', length: le ? buf.readUInt32LE(pos + 4) : buf.readUInt32BE(pos + 4), valuePos: pos + 8 };
    if (!syntax.explicit) return { tag, vr: implicitVr(tag), length: le ? buf.readUInt32LE(pos + 4) : buf.readUInt32BE(pos + 4), valuePos: pos + 8 };
    const slot = vrSlot(buf[pos + 4], buf[pos + 5]);
    if (slot < 0) throw new DicomParseError(`invalid VR bytes 0x${buf[pos + 4].toString(16)} 0x${buf[pos + 5].toString(16)}`);
    const vr = vrAtSlot(slot);
    if (slotHasLongLength(slot)) {
      if (pos + 12 > buf.length) return undefined;
      return { tag, vr, length: le ? buf.readUInt32LE(pos + 8) : buf.readUInt32BE(pos + 8), valuePos: pos + 12 };
    }
    return { tag, vr, length: u16(pos + 6), valuePos: pos + 8 };
  }

  /** Items of a sequence sent as UN or OB: implicit VR LE (PS3.5 6.2.2) unless the first element
   * of the first item spells a VR, as the reader decides (Reader.itemSyntaxAt). */
  private misencodedItemSyntax(buf: Buffer, pos: number): Syntax | undefined {
    if (!this.syntax.littleEndian) return IMPLICIT;
    if (pos + 4 > buf.length) return undefined;
    if (buf.readUInt16LE(pos) === 0xfffe && buf.readUInt16LE(pos + 2) === 0xe0dd) return IMPLICIT; // no items
    const e = pos + 8;
    if (e + 6 > buf.length) return undefined; // decided when the first element's header is here
    return vrSlot(buf[e + 4], buf[e + 5]) >= 0 ? this.syntax : IMPLICIT;
  }

  /** End of a sequence's items starting at pos (through its delimiter), or NEED_MORE. */
  private skipItems(buf: Buffer, pos: number, syntax: Syntax): number {
    for (;;) {
      const h = this.header(buf, pos, { explicit: false, littleEndian: syntax.littleEndian });
      if (!h) return NEED_MORE;
      if (h.tag === SEQ_DELIM) return pos + 8;
      if (h.tag !== ITEM) throw new DicomParseError(`expected an item, found tag ${h.tag.toString(16)}`);
      if (h.length !== UNDEFINED) {
        pos = h.valuePos + h.length;
        if (pos > buf.length) return NEED_MORE;
        continue;
      }
      pos = h.valuePos;
      // Elements of an item of undefined length, through its delimiter.
      for (;;) {
        const e = this.header(buf, pos, syntax);
        if (!e) return NEED_MORE;
        if (e.tag === ITEM_DELIM) {
          pos += 8;
          break;
        }
        if (e.length === UNDEFINED) {
          let end: number;
          if (e.vr === 'SQ' || e.vr === 'UN' || !syntax.explicit || isSequenceTag(e.tag)) {
            const itemSyntax = e.vr === 'SQ' || !syntax.explicit ? syntax : this.misencodedItemSyntax(buf, e.valuePos);
            if (!itemSyntax) return NEED_MORE;
            end = this.skipItems(buf, e.valuePos, itemSyntax);
          } else {
            end = this.skipFragments(buf, e.valuePos);
          }
          if (end < 0) return NEED_MORE;
          pos = end;
        } else {
          pos = e.valuePos + e.length;
          if (pos > buf.length) return NEED_MORE;
        }
      }
    }
  }

  private skipFragments(buf: Buffer, pos: number): number {
    for (;;) {
      if (pos + 8 > buf.length) return NEED_MORE;
      const tag = ((buf.readUInt16LE(pos) << 16) | buf.readUInt16LE(pos + 2)) >>> 0;
      const len = buf.readUInt32LE(pos + 4);
      if (tag === SEQ_DELIM) return pos + 8;
      if (tag !== ITEM || len === UNDEFINED) throw new DicomParseError('malformed encapsulated fragment');
      pos += 8 + len;
    }
  }
}

const EMPTY = Buffer.alloc(0);
/** Binary VRs whose large values are streamed; text is small and may need cleaning. */
const BULK_VRS = new Set(['OB', 'OW', 'OD', 'OF', 'OL', 'OV', 'UN']);
const IMPLICIT: Syntax = { explicit: false, littleEndian: true };
