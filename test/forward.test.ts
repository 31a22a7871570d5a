// Forwarding de-identified Part-10 files to a PACS by C-STORE (src/deliver).
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { ForwardQueue, type DicomDestination } from '../src/deliver/forwarder';
import { Spool, parsePart10Meta } from '../src/deliver/spool';
import { silentLogger } from '../src/observe/logger';
import {
  uniqueCorpus,
  datasetBytes,
  freePort,
  makeVariants,
  readReceived,
  sleep,
  startOrthanc,
  startRefusingScp,
  startStorescp,
  fileCleanups,
  waitFor,
  type CorpusFile,
  type Peer,
} from './helpers/peers';

const CORPUS = uniqueCorpus();
const { tmp, withPeer } = fileCleanups();

function dest(port: number, aeTitle = 'STORESCP', extra: Partial<DicomDestination> = {}): DicomDestination {
  return { name: 'pacs', aeTitle, host: '127.0.0.1', port, callingAeTitle: 'DEIDROUTER', maxAssociations: 2, ...extra };
}

async function enqueueAll(spool: Spool, files: Array<{ bytes: Buffer }>): Promise<void> {
  for (const f of files) {
    const m = parsePart10Meta(f.bytes);
    await spool.enqueue(f.bytes, { sopInstanceUid: m.sopInstanceUid, sopClassUid: m.sopClassUid, transferSyntaxUid: m.transferSyntaxUid, studyInstanceUid: '' });
  }
}

async function drained(spool: Spool, q: ForwardQueue, timeoutMs: number): Promise<void> {
  await waitFor(async () => (await spool.backlog()).count === 0 && q.stats().inFlight === 0, timeoutMs, 'spool to drain');
}


function assertSameDatasets(files: Array<{ bytes: Buffer; datasetSopInstanceUid?: string }>, received: Map<string, Buffer>): void {
  for (const f of files) {
    const m = parsePart10Meta(f.bytes);
    const got = received.get(f.datasetSopInstanceUid ?? m.sopInstanceUid);
    assert.ok(got, `${m.sopInstanceUid} (${(f as CorpusFile).file ?? ''}) did not arrive`);
    assert.ok(got.equals(datasetBytes(f.bytes)), `${m.sopInstanceUid} (${(f as CorpusFile).file ?? ''}) arrived with different bytes`);
  }
}

