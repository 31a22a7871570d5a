// Issue #13 (and #8 items 1 and 5): places where patient data survived the default profile, and
// files that other toolkits read but we refused. Every case is a file crafted byte by byte by
// test/fixtures/craft.ts, run through the whole pipeline (read -> identify -> de-identify ->
// encode) with the default configuration, then read back by us and by dcmtk.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import { deflateRawSync } from 'zlib';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { DeidPipeline, ImageRejected, Status } from '../src/pipeline';
import { DicomObject, Element, elementString, findElement } from '../src/dicom/dataset';
import { readPart10 } from '../src/dicom/read';
import { mapUid } from '../src/deid/engine';
import { BUILTIN_DEFAULT_STUDY } from '../src/identify';
import { DEFAULT_STUDY } from '../src/config/types';
import { CEl, CT, EBE, ELE, ILE, MARK, ORIG, PIXELS, TSX, ctElements, ctFile, encodeDataset, gapFiles, part10, s } from './fixtures/craft';
import { tempDir } from './helpers/tmp';

const SALT = 'gap-test-salt-5f0c2e7a9b';

function pipeline(studies: Record<string, unknown> = {}): DeidPipeline {
  const dir = tempDir('deid-gaps-');
  const file = join(dir, 'router.yaml');
  writeFileSync(file, YAML.stringify({ salt: SALT, stateDir: join(dir, 'state'), studies }));
  return new DeidPipeline(loadConfig(file, {}), SALT);
}

interface Out { bytes: Buffer; obj: DicomObject; dump: string }

/** File bytes through the pipeline; the output as bytes, as we read it back, and as dcmdump does. */
function run(file: Buffer, p = pipeline()): Out {
  const r = p.process({ kind: 'file', bytes: file });
  assert.ok(r.chunks, `not processed: quarantine=${r.quarantine}`);
  const bytes = Buffer.concat(r.chunks);
  const dir = tempDir('deid-gaps-out-');
  writeFileSync(join(dir, 'out.dcm'), bytes);
  const d = spawnSync('dcmdump', ['+U8', '-q', join(dir, 'out.dcm')], { encoding: 'latin1' });
  assert.equal(d.status, 0, `dcmdump cannot read the output: ${d.stderr}`);
  return { bytes, obj: readPart10(bytes), dump: d.stdout };
}

/** Byte scan of the whole output (deflated bodies inflated by the reader's round trip). */
function assertNoLeak(out: Out, needles: string[] = []): void {
  const text = out.bytes.toString('latin1');
  for (const n of [MARK, ...Object.values(ORIG), ...needles]) assert.ok(!text.includes(n), `output still holds ${n}`);
}

function get(els: readonly Element[], tag: number): string | undefined {
  return elementString(findElement(els, tag));
}

function items(els: readonly Element[], tag: number): Element[][] {
  return (findElement(els, tag)?.items ?? []).map((i) => i.elements);
}

function uidKeyPlan() {
  const p = pipeline();
  return p.planFor(p.config.studies.get(DEFAULT_STUDY) ?? BUILTIN_DEFAULT_STUDY);
}
/** The new UID the default study gives an original one. */
function mapped(uid: string): string {
  const plan = uidKeyPlan();
  return mapUid(uid, plan.uidKey, undefined, plan);
}

