import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, existsSync, readdirSync } from 'fs';
import { join } from 'path';
import { createHash } from 'crypto';
import { spawnSync } from 'child_process';
import { CORPUS_PHI } from './helpers/corpus';
import { TEMP_PREFIX } from '../src/deliver/folder';
import { tempDir } from './helpers/tmp';

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, ['dist/cli.js', ...args], { encoding: 'utf8', env: { ...process.env, DEID_SALT: 'cli-test-salt-98a7', ...env } });

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

test('--help lists the commands; unknown command and missing args fail clearly', () => {
  const h = cli(['--help']);
  assert.equal(h.status, 0);
  for (const c of ['serve', 'anonymize', 'check-config', 'spool', 'explain']) assert.match(h.stdout, new RegExp(`dicom-deid-router ${c}`));
  const u = cli(['frobnicate']);
  assert.equal(u.status, 2);
  assert.match(u.stderr, /unknown command "frobnicate"/);
  const m = cli(['anonymize', '--config', 'config/', 'only-one']);
  assert.equal(m.status, 2);
  assert.match(m.stderr, /needs INCOMING and OUTGOING/);
});

test('anonymize: inputs untouched, non-DICOM skipped, bad DICOM quarantined with a reason, exit 1', () => {
  const base = tempDir('deid-cli-');
  const inc = join(base, 'in');
  mkdirSync(join(inc, 'sub'), { recursive: true });
  copyFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'), join(inc, 'a.dcm'));
  copyFileSync(join(CORPUS_PHI, 'pydicom__MR_small.dcm'), join(inc, 'sub', 'b.dcm'));
  writeFileSync(join(inc, 'notes.txt'), 'not an image');
  // A Part-10 file cut short in the middle of its dataset.
  const ct = readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'));
  writeFileSync(join(inc, 'sub', 'truncated.dcm'), ct.subarray(0, 2000));
  const before = readdirSync(inc, { recursive: true }).map(String).sort().map((f) => [f, existsSync(join(inc, f)) && !f.endsWith('sub') ? sha(join(inc, f)) : '']);

  const r = cli(['anonymize', '--config', 'config/', '--quarantine', join(base, 'q'), inc, join(base, 'out')]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stdout, /processed 2, quarantined 1, skipped non-DICOM 1, duplicate instances 0/);
  assert.match(r.stdout, /per study: Supplement142: 2/);
  const after = readdirSync(inc, { recursive: true }).map(String).sort().map((f) => [f, existsSync(join(inc, f)) && !f.endsWith('sub') ? sha(join(inc, f)) : '']);
  assert.deepEqual(after, before);
  const reasons = readdirSync(join(base, 'q')).filter((f) => f.endsWith('.reason.json'));
  assert.equal(reasons.length, 1);
  const reason = JSON.parse(readFileSync(join(base, 'q', reasons[0]), 'utf8'));
  // No input path in the reason (exports are named after patients): its hash finds the input.
  assert.equal(reason.source, 'anonymize');
  assert.equal(reason.sha256, createHash('sha256').update(ct.subarray(0, 2000)).digest('hex'));
  assert.equal(reason.stage, 'read');
  assert.match(reason.reason, /runs past the end|truncated/);
  const quarantined = readdirSync(join(base, 'q')).find((f) => f.endsWith('.dcm'))!;
  assert.ok(readFileSync(join(base, 'q', quarantined)).equals(ct.subarray(0, 2000)), 'the original is kept as it was');
  // Nothing half-done in OUTGOING: only complete outputs, no temp files.
  const outs = readdirSync(join(base, 'out'), { recursive: true }).map(String);
  assert.equal(outs.filter((f) => f.endsWith('.dcm')).length, 2);
  assert.ok(!outs.some((f) => f.includes(TEMP_PREFIX)));
});

