import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { compilePlan } from '../src/deid/plan';
import { deidentify, mapUid } from '../src/deid/engine';
import { DicomObject, Element, elementString, findElement } from '../src/dicom/dataset';
import { writePart10 } from '../src/dicom/write';
import { readPart10 } from '../src/dicom/read';
import { shiftDate, shiftDateTime, shiftTime } from '../src/deid/dates';
import { el, makeObject, sq, tagOf } from './helpers/build';
import { tempDir } from './helpers/tmp';

const SALT = 'unit-test-salt-0123456789';

function studyPlan(study: Record<string, unknown>, salt = SALT) {
  const dir = tempDir('deid-engine-');
  const file = join(dir, 'router.yaml');
  writeFileSync(file, YAML.stringify({ studies: { T: study } }));
  const c = loadConfig(file, {});
  return compilePlan(c.studies.get('T')!, salt);
}

function run(obj: DicomObject, study: Record<string, unknown> = {}, salt = SALT): DicomObject {
  // Encode and decode again: what the tests see is what a file would hold.
  return readPart10(writePart10(deidentify(obj, studyPlan(study, salt))));
}

function get(obj: DicomObject | Element[], ref: string | number): string | undefined {
  const els = Array.isArray(obj) ? obj : obj.dataset;
  return elementString(findElement(els, tagOf(ref))) || undefined; // empty and absent alike; has() tells them apart
}
function has(obj: DicomObject, ref: string | number): boolean {
  return findElement(obj.dataset, tagOf(ref)) !== undefined;
}