describe('#13 de-identification gaps', () => {
  test('1. code sequences that name a person or an institution keep no original code', () => {
    const code = (value: string, scheme: string, meaning: string): CEl[] => [s(0x00080100, 'SH', value), s(0x00080102, 'SH', scheme), s(0x00080104, 'LO', meaning)];
    for (const [charset, name] of [['ISO_IR 100', Buffer.from(`${MARK}MÜLLER Hans`, 'latin1')], ['ISO_IR 192', Buffer.from(`${MARK}MÜLLER Hans`, 'utf8')]] as const) {
      const institution: CEl = { tag: 0x00080082, vr: 'SQ', items: [code(`${MARK}I1`, '99HOSP', `${MARK} General Hospital of Springfield`)] };
      const operator: CEl = {
        tag: 0x00081072, vr: 'SQ', items: [[
          institution,
          { tag: 0x00401101, vr: 'SQ', items: [[s(0x00080100, 'SH', `${MARK}OP7`), s(0x00080102, 'SH', '99HOSP'), s(0x00080104, 'LO', name)]] },
        ]],
      };
      const out = run(ctFile([institution, operator], ELE, { charset }));
      assertNoLeak(out, ['MÜLLER', 'Springfield', 'OP7', 'Hans']);
      for (const seq of [items(out.obj.dataset, 0x00080082), items(items(out.obj.dataset, 0x00081072)[0], 0x00401101)]) {
        assert.equal(seq.length, 1, 'one dummy code item');
        assert.equal(get(seq[0], 0x00080102), '99DEIDROUTER');
      }
    }
  });

  test('2. free-text CodeMeaning in SR content and waveform codes is replaced; standard meanings survive', () => {
    const codeItem = (tag: number, value: string, scheme: string, meaning: string): CEl => ({
      tag, vr: 'SQ', items: [[s(0x00080100, 'SH', value), s(0x00080102, 'SH', scheme), s(0x00080104, 'LO', meaning)]],
    });
    const content: CEl = {
      tag: 0x0040a730, vr: 'SQ', items: [
        [s(0x0040a010, 'CS', 'CONTAINS'), s(0x0040a040, 'CS', 'CODE'), codeItem(0x0040a043, '121071', 'DCM', 'Finding'), codeItem(0x0040a168, 'X1', '99LOCAL', `${MARK}FREE naming patient Jones`)],
        [s(0x0040a010, 'CS', 'HAS CONCEPT MOD'), s(0x0040a040, 'CS', 'CODE'), codeItem(0x0040a043, '363698007', 'SCT', 'Finding Site'), codeItem(0x0040a168, '10200004', 'SCT', 'Liver')],
      ],
    };
    const waveform: CEl = {
      tag: 0x54000100, vr: 'SQ', items: [[{ tag: 0x003a0200, vr: 'SQ', items: [[codeItem(0x003a0208, 'L1', 'L', `${MARK}WAVE lead by Dr Who`)]] }]],
    };
    const out = run(ctFile([content, waveform]));
    assertNoLeak(out, ['Jones', 'Dr Who']);
    const c = items(out.obj.dataset, 0x0040a730);
    assert.equal(get(items(c[0], 0x0040a043)[0], 0x00080104), 'Finding');
    assert.equal(get(items(c[0], 0x0040a168)[0], 0x00080104), 'ANONYMIZED');
    assert.equal(get(items(c[0], 0x0040a168)[0], 0x00080100), 'X1', 'the code value itself is kept: it is not free text');
    assert.equal(get(items(c[1], 0x0040a043)[0], 0x00080104), 'Finding Site');
    assert.equal(get(items(c[1], 0x0040a168)[0], 0x00080104), 'Liver');
  });

  test('3. UIDs in attributes the table does not list are mapped, and references stay consistent', () => {
    const tags = [0x00081167, 0x00200242, 0x0018991e, 0x00209313, 0x300a0675, 0x00083012, 0x00440102, 0x0040e011, 0x00089123, 0x0040a021, 0x0040a022];
    const extra: CEl[] = tags.map((t, i) => s(t, 'UI', `${ORIG.other}.${i + 10}`));
    extra.push(s(0x00209312, 'UI', ORIG.frame)); // VolumeFrameOfReferenceUID = FrameOfReferenceUID
    extra.push({ tag: 0x00700308, vr: 'SQ', items: [[{ tag: 0x0070030a, vr: 'SQ', items: [[s(0x0070031a, 'UI', `${ORIG.other}.77`)]] }]] });
    extra.push({ tag: 0x00081140, vr: 'SQ', items: [[s(0x00081150, 'UI', CT), s(0x00081155, 'UI', ORIG.sop), s(0x0070031b, 'UI', `${ORIG.other}.77`)]] });
    const out = run(ctFile(extra));
    assertNoLeak(out);
    const frame = get(out.obj.dataset, 0x00200052);
    assert.equal(frame, mapped(ORIG.frame));
    assert.equal(get(out.obj.dataset, 0x00209312), frame, 'VolumeFrameOfReferenceUID follows FrameOfReferenceUID');
    for (const [i, t] of tags.entries()) assert.equal(get(out.obj.dataset, t), mapped(`${ORIG.other}.${i + 10}`), t.toString(16));
    const fiducial = get(items(items(out.obj.dataset, 0x00700308)[0], 0x0070030a)[0], 0x0070031a);
    const ref = items(out.obj.dataset, 0x00081140)[0];
    assert.equal(get(ref, 0x0070031b), fiducial, 'ReferencedFiducialUID maps like FiducialUID');
    assert.equal(get(ref, 0x00081155), get(out.obj.dataset, 0x00080018), 'a reference to this instance maps like the instance');
    assert.equal(get(ref, 0x00081150), CT, 'class UIDs are not touched');
    assert.equal(get(out.obj.dataset, 0x00080016), CT);
  });

  test('4. group 0010 attributes the table does not list are removed', () => {
    const out = run(ctFile([
      s(0x00100033, 'LO', `${MARK}14440101`), s(0x00100034, 'LO', `${MARK}14900101`), s(0x00102295, 'LO', `${MARK}BREED`),
      { tag: 0x00100024, vr: 'SQ', items: [[s(0x00400031, 'UT', `${MARK}NAMESPACE`), s(0x00400032, 'UT', 'x')]] },
      s(0x00101010, 'AS', '052Y'),
    ]));
    assertNoLeak(out);
    for (const t of [0x00100033, 0x00100034, 0x00102295, 0x00100024]) assert.equal(findElement(out.obj.dataset, t), undefined, t.toString(16));
    assert.equal(get(out.obj.dataset, 0x00180050), '1.25', 'research metadata is kept');
    assert.equal(findElement(out.obj.dataset, 0x00100040)?.value?.length, 0, 'PatientSex follows its row (Z)');
  });

  test('5. group 0002 inside the dataset is dropped, after a meta header and in a bare implicit file', () => {
    const inDataset: CEl[] = [
      s(0x00020002, 'UI', CT), s(0x00020003, 'UI', ORIG.sop), s(0x00020010, 'UI', TSX.ExplicitLE),
      s(0x00020016, 'AE', `${MARK}AET`), s(0x00020100, 'UI', `${ORIG.other}.2`), s(0x00020102, 'OB', Buffer.from(`${MARK}PRIVINFO`)),
    ];
    const withMeta = part10(encodeDataset([...inDataset, ...ctElements()], ELE), { sopClass: CT, sopInstance: ORIG.sop, ts: TSX.ExplicitLE });
    const bare = encodeDataset([...inDataset.map((e) => (e.tag === 0x00020010 ? s(0x00020010, 'UI', TSX.ImplicitLE) : e)), ...ctElements()], ILE);
    for (const file of [withMeta, bare]) {
      const out = run(file);
      assertNoLeak(out);
      assert.ok(!out.obj.dataset.some((e) => e.tag >>> 16 === 2), 'no group 0002 in the dataset');
      for (const t of ['(0002,0002)', '(0002,0003)', '(0002,0010)']) assert.equal(out.dump.split(t).length - 1, 1, `${t} once`);
      assert.equal(get(out.obj.meta, 0x00020003), get(out.obj.dataset, 0x00080018));
    }
  });

  test('6. overlays go as a whole group; dciodvfy finds no overlay error', () => {
    const out = run(ctFile([
      s(0x60000010, 'US', [2]), s(0x60000011, 'US', [2]), s(0x60000022, 'LO', `${MARK}OVL patient Jones`), s(0x60000040, 'CS', 'G'),
      s(0x60000050, 'SS', [1, 1]), s(0x60000100, 'US', [1]), s(0x60000102, 'US', [0]), s(0x60001500, 'LO', `${MARK}LABEL`),
      s(0x60003000, 'OW', Buffer.alloc(2)), s(0x60004000, 'LT', `${MARK}COMMENT`),
    ]));
    assertNoLeak(out, ['Jones']);
    assert.ok(!out.obj.dataset.some((e) => (e.tag >>> 16 & 0xff00) === 0x6000));
    const dir = tempDir('deid-gaps-ovl-');
    writeFileSync(join(dir, 'o.dcm'), out.bytes);
    const v = spawnSync('dciodvfy', [join(dir, 'o.dcm')], { encoding: 'latin1' });
    assert.doesNotMatch(v.stdout + v.stderr, /Error.*Overlay/i);
  });

  test('7 and #8.1. a sequence sent as UN or OB (defined and undefined length) is read and de-identified', () => {
    for (const [name, file] of Object.entries(gapFiles())) {
      const out = run(file);
      assertNoLeak(out);
      const ref = items(out.obj.dataset, 0x00081140);
      assert.equal(ref.length, 1, `${name}: the sequence is kept, de-identified`);
      assert.equal(get(ref[0], 0x00081155), mapped(ORIG.other), `${name}: the reference maps like its target`);
    }
  });

  test('#8.1. over the network (dataset bytes as C-STORE delivers them), implicit and explicit', () => {
    const seq = (undef: boolean): CEl => ({ tag: 0x0008114a, vr: 'SQ', as: 'UN', undef, items: [[s(0x00081150, 'UI', CT), s(0x00081155, 'UI', ORIG.other), s(0x00100010, 'PN', `${MARK}X`)]] });
    const p = pipeline();
    for (const undef of [false, true]) {
      const ds = encodeDataset(ctElements([seq(undef)]), ELE);
      const r = p.process({ kind: 'dataset', bytes: ds, transferSyntaxUid: TSX.ExplicitLE }, 'STORESCU');
      const bytes = Buffer.concat(r.chunks!);
      for (const n of [MARK, ORIG.other, ORIG.sop, ORIG.study]) assert.ok(!bytes.toString('latin1').includes(n), n);
      assert.equal(get(items(readPart10(bytes).dataset, 0x0008114a)[0], 0x00081155), mapped(ORIG.other));
    }
  });

  test('8. a multi-valued DA with its TM is shifted pair by pair across midnight', () => {
    const p = pipeline({ T: { ProfileOptions: ['retainLongitudinalModifiedDates'], DateOffset: { seconds: 7200 } } });
    const file = ctFile([s(0x00181030, 'LO', 'T'), s(0x00181200, 'DA', '20230101\\20230102'), s(0x00181201, 'TM', '230000\\100000')]);
    const out = run(file, p);
    assert.equal(get(out.obj.dataset, 0x00181200), '20230102\\20230102');
    assert.equal(get(out.obj.dataset, 0x00181201), '010000\\120000');
  });

  test('pixel data and research metadata survive every fix byte for byte', () => {
    const out = run(ctFile());
    assert.ok(findElement(out.obj.dataset, 0x7fe00010)!.value!.equals(PIXELS));
    for (const [t, v] of [[0x00080060, 'CT'], [0x00080070, 'ACME'], [0x00180050, '1.25'], [0x00280004, 'MONOCHROME2']] as const) assert.equal(get(out.obj.dataset, t), v);
  });
});

