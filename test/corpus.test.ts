import { createHash } from 'crypto';
import { tempDir } from './helpers/tmp';
// The whole PHI corpus through the batch command: no planted marker survives, every output is
// valid DICOM, pixel data and research metadata are untouched, UIDs stay consistent.
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, existsSync } from 'fs';
import { join, relative } from 'path';
import { spawnSync } from 'child_process';
import { CORPUS_PHI } from './helpers/corpus';
import { findLeaks } from './helpers/leaks';
import { readPart10 } from '../src/dicom/read';
import { DicomObject, Element, elementString, findElement } from '../src/dicom/dataset';
import { loadConfig } from '../src/config/load';
import { DeidPipeline, ImageRejected } from '../src/pipeline';
import { tagOf } from './helpers/build';
import { hasTool } from './helpers/tools';

const SALT = 'corpus-test-salt-5f1c2a9e';
const skip = false;

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out.sort();
}

function anonymize(outDir: string, quarantine: string) {
  return spawnSync(process.execPath, ['dist/cli.js', 'anonymize', '--config', 'config/', '--quarantine', quarantine, CORPUS_PHI, outDir], {
    encoding: 'utf8', env: { ...process.env, DEID_SALT: SALT },
  });
}

const RESEARCH_TAGS = [
  'Modality', 'Rows', 'Columns', 'PixelSpacing', 'SliceThickness', 'ImagePositionPatient', 'ImageOrientationPatient',
  'Manufacturer', 'ManufacturerModelName', 'KVP', 'EchoTime', 'RepetitionTime', 'FlipAngle', 'MagneticFieldStrength',
  'BitsAllocated', 'BitsStored', 'HighBit', 'PixelRepresentation', 'PhotometricInterpretation', 'SamplesPerPixel',
  'RescaleIntercept', 'RescaleSlope', 'WindowCenter', 'WindowWidth', 'SeriesNumber', 'InstanceNumber', 'NumberOfFrames',
  'SOPClassUID', 'ImageType', 'SpacingBetweenSlices', 'ScanningSequence', 'SequenceVariant', 'SpecificCharacterSet',
].map(tagOf);

function pixelBytes(o: DicomObject): Buffer | undefined {
  const e = findElement(o.dataset, 0x7fe00010);
  return e ? (e.encapsulated ?? e.value ?? undefined) : undefined;
}