test('anonymize --move removes inputs once they are safely written', () => {
  const base = tempDir('deid-cli-');
  const inc = join(base, 'in');
  mkdirSync(inc);
  copyFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'), join(inc, 'a.dcm'));
  const r = cli(['anonymize', '--move', '--config', 'config/', '--quarantine', join(base, 'q'), inc, join(base, 'out')]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!existsSync(join(inc, 'a.dcm')));
  assert.equal(readdirSync(join(base, 'out'), { recursive: true }).map(String).filter((f) => f.endsWith('.dcm')).length, 1);
});

/** n copies of one image, each a different SOP instance (same-length UIDs patched in place). */
function distinctCopies(dir: string, n: number): Buffer[] {
  const src = readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'));
  const uid = '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322';
  assert.ok(src.includes(uid), 'corpus file changed: update the SOP Instance UID here');
  const copies: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const next = Buffer.from(uid.slice(0, -5) + String(10000 + i), 'latin1');
    const b = Buffer.from(src);
    for (let at = b.indexOf(uid); at >= 0; at = b.indexOf(uid, at + 1)) next.copy(b, at);
    writeFileSync(join(dir, `img${String(i).padStart(3, '0')}.dcm`), b);
    copies.push(b);
  }
  return copies;
}

// 2 files are written on the main thread, 40 through the writer thread: both must quarantine.
for (const n of [2, 40]) {
  test(`anonymize: results that cannot be written are quarantined with their originals (${n} files)`, () => {
    const base = tempDir('deid-cli-');
    const inc = join(base, 'in');
    mkdirSync(inc);
    const copies = distinctCopies(inc, n);
    const out = join(base, 'out');
    writeFileSync(out, 'a file where the output folder should be');
    const r = cli(['anonymize', '--config', 'config/', '--quarantine', join(base, 'q'), inc, out]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, new RegExp(`processed 0, quarantined ${n},`));
    const reasons = readdirSync(join(base, 'q')).filter((f) => f.endsWith('.reason.json')).map((f) => JSON.parse(readFileSync(join(base, 'q', f), 'utf8')));
    assert.equal(reasons.length, n);
    for (const reason of reasons) {
      assert.equal(reason.stage, 'deliver');
      assert.match(reason.reason, /cannot write the result: (ENOTDIR|EEXIST)/);
    }
    const kept = readdirSync(join(base, 'q')).filter((f) => f.endsWith('.dcm')).map((f) => readFileSync(join(base, 'q', f)));
    assert.equal(kept.length, n);
    for (const c of copies) assert.ok(kept.some((k) => k.equals(c)), 'each original is in the quarantine');
  });
}

test('anonymize through the writer thread: 40 distinct images written whole, inputs moved only then', () => {
  const base = tempDir('deid-cli-');
  const inc = join(base, 'in');
  mkdirSync(inc);
  const copies = distinctCopies(inc, 40);
  const r = cli(['anonymize', '--move', '--config', 'config/', '--quarantine', join(base, 'q'), inc, join(base, 'out')]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /processed 40, quarantined 0,/);
  assert.deepEqual(readdirSync(inc), []);
  const outs = readdirSync(join(base, 'out'), { recursive: true }).map(String).filter((f) => f.endsWith('.dcm'));
  assert.equal(outs.length, 40);
  // Every output is complete: it holds the image's pixel data, whole and byte for byte.
  const header = Buffer.from([0xe0, 0x7f, 0x10, 0x00, 0x4f, 0x57, 0, 0]); // (7FE0,0010) OW, explicit LE
  const at = copies[0].indexOf(header);
  const pixels = copies[0].subarray(at + 12, at + 12 + copies[0].readUInt32LE(at + 8));
  assert.equal(pixels.length, 128 * 128 * 2);
  for (const f of outs) {
    const b = readFileSync(join(base, 'out', f));
    const p = b.indexOf(header);
    assert.ok(p > 0 && b.subarray(p + 12, p + 12 + pixels.length).equals(pixels), f);
  }
});
