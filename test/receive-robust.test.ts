// Storage SCP robustness against hostile or broken peers (issue #8 items 2, 6 and 7): raw PDUs crafted here,
// then a real dcmtk peer to show the node still serves.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { startStorageScp, silenceDimseLibraries } from '../src/receive';
import type { RunningScp, ScpOptions, StoreRequest } from '../src/receive';
import { run, haveTool } from './helpers/dcmtk';
import {
  PDU, RawPeer, associateRq, associate, pData, dataPdus, cStoreRq, cEchoRq, cCancelRq, commandSet, commandsIn, statusOf, releaseRq,
  VERIFICATION, CT_IMAGE_STORAGE, IMPLICIT_LE, EXPLICIT_LE, ProposedContext,
} from './helpers/pdu';

const HOST = '127.0.0.1';
const AE = 'DEIDROUTER';
const KNOWN = 'MODALITY1';
const skipDcmtk = haveTool('echoscu') ? false : 'needs dcmtk (echoscu)';

const logger = pino({ level: process.env.RECEIVE_TEST_LOG ?? 'silent' });
silenceDimseLibraries(logger);

async function startScp(overrides: Partial<ScpOptions> = {}, onStore: (req: StoreRequest) => Promise<number> = async () => 0): Promise<RunningScp> {
  return startStorageScp({
    host: HOST,
    port: 0,
    logger,
    policy: { aeTitle: AE, isKnownCaller: (ae) => ae === KNOWN, allowUnknownCallers: false },
    onStore,
    ...overrides,
  });
}

async function echoOk(port: number): Promise<void> {
  const r = await run('echoscu', ['-aet', KNOWN, '-aec', AE, HOST, String(port)]);
  assert.equal(r.code, 0, r.stderr);
}

/** n presentation contexts; ids run 1, 3 ... 255 and then start over (as a buggy or hostile peer sends). */
function manyContexts(n: number): ProposedContext[] {
  return Array.from({ length: n }, (_, i) => ({ id: ((2 * i) % 256) + 1, abstractSyntax: i === 0 ? VERIFICATION : CT_IMAGE_STORAGE, transferSyntaxes: [IMPLICIT_LE, EXPLICIT_LE] }));
}

