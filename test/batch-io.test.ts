// The batch command's I/O thread (src/commands/batch-io.ts): inputs read ahead arrive whole and in
// order, outputs are written from where the inputs were read, the ring wraps without overwriting
// anything still in use, failures are reported per file, and outcomes come back in file order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import { randomBytes } from 'crypto';
import { BatchIo, InlineIo, type Completion, type FileIo } from '../src/commands/batch-io';
import { TEMP_PREFIX } from '../src/deliver/folder';
import { tempDir } from './helpers/tmp';

interface Case {
  inputs: string[];
  contents: Buffer[];
  outDir: string;
}

function makeInputs(n: number, size: (i: number) => number): Case {
  const base = tempDir('deid-bio-');
  mkdirSync(join(base, 'in'));
  const inputs: string[] = [];
  const contents: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const b = randomBytes(size(i));
    const f = join(base, 'in', `f${String(i).padStart(4, '0')}`);
    writeFileSync(f, b);
    inputs.push(f);
    contents.push(b);
  }
  return { inputs, contents, outDir: join(base, 'out') };
}

/** Runs a batch through io: output i = new head + slices of input i + new middle, except for
 * every 7th input, which is released unwritten. Returns what each output should hold. */
function run(io: FileIo<number>, c: Case, head = (i: number) => Buffer.from(`head ${i}`)): Map<number, Buffer> {
  const expected = new Map<number, Buffer>();
  for (let i = 0; i < c.inputs.length; i++) {
    const input = io.next();
    assert.equal(input.error, undefined, `input ${i}`);
    assert.ok(input.bytes!.equals(c.contents[i]), `input ${i} arrives whole`);
    if (i % 7 === 3) {
      io.release();
      continue;
    }
    const b = input.bytes!;
    const cut = Math.min(100, b.length);
    const chunks = [head(i), b.subarray(0, cut), randomBytes(i % 2 ? 10 : 3000), b.subarray(cut)];
    expected.set(i, Buffer.concat(chunks));
    io.write(join(c.outDir, `s${i % 5}`, `o${i}`), chunks, i);
  }
  return expected;
}

function checkOutputs(c: Case, expected: Map<number, Buffer>, done: Completion<number>[]): void {
  assert.deepEqual(done.map((d) => d.tag), [...expected.keys()], 'outcomes in file order');
  assert.ok(done.every((d) => d.error === undefined), JSON.stringify(done.filter((d) => d.error)));
  for (const [i, b] of expected) assert.ok(readFileSync(join(c.outDir, `s${i % 5}`, `o${i}`)).equals(b), `output ${i}`);
  assert.ok(!readdirSync(c.outDir, { recursive: true }).map(String).some((n) => n.includes(TEMP_PREFIX)), 'no temp file left');
}

test('thread: 300 inputs through a small ring that wraps many times', async () => {
  const c = makeInputs(300, (i) => 1 + ((i * 7919) % 30000));
  const done: Completion<number>[] = [];
  const io = new BatchIo<number>(c.inputs, false, 512 << 10);
  io.onDone = (d) => done.push(d);
  const expected = run(io, c);
  await io.close();
  checkOutputs(c, expected, done);
});

test('inline: the same contract on the calling thread', async () => {
  const c = makeInputs(40, (i) => 1 + i * 1000);
  const done: Completion<number>[] = [];
  const io = new InlineIo<number>(c.inputs, false);
  io.onDone = (d) => done.push(d);
  const expected = run(io, c);
  await io.close();
  checkOutputs(c, expected, done);
});

