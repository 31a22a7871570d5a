// The durable writer and its folders (src/deliver/folder.ts): large writes split, folders that a
// consumer removes, the real cause of a refused mkdir, temp files left by a killed process, 0700
// private folders.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'fs';
import { join } from 'path';
import {
  MAX_WRITE_BYTES, TEMP_PREFIX, checkWritableDir, knownDirCount, removeTempFiles, writeAllSync, writeFileAtomicSync,
} from '../src/deliver/folder';
import { Quarantine } from '../src/deliver/quarantine';
import { DurableWriter } from '../src/deliver/durable-writer';
import { Spool } from '../src/deliver/spool';
import { mountRefusal, mountTmpfs, unmount } from './helpers/mounts';
import { tempDir } from './helpers/tmp';

const root = tempDir('deid-folder-');
const mounted: string[] = [];
after(() => {
  for (const m of mounted) unmount(m);
  rmSync(root, { recursive: true, force: true });
});
const noMount = mountRefusal(join(root, 'probe-mount'));
if (noMount) process.stderr.write(`folder.test: read-only cases skipped: ${noMount}\n`);

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('writeAllSync', () => {
  test('no write call gets more than the per-call limit; short writes resume; the bytes come out whole and in order', () => {
    const chunks = [bytes(2500, 1), bytes(10, 2), Buffer.alloc(0), bytes(700, 3), bytes(3001, 4)];
    const out: Buffer[] = [];
    const calls: number[] = [];
    let n = 0;
    const fakeWritev = (_fd: number, bufs: Buffer[]): number => {
      const total = bufs.reduce((s, b) => s + b.length, 0);
      calls.push(total);
      // Every third call is short (as the kernel may do), otherwise all is taken.
      const take = ++n % 3 === 0 ? Math.max(1, Math.floor(total / 3)) : total;
      let left = take;
      for (const b of bufs) {
        const k = Math.min(left, b.length);
        out.push(Buffer.from(b.subarray(0, k)));
        left -= k;
        if (!left) break;
      }
      return take;
    };
    writeAllSync(-1, chunks, fakeWritev, 1000);
    assert.ok(calls.length >= 7, `${calls.length} calls`);
    assert.ok(calls.every((c) => c > 0 && c <= 1000), `call sizes ${calls.join(',')}`);
    assert.ok(Buffer.concat(out).equals(Buffer.concat(chunks)));
  });

  test('more than 1024 buffers are written in several calls', () => {
    const chunks = Array.from({ length: 3000 }, (_, i) => bytes(3, i));
    const seen: number[] = [];
    const out: Buffer[] = [];
    writeAllSync(-1, chunks, (_fd, bufs) => {
      seen.push(bufs.length);
      out.push(...bufs.map((b) => Buffer.from(b)));
      return bufs.reduce((s, b) => s + b.length, 0);
    });
    assert.ok(seen.every((c) => c <= 1024));
    assert.ok(Buffer.concat(out).equals(Buffer.concat(chunks)));
  });

  test('an object over 2 GiB is written (to /dev/null: the kernel takes it whole, Node used to report an error)', () => {
    // allocUnsafe of untouched pages and /dev/null: no memory is filled, no disk is used.
    const big = Buffer.allocUnsafe(2 ** 31 + 8192);
    const fd = openSync('/dev/null', 'w');
    try {
      writeAllSync(fd, [big.subarray(0, 4096), big]);
    } finally {
      closeSync(fd);
    }
    assert.ok(MAX_WRITE_BYTES < 2 ** 31);
  });

  test('BIG=1: a 2.1 GB object is written and quarantined as files of the right size', { skip: process.env.BIG !== '1' && 'set BIG=1 (writes 4.2 GB to disk)' }, () => {
    const big = Buffer.allocUnsafe(2 ** 31 + 4096);
    big.fill(7, 0, 1 << 20);
    const f = join(root, 'big', 'x.bin');
    writeFileAtomicSync(f, [big]);
    assert.equal(statSync(f).size, big.length);
    rmSync(f);
    const q = new Quarantine(join(root, 'big-q'));
    const stored = q.put([big], { stage: 'deliver', reason: 'test', source: 'test' });
    assert.equal(statSync(stored).size, big.length);
    rmSync(join(root, 'big-q'), { recursive: true });
  });
});