describe('forward to a PACS', { concurrency: 1 }, () => {
  test('corpus files with meta exist in many transfer syntaxes', () => {
    const ts = new Set(CORPUS.map((f) => f.transferSyntaxUid));
    assert.ok(CORPUS.length >= 60, `only ${CORPUS.length} corpus files`);
    assert.ok(ts.size >= 8, `only ${ts.size} transfer syntaxes`);
  });

  test('storescp (bit-preserving) receives every corpus file byte for byte, in its own transfer syntax', async (t) => {
    const state = await tmp('fwd-state-');
    const out = await tmp('fwd-out-');
    const scp = await withPeer(t, startStorescp({ dir: out }));
    const spool = new Spool(state, 'pacs');
    await enqueueAll(spool, CORPUS);
    const q = new ForwardQueue({ destination: dest(scp.port), spool, logger: silentLogger() });
    q.start();
    await drained(spool, q, 60000);
    await q.stop();
    // A dataset of odd length (a malformed source file, e.g. an odd pixel item) cannot be sent unchanged:
    // such images go to the dead letters at once; every other image arrives unchanged.
    const odd = CORPUS.filter((f) => (f.bytes.length - f.datasetOffset) % 2 === 1);
    const even = CORPUS.filter((f) => !odd.includes(f));
    const dead = await spool.listDeadLetters();
    assert.deepEqual(dead.map((d) => d.id).sort(), odd.map((f) => f.sopInstanceUid).sort());
    for (const d of dead) assert.match(d.reason!.message, /odd dataset length/);
    const received = await readReceived(out);
    assert.equal(received.size, even.length);
    assertSameDatasets(even, received);
  });

  test('Orthanc receives the images; REST lists the expected studies, series and instances', async (t) => {
    const state = await tmp('fwd-state-');
    const odir = await tmp('fwd-orthanc-');
    const orthanc = await withPeer(t, startOrthanc({ dir: odir }));
    // Files Orthanc can index: little endian ones with a StudyInstanceUID we can read.
    const files = CORPUS.filter((f) => f.studyInstanceUid && (f.bytes.length - f.datasetOffset) % 2 === 0);
    const spool = new Spool(state, 'pacs');
    await enqueueAll(spool, files);
    const q = new ForwardQueue({ destination: dest(orthanc.port, orthanc.aeTitle), spool, logger: silentLogger() });
    q.start();
    await drained(spool, q, 120000);
    await q.stop();
    const dead = await spool.listDeadLetters();
    const stored = files.filter((f) => !dead.some((d) => d.id === f.sopInstanceUid));
    assert.deepEqual(dead.map((d) => [CORPUS.find((f) => f.sopInstanceUid === d.id)?.file, d.reason?.statusHex, d.reason?.message]), [], 'Orthanc refused some files');
    const instances = (await orthanc.get('/instances')) as string[];
    assert.equal(instances.length, new Set(stored.map((f) => f.datasetSopInstanceUid)).size);
    const studies = (await orthanc.get('/studies?expand')) as Array<{ MainDicomTags: { StudyInstanceUID: string } }>;
    const want = [...new Set(stored.map((f) => f.studyInstanceUid))].sort();
    assert.deepEqual(studies.map((s) => s.MainDicomTags.StudyInstanceUID).sort(), want);
    const series = (await orthanc.get('/series')) as string[];
    assert.ok(series.length >= want.length && series.length <= instances.length);
  });

  test('PACS down at start and up 10 s later: every image arrives, spool empty', async (t) => {
    const state = await tmp('fwd-state-');
    const out = await tmp('fwd-out-');
    const port = await freePort();
    const files = CORPUS.filter((f) => (f.bytes.length - f.datasetOffset) % 2 === 0).slice(0, 20);
    const spool = new Spool(state, 'pacs');
    await enqueueAll(spool, files);
    const q = new ForwardQueue({ destination: dest(port), spool, logger: silentLogger(), backoff: { initialMs: 200, maxMs: 2000 } });
    q.start();
    await sleep(10000);
    assert.equal(q.stats().backlog, files.length);
    assert.equal(q.destinationState, 'down');
    await withPeer(t, startStorescp({ dir: out, port }));
    await drained(spool, q, 30000);
    await q.stop();
    assert.equal(q.destinationState, 'up');
    assert.equal((await spool.backlog()).count, 0);
    assert.equal(q.stats().deadLetters, 0);
    assertSameDatasets(files, await readReceived(out));
  });

  test('forwarder killed with SIGKILL mid-transfer and restarted: every enqueued image arrives', async (t) => {
    const state = await tmp('fwd-state-');
    const out = await tmp('fwd-out-');
    const src = await tmp('fwd-src-');
    // The PACS comes up only once everything is spooled, so the kill always finds a backlog.
    const pacsPort = await freePort();
    const scp = { port: pacsPort };
    const base = CORPUS.find((f) => f.file === 'heudiconv__01+AA+00001.dcm') ?? CORPUS[0];
    const variants = makeVariants(base.bytes, 300, 7);
    const list: string[] = [];
    for (const v of variants) {
      const p = path.join(src, v.sopInstanceUid + '.dcm');
      await fsp.writeFile(p, v.bytes);
      list.push(p);
    }
    await fsp.writeFile(path.join(src, 'list.json'), JSON.stringify(list));
    const child = path.resolve(__dirname, 'fixtures/forward-child.js');

    // First run: enqueue while forwarding; SIGKILL once some images arrived and some are still queued.
    const enqueued = new Set<string>();
    const p1 = spawn(process.execPath, [child, state, String(scp.port), 'STORESCP', path.join(src, 'list.json')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    p1.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) if (l.startsWith('ENQ ')) enqueued.add(l.slice(4));
    });
    const exited1 = new Promise<void>((r) => p1.once('exit', () => r()));
    await waitFor(() => enqueued.size === variants.length, 60000, 'everything spooled');
    await withPeer(t, startStorescp({ dir: out, port: pacsPort }));
    await waitFor(async () => (await fsp.readdir(out)).length >= 20, 60000, 'transfer under way');
    process.kill(p1.pid!, 'SIGKILL');
    await exited1;
    const arrivedBefore = (await readReceived(out)).size;
    assert.ok(arrivedBefore < enqueued.size, `all ${arrivedBefore} arrived before the kill; test proves nothing`);

    // Second run: forward only.
    const p2 = spawn(process.execPath, [child, state, String(scp.port), 'STORESCP'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out2 = '';
    p2.stdout!.on('data', (d: Buffer) => (out2 += d.toString()));
    const code = await new Promise<number | null>((r) => p2.once('exit', (c) => r(c)));
    assert.equal(code, 0);
    assert.match(out2, /DRAINED/);
    const received = await readReceived(out);
    for (const uid of enqueued) assert.ok(received.has(uid), `${uid} enqueued but never arrived`);
    assertSameDatasets(variants.filter((v) => enqueued.has(v.sopInstanceUid)), received);
  });

  test('a PACS refusing one image: it ends in the dead letters with the status, the others arrive', async (t) => {
    const state = await tmp('fwd-state-');
    const files = CORPUS.filter((f) => f.transferSyntaxUid === '1.2.840.10008.1.2.1').slice(0, 8);
    const victim = files[3];
    const scp = await withPeer(t, startRefusingScp({ refuseSopInstanceUid: victim.sopInstanceUid, status: 0xa900 }));
    const spool = new Spool(state, 'pacs');
    await enqueueAll(spool, files);
    const q = new ForwardQueue({
      destination: dest(scp.port, 'REFUSER', { maxAssociations: 1 }),
      spool,
      logger: silentLogger(),
      maxAttempts: 3,
      backoff: { initialMs: 50, maxMs: 200 },
    });
    q.start();
    await drained(spool, q, 30000);
    await q.stop();
    assert.equal(scp.refusedCount, 3);
    const dead = await spool.listDeadLetters();
    assert.equal(dead.length, 1);
    assert.equal(dead[0].id, victim.sopInstanceUid);
    assert.equal(dead[0].reason?.statusHex, '0xA900');
    assert.equal(dead[0].reason?.attempts, 3);
    assert.equal(q.stats().deadLetters, 1);
    assertSameDatasets(files, scp.received);

    // Operator retries dead letters: the image goes back to the spool.
    assert.equal(await spool.retryDeadLetters(), 1);
    assert.equal((await spool.backlog()).count, 1);
    assert.equal((await spool.listDeadLetters()).length, 0);
  });

  test('the same SOP instance enqueued twice is one spool file', async (t) => {
    const state = await tmp('fwd-state-');
    const spool = new Spool(state, 'pacs');
    await enqueueAll(spool, [CORPUS[0], CORPUS[0]]);
    assert.equal((await spool.backlog()).count, 1);
  });
});

describe('spool dead letters', () => {
  test('a refused copy is dead-lettered only while it is still the spooled one: a newer copy sent meanwhile stays to be sent', async () => {
    const state = await tmp('fwd-dead-');
    const spool = new Spool(state, 'pacs');
    const [file] = CORPUS.filter((f) => f.sopInstanceUid);
    const info = (bytes: Buffer) => {
      const m = parsePart10Meta(bytes);
      return { sopInstanceUid: m.sopInstanceUid, sopClassUid: m.sopClassUid, transferSyntaxUid: m.transferSyntaxUid, studyInstanceUid: '' };
    };
    const { id } = await spool.enqueue(file.bytes, info(file.bytes));
    const tried = await spool.open(id);
    assert.ok(tried);
    await spool.release(tried);
    // The modality sends the image again while the PACS's refusal of the first copy is on its way.
    await sleep(20);
    await spool.enqueue(file.bytes, info(file.bytes));
    const reason = { status: 0xa900, message: 'refused', attempts: 3, sopInstanceUid: id };
    assert.equal(await spool.deadLetter(id, reason, tried), false);
    assert.deepEqual(await spool.listIds(), [id], 'the newer copy is still spooled');
    assert.equal((await spool.listDeadLetters()).length, 0);
    // The copy that was tried is still the spooled one: dead-lettered.
    const again = await spool.open(id);
    assert.ok(again);
    await spool.release(again);
    assert.equal(await spool.deadLetter(id, reason, again), true);
    assert.deepEqual(await spool.listIds(), []);
    assert.deepEqual((await spool.listDeadLetters()).map((d) => [d.id, d.reason?.statusHex]), [[id, '0xA900']]);
  });
});