describe('receive robustness: association requests', { skip: skipDcmtk }, () => {
  it('an A-ASSOCIATE-RQ with more than 128 presentation contexts is refused, and the node keeps serving', async () => {
    const scp = await startScp();
    try {
      for (const n of [129, 200, 300]) {
        const peer = new RawPeer(HOST, scp.port);
        await peer.ready;
        peer.send(associateRq({ called: AE, calling: KNOWN, contexts: manyContexts(n) }));
        await peer.untilClosed();
        const types = peer.pdus().map((p) => p.type);
        assert.deepEqual(types, [PDU.AssociateRj], `${n} contexts: answered with PDU types ${types.join(',')}`);
        const rj = peer.pdus()[0].body;
        assert.equal(rj[1], 1, "permanent rejection");
      }
      await echoOk(scp.port);
      assert.equal(scp.stats().refused['too-many-presentation-contexts'], 3);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });
});

describe('receive robustness: malformed requests and handler failures', { skip: skipDcmtk }, () => {
  it('repeated or even presentation context IDs and overrunning items: A-ABORT, counted, node keeps serving', async () => {
    const scp = await startScp();
    try {
      const ctx = (id: number): ProposedContext => ({ id, abstractSyntax: VERIFICATION, transferSyntaxes: [IMPLICIT_LE] });
      const overrun = associateRq({ called: AE, calling: KNOWN, contexts: [ctx(1)] });
      overrun.writeUInt16BE(0xffff, 6 + 68 + 2); // application context item claims 64 KB
      for (const bad of [
        associateRq({ called: AE, calling: KNOWN, contexts: [ctx(1), ctx(1)] }),
        associateRq({ called: AE, calling: KNOWN, contexts: [ctx(2)] }),
        overrun,
      ]) {
        const peer = new RawPeer(HOST, scp.port);
        await peer.ready;
        peer.send(bad);
        await peer.untilClosed();
        assert.deepEqual(peer.pdus().map((p) => p.type), [PDU.Abort]);
      }
      await echoOk(scp.port);
      const stats = scp.stats();
      assert.equal(stats.refused['malformed-pdu'], 3);
      assert.equal(stats.associationsAccepted, 1);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });

  it('an exception inside the association handler ends that association only (A-ASSOCIATE-RJ), counted', async () => {
    let explode = false;
    const policy = {
      get aeTitle(): string {
        if (explode) {
          explode = false;
          throw new TypeError('policy store unavailable');
        }
        return AE;
      },
      isKnownCaller: (ae: string) => ae === KNOWN,
      allowUnknownCallers: false,
    };
    const scp = await startScp({ policy });
    try {
      const peer = new RawPeer(HOST, scp.port);
      await peer.ready;
      explode = true;
      peer.send(associateRq({ called: AE, calling: KNOWN, contexts: manyContexts(1) }));
      await peer.untilClosed();
      assert.deepEqual(peer.pdus().map((p) => p.type), [PDU.AssociateRj]);
      assert.equal(peer.pdus()[0].body[1], 2, 'transient');
      await echoOk(scp.port);
      assert.equal(scp.stats().refused['handler-error'], 1);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });
});

const STORE_CTX: ProposedContext = { id: 3, abstractSyntax: CT_IMAGE_STORAGE, transferSyntaxes: [EXPLICIT_LE] };
const ECHO_CTX: ProposedContext = { id: 1, abstractSyntax: VERIFICATION, transferSyntaxes: [IMPLICIT_LE] };

/** A small Explicit VR LE dataset: SOP Class/Instance UIDs and an OB blob of `size` bytes. */
function dataset(sopInstance: string, size: number): Buffer {
  const ui = (el: number, v: string): Buffer => {
    const val = Buffer.from(v.length % 2 ? `${v}\0` : v, 'latin1');
    const h = Buffer.alloc(8);
    h.writeUInt16LE(0x0008, 0);
    h.writeUInt16LE(el, 2);
    h.write('UI', 4, 'latin1');
    h.writeUInt16LE(val.length, 6);
    return Buffer.concat([h, val]);
  };
  const blobHeader = Buffer.alloc(12);
  blobHeader.writeUInt16LE(0x0009, 0); // a private group: nobody reads it here
  blobHeader.writeUInt16LE(0x1010, 2);
  blobHeader.write('OB', 4, 'latin1');
  blobHeader.writeUInt32LE(size, 8);
  return Buffer.concat([ui(0x0016, CT_IMAGE_STORAGE), ui(0x0018, sopInstance), blobHeader, Buffer.alloc(size, 0x5a)]);
}

async function waitCommands(peer: RawPeer, n: number): Promise<Array<Map<number, Buffer>>> {
  await peer.until((p) => commandsIn(p.pdus()).length >= n);
  return commandsIn(peer.pdus());
}

describe('receive robustness: limits', { skip: skipDcmtk }, () => {
  it('associations over the total and per-caller limits: A-ASSOCIATE-RJ transient, local limit exceeded; a slot frees on release', async () => {
    const scp = await startScp({
      policy: { aeTitle: AE, isKnownCaller: (ae) => ae.startsWith('MODALITY'), allowUnknownCallers: false },
      limits: { maxAssociations: 2, maxAssociationsPerCaller: 1 },
    });
    try {
      const a = await associate(HOST, scp.port, { called: AE, calling: 'MODALITY1', contexts: [ECHO_CTX] });
      const refusedSameCaller = new RawPeer(HOST, scp.port);
      await refusedSameCaller.ready;
      refusedSameCaller.send(associateRq({ called: AE, calling: 'MODALITY1', contexts: [ECHO_CTX] }));
      await refusedSameCaller.untilClosed();
      assert.deepEqual(refusedSameCaller.pdus().map((p) => [...p.body.subarray(1, 4)]), [[2, 3, 2]], 'transient, presentation provider, local limit exceeded');
      const b = await associate(HOST, scp.port, { called: AE, calling: 'MODALITY2', contexts: [ECHO_CTX] });
      const refusedTotal = new RawPeer(HOST, scp.port);
      await refusedTotal.ready;
      refusedTotal.send(associateRq({ called: AE, calling: 'MODALITY3', contexts: [ECHO_CTX] }));
      await refusedTotal.untilClosed();
      assert.deepEqual(refusedTotal.pdus().map((p) => p.type), [PDU.AssociateRj]);
      a.peer.send(releaseRq());
      await a.peer.untilClosed();
      await echoOk(scp.port); // MODALITY1 again, in the freed slot
      b.peer.destroy();
      const stats = scp.stats();
      assert.equal(stats.refused['too-many-associations-per-caller'], 1);
      assert.equal(stats.refused['too-many-associations'], 1);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });

  it('announces limits.maxPduBytes in the A-ASSOCIATE-AC and aborts on a bigger P-DATA-TF PDU', async () => {
    const scp = await startScp({ limits: { maxPduBytes: 16384 } });
    try {
      const { peer, maxPdu } = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX, STORE_CTX], maxPdu: 1 << 20 });
      assert.equal(maxPdu, 16384);
      peer.send(pData(3, cStoreRq(1, CT_IMAGE_STORAGE, '1.2.3.4'), { command: true, last: true }));
      peer.send(pData(3, dataset('1.2.3.4', 20000), { command: false, last: true }));
      await peer.untilClosed();
      assert.equal(peer.pdus().at(-1)?.type, PDU.Abort);
      assert.equal(scp.stats().refused['pdu-too-large'], 1);
      await echoOk(scp.port);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });

  it('a C-STORE over limits.maxDatasetBytes is answered 0xA700 without reaching the store handler; the association goes on', async () => {
    const stored: string[] = [];
    const scp = await startScp({ limits: { maxDatasetBytes: 100_000 } }, async (req) => {
      stored.push(req.sopInstanceUid);
      return 0;
    });
    try {
      const { peer } = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX, STORE_CTX], maxPdu: 16384 });
      peer.send(pData(3, cStoreRq(7, CT_IMAGE_STORAGE, '1.2.3.7'), { command: true, last: true }));
      for (const pdu of dataPdus(3, dataset('1.2.3.7', 300_000), 16384)) peer.send(pdu);
      let cmds = await waitCommands(peer, 1);
      assert.deepEqual(statusOf(cmds[0]), { status: 0xa700, field: 0x8001, respondingTo: 7 });
      // The same association stores the next, smaller image.
      peer.send(pData(3, cStoreRq(8, CT_IMAGE_STORAGE, '1.2.3.8'), { command: true, last: true }));
      for (const pdu of dataPdus(3, dataset('1.2.3.8', 50_000), 16384)) peer.send(pdu);
      cmds = await waitCommands(peer, 2);
      assert.deepEqual(statusOf(cmds[1]), { status: 0, field: 0x8001, respondingTo: 8 });
      assert.deepEqual(stored, ['1.2.3.8']);
      assert.equal(scp.stats().refused['dataset-too-large'], 1);
      peer.send(releaseRq());
      await peer.untilClosed();
      assert.equal(peer.pdus().at(-1)?.type, PDU.ReleaseRp);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });

  it('an association busy past limits.associationTimeLimitMs is aborted; an idle one after idleTimeoutMs', async () => {
    const scp = await startScp({ limits: { associationTimeLimitMs: 800, idleTimeoutMs: 400 } });
    try {
      const busy = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX] });
      let id = 1;
      const pinger = setInterval(() => busy.peer.send(pData(1, cEchoRq(id++), { command: true, last: true })), 100);
      await busy.peer.untilClosed(10_000);
      clearInterval(pinger);
      assert.ok(commandsIn(busy.peer.pdus()).length >= 3, 'echoes were answered meanwhile');
      assert.equal(busy.peer.pdus().at(-1)?.type, PDU.Abort);
      const idle = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX] });
      await idle.peer.untilClosed(10_000);
      assert.equal(idle.peer.pdus().at(-1)?.type, PDU.Abort);
      const stats = scp.stats();
      assert.equal(stats.refused['association-time-limit'], 1);
      assert.equal(stats.refused['idle-timeout'], 1);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });
});

