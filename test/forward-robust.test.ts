// The forwarder against a hostile world (issue #8 items 3, 6, 7): workers that fail come back, file
// descriptors run out and come back, a PACS out of resources is waited for, a PACS announcing or
// sending giant PDUs, and a PACS that never answers while serve is asked to stop.
import { spawn } from 'node:child_process';
import { promises as fsp, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import YAML from 'yaml';
import { ForwardQueue, type DicomDestination } from '../src/deliver/forwarder';
import { StoreAssociation } from '../src/deliver/dimse-scu';
import { Spool, parsePart10Meta } from '../src/deliver/spool';
import { silentLogger } from '../src/observe/logger';
import {
  uniqueCorpus, fileCleanups, readReceived, startRefusingScp, startStorescp, waitFor, type Peer,
} from './helpers/peers';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run, startProcess, stopProcess, waitForPort, freePort } from './helpers/dcmtk';
import { hasTool } from './helpers/tools';
import { commandSet, item, pdu } from './helpers/pdu';

const CORPUS = uniqueCorpus().filter((f) => f.transferSyntaxUid === '1.2.840.10008.1.2.1' && (f.bytes.length - f.datasetOffset) % 2 === 0);
const { tmp, withPeer, atEnd } = fileCleanups();

function dest(port: number, aeTitle = 'STORESCP', extra: Partial<DicomDestination> = {}): DicomDestination {
  return { name: 'pacs', aeTitle, host: '127.0.0.1', port, callingAeTitle: 'DEIDROUTER', maxAssociations: 2, ...extra };
}

async function enqueue(spool: Spool, q: ForwardQueue | undefined, files: Array<{ bytes: Buffer }>): Promise<void> {
  for (const f of files) {
    const m = parsePart10Meta(f.bytes);
    const e = await spool.enqueue(f.bytes, { sopInstanceUid: m.sopInstanceUid, sopClassUid: m.sopClassUid, transferSyntaxUid: m.transferSyntaxUid, studyInstanceUid: '' });
    q?.notify(e);
  }
}

async function drained(spool: Spool, q: ForwardQueue, timeoutMs: number): Promise<void> {
  await waitFor(async () => (await spool.backlog()).count === 0 && q.stats().inFlight === 0, timeoutMs, 'spool to drain');
}

// ---- a scripted PACS speaking just enough of PS3.8 --------------------------------------------

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

/** C-STORE-RSP command set for a request. */
function storeRsp(messageId: number, status: number): Buffer {
  return commandSet({ sopClass: '1.2.840.10008.5.1.4.1.1.7', command: 0x8001, respondingTo: messageId, hasDataset: false, status, sopInstance: '1.2.3' });
}

interface FakePacs extends Peer {
  /** Largest P-DATA-TF PDU received from us (variable field length). */
  maxPduSeen: number;
  datasetBytes: number;
  datasetsComplete: number;
  /** Bytes of a giant PDU sent before the peer went away. */
  giantBytesSent: number;
  abortsReceived: number;
}

/**
 * mode 'normal': accepts, answers Success; 'silent': accepts, never answers a C-STORE; 'giant':
 * answers a C-STORE with a P-DATA-TF PDU announcing 0xFFFFFFF0 bytes and streams it.
 */