test('thread: inputs too large for the ring, new bytes beyond the room, unreadable inputs and failed writes', async () => {
  // Ring 512 KiB: inputs over 192 KiB are read on the main thread.
  const c = makeInputs(12, (i) => (i === 4 || i === 9 ? 300_000 : 5000 + i));
  const missing = join(c.outDir, '..', 'in', 'gone');
  c.inputs.splice(6, 0, missing);
  c.contents.splice(6, 0, Buffer.alloc(0));
  const blocker = join(c.outDir, '..', 'not-a-folder');
  writeFileSync(blocker, 'x');
  const done: Completion<number>[] = [];
  const io = new BatchIo<number>(c.inputs, false, 512 << 10);
  io.onDone = (d) => done.push(d);
  const expected = new Map<number, Buffer>();
  for (let i = 0; i < c.inputs.length; i++) {
    const input = io.next();
    if (i === 6) {
      assert.match(input.error ?? '', /ENOENT/);
      io.release();
      continue;
    }
    assert.ok(input.bytes!.equals(c.contents[i]), `input ${i}`);
    // Input 2 gets 100 KB of new bytes: more than the room beside it.
    const chunks = i === 2 ? [randomBytes(100_000), input.bytes!] : [Buffer.from([i]), input.bytes!];
    const path = i === 8 ? join(blocker, 'o8') : join(c.outDir, `o${i}`);
    if (i !== 8) expected.set(i, Buffer.concat(chunks));
    io.write(path, chunks, i);
  }
  await io.close();
  assert.deepEqual(done.map((d) => d.tag), [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]);
  for (const d of done) assert.equal(d.error === undefined, d.tag !== 8, `outcome of ${d.tag}`);
  assert.match(done.find((d) => d.tag === 8)!.error!, /ENOTDIR|EEXIST/);
  for (const [i, b] of expected) assert.ok(readFileSync(join(c.outDir, `o${i}`)).equals(b), `output ${i}`);
});

test('thread: a failure of the I/O thread itself ends the run with its reason instead of a hang', { timeout: 10_000 }, async () => {
  const c = makeInputs(3, () => 100);
  const io = new BatchIo<number>(c.inputs, false, 512 << 10);
  io.onDone = () => {};
  assert.ok(io.next().bytes);
  // A malformed answer stands in for a bug in the thread: its handler throws outside any file's I/O.
  (io as unknown as { worker: { postMessage(m: unknown): void } }).worker.postMessage([[0, 'x', null]]);
  io.release();
  const started = Date.now();
  // close() waits for that answer to be handled, which never happens: it must not wait forever.
  await assert.rejects(io.close(), /batch I\/O thread failed: TypeError/);
  assert.ok(Date.now() - started < 5000);
});

test('thread: 500 random inputs, answers and failures give the same outcomes as the inline I/O', { timeout: 60_000 }, async () => {
  // A seeded generator: the same "random" run every time, so a failure can be replayed.
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const sizes: number[] = [];
  for (let i = 0; i < 500; i++) sizes.push(rnd(10) === 0 ? 200_000 + rnd(100_000) : rnd(40_000));
  const c = makeInputs(sizes.length, (i) => sizes[i]);
  const blocker = join(c.outDir, '..', 'blocker');
  writeFileSync(blocker, 'x');
  // One plan of answers, played against both implementations.
  type Step = { release: true } | { release: false; failing: boolean; cuts: number[]; extra: number[] };
  const plan: Step[] = sizes.map((size) => {
    if (rnd(6) === 0) return { release: true };
    const cuts = [rnd(size + 1), rnd(size + 1)].sort((a, b) => a - b);
    const extra = [rnd(3) === 0 ? rnd(100_000) : rnd(200), rnd(50)];
    return { release: false, failing: rnd(25) === 0, cuts, extra };
  });
  const play = async (io: FileIo<number>, out: string) => {
    const done: Completion<number>[] = [];
    io.onDone = (d) => done.push(d);
    for (let i = 0; i < plan.length; i++) {
      const input = io.next();
      assert.ok(input.bytes!.equals(c.contents[i]), `input ${i}`);
      const step = plan[i];
      if (step.release) {
        io.release();
        continue;
      }
      const b = input.bytes!;
      const [x, y] = step.cuts;
      const chunks = [Buffer.alloc(step.extra[0], i & 0xff), b.subarray(0, x), Buffer.alloc(step.extra[1], 7), b.subarray(x, y), b.subarray(y)];
      io.write(step.failing ? join(blocker, `o${i}`) : join(out, `d${i % 7}`, `o${i}`), chunks, i);
    }
    await io.close();
    return done;
  };
  const viaThread = await play(new BatchIo<number>(c.inputs, false, 1 << 20), join(c.outDir, 'thread'));
  const inline = await play(new InlineIo<number>(c.inputs, false), join(c.outDir, 'inline'));
  assert.deepEqual(viaThread.map((d) => [d.tag, d.error === undefined]), inline.map((d) => [d.tag, d.error === undefined]));
  assert.ok(viaThread.some((d) => d.error !== undefined) && viaThread.some((d) => d.error === undefined));
  for (const d of inline) {
    if (d.error !== undefined) continue;
    const rel = join(`d${d.tag % 7}`, `o${d.tag}`);
    assert.ok(readFileSync(join(c.outDir, 'thread', rel)).equals(readFileSync(join(c.outDir, 'inline', rel))), `output ${d.tag}`);
  }
});