describe('folders a consumer removes', () => {
  test('a study folder moved away, then the whole tree emptied: later writes succeed', () => {
    const out = join(root, 'outgoing');
    writeFileAtomicSync(join(out, 'STUDY', '1.2.3', '1.dcm'), [bytes(100, 1)]);
    rmSync(join(out, 'STUDY'), { recursive: true });
    writeFileAtomicSync(join(out, 'STUDY', '1.2.3', '2.dcm'), [bytes(100, 2)]);
    assert.ok(readFileSync(join(out, 'STUDY', '1.2.3', '2.dcm')).equals(bytes(100, 2)));
    rmSync(out, { recursive: true });
    writeFileAtomicSync(join(out, 'STUDY', '1.2.3', '3.dcm'), [bytes(100, 3)]);
    assert.ok(readFileSync(join(out, 'STUDY', '1.2.3', '3.dcm')).equals(bytes(100, 3)));
    // The quarantine and spool folders too.
    const q = new Quarantine(join(root, 'q'));
    q.put([bytes(10, 1)], { stage: 'deliver', reason: 'test', source: 'test' });
    rmSync(join(root, 'q'), { recursive: true });
    const stored = q.put([bytes(10, 2)], { stage: 'deliver', reason: 'test', source: 'test' });
    assert.ok(readFileSync(stored).equals(bytes(10, 2)));
  });

  test('the spool folder removed under a spool: enqueue and listing go on', async () => {
    const state = join(root, 'state-spool');
    const spool = new Spool(state, 'pacs');
    await spool.init();
    rmSync(join(state, 'spool'), { recursive: true });
    assert.deepEqual(await spool.listIds(), []);
    rmSync(join(state, 'spool'), { recursive: true });
    const part10 = minimalPart10('1.2.826.0.1.3680043.2.1143.1');
    await spool.enqueue(part10, { sopInstanceUid: '1.2.826.0.1.3680043.2.1143.1', sopClassUid: '1.2.840.10008.5.1.4.1.1.7', transferSyntaxUid: '1.2.840.10008.1.2.1', studyInstanceUid: '' });
    assert.deepEqual(await spool.listIds(), ['1.2.826.0.1.3680043.2.1143.1']);
  });

  test('an image streamed into a folder a consumer takes away (or deletes) before the commit is written again from its descriptor', async () => {
    const w = new DurableWriter();
    const out = join(root, 'streamed');
    for (const how of ['moved', 'deleted'] as const) {
      const target = join(out, 'STUDY', how, '1.dcm');
      const f = w.open(target);
      const data = [bytes(300_000, 1), bytes(5000, 2)];
      f.append([data[0]]);
      await f.whenBelow(1);
      if (how === 'moved') renameSync(join(out, 'STUDY'), join(root, 'streamed-taken'));
      else rmSync(join(out, 'STUDY'), { recursive: true });
      f.append([data[1]]);
      await f.commit();
      assert.ok(readFileSync(target).equals(Buffer.concat(data)), how);
      assert.deepEqual(readdirSync(join(out, 'STUDY', how)), ['1.dcm']);
    }
    // What the consumer took holds no half image: the old temp file was emptied.
    for (const n of readdirSync(join(root, 'streamed-taken', 'moved'))) assert.equal(statSync(join(root, 'streamed-taken', 'moved', n)).size, 0, n);
  });

  test('the cache of known folders is bounded', () => {
    const base = join(root, 'many');
    for (let i = 0; i < 5000; i++) writeFileAtomicSync(join(base, String(i), 'f'), [bytes(1, i)], { durable: false });
    assert.ok(knownDirCount() <= 4096, `${knownDirCount()} folders remembered`);
    assert.equal(readdirSync(base).length, 5000);
  });
});