async function startFakePacs(mode: 'normal' | 'silent' | 'giant', announceMaxPdu: number): Promise<FakePacs> {
  const sockets = new Set<net.Socket>();
  const state: FakePacs = {
    port: 0, maxPduSeen: 0, datasetBytes: 0, datasetsComplete: 0, giantBytesSent: 0, abortsReceived: 0,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let cmd: Buffer[] = [];
    let messageId = 0;
    let pcId = 1;
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 6) {
        const type = buf[0];
        const len = buf.readUInt32BE(2);
        if (buf.length < 6 + len) return;
        const body = buf.subarray(6, 6 + len);
        buf = buf.subarray(6 + len);
        if (type === 0x01) {
          const items: Buffer[] = [item(0x10, Buffer.from('1.2.840.10008.3.1.1.1'))];
          for (let p = 68; p + 4 <= body.length; ) {
            const t = body[p];
            const l = body.readUInt16BE(p + 2);
            if (t === 0x20) {
              const id = body[p + 4];
              let ts = '';
              for (let q = p + 8; q + 4 <= p + 4 + l; ) {
                const st = body[q];
                const sl = body.readUInt16BE(q + 2);
                if (st === 0x40 && !ts) ts = body.toString('latin1', q + 4, q + 4 + sl);
                q += 4 + sl;
              }
              items.push(item(0x21, Buffer.concat([Buffer.from([id, 0, 0, 0]), item(0x40, Buffer.from(ts, 'latin1'))])));
            }
            p += 4 + l;
          }
          items.push(item(0x50, item(0x51, u32(announceMaxPdu))));
          socket.write(pdu(0x02, Buffer.concat([Buffer.from(body.subarray(0, 68)), ...items])));
        } else if (type === 0x04) {
          state.maxPduSeen = Math.max(state.maxPduSeen, len);
          for (let p = 0; p + 6 <= body.length; ) {
            const l = body.readUInt32BE(p);
            pcId = body[p + 4];
            const hdr = body[p + 5];
            const frag = body.subarray(p + 6, p + 4 + l);
            p += 4 + l;
            if (hdr & 1) {
              cmd.push(Buffer.from(frag));
              if (hdr & 2) {
                messageId = messageIdOf(Buffer.concat(cmd));
                cmd = [];
              }
            } else {
              state.datasetBytes += frag.length;
              if (hdr & 2) {
                state.datasetsComplete++;
                if (mode === 'normal') {
                  const rsp = storeRsp(messageId, 0);
                  socket.write(pdu(0x04, Buffer.concat([u32(rsp.length + 2), Buffer.from([pcId, 0x03]), rsp])));
                } else if (mode === 'giant') {
                  sendGiant(socket);
                }
              }
            }
          }
        } else if (type === 0x05) {
          socket.end(pdu(0x06, Buffer.alloc(4)));
        } else if (type === 0x07) {
          state.abortsReceived++;
          socket.destroy();
        }
      }
    });
  });
  function sendGiant(socket: net.Socket): void {
    socket.write(Buffer.from([0x04, 0, 0xff, 0xff, 0xff, 0xf0]));
    const chunk = Buffer.alloc(1 << 20, 0x55);
    const pump = (): void => {
      while (!socket.destroyed && state.giantBytesSent < 256 * (1 << 20)) {
        state.giantBytesSent += chunk.length;
        if (!socket.write(chunk)) {
          socket.once('drain', pump);
          return;
        }
      }
    };
    pump();
  }
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  state.port = (server.address() as net.AddressInfo).port;
  return state;
}

