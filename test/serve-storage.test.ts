// serve against a hostile file system: consumers that take folders away, a full disk, a
// read-only outgoing folder, a state directory that cannot be written, temp files left by a kill.
// Disk-full and read-only cases mount a small tmpfs (root); where mounting is refused they skip
// and say why.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, utimesSync, writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode, RunningNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { readPart10 } from '../src/dicom/read';
import { TEMP_PREFIX } from '../src/deliver/folder';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run, startProcess, stopProcess, freePort } from './helpers/dcmtk';
import { makeVariants } from './helpers/peers';
import { hasTool } from './helpers/tools';
import { mountRefusal, mountTmpfs, remount, unmount } from './helpers/mounts';
import { tempDir } from './helpers/tmp';

const SALT = 'serve-storage-test-salt-52c1';
const skip = !corpusAvailable() || !hasTool('storescu');
const root = tempDir('deid-storage-');
const mounted: string[] = [];
after(() => {
  for (const m of mounted) unmount(m);
  rmSync(root, { recursive: true, force: true });
});
const noMount = mountRefusal(join(root, 'probe-mount'));
if (noMount) process.stderr.write(`serve-storage.test: disk-full and read-only cases skipped: ${noMount}\n`);

function walk(dir: string, suffix = '.dcm'): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith(suffix)).map((f) => join(dir, f)).sort();
}

function tempFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true }).map(String).filter((f) => f.split('/').pop()!.startsWith(TEMP_PREFIX));
}

interface TestNode { node: RunningNode; dir: string; out: string; state: string }

async function startTestNode(name: string, prepare?: (out: string) => void): Promise<TestNode> {
  const dir = join(root, name);
  mkdirSync(dir);
  const out = join(dir, 'outgoing');
  const state = join(dir, 'state');
  prepare?.(out);
  writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0 },
    stateDir: state,
    destinations: { outgoing: { type: 'folder', path: out } },
    stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['STORESCU'] } },
  }));
  const node = await startNode(loadConfig(join(dir, 'router.yaml'), {}), SALT, silentLogger());
  return { node, dir, out, state };
}

/** Variants of one corpus image (own SOP instance UIDs), written as files for storescu. */
function variantFiles(dir: string, n: number, seed: number, from = 0): string[] {
  mkdirSync(dir, { recursive: true });
  const src = readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'));
  return makeVariants(src, n, seed, from).map((v, i) => {
    const f = join(dir, `${from + i}.dcm`);
    writeFileSync(f, v.bytes);
    return f;
  });
}

/** Sends files on one association; returns the status text storescu printed for each. */
async function store(port: number, files: string[]): Promise<string[]> {
  const r = await run('storescu', ['-v', '--no-halt', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(port), ...files], { timeoutMs: 120_000 });
  return [...(r.stdout + r.stderr).matchAll(/Received Store Response \(([^)]*)\)/g)].map((m) => m[1]);
}

function quarantineReasons(state: string): Array<{ stage: string; reason: string }> {
  const q = join(state, 'quarantine');
  if (!existsSync(q)) return [];
  return readdirSync(q).filter((x) => x.endsWith('.reason.json')).map((x) => JSON.parse(readFileSync(join(q, x), 'utf8')));
}

describe('a downstream consumer takes folders away', { skip }, () => {
  test('study folders moved away and the tree emptied during an association of 200 images: all 200 Success, none lost', async () => {
    const n = await startTestNode('consumer');
    const taken = join(n.dir, 'taken');
    mkdirSync(taken);
    let moves = 0;
    // The consumer: every 50 ms, whatever study folders are there move to its own place; every
    // fifth time it empties the whole outgoing tree instead (after moving its content).
    const consumer = setInterval(() => {
      if (!existsSync(n.out)) return;
      for (const s of readdirSync(n.out)) {
        try {
          renameSync(join(n.out, s), join(taken, `${moves++}-${s}`));
        } catch {
          /* raced with a write: next time */
        }
      }
      if (moves % 5 === 0) rmSync(n.out, { recursive: true, force: true });
    }, 50);
    try {
      const statuses = await store(n.node.scp.port, variantFiles(join(n.dir, 'in'), 200, 31));
      clearInterval(consumer);
      assert.equal(statuses.length, 200);
      assert.deepEqual(statuses.filter((s) => s !== "Success"), [], JSON.stringify(quarantineReasons(n.state)));
      assert.ok(moves > 2, `the consumer moved ${moves} folders`);
      // Every image is either still in outgoing or with the consumer (emptied ones excepted: count what is left).
      const kept = walk(n.out).length + walk(taken).length;
      assert.ok(kept > 0 && kept <= 200);
      assert.deepEqual(quarantineReasons(n.state), []);
    } finally {
      clearInterval(consumer);
      await n.node.stop();
    }
  });

  test('temp files a killed run left in outgoing series folders are removed at start; finished files and a live replica\'s temp file stay', async () => {
    let series = '';
    const live = `${TEMP_PREFIX}5e5e5e5e5e5e-0.tmp`;
    const n = await startTestNode('leftovers', (out) => {
      series = join(out, 'STUDYA', '1.2.3', '1.2.3.4');
      mkdirSync(series, { recursive: true });
      const old = new Date(Date.now() - 2 * 3600_000);
      for (const f of [join(series, `${TEMP_PREFIX}0a1b2c3d4e5f6a7b.tmp`), join(out, 'STUDYA', '1.2.3', `${TEMP_PREFIX}7b6a5f4e3d2c1b0a.tmp`)]) {
        writeFileSync(f, 'half an image');
        utimesSync(f, old, old);
      }
      // Another replica sharing the folder, streaming an image into it right now.
      writeFileSync(join(series, live), 'an image arriving');
      writeFileSync(join(series, '1.2.3.4.5.dcm'), 'a finished file');
    });
    try {
      assert.deepEqual(tempFiles(n.out).map((f) => f.split('/').pop()), [live]);
      assert.deepEqual(readdirSync(series).sort(), [live, '1.2.3.4.5.dcm'].sort());
    } finally {
      await n.node.stop();
    }
  });
});