describe('basic profile', () => {
  test('removes, empties and replaces identifying attributes; keeps research metadata', () => {
    const out = run(makeObject([
      el('InstitutionName', 'LO', 'ZZINST Hospital'),
      el('OtherPatientIDs', 'LO', 'X123'),
      el('StudyDescription', 'LO', 'brain for Jane'),
      el('KVP', 'DS', '120'),
      el('Manufacturer', 'LO', 'ACME'),
    ]));
    assert.equal(get(out, 'PatientName'), undefined); // Z: present, empty
    assert.ok(has(out, 'PatientName'));
    assert.ok(!has(out, 'OtherPatientIDs')); // X
    assert.ok(!has(out, 'StudyDescription')); // X
    assert.equal(get(out, 'PatientBirthDate'), undefined);
    assert.equal(get(out, 'InstitutionName'), 'ANONYMIZED'); // X/Z/D -> dummy
    assert.equal(get(out, 'KVP'), '120');
    assert.equal(get(out, 'Manufacturer'), 'ACME');
    assert.equal(get(out, 'SliceThickness'), '1.25');
    assert.equal(get(out, 'Modality'), 'CT');
    assert.equal(get(out, 'SOPClassUID'), '1.2.840.10008.5.1.4.1.1.2');
    assert.match(get(out, 'SOPInstanceUID')!, /^2\.25\.\d+$/);
    assert.notEqual(get(out, 'StudyInstanceUID'), '1.2.3.4.5.6.1');
  });

  test('records the method: PatientIdentityRemoved, DeidentificationMethod, CID 7050 codes, longitudinal', () => {
    const out = run(makeObject(), { ProfileOptions: ['retainDeviceIdentity'] });
    assert.equal(get(out, 'PatientIdentityRemoved'), 'YES');
    assert.match(get(out, 'DeidentificationMethod')!, /Basic Application Confidentiality Profile/);
    const codes = findElement(out.dataset, tagOf('DeidentificationMethodCodeSequence'))!.items!.map((i) => get(i.elements, 'CodeValue'));
    assert.deepEqual(codes, ['113100', '113109']);
    assert.equal(get(out, 'LongitudinalTemporalInformationModified'), 'REMOVED');
    assert.equal(get(out.meta, 0x00020003), get(out, 'SOPInstanceUID'));
  });

  test('a study that keeps a direct identifier or private data says PatientIdentityRemoved NO', () => {
    assert.equal(get(run(makeObject(), { AnonymizeTag: { PatientID: { action: 'keep' } } }), 'PatientIdentityRemoved'), 'NO');
    assert.equal(get(run(makeObject(), { RemovePrivateTags: false }), 'PatientIdentityRemoved'), 'NO');
    assert.equal(get(run(makeObject(), { AnonymizeTag: { PatientID: { action: 'hash' } } }), 'PatientIdentityRemoved'), 'YES');
  });

  test('new UIDs are UUID-derived (version 8, RFC variant) 2.25 UIDs', () => {
    const u = get(run(makeObject()), 'SOPInstanceUID')!;
    const hex = BigInt(u.slice(5)).toString(16).padStart(32, '0');
    assert.equal(hex[12], '8');
    assert.match(hex[16], /[89ab]/);
  });

  test('options: retainDeviceIdentity keeps StationName, retainPatientCharacteristics keeps PatientSex', () => {
    const src = makeObject([el('StationName', 'SH', 'CT01'), el('PatientSex', 'CS', 'F'), el('PatientAge', 'AS', '052Y')]);
    const plain = run(src);
    assert.equal(get(plain, 'StationName'), 'ANONYMIZED');
    assert.equal(get(plain, 'PatientSex'), undefined);
    const kept = run(src, { ProfileOptions: ['retainDeviceIdentity', 'retainPatientCharacteristics'] });
    assert.equal(get(kept, 'StationName'), 'CT01');
    assert.equal(get(kept, 'PatientSex'), 'F');
    assert.equal(get(kept, 'PatientAge'), '052Y');
  });

  test('a person name in an attribute the table does not list is still removed', () => {
    // EvaluatorName (0014,2006) is PN and absent from Table E.1-1: the PN safety net empties it.
    const out = run(makeObject([el('EvaluatorName', 'PN', 'EVAL^UATOR')]));
    assert.ok(has(out, 'EvaluatorName'));
    assert.equal(get(out, 'EvaluatorName'), undefined);
  });

  test('free text inside a structured report content tree is replaced, codes kept', () => {
    const content = sq('ContentSequence', [[
      el('ValueType', 'CS', 'TEXT'),
      sq('ConceptNameCodeSequence', [[el('CodeValue', 'SH', '121071'), el('CodingSchemeDesignator', 'SH', 'DCM'), el('CodeMeaning', 'LO', 'Finding')]]),
      el('TextValue', 'UT', 'Mrs Jane Doe, born 1971, complains of ...'),
    ]]);
    const out = run(makeObject([content]));
    const item = findElement(out.dataset, tagOf('ContentSequence'))!.items![0].elements;
    assert.equal(get(item, 'TextValue'), 'ANONYMIZED');
    assert.equal(get(findElement(item, tagOf('ConceptNameCodeSequence'))!.items![0].elements, 'CodeMeaning'), 'Finding');
    const cleaned = run(makeObject([content]), { ProfileOptions: ['cleanStructuredContent'] });
    const text = get(findElement(cleaned.dataset, tagOf('ContentSequence'))!.items![0].elements, 'TextValue')!;
    assert.ok(!text.includes('Jane') && !text.includes('Doe') && text.includes('complains'), text);
  });

  test('Profile: none keeps what no rule names (the original script\'s behaviour)', () => {
    const out = run(makeObject([el('InstitutionName', 'LO', 'Hosp')]), { Profile: 'none', AnonymizeTag: { PatientName: { action: 'clear' } } });
    assert.equal(get(out, 'InstitutionName'), 'Hosp');
    assert.equal(get(out, 'PatientName'), undefined);
    assert.equal(get(out, 'StudyInstanceUID'), '1.2.3.4.5.6.1');
    assert.equal(get(out, 'PatientIdentityRemoved'), undefined);
  });
});