/** MessageID (0000,0110) of a request command set (implicit VR little endian). */
function messageIdOf(cmd: Buffer): number {
  for (let p = 0; p + 8 <= cmd.length; ) {
    const el = cmd.readUInt16LE(p + 2);
    const len = cmd.readUInt32LE(p + 4);
    if (cmd.readUInt16LE(p) === 0 && el === 0x0110) return cmd.readUInt16LE(p + 8);
    p += 8 + len;
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------

describe('forward workers come back', { concurrency: 1 }, () => {
  test('the spool folder deleted under a running forwarder: later images still arrive', async (t) => {
    const state = await tmp('fwdr-state-');
    const out = await tmp('fwdr-out-');
    const scp = await withPeer(t, startStorescp({ dir: out }));
    const spool = new Spool(state, 'pacs');
    const q = new ForwardQueue({ destination: dest(scp.port), spool, logger: silentLogger(), backoff: { initialMs: 100, maxMs: 1000 }, rescanIntervalMs: 100, idleReleaseMs: 200 });
    q.start();
    try {
      await enqueue(spool, q, CORPUS.slice(0, 3));
      await drained(spool, q, 30000);
      await fsp.rm(path.join(state, 'spool'), { recursive: true });
      await new Promise((r) => setTimeout(r, 600)); // the workers look at the missing folder several times
      await enqueue(spool, q, CORPUS.slice(3, 6));
      await drained(spool, q, 30000);
    } finally {
      await q.stop();
    }
    const received = await readReceived(out);
    for (const f of CORPUS.slice(0, 6)) assert.ok(received.has(f.datasetSopInstanceUid), `${f.file} did not arrive`);
  });

  test('a worker whose spool listing fails is restarted with backoff; the images arrive', async (t) => {
    const state = await tmp('fwdr-state-');
    const out = await tmp('fwdr-out-');
    const scp = await withPeer(t, startStorescp({ dir: out }));
    class FailingSpool extends Spool {
      failuresLeft = 0;
      override async listIds(): Promise<string[]> {
        if (this.failuresLeft > 0) {
          this.failuresLeft--;
          throw Object.assign(new Error('EIO: i/o error, scandir (injected)'), { code: 'EIO' });
        }
        return super.listIds();
      }
    }
    const spool = new FailingSpool(state, 'pacs');
    const q = new ForwardQueue({ destination: dest(scp.port), spool, logger: silentLogger(), backoff: { initialMs: 100, maxMs: 1000 }, rescanIntervalMs: 100, idleReleaseMs: 200 });
    q.start();
    try {
      spool.failuresLeft = 3;
      await enqueue(spool, undefined, CORPUS.slice(0, 4));
      q.notify(); // a rescan, which fails three times
      const left = async () => (await fsp.readdir(spool.dir)).filter((f) => f.endsWith('.dcm')).length;
      await waitFor(async () => (await left()) === 0 && q.stats().inFlight === 0, 30000, 'spool to drain');
      assert.equal(spool.failuresLeft, 0);
      assert.ok(q.restarts >= 1, `${q.restarts} restarts`);
    } finally {
      await q.stop();
    }
    const received = await readReceived(out);
    for (const f of CORPUS.slice(0, 4)) assert.ok(received.has(f.datasetSopInstanceUid), `${f.file} did not arrive`);
  });

  test('every file descriptor taken (ulimit -n 1024), then freed: the forwarder recovers and sends everything', async (t) => {
    const state = await tmp('fwdr-state-');
    const out = await tmp('fwdr-out-');
    const scp = await withPeer(t, startStorescp({ dir: out }));
    const files = CORPUS.slice(0, 8);
    const list = path.join(state, '..', `${path.basename(state)}-files.json`);
    const paths = await Promise.all(files.map(async (f, i) => {
      const p = path.join(out, '..', `${path.basename(out)}-in-${i}.dcm`);
      await fsp.writeFile(p, f.bytes);
      atEnd(() => fsp.rm(p, { force: true }));
      return p;
    }));
    await fsp.writeFile(list, JSON.stringify(paths));
    atEnd(() => fsp.rm(list, { force: true }));
    const child = path.join(__dirname, 'fixtures', 'forward-emfile-child.js');
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn('bash', ['-c', 'ulimit -n 1024 && exec "$0" "$@"', process.execPath, child, state, String(scp.port), 'STORESCP', list], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d: Buffer) => (stdout += d));
      c.stderr.on('data', (d: Buffer) => (stderr += d));
      c.on('close', (code) => resolve({ code, stdout, stderr }));
    });
    assert.match(r.stdout, /FULL \d+/, r.stderr);
    assert.match(r.stdout, /FREED/);
    assert.match(r.stdout, /DRAINED (\d+)/, `${r.stdout}\n${r.stderr}`);
    assert.ok(Number(/DRAINED (\d+)/.exec(r.stdout)![1]) >= 1, 'the worker failed on EMFILE and was restarted');
    assert.equal(r.code, 0);
    const received = await readReceived(out);
    for (const f of files) assert.ok(received.has(f.datasetSopInstanceUid), `${f.file} did not arrive`);
  });
});

