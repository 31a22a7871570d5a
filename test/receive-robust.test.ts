// Storage SCP robustness against hostile or broken peers (issue #8 items 2, 6 and 7): raw PDUs crafted here,
// then a real dcmtk peer to show the node still serves.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { startStorageScp, silenceDimseLibraries } from '../src/receive';
import type { RunningScp, ScpOptions, StoreRequest } from '../src/receive';
import { run, haveTool } from './helpers/dcmtk';
import {
  PDU, RawPeer, associateRq, VERIFICATION, CT_IMAGE_STORAGE, IMPLICIT_LE, EXPLICIT_LE, ProposedContext,
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