describe('actions', () => {
  const src = () => makeObject([el('AccessionNumber', 'SH', 'ACC123'), el('StationName', 'SH', 'CT01'), el('ReferringPhysicianName', 'PN', 'WHO^DR')]);

  test('delete, clear, keep, value', () => {
    const out = run(src(), {
      AnonymizeTag: {
        AccessionNumber: { action: 'delete' },
        StationName: { action: 'keep' },
        PatientName: { action: 'value', value: 'SUBJECT^001' },
        Modality: { action: 'clear' },
        Rows: { action: 'value', value: '7' },
      },
    });
    assert.ok(!has(out, 'AccessionNumber'));
    assert.equal(get(out, 'StationName'), 'CT01');
    assert.equal(get(out, 'PatientName'), 'SUBJECT^001');
    assert.ok(has(out, 'Modality'));
    assert.equal(get(out, 'Modality'), undefined);
    assert.equal(findElement(out.dataset, tagOf('Rows'))!.value!.readUInt16LE(0), 7);
  });

  test('hash: keyed, deterministic, fits the VR, differs by salt', () => {
    const study = { AnonymizeTag: { PatientID: { action: 'hash' }, AccessionNumber: { action: 'hash' }, StationName: { action: 'hash', salt: 'station-specific-salt' } } };
    const a = run(src(), study);
    const b = run(src(), study);
    const c = run(src(), study, 'another-salt-entirely-42');
    const pid = get(a, 'PatientID')!;
    assert.match(pid, /^[0-9A-F]{32}$/); // LO: 32 hex
    assert.match(get(a, 'AccessionNumber')!, /^[0-9A-F]{16}$/); // SH: at most 16
    assert.equal(pid, get(b, 'PatientID'));
    assert.notEqual(pid, get(c, 'PatientID'));
    assert.notEqual(pid, 'PID0001');
    // A per-tag salt wins over the global one: changing the global salt leaves it alone.
    assert.equal(get(a, 'StationName'), get(c, 'StationName'));
  });

  test('hash with the same salt links the same value across attributes', () => {
    const out = run(makeObject([sq('OtherPatientIDsSequence', [[el('PatientID', 'LO', 'PID0001'), el('TypeOfPatientID', 'CS', 'TEXT')]])]), {
      AnonymizeTag: { PatientID: { action: 'hash' }, OtherPatientIDsSequence: { action: 'keep' } },
    });
    const inner = findElement(out.dataset, tagOf('OtherPatientIDsSequence'))!.items![0].elements;
    assert.equal(get(inner, 'PatientID'), get(out, 'PatientID'));
  });

  test('VR rule applies to every element of the VR; a tag rule beats it', () => {
    const out = run(src(), { AnonymizeTag: { ReferringPhysicianName: { action: 'value', value: 'REF' } }, AnonymizeVR: { PN: { action: 'hash' } } });
    assert.match(get(out, 'PatientName')!, /^[0-9A-F]{32}$/);
    assert.equal(get(out, 'ReferringPhysicianName'), 'REF');
  });

  test('regen: same UID -> same new UID in every file and reference; standard UIDs untouched', () => {
    const ref = sq('ReferencedImageSequence', [[el('ReferencedSOPClassUID', 'UI', '1.2.840.10008.5.1.4.1.1.2'), el('ReferencedSOPInstanceUID', 'UI', '1.2.3.4.5.6.7.1')]]);
    const a = run(makeObject([ref], { sop: '1.2.3.4.5.6.7.2' }));
    const b = run(makeObject([], { sop: '1.2.3.4.5.6.7.1' }));
    const inner = findElement(a.dataset, tagOf('ReferencedImageSequence'))!.items![0].elements;
    assert.equal(get(inner, 'ReferencedSOPInstanceUID'), get(b, 'SOPInstanceUID'));
    assert.equal(get(inner, 'ReferencedSOPClassUID'), '1.2.840.10008.5.1.4.1.1.2');
    assert.equal(get(a, 'StudyInstanceUID'), get(b, 'StudyInstanceUID'));
    assert.notEqual(get(a, 'SOPInstanceUID'), get(b, 'SOPInstanceUID'));
  });

  test('regen with entropy_src mixes those values in', () => {
    const study = { AnonymizeTag: { StudyInstanceUID: { action: 'regen', entropy_src: ['PatientID'] } } };
    const a = run(makeObject([], { patientId: 'P1' }), study);
    const b = run(makeObject([], { patientId: 'P2' }), study);
    assert.notEqual(get(a, 'StudyInstanceUID'), get(b, 'StudyInstanceUID'));
    assert.equal(get(a, 'SeriesInstanceUID'), get(b, 'SeriesInstanceUID'));
  });

  test('mapUid gives valid 2.25 UIDs of at most 64 characters', () => {
    const plan = studyPlan({});
    for (let i = 0; i < 500; i++) {
      const u = mapUid(`1.2.826.0.1.3680043.2.${i}`, plan.uidKey, undefined, plan);
      assert.match(u, /^2\.25\.[1-9]\d*$/);
      assert.ok(u.length <= 64);
    }
  });

  test('offset: fixed days shift dates, DA+TM of one moment move together', () => {
    const out = run(makeObject(), { AnonymizeTag: { StudyDate: { action: 'offset', seconds: 3600 * 14 }, StudyTime: { action: 'offset', seconds: 3600 * 14 } } });
    // 2023-09-17 10:15:30 + 14 h = 2023-09-18 00:15:30
    assert.equal(get(out, 'StudyDate'), '20230918');
    assert.equal(get(out, 'StudyTime'), '001530');
  });

  test('offset per patient: same patient same shift, intervals kept; other patient differs', () => {
    const study = { ProfileOptions: ['retainLongitudinalModifiedDates'], DateOffset: { range: [-1000, -10] } };
    const a1 = run(makeObject([el('SeriesDate', 'DA', '20230920')], { patientId: 'P1' }), study);
    const others = ['P2', 'P3', 'P4'].map((p) => run(makeObject([], { patientId: p }), study));
    const d = (s: string) => Date.UTC(+s.slice(0, 4), +s.slice(4, 6) - 1, +s.slice(6, 8)) / 86400000;
    assert.equal(d(get(a1, 'SeriesDate')!) - d(get(a1, 'StudyDate')!), 3);
    const shift = d(get(a1, 'StudyDate')!) - d('20230917');
    assert.ok(shift <= -10 && shift >= -1000, `shift ${shift}`);
    assert.ok(others.some((o) => get(o, 'StudyDate') !== get(a1, 'StudyDate')));
    assert.equal(get(a1, 'LongitudinalTemporalInformationModified'), 'MODIFIED');
    assert.equal(get(a1, 'PatientBirthDate'), undefined); // still removed by the profile
  });

  test('date arithmetic keeps precision', () => {
    assert.equal(shiftDate('20240229', 86400), '20240301');
    assert.equal(shiftDate('20240101', -86400), '20231231');
    assert.equal(shiftTime('2359', 120), '0001');
    assert.equal(shiftTime('101530.123', 30), '101600.123');
    assert.equal(shiftDateTime('20231231235959.5+0100', 1), '20240101000000.5+0100');
    assert.equal(shiftDateTime('2023', 0), '2023');
    assert.equal(shiftDate('1997.04.24', 1), undefined);
  });
});

