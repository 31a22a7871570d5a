// Builds small datasets in memory for unit tests, encoded like a real file would be.
import { DicomObject, Element, Item } from '../../src/dicom/dataset';
import { encodeString, encodeValue } from '../../src/dicom/values';
import { isStringVr } from '../../src/dicom/vr';
import { EXPLICIT_LE, TS } from '../../src/dicom/uids';
import { parseTagRef } from '../../src/dicom/dictionary';
import { writePart10 } from '../../src/dicom/write';
import { readPart10 } from '../../src/dicom/read';

export function tagOf(ref: string | number): number {
  if (typeof ref === 'number') return ref;
  const t = parseTagRef(ref);
  if (t === undefined) throw new Error(`bad tag ${ref}`);
  return t;
}

export function el(ref: string | number, vr: string, value: string | Buffer): Element {
  const v = Buffer.isBuffer(value) ? value : isStringVr(vr) ? encodeString(vr, value, 'ISO_IR 192') : encodeValue(vr, value, EXPLICIT_LE);
  return { tag: tagOf(ref), vr, value: v, undefinedLength: false };
}

export function sq(ref: string | number, items: Element[][], undefinedLength = true): Element {
  const its: Item[] = items.map((elements) => ({ elements: sortEls(elements), undefinedLength }));
  return { tag: tagOf(ref), vr: 'SQ', value: null, items: its, undefinedLength };
}

function sortEls(e: Element[]): Element[] {
  return e.slice().sort((a, b) => a.tag - b.tag);
}

/** A minimal CT-like object, plus extra elements; round-tripped through bytes so it is exactly
 * what the reader would produce from a file. */
export function makeObject(extra: Element[] = [], opts: { patientId?: string; study?: string; series?: string; sop?: string } = {}): DicomObject {
  const base: Element[] = [
    el('SpecificCharacterSet', 'CS', 'ISO_IR 192'),
    el('SOPClassUID', 'UI', '1.2.840.10008.5.1.4.1.1.2'),
    el('SOPInstanceUID', 'UI', opts.sop ?? '1.2.3.4.5.6.7.1'),
    el('StudyDate', 'DA', '20230917'),
    el('StudyTime', 'TM', '101530'),
    el('Modality', 'CS', 'CT'),
    el('PatientName', 'PN', 'DOE^JANE'),
    el('PatientID', 'LO', opts.patientId ?? 'PID0001'),
    el('PatientBirthDate', 'DA', '19710203'),
    el('SliceThickness', 'DS', '1.25'),
    el('StudyInstanceUID', 'UI', opts.study ?? '1.2.3.4.5.6.1'),
    el('SeriesInstanceUID', 'UI', opts.series ?? '1.2.3.4.5.6.2'),
    el('Rows', 'US', '2'),
    el('Columns', 'US', '2'),
  ];
  const byTag = new Map<number, Element>();
  for (const e of [...base, ...extra]) byTag.set(e.tag, e);
  const dataset = sortEls([...byTag.values(), el('PixelData', 'OW', Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]))]);
  const obj: DicomObject = {
    meta: [el(0x00020002, 'UI', '1.2.840.10008.5.1.4.1.1.2'), el(0x00020003, 'UI', opts.sop ?? '1.2.3.4.5.6.7.1'), el(0x00020010, 'UI', TS.ExplicitLE)],
    dataset, transferSyntaxUid: TS.ExplicitLE, syntax: EXPLICIT_LE, deflated: false, hadMeta: true,
  };
  return readPart10(writePart10(obj));
}