describe('disk full and read-only outgoing', { skip: skip || noMount }, () => {
  test('disk full: 0xA700, nothing half-written visible, serving resumes once space is back', async () => {
    const n = await startTestNode('full', (out) => {
      assert.equal(mountTmpfs(out, { sizeKb: 400 }), undefined);
      mounted.push(out);
    });
    try {
      const statuses = await store(n.node.scp.port, variantFiles(join(n.dir, 'in'), 24, 41));
      const ok = statuses.filter((s) => s === 'Success').length;
      const full = statuses.filter((s) => /OutOfResources|0xa7/i.test(s)).length;
      assert.equal(statuses.length, 24);
      assert.ok(ok > 0 && full > 0, `statuses: ${statuses.join(', ')}`);
      assert.equal(ok + full, 24, `statuses: ${statuses.join(', ')}`);
      // What is visible is complete: as many files as Success answers, each a whole Part-10 file.
      const files = walk(n.out);
      assert.equal(files.length, ok);
      for (const f of files) assert.ok(readPart10(readFileSync(f)).dataset.length > 10, f);
      assert.deepEqual(tempFiles(n.out), []);
      const reasons = quarantineReasons(n.state);
      assert.equal(reasons.length, full);
      assert.ok(reasons.every((r) => r.stage === 'deliver' && /ENOSPC/.test(r.reason)), JSON.stringify(reasons[0]));
      // Space is back: the same node stores again.
      remount(n.out, { sizeKb: 16384 });
      const again = await store(n.node.scp.port, variantFiles(join(n.dir, 'in2'), 5, 42, 100));
      assert.deepEqual(again, ['Success', 'Success', 'Success', 'Success', 'Success']);
      assert.equal(walk(n.out).length, ok + 5);
    } finally {
      await n.node.stop();
    }
  });

  test('read-only outgoing: 0xA700 with EROFS as the reason (not 0x0110 ENOENT); writable again, it stores', async () => {
    const n = await startTestNode('readonly', (out) => {
      assert.equal(mountTmpfs(out, { sizeKb: 4096, readOnly: true }), undefined);
      mounted.push(out);
    });
    try {
      const statuses = await store(n.node.scp.port, variantFiles(join(n.dir, 'in'), 2, 51));
      assert.equal(statuses.length, 2);
      assert.ok(statuses.every((s) => /OutOfResources|0xa7/i.test(s)), statuses.join(', '));
      const reasons = quarantineReasons(n.state);
      assert.equal(reasons.length, 2);
      assert.ok(reasons.every((r) => /EROFS/.test(r.reason)), JSON.stringify(reasons));
      remount(n.out, { readOnly: false });
      assert.deepEqual(await store(n.node.scp.port, variantFiles(join(n.dir, 'in2'), 2, 52)), ['Success', 'Success']);
    } finally {
      await n.node.stop();
    }
  });

  test('serve with a configured salt and a state directory that cannot be written: exits at start, naming it and the cause', async () => {
    const dir = join(root, 'badstate');
    const ro = join(dir, 'ro');
    assert.equal(mountTmpfs(ro, { sizeKb: 64, readOnly: true }), undefined);
    mounted.push(ro);
    const port = await freePort();
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port },
      stateDir: join(ro, 'state'),
      destinations: { outgoing: { type: 'folder', path: join(dir, 'out') } },
      stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['STORESCU'] } },
    }));
    const p = startProcess(process.execPath, ['dist/cli.js', 'serve', '--config', join(dir, 'router.yaml')], { env: { DEID_SALT: SALT } });
    const timer = setTimeout(() => void stopProcess(p), 15_000);
    const { code } = await p.exited;
    clearTimeout(timer);
    const { stderr } = p.output();
    assert.notEqual(code, 0);
    assert.notEqual(code, null, 'serve kept running');
    assert.match(stderr, /state directory .*ro\/state cannot be written \(EROFS: read-only file system\)/);
    assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  });
});
