import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, copyFileSync, existsSync, readdirSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { createHash } from 'crypto';
import { spawnSync } from 'child_process';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, ['dist/cli.js', ...args], { encoding: 'utf8', env: { ...process.env, DEID_SALT: 'cli-test-salt-98a7', ...env } });

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

test('--help lists the commands; unknown command and missing args fail clearly', () => {
  const h = cli(['--help']);
  assert.equal(h.status, 0);
  for (const c of ['serve', 'anonymize', 'check-config', 'spool']) assert.match(h.stdout, new RegExp(`dicom-deid-router ${c}`));
  const u = cli(['frobnicate']);
  assert.equal(u.status, 2);
  assert.match(u.stderr, /unknown command "frobnicate"/);
  const m = cli(['anonymize', '--config', 'config/', 'only-one']);
  assert.equal(m.status, 2);
  assert.match(m.stderr, /needs INCOMING and OUTGOING/);
});

test('anonymize: inputs untouched, non-DICOM skipped, bad DICOM quarantined with a reason, exit 1', { skip: !corpusAvailable() }, () => {
  const base = mkdtempSync(join(tmpdir(), 'deid-cli-'));
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
  assert.equal(reason.source, join('sub', 'truncated.dcm'));
  assert.equal(reason.stage, 'read');
  assert.match(reason.reason, /runs past the end|truncated/);
  const quarantined = readdirSync(join(base, 'q')).find((f) => f.endsWith('.dcm'))!;
  assert.ok(readFileSync(join(base, 'q', quarantined)).equals(ct.subarray(0, 2000)), 'the original is kept as it was');
  // Nothing half-done in OUTGOING: only complete outputs, no temp files.
  const outs = readdirSync(join(base, 'out'), { recursive: true }).map(String);
  assert.equal(outs.filter((f) => f.endsWith('.dcm')).length, 2);
  assert.ok(!outs.some((f) => f.includes('.tmp-')));
});

test('anonymize --move removes inputs once they are safely written', { skip: !corpusAvailable() }, () => {
  const base = mkdtempSync(join(tmpdir(), 'deid-cli-'));
  const inc = join(base, 'in');
  mkdirSync(inc);
  copyFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'), join(inc, 'a.dcm'));
  const r = cli(['anonymize', '--move', '--config', 'config/', '--quarantine', join(base, 'q'), inc, join(base, 'out')]);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!existsSync(join(inc, 'a.dcm')));
  assert.equal(readdirSync(join(base, 'out'), { recursive: true }).map(String).filter((f) => f.endsWith('.dcm')).length, 1);
});