describe('PACS statuses and PDUs', { concurrency: 1 }, () => {
  test('a PACS out of resources (0xA700) five times in a row: retried with backoff, never dead-lettered', async (t) => {
    const state = await tmp('fwdr-state-');
    const files = CORPUS.slice(0, 6);
    const victim = files[2];
    const scp = await withPeer(t, startRefusingScp({ refuseSopInstanceUid: victim.sopInstanceUid, status: 0xa700, refuseTimes: 5 }));
    const spool = new Spool(state, 'pacs');
    await enqueue(spool, undefined, files);
    const q = new ForwardQueue({ destination: dest(scp.port, 'REFUSER', { maxAssociations: 1 }), spool, logger: silentLogger(), maxAttempts: 3, backoff: { initialMs: 50, maxMs: 400 } });
    q.start();
    try {
      await drained(spool, q, 60000);
    } finally {
      await q.stop();
    }
    assert.equal(scp.refusedCount, 5);
    assert.deepEqual((await spool.listDeadLetters()).map((d) => d.id), []);
    for (const f of files) assert.ok(scp.received.has(f.datasetSopInstanceUid), `${f.file} did not arrive`);
  });

  test('a PACS announcing a 0xFFFFFFF0-byte maximum PDU gets PDUs no longer than ours', async (t) => {
    const pacs = await withPeer(t, startFakePacs('normal', 0xfffffff0));
    const a = await StoreAssociation.connect({
      host: '127.0.0.1', port: pacs.port, callingAeTitle: 'DEIDROUTER', calledAeTitle: 'FAKE',
      contexts: [{ abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.7', transferSyntaxUid: '1.2.840.10008.1.2.1' }],
      maxPduLength: 65536,
    });
    const data = Buffer.alloc(3 * 1024 * 1024, 0x42);
    const r = await a.cStore(1, '1.2.840.10008.5.1.4.1.1.7', '1.2.3', data);
    await a.release();
    assert.equal(r.status, 0);
    assert.equal(pacs.datasetBytes, data.length);
    assert.ok(pacs.maxPduSeen <= 65536, `a PDU of ${pacs.maxPduSeen} bytes was sent`);
    assert.equal(a.maxPduLength, 65536);
  });

  test('a PACS sending a PDU that announces 0xFFFFFFF0 bytes: the association is aborted at its header, nothing buffered', async (t) => {
    const pacs = await withPeer(t, startFakePacs('giant', 16384));
    const a = await StoreAssociation.connect({
      host: '127.0.0.1', port: pacs.port, callingAeTitle: 'DEIDROUTER', calledAeTitle: 'FAKE',
      contexts: [{ abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.7', transferSyntaxUid: '1.2.840.10008.1.2.1' }],
      dimseTimeoutMs: 120_000,
    });
    await assert.rejects(a.cStore(1, '1.2.840.10008.5.1.4.1.1.7', '1.2.3', Buffer.alloc(1000, 1)), /4294967280.*262144/);
    await waitFor(() => pacs.abortsReceived > 0 || pacs.giantBytesSent >= 256 * (1 << 20), 30000, 'the PACS to see the abort');
    assert.equal(pacs.abortsReceived, 1);
    assert.ok(pacs.giantBytesSent < 256 * (1 << 20));
  });
});

const haveCorpusAndTools = corpusAvailable() && hasTool('storescu');

describe('shutdown', { skip: !haveCorpusAndTools }, () => {
  test('SIGTERM while the PACS never answers: serve exits after shutdownGraceSeconds, the image stays in the spool', { timeout: 45_000 }, async (t) => {
    const dir = await tmp('fwdr-sigterm-');
    const pacs = await withPeer(t, startFakePacs('silent', 16384));
    const port = await freePort();
    writeFileSync(path.join(dir, 'router.yaml'), YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port },
      stateDir: path.join(dir, 'state'),
      shutdownGraceSeconds: 1,
      destinations: { pacs: { type: 'dicom', aeTitle: 'SILENT', host: '127.0.0.1', port: pacs.port } },
      defaultDestination: 'pacs',
      stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['STORESCU'] } },
    }));
    const p = startProcess(process.execPath, ['dist/cli.js', 'serve', '--config', path.join(dir, 'router.yaml')], { env: { DEID_SALT: 'forward-robust-salt-93e1' } });
    t.after(() => stopProcess(p));
    await waitForPort(port);
    const r = await run('storescu', ['-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(port), path.join(CORPUS_PHI, 'pydicom__CT_small.dcm')]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor(() => pacs.datasetsComplete > 0, 20000, 'the PACS to receive the image');
    process.kill(p.pid, 'SIGTERM');
    const { code } = await p.exited;
    assert.equal(code, 0, p.output().stdout.slice(-2000));
    assert.match(p.output().stdout, /shutdown grace period over/);
    const spooled = readdirSync(path.join(dir, 'state', 'spool', 'pacs')).filter((f) => f.endsWith('.dcm'));
    assert.equal(spooled.length, 1, 'the unsent image stays in the spool');
    assert.ok(existsSync(path.join(dir, 'state', 'spool', 'pacs', spooled[0])));
    assert.ok(readFileSync(path.join(dir, 'state', 'spool', 'pacs', spooled[0])).length > 1000);
  });
});