describe('refused folders name the real cause', { skip: noMount }, () => {
  test('a read-only outgoing folder: EROFS, not ENOENT', () => {
    const ro = join(root, 'ro-out');
    assert.equal(mountTmpfs(ro, { sizeKb: 64, readOnly: true }), undefined);
    mounted.push(ro);
    assert.throws(() => writeFileAtomicSync(join(ro, 'STUDY', 'SERIES', '1.dcm'), [bytes(10, 1)]), (e: NodeJS.ErrnoException) => e.code === 'EROFS');
    assert.throws(() => writeFileAtomicSync(join(ro, '1.dcm'), [bytes(10, 1)]), (e: NodeJS.ErrnoException) => e.code === 'EROFS');
  });

  test('a state directory that cannot be written is refused with its path and cause', () => {
    const ro = join(root, 'ro-state');
    assert.equal(mountTmpfs(ro, { sizeKb: 64, readOnly: true }), undefined);
    mounted.push(ro);
    assert.throws(() => checkWritableDir(join(ro, 'state'), 'state directory'), /state directory .*ro-state\/state cannot be written \(EROFS: read-only file system\)/);
    assert.throws(() => checkWritableDir(ro, 'state directory'), /cannot be written \(EROFS/);
    checkWritableDir(join(root, 'writable-state'), 'state directory');
    assert.deepEqual(readdirSync(join(root, 'writable-state')), [], 'the probe file is removed');
  });
});

describe('private folders and temp files', () => {
  test('quarantine, spool, dead-letter and state folders are made mode 0700', async () => {
    const state = join(root, 'private-state');
    checkWritableDir(state, 'state directory');
    new Quarantine(join(state, 'quarantine')).put([bytes(10, 1)], { stage: 'read', reason: 'test', source: 'test' });
    await new Spool(state, 'pacs').init();
    for (const d of ['', 'quarantine', 'spool', 'spool/pacs', 'deadletter', 'deadletter/pacs']) {
      assert.equal((statSync(join(state, d)).mode & 0o777).toString(8), '700', `${d || 'state'} folder mode`);
    }
  });

  test('temp files left by a killed writer are removed from every series folder, and only they', async () => {
    const out = join(root, 'temps');
    mkdirSync(join(out, 'STUDY', 'S1'), { recursive: true });
    mkdirSync(join(out, 'STUDY', 'S2'), { recursive: true });
    writeFileSync(join(out, 'STUDY', 'S1', `${TEMP_PREFIX}0123456789abcdef.tmp`), 'half');
    writeFileSync(join(out, 'STUDY', 'S2', `${TEMP_PREFIX}fedcba9876543210.tmp`), 'half');
    writeFileSync(join(out, 'STUDY', 'S2', '1.dcm'), 'done');
    writeFileSync(join(out, 'STUDY', 'S2', 'notes.tmp'), 'not ours');
    assert.equal(await removeTempFiles(out, true), 2);
    assert.deepEqual(readdirSync(join(out, 'STUDY', 'S1')), []);
    assert.deepEqual(readdirSync(join(out, 'STUDY', 'S2')).sort(), ['1.dcm', 'notes.tmp']);
    assert.equal(await removeTempFiles(join(root, 'does-not-exist'), true), 0);
  });

  test('a temp file removed under a live write (a replica starting up): the write starts again', () => {
    const dir = join(root, 'race');
    mkdirSync(dir);
    const data = [bytes(50, 5), bytes(50, 6)];
    let removed = 0;
    // The chunk list is read once the temp file is open: remove the temp file at that moment, once.
    const chunks = new Proxy(data, {
      get(target, key, recv) {
        if (key === '0' && removed === 0) {
          for (const f of readdirSync(dir)) if (f.startsWith(TEMP_PREFIX)) (rmSync(join(dir, f)), removed++);
        }
        return Reflect.get(target, key, recv);
      },
    });
    writeFileAtomicSync(join(dir, 'x.dcm'), chunks);
    assert.equal(removed, 1);
    assert.ok(readFileSync(join(dir, 'x.dcm')).equals(Buffer.concat(data)));
    assert.deepEqual(readdirSync(dir), ['x.dcm']);
  });
});

/** A tiny Part-10 file: file meta and one element. */
function minimalPart10(sopInstanceUid: string): Buffer {
  const el = (tag: number, vr: string, value: string) => {
    const v = Buffer.from(value.length % 2 ? value + '\0' : value, 'latin1');
    const h = Buffer.alloc(8);
    h.writeUInt16LE(tag >>> 16, 0);
    h.writeUInt16LE(tag & 0xffff, 2);
    h.write(vr, 4, 'latin1');
    h.writeUInt16LE(v.length, 6);
    return Buffer.concat([h, v]);
  };
  const meta = Buffer.concat([
    el(0x00020002, 'UI', '1.2.840.10008.5.1.4.1.1.7'),
    el(0x00020003, 'UI', sopInstanceUid),
    el(0x00020010, 'UI', '1.2.840.10008.1.2.1'),
  ]);
  const gl = Buffer.alloc(12);
  gl.writeUInt16LE(2, 0);
  gl.write('UL', 4, 'latin1');
  gl.writeUInt16LE(4, 6);
  gl.writeUInt32LE(meta.length, 8);
  return Buffer.concat([Buffer.alloc(128), Buffer.from('DICM'), gl, meta, el(0x00080016, 'UI', '1.2.840.10008.5.1.4.1.1.7')]);
}
