// Corpus files with top-level elements added or replaced, for tests that need a particular value
// in an otherwise real file.
import { readFileSync } from 'fs';
import { Element, elementString, findElement } from '../../src/dicom/dataset';
import { readPart10 } from '../../src/dicom/read';
import { writePart10 } from '../../src/dicom/write';
import { el, tagOf } from './build';

/** The file with the elements set (same tag: replaced). The file meta follows a new
 * SOPInstanceUID. */
export function planted(file: string | Buffer, extra: Element[]): Buffer {
  const o = readPart10(Buffer.isBuffer(file) ? file : readFileSync(file));
  const byTag = new Map(o.dataset.map((e) => [e.tag, e] as const));
  for (const e of extra) byTag.set(e.tag, e);
  const dataset = [...byTag.values()].sort((a, b) => a.tag - b.tag);
  const sop = elementString(findElement(dataset, tagOf('SOPInstanceUID')));
  const meta = o.meta.map((m) => (m.tag === 0x00020003 && sop ? el(0x00020003, 'UI', sop) : m));
  return writePart10({ ...o, meta, dataset });
}

/** A top-level string value of a file or object's dataset, without padding. */
export function valueOf(file: string | Buffer, keyword: string): string | undefined {
  const o = readPart10(Buffer.isBuffer(file) ? file : readFileSync(file));
  return elementString(findElement(o.dataset, tagOf(keyword)));
}