describe('receive robustness: DIMSE commands we do not provide', { skip: skipDcmtk }, () => {
  it('C-FIND and an unknown command are answered 0x0211; C-CANCEL gets no answer and holds nothing', async () => {
    const scp = await startScp();
    try {
      const { peer } = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX, STORE_CTX] });
      peer.send(pData(1, commandSet({ sopClass: VERIFICATION, command: 0x0020, messageId: 11, priority: 0, hasDataset: true }), { command: true, last: true }));
      peer.send(pData(1, Buffer.alloc(64, 1), { command: false, last: true }));
      let cmds = await waitCommands(peer, 1);
      assert.deepEqual(statusOf(cmds[0]), { status: 0x0211, field: 0x8020, respondingTo: 11 });
      peer.send(pData(3, commandSet({ command: 0x0123, messageId: 12, hasDataset: false }), { command: true, last: true }));
      cmds = await waitCommands(peer, 2);
      assert.deepEqual(statusOf(cmds[1]), { status: 0x0211, field: 0x8123, respondingTo: 12 });
      peer.send(pData(1, cCancelRq(11), { command: true, last: true }));
      peer.send(pData(1, cEchoRq(13), { command: true, last: true }));
      cmds = await waitCommands(peer, 3);
      assert.equal(cmds.length, 3, 'nothing answers the C-CANCEL');
      assert.deepEqual(statusOf(cmds[2]), { status: 0, field: 0x8030, respondingTo: 13 });
      peer.send(releaseRq());
      await peer.untilClosed();
      assert.equal(peer.pdus().at(-1)?.type, PDU.ReleaseRp);
      const stats = scp.stats();
      assert.equal(stats.refused['unrecognized-operation'], 2);
      assert.equal(stats.cancels, 1);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });

  it('a C-ECHO-RQ that announces a dataset is a protocol error: A-ABORT, and the node keeps serving', async () => {
    const scp = await startScp();
    try {
      const { peer } = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX] });
      peer.send(pData(1, commandSet({ sopClass: VERIFICATION, command: 0x0030, messageId: 5, hasDataset: true }), { command: true, last: true }));
      peer.send(pData(1, Buffer.alloc(1000, 7), { command: false, last: true }));
      await peer.untilClosed();
      assert.equal(peer.pdus().at(-1)?.type, PDU.Abort);
      assert.equal(scp.stats().refused['malformed-pdu'], 1);
      await echoOk(scp.port);
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });
});