describe('PHI corpus through anonymize', { skip }, () => {
  let out1: string;
  let out2: string;
  let q1: string;
  let run1: ReturnType<typeof anonymize>;
  let outputs: string[];
  const inputs = skip ? [] : readdirSync(CORPUS_PHI).filter((f) => f.endsWith('.dcm')).map((f) => join(CORPUS_PHI, f));

  before(() => {
    const base = tempDir('deid-corpus-');
    out1 = join(base, 'out1');
    out2 = join(base, 'out2');
    q1 = join(base, 'q1');
    run1 = anonymize(out1, q1);
    anonymize(out2, join(base, 'q2'));
    outputs = existsSync(out1) ? walk(out1) : [];
  });

  test('every file is written or quarantined with a reason; the summary says so', () => {
    const m = /processed (\d+), quarantined (\d+), skipped non-DICOM (\d+), duplicate instances (\d+)/.exec(run1.stdout);
    assert.ok(m, `summary line missing: ${run1.stdout} ${run1.stderr}`);
    const [processed, quarantined, skipped, duplicates] = m.slice(1).map(Number);
    assert.equal(processed + quarantined + duplicates, inputs.length);
    assert.equal(processed, outputs.length);
    assert.equal(skipped, 1); // phi_truth.json
    const reasons = existsSync(q1) ? readdirSync(q1).filter((f) => f.endsWith('.reason.json')) : [];
    assert.equal(reasons.length, quarantined);
    assert.equal(run1.status, quarantined ? 1 : 0);
    // Each quarantined image really lacks what an output path needs.
    for (const r of reasons) {
      const reason = JSON.parse(readFileSync(join(q1, r), 'utf8'));
      assert.match(reason.reason, /has no (SOPClassUID|SOPInstanceUID|StudyInstanceUID|SeriesInstanceUID)/);
      // The reason names no input path (exports are named after patients); the original beside it
      // is the input, byte for byte, and its hash is in the reason.
      assert.equal(reason.source, 'anonymize');
      const bytes = readFileSync(join(q1, r.replace(/\.reason\.json$/, '.dcm')));
      assert.equal(reason.sha256, createHash('sha256').update(bytes).digest('hex'));
      const original = readPart10(bytes);
      assert.ok(!findElement(original.dataset, 0x00080016) || !findElement(original.dataset, 0x00080018) || !findElement(original.dataset, 0x0020000d));
    }
    assert.ok(processed + duplicates >= inputs.length - 8, `only ${processed} of ${inputs.length} processed`);
    assert.ok(outputs.length > 40);
  });

  test('no planted marker anywhere in any output (deflated ones inflated)', () => {
    const leaks: string[] = [];
    for (const f of outputs) {
      const l = findLeaks(readFileSync(f));
      if (l.length) leaks.push(`${relative(out1, f)}: ${l.join(', ')}`);
    }
    assert.deepEqual(leaks, []);
  });

  test('output layout <study>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm with de-identified UIDs', () => {
    for (const f of outputs) {
      const parts = relative(out1, f).split('/');
      assert.equal(parts.length, 4, f);
      const o = readPart10(readFileSync(f));
      const g = (t: number) => elementString(findElement(o.dataset, t));
      assert.equal(parts[1], g(0x0020000d));
      assert.equal(parts[2], g(0x0020000e));
      assert.equal(parts[3], `${g(0x00080018)}.dcm`);
      for (const p of parts.slice(1, 3)) assert.match(p, /^2\.25\.\d+$/);
      assert.equal(elementString(findElement(o.meta, 0x00020003)), g(0x00080018));
    }
  });

  test('running twice gives byte-identical outputs', () => {
    const second = walk(out2);
    assert.deepEqual(second.map((f) => relative(out2, f)), outputs.map((f) => relative(out1, f)));
    for (const f of outputs) assert.ok(readFileSync(f).equals(readFileSync(join(out2, relative(out1, f)))), f);
  });

  test('dcmdump (dcmtk) reads every output without error', { skip: !hasTool('dcmdump') }, () => {
    const bad: string[] = [];
    for (const f of outputs) {
      const r = spawnSync('dcmdump', ['-q', '+E', f], { encoding: 'latin1' });
      if (r.status !== 0 || /^E:/m.test(r.stderr)) bad.push(`${relative(out1, f)}: ${r.stderr.slice(0, 200)}`);
    }
    assert.deepEqual(bad, []);
  });

  describe('per file, through the same pipeline', () => {
    const pipeline = skip ? undefined : new DeidPipeline(loadConfig('config/', { DEID_SALT: SALT }), SALT);
    const results: Array<{ name: string; input: DicomObject; output: DicomObject }> = [];
    before(() => {
      for (const f of inputs) {
        try {
          const r = pipeline!.process({ kind: 'file', bytes: readFileSync(f) });
          if (r.output) results.push({ name: f, input: readPart10(readFileSync(f)), output: readPart10(Buffer.concat(r.chunks!)) });
        } catch (e) {
          if (!(e instanceof ImageRejected)) throw e;
        }
      }
    });

    test('pixel data bytes are identical to the input, transfer syntax kept', () => {
      let withPixels = 0;
      for (const { name, input, output } of results) {
        assert.equal(output.transferSyntaxUid, input.transferSyntaxUid, name);
        const a = pixelBytes(input);
        const b = pixelBytes(output);
        if (!a) continue;
        withPixels++;
        assert.ok(b && a.equals(b), `pixel data differs: ${name}`);
      }
      assert.ok(withPixels > 50, `${withPixels}`);
    });

    test('research metadata the profile keeps is unchanged, byte for byte', () => {
      let compared = 0;
      for (const { name, input, output } of results) {
        for (const t of RESEARCH_TAGS) {
          const a = findElement(input.dataset, t);
          if (!a || !a.value) continue;
          const b = findElement(output.dataset, t);
          assert.ok(b && b.value && a.value.equals(b.value), `${name}: ${t.toString(16)} changed`);
          compared++;
        }
      }
      assert.ok(compared > 500, `${compared}`);
    });

    test('one original study -> one new StudyInstanceUID; different studies stay different', () => {
      const map = new Map<string, string>();
      const reverse = new Map<string, string>();
      const uid = (o: DicomObject, t: number) => elementString(findElement(o.dataset, t))!;
      for (const { input, output } of results) {
        const a = uid(input, 0x0020000d);
        const b = uid(output, 0x0020000d);
        assert.notEqual(a, b);
        if (map.has(a)) assert.equal(map.get(a), b);
        map.set(a, b);
        if (reverse.has(b)) assert.equal(reverse.get(b), a);
        reverse.set(b, a);
      }
      assert.ok(map.size > 10);
    });

    test('no original instance UID survives anywhere, references included', () => {
      const IDENTIFYING = [0x00080018, 0x0020000d, 0x0020000e, 0x00200052, 0x00081155, 0x00020003, 0x00080014, 0x00209161];
      const originals = new Set<string>();
      const collect = (els: readonly Element[]) => {
        for (const e of els) {
          if (e.items) for (const it of e.items) collect(it.elements);
          else if (IDENTIFYING.includes(e.tag)) for (const u of (elementString(e) ?? '').split('\\')) if (u.includes('.')) originals.add(u);
        }
      };
      for (const { input } of results) {
        collect(input.dataset);
        collect(input.meta);
      }
      assert.ok(originals.size > 50);
      for (const f of outputs) {
        const bytes = readFileSync(f).toString('latin1');
        for (const u of originals) assert.ok(!bytes.includes(u), `${relative(out1, f)} contains an original UID`);
      }
    });
  });

  test('dciodvfy finds no error in an output that it did not find in the input', { skip: !hasTool('dciodvfy') }, () => {
    const pipeline = new DeidPipeline(loadConfig('config/', { DEID_SALT: SALT }), SALT);
    const dir = tempDir('deid-dciodvfy-');
    const errors = (file: string) => new Set(
      spawnSync('dciodvfy', [file], { encoding: 'latin1' }).stderr.split('\n').filter((l) => l.startsWith('Error'))
        // UIDs change by design; compare the messages without them.
        .map((l) => l.replace(/[0-9]+(\.[0-9]+){2,}/g, '<uid>')),
    );
    const introduced: string[] = [];
    for (const f of inputs) {
      let r;
      try {
        r = pipeline.process({ kind: 'file', bytes: readFileSync(f) });
      } catch {
        continue;
      }
      if (!r.chunks) continue;
      const o = join(dir, 'out.dcm');
      require('fs').writeFileSync(o, Buffer.concat(r.chunks));
      const before = errors(f);
      for (const e of errors(o)) if (!before.has(e)) introduced.push(`${relative(CORPUS_PHI, f)}: ${e}`);
    }
    assert.deepEqual(introduced, []);
  });
});