describe('sequences and private tags', () => {
  test('rules reach nested sequences at any depth', () => {
    const deep = sq('RequestAttributesSequence', [[
      el('RequestedProcedureID', 'SH', 'RPID1'),
      sq('ScheduledProtocolCodeSequence', [[
        el('CodeValue', 'SH', 'P1'),
        sq('ProtocolContextSequence', [[el('PersonName', 'PN', 'NEST^OBSERVER'), el('ValueType', 'CS', 'PNAME')]]),
      ]]),
    ]]);
    const out = run(makeObject([deep]), { AnonymizeTag: { RequestAttributesSequence: { action: 'keep' } }, AnonymizeVR: { PN: { action: 'value', value: 'X' } } });
    const l1 = findElement(out.dataset, tagOf('RequestAttributesSequence'))!.items![0].elements;
    assert.ok(!findElement(l1, tagOf('RequestedProcedureID')), 'X in an item');
    const l3 = findElement(findElement(l1, tagOf('ScheduledProtocolCodeSequence'))!.items![0].elements, tagOf('ProtocolContextSequence'))!.items![0].elements;
    assert.equal(get(l3, 'PersonName'), 'X');
    assert.equal(get(l3, 'ValueType'), 'PNAME');
  });

  test('private elements are removed, creators too, also inside sequences; kept creators stay', () => {
    const priv = [el(0x00290010, 'LO', 'ZZFAKE PHI CREATOR'), el(0x00291010, 'LO', 'ZZPRIV name'), el(0x00290011, 'LO', 'KEEP ME'), el(0x00291110, 'LO', 'kept value'), el(0x00291111, 'LO', 'dropped')];
    const src = makeObject([...priv, sq('ReferencedImageSequence', [[el('ReferencedSOPInstanceUID', 'UI', '1.2.3'), el(0x00091010, 'LO', 'inner'), el(0x00090010, 'LO', 'X')]])]);
    const out = run(src, { KeepPrivateTags: ['KEEP ME:(0029,xx10)'] });
    const tags = out.dataset.map((e) => e.tag);
    assert.ok(!tags.includes(0x00290010) && !tags.includes(0x00291010) && !tags.includes(0x00291111));
    assert.equal(get(out, 0x00290011), 'KEEP ME');
    assert.equal(get(out, 0x00291110), 'kept value');
    const inner = findElement(out.dataset, tagOf('ReferencedImageSequence'))!.items![0].elements;
    assert.ok(inner.every((e) => ((e.tag >>> 16) & 1) === 0));
    const all = run(src, { RemovePrivateTags: false });
    assert.equal(get(all, 0x00291010), 'ZZPRIV name');
  });

  test('kept elements and pixel data come out byte-identical', () => {
    const src = makeObject([el('ImageComments', 'LT', 'x'), el('WindowCenter', 'DS', '40.0000 ')]);
    const out = deidentify(src, studyPlan({}));
    for (const tag of [tagOf('PixelData'), tagOf('WindowCenter'), tagOf('SliceThickness')]) {
      assert.strictEqual(findElement(out.dataset, tag)!.value, findElement(src.dataset, tag)!.value, `same slice for ${tag.toString(16)}`);
    }
    assert.equal(findElement(readPart10(writePart10(out)).dataset, tagOf('WindowCenter'))!.value!.toString('latin1'), '40.0000 ');
  });
});