describe('receive robustness: datasets held in memory whole', { skip: skipDcmtk }, () => {
  it('a dataset the SCP must hold whole is bounded by limits.maxBufferedBytes (0xA700), below maxDatasetBytes', async () => {
    const stored: string[] = [];
    // No streaming store: every dataset is collected whole for onStore.
    const scp = await startScp({ limits: { maxDatasetBytes: 10_000_000, maxBufferedBytes: 200_000 } }, async (req) => {
      stored.push(req.sopInstanceUid);
      return 0;
    });
    try {
      const { peer } = await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX, STORE_CTX], maxPdu: 16384 });
      peer.send(pData(3, cStoreRq(1, CT_IMAGE_STORAGE, '1.2.3.1'), { command: true, last: true }));
      for (const pdu of dataPdus(3, dataset('1.2.3.1', 500_000), 16384)) peer.send(pdu);
      peer.send(pData(3, cStoreRq(2, CT_IMAGE_STORAGE, '1.2.3.2'), { command: true, last: true }));
      for (const pdu of dataPdus(3, dataset('1.2.3.2', 150_000), 16384)) peer.send(pdu);
      const cmds = await waitCommands(peer, 2);
      assert.deepEqual(cmds.map((c) => statusOf(c).status), [0xa700, 0]);
      assert.deepEqual(stored, ['1.2.3.2']);
      peer.destroy();
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });
  it('datasets held whole on all associations together are bounded by limits.maxBufferedBytesTotal (0xA700, then accepted once memory is free)', async () => {
    const stored: string[] = [];
    const scp = await startScp({ limits: { maxDatasetBytes: 10_000_000, maxBufferedBytes: 1_000_000, maxBufferedBytesTotal: 400_000 } }, async (req) => {
      stored.push(req.sopInstanceUid);
      return 0;
    });
    try {
      const a = (await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX, STORE_CTX], maxPdu: 16384 })).peer;
      const b = (await associate(HOST, scp.port, { called: AE, calling: KNOWN, contexts: [ECHO_CTX, STORE_CTX], maxPdu: 16384 })).peer;
      // A holds 200 kB of a 300 kB image and pauses; B's 300 kB image would take the sum over 400 kB.
      const aPdus = dataPdus(3, dataset('1.2.3.10', 300_000), 16384);
      const half = Math.ceil(aPdus.length * 2 / 3);
      a.send(pData(3, cStoreRq(1, CT_IMAGE_STORAGE, '1.2.3.10'), { command: true, last: true }));
      for (const pdu of aPdus.slice(0, half)) a.send(pdu);
      await new Promise((r) => setTimeout(r, 300));
      b.send(pData(3, cStoreRq(1, CT_IMAGE_STORAGE, '1.2.3.20'), { command: true, last: true }));
      for (const pdu of dataPdus(3, dataset('1.2.3.20', 300_000), 16384)) b.send(pdu);
      assert.deepEqual((await waitCommands(b, 1)).map((c) => statusOf(c).status), [0xa700]);
      // A finishes: stored. B sends the same image again, now alone in memory: stored.
      for (const pdu of aPdus.slice(half)) a.send(pdu);
      assert.deepEqual((await waitCommands(a, 1)).map((c) => statusOf(c).status), [0]);
      b.send(pData(3, cStoreRq(2, CT_IMAGE_STORAGE, '1.2.3.20'), { command: true, last: true }));
      for (const pdu of dataPdus(3, dataset('1.2.3.20', 300_000), 16384)) b.send(pdu);
      assert.deepEqual((await waitCommands(b, 2)).map((c) => statusOf(c).status), [0xa700, 0]);
      assert.deepEqual(stored, ['1.2.3.10', '1.2.3.20']);
      assert.equal(scp.stats().refused['dataset-too-large'], 1);
      a.destroy();
      b.destroy();
    } finally {
      await scp.close({ graceMs: 2000 });
    }
  });
});