describe('#8.5 files other toolkits read', () => {
  test('a zero-length (0000,0000) without VR opening an explicit VR dataset', () => {
    const ds = Buffer.concat([Buffer.alloc(8), encodeDataset(ctElements(), ELE)]);
    const out = run(part10(ds, { sopClass: CT, sopInstance: ORIG.sop, ts: TSX.ExplicitLE }));
    assertNoLeak(out);
    assert.ok(!out.obj.dataset.some((e) => e.tag >>> 16 === 0));
    assert.ok(findElement(out.obj.dataset, 0x7fe00010)!.value!.equals(PIXELS));
  });

  test('no TransferSyntaxUID in the meta and an explicit VR big endian dataset', () => {
    const out = run(part10(encodeDataset(ctElements(), EBE), { sopClass: CT, sopInstance: ORIG.sop }));
    assertNoLeak(out);
    assert.equal(get(out.obj.meta, 0x00020010), TSX.ExplicitBE);
    assert.equal(findElement(out.obj.dataset, 0x00280010)!.value!.readUInt16BE(0), 2, 'Rows read big endian');
    assert.match(out.dump, /\(0028,0010\) US 2 /);
  });

  test('the dataset lacks SOPClassUID: the meta says it', () => {
    const out = run(part10(encodeDataset(ctElements([], { withSopClass: false }), ELE), { sopClass: CT, sopInstance: ORIG.sop, ts: TSX.ExplicitLE }));
    assert.equal(get(out.obj.dataset, 0x00080016), CT);
    assert.equal(get(out.obj.meta, 0x00020002), CT);
  });

  test('no SOP Class anywhere: refused with a reason, not a crash', () => {
    const file = part10(encodeDataset(ctElements([], { withSopClass: false }), ELE), { sopInstance: ORIG.sop, ts: TSX.ExplicitLE });
    assert.throws(() => pipeline().process({ kind: 'file', bytes: file }), (e: unknown) => e instanceof ImageRejected && /SOPClassUID/.test(e.message));
  });

  test('limits: a deflate bomb and absurd nesting are refused (0xA700), not swallowed', () => {
    const bomb = part10(deflateRawSync(Buffer.concat([encodeDataset(ctElements(), ELE), encodeDataset([s(0x00091010, 'OB', Buffer.alloc(300 * 1024 * 1024))], ELE)])), { sopClass: CT, sopInstance: ORIG.sop, ts: TSX.Deflated });
    assert.throws(() => pipeline().process({ kind: 'file', bytes: bomb }), (e: unknown) => e instanceof ImageRejected && e.status === Status.OutOfResources && /inflates/.test(e.message));
    let nested: CEl = s(0x00081155, 'UI', ORIG.other);
    for (let i = 0; i < 40; i++) nested = { tag: 0x00081115, vr: 'SQ', items: [[nested]] };
    assert.throws(() => pipeline().process({ kind: 'file', bytes: ctFile([nested]) }), (e: unknown) => e instanceof ImageRejected && /nested deeper/.test(e.message));
  });
});