describe('PHI corpus through the example STUDYA rules (hash, value, per-patient date shift)', { skip }, () => {
  test('no planted marker survives; dates are shifted, not removed; PatientName is a keyed hash', () => {
    const config = loadConfig('config/', { DEID_SALT: SALT });
    // Route by ProtocolName STUDYA^T1 -> STUDYA (the default station, given Split "^").
    config.stations.get('default')!.split = '^';
    const pipeline = new DeidPipeline(config, SALT);
    let n = 0;
    for (const f of readdirSync(CORPUS_PHI).filter((x) => x.endsWith('.dcm'))) {
      let r;
      try {
        r = pipeline.process({ kind: 'file', bytes: readFileSync(join(CORPUS_PHI, f)) });
      } catch (e) {
        if (e instanceof ImageRejected) continue;
        throw e;
      }
      assert.equal(r.studyName, 'STUDYA', f);
      const bytes = Buffer.concat(r.chunks!);
      assert.deepEqual(findLeaks(bytes), [], f);
      const o = readPart10(bytes);
      const studyDate = elementString(findElement(o.dataset, 0x00080020));
      assert.match(studyDate ?? '', /^\d{8}$/, `${f}: StudyDate kept, shifted`);
      assert.notEqual(studyDate, '20230917');
      assert.match(elementString(findElement(o.dataset, 0x00100010)) ?? '', /^[0-9A-F]{32}$/);
      assert.equal(elementString(findElement(o.dataset, 0x00280303)), 'MODIFIED');
      n++;
    }
    assert.ok(n > 60);
  });
});
