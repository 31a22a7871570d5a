// DurableWriter: atomic, durable writes off the event loop with shared folder fsyncs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, rmSync, existsSync } from 'fs';
import { join } from 'path';
import { randomBytes } from 'crypto';
import { DurableWriter } from '../src/deliver/durable-writer';
import { tempDir } from './helpers/tmp';

function tmp(): string {
  return tempDir('durable-writer-');
}

test('many files written concurrently into one folder: each complete under its name, no temp file left', async () => {
  const dir = tmp();
  const w = new DurableWriter();
  const bodies = Array.from({ length: 40 }, (_, i) => [randomBytes(1000 + i * 37), randomBytes(i * 11)]);
  await Promise.all(bodies.map((b, i) => w.writeFile(join(dir, 'a', 'b', `${i}.dcm`), b)));
  const names = readdirSync(join(dir, 'a', 'b')).sort();
  assert.deepEqual(names, bodies.map((_, i) => `${i}.dcm`).sort());
  bodies.forEach((b, i) => assert.deepEqual(readFileSync(join(dir, 'a', 'b', `${i}.dcm`)), Buffer.concat(b)));
  assert.equal(w.stats.files, 40);
  assert.ok(w.stats.dirSyncs >= 1);
  rmSync(dir, { recursive: true, force: true });
});

test('a file appended piece by piece equals the pieces joined; nothing is visible before commit', async () => {
  const dir = tmp();
  const w = new DurableWriter();
  const path = join(dir, 'x', 'one.dcm');
  const f = w.open(path);
  const pieces: Buffer[] = [];
  for (let i = 0; i < 50; i++) {
    const p = randomBytes(4096 + i);
    pieces.push(p);
    f.append([p]);
    if (i === 25) await f.whenBelow(1);
  }
  await f.whenBelow(1);
  assert.equal(existsSync(path), false);
  assert.equal(f.pending, 0);
  await f.commit();
  assert.deepEqual(readFileSync(path), Buffer.concat(pieces));
  assert.deepEqual(readdirSync(join(dir, 'x')), ['one.dcm']);
  rmSync(dir, { recursive: true, force: true });
});

test('abort leaves neither the file nor its temp file', async () => {
  const dir = tmp();
  const w = new DurableWriter();
  const f = w.open(join(dir, 'y', 'gone.dcm'));
  f.append([randomBytes(100_000)]);
  await f.whenBelow(1);
  await f.abort();
  assert.deepEqual(readdirSync(join(dir, 'y')), []);
  rmSync(dir, { recursive: true, force: true });
});

test('a folder removed behind the writer is made again', async () => {
  const dir = tmp();
  const w = new DurableWriter();
  await w.writeFile(join(dir, 's', '1.dcm'), [Buffer.from('one')]);
  rmSync(join(dir, 's'), { recursive: true });
  await w.writeFile(join(dir, 's', '2.dcm'), [Buffer.from('two')]);
  assert.equal(readFileSync(join(dir, 's', '2.dcm'), 'latin1'), 'two');
  rmSync(dir, { recursive: true, force: true });
});

test('a failing write rejects commit and leaves no temp file', async () => {
  const dir = tmp();
  const w = new DurableWriter();
  // A path under a regular file cannot be created.
  await w.writeFile(join(dir, 'file'), [Buffer.from('x')]);
  await assert.rejects(w.writeFile(join(dir, 'file', 'sub', 'a.dcm'), [Buffer.from('y')]));
  assert.deepEqual(readdirSync(dir), ['file']);
  rmSync(dir, { recursive: true, force: true });
});

test('a folder taken away while a file is written piece by piece: the file still arrives whole', async () => {
  const dir = tmp();
  const w = new DurableWriter();
  const path = join(dir, 'study', 'series', 'img.dcm');
  const f = w.open(path);
  const pieces = [randomBytes(70_000), randomBytes(3)];
  f.append([pieces[0]]);
  await f.whenBelow(1);
  rmSync(join(dir, 'study'), { recursive: true }); // the consumer took the study, temp file and all
  f.append([pieces[1]]);
  await f.commit();
  assert.deepEqual(readFileSync(path), Buffer.concat(pieces));
  assert.deepEqual(readdirSync(join(dir, 'study', 'series')), ['img.dcm']);
  rmSync(dir, { recursive: true, force: true });
});
