// The batch command's writer thread (src/deliver/background-writer.ts): every byte arrives, the
// ring wraps and waits without overwriting a job in flight, failures are reported per file, and
// completions come back in submission order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { randomBytes } from 'crypto';
import { BackgroundWriter, type Completion } from '../src/deliver/background-writer';
import { TEMP_PREFIX } from '../src/deliver/folder';

function chunked(b: Buffer): Buffer[] {
  // Uneven pieces, as the DICOM writer produces (headers, then slices of the input).
  const out: Buffer[] = [];
  for (let at = 0, step = 7; at < b.length; at += step, step = step * 3 + 1) out.push(b.subarray(at, Math.min(b.length, at + step)));
  return out;
}

test('a small ring wraps many times; every file arrives whole, reported in order', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'deid-bgw-'));
  const done: Completion<number>[] = [];
  const ringBytes = 64 << 10;
  const w = new BackgroundWriter<number>((c) => done.push(c), false, ringBytes);
  const expected: Buffer[] = [];
  for (let i = 0; i < 300; i++) {
    const b = randomBytes(1 + ((i * 7919) % 30000));
    expected.push(b);
    // Submit from a buffer that is overwritten right after: the writer must have copied it.
    const scratch = Buffer.from(b);
    w.submit(join(dir, `s${i % 5}`, `f${i}.bin`), chunked(scratch), i);
    scratch.fill(0xee);
  }
  await w.close();
  assert.deepEqual(done.map((c) => c.tag), expected.map((_, i) => i));
  assert.ok(done.every((c) => c.error === undefined));
  for (let i = 0; i < expected.length; i++) assert.ok(readFileSync(join(dir, `s${i % 5}`, `f${i}.bin`)).equals(expected[i]), `file ${i}`);
  const names = readdirSync(dir, { recursive: true }).map(String);
  assert.ok(!names.some((n) => n.includes(TEMP_PREFIX)), 'no temp file left behind');
});

test('a failed write is reported for that file only; a file larger than the ring goes after the queue', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'deid-bgw-'));
  writeFileSync(join(dir, 'not-a-folder'), 'x');
  const done: Completion<string>[] = [];
  const w = new BackgroundWriter<string>((c) => done.push(c), false, 64 << 10);
  const big = randomBytes(200_000);
  w.submit(join(dir, 'a', '1.bin'), [Buffer.from('one')], 'first');
  w.submit(join(dir, 'not-a-folder', '2.bin'), [Buffer.from('two')], 'broken');
  w.submit(join(dir, 'a', 'big.bin'), chunked(big), 'big');
  w.submit(join(dir, 'a', '3.bin'), [Buffer.from('three')], 'last');
  await w.close();
  assert.deepEqual(done.map((c) => c.tag), ['first', 'broken', 'big', 'last']);
  assert.equal(done[0].error, undefined);
  assert.match(done[1].error ?? '', /ENOTDIR|EEXIST/);
  assert.equal(done[2].error, undefined);
  assert.ok(readFileSync(join(dir, 'a', 'big.bin')).equals(big));
  assert.equal(readFileSync(join(dir, 'a', '3.bin'), 'latin1'), 'three');
});

test('inputs read into the ring are written from there; new pieces are copied beside them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'deid-bgw-'));
  const done: Completion<number>[] = [];
  const w = new BackgroundWriter<number>((c) => done.push(c), false, 256 << 10);
  const expected = new Map<number, Buffer>();
  for (let i = 0; i < 60; i++) {
    const input = randomBytes(20_000 + i * 97);
    const into = w.inputBuffer(input.length);
    assert.ok(into, 'fits in the ring');
    input.copy(into);
    if (i % 7 === 3) continue; // skipped input: its space is handed out again
    // Output: a new header, a slice of the input, a new middle, another slice (as the engine makes).
    const head = Buffer.from(`head ${i}`);
    const mid = randomBytes(i % 2 ? 10 : 5000);
    const chunks = [head, into.subarray(100, 9000), mid, into.subarray(9000)];
    expected.set(i, Buffer.concat(chunks));
    w.submit(join(dir, `f${i}.bin`), chunks, i);
  }
  // New bytes larger than the room kept beside an input: written on the calling thread, in order.
  const input = randomBytes(1000);
  const into = w.inputBuffer(input.length)!;
  input.copy(into);
  const large = [into, randomBytes(100_000)];
  expected.set(99, Buffer.concat(large));
  w.submit(join(dir, 'f99.bin'), large, 99);
  // No input buffer at all: the whole output is copied into the ring.
  const own = [randomBytes(3000), randomBytes(40)];
  expected.set(100, Buffer.concat(own));
  w.submit(join(dir, 'f100.bin'), own, 100);
  await w.close();
  assert.deepEqual(done.map((c) => c.tag), [...expected.keys()]);
  assert.ok(done.every((c) => c.error === undefined));
  for (const [i, b] of expected) assert.ok(readFileSync(join(dir, `f${i}.bin`)).equals(b), `file ${i}`);
  assert.equal(w.inputBuffer(200 << 10), undefined, 'an input larger than half the ring is read elsewhere');
});
