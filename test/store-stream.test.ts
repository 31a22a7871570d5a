// The streaming C-STORE path: a dataset de-identified and written while its PDVs arrive must give the
// very bytes the buffered path gives, wherever the PDVs and PDUs are cut; an image cut off leaves nothing.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'fs';
import { join } from 'path';
import * as net from 'net';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { DeidPipeline, RoutedImage } from '../src/pipeline';
import { StreamingImage, StreamStats, StreamTarget, OutputFile } from '../src/store-stream';
import { DurableWriter } from '../src/deliver/durable-writer';
import { silentLogger } from '../src/observe/logger';
import { Element } from '../src/dicom/dataset';
import { elementChunks } from '../src/dicom/write';
import { readDataset, readPart10 } from '../src/dicom/read';
import { EXPLICIT_LE, IMPLICIT_LE, TS, Syntax } from '../src/dicom/uids';
import { DatasetSplitter } from '../src/dicom/stream-split';
import { PduFramer } from '../src/receive/framer';
import { PDataReceiver } from '../src/receive/pdata';
import { buildAssociateRq } from '../src/deliver/dimse-scu';
import { startNode } from '../src/commands/serve';
import { el, sq } from './helpers/build';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { CT, ILE, ORIG, TSX, ctElements, encodeDataset, part10, s } from './fixtures/craft';
import { run } from './helpers/dcmtk';
import { hasTool } from './helpers/tools';
import { pData } from './helpers/pdu';
import { tempDir } from './helpers/tmp';

/** A P-DATA-TF PDU with one PDV on context 1; control: bit 0 command, bit 1 last fragment. */
const pdv = (control: number, frag: Buffer): Buffer => pData(1, frag, { command: (control & 1) !== 0, last: (control & 2) !== 0 });

const SALT = 'store-stream-test-salt-51c2';

function config(dir: string, destinations?: Record<string, unknown>) {
  writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0, allowUnknownCallers: false },
    stateDir: join(dir, 'state'),
    destinations: destinations ?? { outgoing: { type: 'folder', path: join(dir, 'outgoing') } },
    defaultDestination: 'outgoing',
    stations: { default: { TagForStudy: 'ProtocolName', Split: null, AETitles: ['STORESCU'] } },
    studies: { STREAMA: { KeepPrivateTags: ['KEEPME'] } },
  }));
  return loadConfig(join(dir, 'router.yaml'), {});
}

const bytes = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

/** Elements around two bulk values that are kept, one removed, one after pixel data, sequences whose lengths change. */
function elements(encapsulated: boolean): Element[] {
  const pixel: Element = encapsulated
    ? {
      tag: 0x7fe00010, vr: 'OB', value: null, undefinedLength: true,
      encapsulated: Buffer.concat([
        Buffer.from([0xfe, 0xff, 0x00, 0xe0, 0, 0, 0, 0]), // empty offset table
        Buffer.from([0xfe, 0xff, 0x00, 0xe0, 30, 0, 0, 0]), bytes(30, 1),
        Buffer.from([0xfe, 0xff, 0x00, 0xe0, 12, 0, 0, 0]), bytes(12, 2),
        Buffer.from([0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0]),
      ]),
    }
    : el('PixelData', 'OW', bytes(48, 3));
  const list: Element[] = [
    el('SpecificCharacterSet', 'CS', 'ISO_IR 100'),
    el('SOPClassUID', 'UI', '1.2.840.10008.5.1.4.1.1.2'),
    el('SOPInstanceUID', 'UI', '1.2.3.4.5.6.7.99'),
    el('StudyDate', 'DA', '20230917'),
    el('Modality', 'CS', 'CT'),
    el('StationName', 'SH', 'CT01'),
    // Kept, with UIDs that become longer: the sequence's length changes.
    sq('ReferencedImageSequence', [[el('ReferencedSOPClassUID', 'UI', '1.2.840.10008.5.1.4.1.1.2'), el('ReferencedSOPInstanceUID', 'UI', '1.2.3.9')]], false),
    el('PatientName', 'PN', 'DOE^JANE'),
    el('PatientID', 'LO', 'PID0001'),
    // Removed by the profile.
    sq('OtherPatientIDsSequence', [[el('PatientID', 'LO', 'OTHER1')]], true),
    el('ProtocolName', 'LO', 'STREAMA'),
    el('StudyInstanceUID', 'UI', '1.2.3.4.5.6.1'),
    el('SeriesInstanceUID', 'UI', '1.2.3.4.5.6.2'),
    el('Rows', 'US', '4'),
    el('Columns', 'US', '6'),
    // A private block the study does not keep, with a bulk value: skipped while streaming.
    el(0x00290010, 'LO', 'SIEMENS CSA HEADER'),
    el(0x00291010, 'OB', bytes(40, 4)),
    pixel,
    // After pixel data: a kept private block with a bulk value and a short one, then padding (dropped).
    el(0x7fe10010, 'LO', 'KEEPME'),
    el(0x7fe11010, 'OB', bytes(36, 5)),
    el(0x7fe11011, 'LO', 'after pixels'),
    el(0xfffcfffc, 'OB', Buffer.alloc(20)),
  ];
  return list;
}

function encode(list: Element[], syntax: Syntax, ts: string): Buffer {
  // Round trip through the reader so implicit VR elements carry the VRs a receiver sees.
  const raw = Buffer.concat(elementChunks(list, syntax));
  return Buffer.concat(elementChunks(readDataset(raw, ts).dataset, syntax));
}

class MemoryFile implements OutputFile {
  parts: Buffer[] = [];
  pending = 0;
  size = 0;
  committed = false;
  aborted = false;
  append(chunks: readonly Buffer[]): void {
    for (const c of chunks) {
      this.parts.push(Buffer.from(c));
      this.size += c.length;
    }
  }
  whenBelow(): Promise<void> {
    return Promise.resolve();
  }
  async commit(): Promise<void> {
    this.committed = true;
  }
  async abort(): Promise<void> {
    this.aborted = true;
  }
}

const newStats = (): StreamStats => ({ streamed: 0, buffered: 0, receiveMs: 0, finishMs: 0, engineMs: 0 });

async function streamed(pipeline: DeidPipeline, ts: string, pieces: Buffer[]): Promise<{ out: Buffer; status: number; stats: StreamStats; routed?: RoutedImage }> {
  const file = new MemoryFile();
  let routed: RoutedImage | undefined;
  const stats = newStats();
  const img = new StreamingImage(
    { callingAeTitle: 'STORESCU', calledAeTitle: 'DEID_ROUTER', peerAddress: '127.0.0.1', associationId: 1, sopClassUid: '1.2.840.10008.5.1.4.1.1.2', sopInstanceUid: '1.2.3.4.5.6.7.99', transferSyntaxUid: ts },
    {
      pipeline, logger: silentLogger(), stats, bulkMin: 16,
      openTargets: (r): StreamTarget[] => {
        routed = r;
        return [{ file, committed: async () => undefined }];
      },
      buffered: async () => 0xfe00, // marks "took the buffered path"
    },
  );
  for (const p of pieces) img.write(p);
  const status = await img.end();
  assert.ok(file.committed || status !== 0);
  return { out: Buffer.concat(file.parts), status, stats, routed };
}

const SYNTAXES: Array<[string, string, Syntax, boolean]> = [
  ['explicit VR little endian, native pixel data', TS.ExplicitLE, EXPLICIT_LE, false],
  ['implicit VR little endian', TS.ImplicitLE, IMPLICIT_LE, false],
  ['JPEG baseline, encapsulated pixel data', '1.2.840.10008.1.2.4.50', EXPLICIT_LE, true],
];

describe('streaming C-STORE path', () => {
  const dir = tempDir('store-stream-');
  const pipeline = new DeidPipeline(config(dir), SALT);

  for (const [name, ts, syntax, encapsulated] of SYNTAXES) {
    test(`${name}: byte-identical to the buffered path, cut at every offset`, async () => {
      const data = encode(elements(encapsulated), syntax, ts);
      const expected = Buffer.concat(pipeline.process({ kind: 'dataset', bytes: data, transferSyntaxUid: ts }, 'STORESCU').chunks!);
      // What the profile did (so that the comparison means something).
      const outDs = readDataset(expected.subarray(expected.indexOf('DICM') + 4 + 12 + expected.readUInt32LE(expected.indexOf('DICM') + 12)), ts).dataset;
      const tags = outDs.map((e) => e.tag);
      assert.ok(!tags.includes(0x00291010), 'private bulk value removed');
      assert.ok(!tags.includes(0x00101002), 'sequence removed');
      assert.ok(tags.includes(0x7fe11010) && tags.includes(0x7fe11011), 'elements after pixel data kept');
      assert.ok(!tags.includes(0xfffcfffc));
      const ref = outDs.find((e) => e.tag === 0x00081140)!.items![0].elements.find((e) => e.tag === 0x00081155)!;
      assert.match(ref.value!.toString('latin1'), /^2\.25\./, 'UID inside a kept sequence regenerated (its length changed)');

      for (let k = 1; k < data.length; k++) {
        const r = await streamed(pipeline, ts, [data.subarray(0, k), data.subarray(k)]);
        assert.equal(r.status, 0, `cut at ${k}`);
        assert.ok(r.out.equals(expected), `cut at ${k}: streamed output differs`);
      }
      // Three pieces, every pair of cuts a few bytes apart, and one byte at a time.
      for (let k = 1; k + 7 < data.length; k += 3) {
        const r = await streamed(pipeline, ts, [data.subarray(0, k), data.subarray(k, k + 7), data.subarray(k + 7)]);
        assert.ok(r.out.equals(expected), `cuts at ${k}, ${k + 7}`);
      }
      const one = await streamed(pipeline, ts, [...data].map((b) => Buffer.from([b])));
      assert.ok(one.out.equals(expected), 'one byte per PDV');
      assert.equal(one.stats.streamed, 1);
    });
  }

  test('the splitter hands on a bulk value without holding it, elements whole', () => {
    const data = encode(elements(false), EXPLICIT_LE, TS.ExplicitLE);
    const events: string[] = [];
    let bulkBytes = 0;
    const s = new DatasetSplitter(EXPLICIT_LE, {
      elements: (b) => events.push(`elements:${readDataset(b, TS.ExplicitLE).dataset.length}`),
      bulkStart: (tag, _vr, len) => events.push(`bulk:${tag.toString(16)}:${len}`),
      bulkData: (b) => (bulkBytes += b.length),
      bulkEnd: () => events.push('end'),
    }, 16);
    for (let i = 0; i < data.length; i += 5) s.push(data.subarray(i, i + 5));
    s.end();
    assert.deepEqual(events.filter((e) => e.startsWith('bulk')), ['bulk:291010:40', 'bulk:7fe00010:48', 'bulk:7fe11010:36', 'bulk:fffcfffc:20']);
    assert.equal(bulkBytes, 40 + 48 + 36 + 20);
  });

  test('P-DATA PDUs cut at every offset of the byte stream: the sink gets the dataset unchanged', () => {
    const data = encode(elements(false), EXPLICIT_LE, TS.ExplicitLE);
    const command = Buffer.concat(elementChunks([
      { tag: 0x00000100, vr: 'US', value: Buffer.from([1, 0]), undefinedLength: false },
      { tag: 0x00000110, vr: 'US', value: Buffer.from([7, 0]), undefinedLength: false },
      { tag: 0x00000800, vr: 'US', value: Buffer.from([0, 0]), undefinedLength: false },
    ], IMPLICIT_LE));
    // Dataset PDVs of 1..37 bytes, so that PDV boundaries fall everywhere.
    const pdus: Buffer[] = [pdv(3, command)];
    for (let o = 0, n = 1; o < data.length; o += n, n = (n % 37) + 1) pdus.push(pdv(o + n >= data.length ? 2 : 0, data.subarray(o, o + n)));
    const stream = Buffer.concat(pdus);
    for (let k = 1; k < stream.length; k += 1) {
      const got: Buffer[] = [];
      let ended = 0;
      const rx = new PDataReceiver({
        beginStore: () => ({ backlogBytes: 0, write: (f) => got.push(Buffer.from(f)), whenBelow: async () => undefined, end: async () => 0, abort: () => undefined }),
        endStore: () => ended++,
        command: () => assert.fail('no command without dataset here'),
        unsupported: () => assert.fail('C-STORE is supported'),
        protocolError: (r) => assert.fail(r),
      });
      const framer = new PduFramer(1 << 20);
      framer.push(stream.subarray(0, k), (p) => rx.onPdu(p));
      framer.push(stream.subarray(k), (p) => rx.onPdu(p));
      assert.equal(ended, 1);
      assert.ok(Buffer.concat(got).equals(data), `socket chunks cut at ${k}`);
    }
  });

  test('an image aborted while streaming leaves neither output nor temp file (real writer)', async () => {
    const d = tempDir('store-stream-abort-');
    const p = new DeidPipeline(config(d), SALT);
    const w = new DurableWriter();
    const out = join(d, 'outgoing');
    const data = encode(elements(false), EXPLICIT_LE, TS.ExplicitLE);
    const img = new StreamingImage(
      { callingAeTitle: 'STORESCU', calledAeTitle: 'DEID_ROUTER', peerAddress: '127.0.0.1', associationId: 1, sopClassUid: '', sopInstanceUid: '', transferSyntaxUid: TS.ExplicitLE },
      {
        pipeline: p, logger: silentLogger(), stats: newStats(), bulkMin: 16,
        openTargets: (r) => [{ file: w.open(join(out, r.relativePath!)), committed: async () => undefined }],
        buffered: async () => assert.fail('must stream'),
      },
    );
    img.write(data.subarray(0, data.length - 30)); // into the kept bulk value after pixel data
    await img.whenBelow(1);
    const files = readdirSync(out, { recursive: true }).map(String).filter((f) => /\.(tmp|dcm)$/.test(f));
    assert.equal(files.length, 1, 'the temp file exists while receiving');
    assert.match(files[0], /\/\.deid-[^/]+\.tmp$/);
    await img.abort();
    assert.deepEqual(readdirSync(out, { recursive: true }).map(String).filter((f) => /\.(tmp|dcm)$/.test(f)), []);
  });
});

describe('streaming over the network', () => {
  test('association aborted in the middle of an image: no visible output, no temp file; the next image is stored', async () => {
    const dir = tempDir('store-stream-net-');
    const node = await startNode(config(dir), SALT, silentLogger());
    const out = join(dir, 'outgoing');
    try {
      // A 512 x 512 CT, implicit VR, made here (test/fixtures/craft.ts): large enough to be cut.
      const ctPath = join(dir, 'ct-512.dcm');
      const pixels = Buffer.alloc(512 * 512 * 2, 0x5a);
      const els = ctElements([s(0x00280010, 'US', [512]), s(0x00280011, 'US', [512])]).map((e) => (e.tag === 0x7fe00010 ? s(0x7fe00010, 'OW', pixels) : e));
      writeFileSync(ctPath, part10(encodeDataset(els, ILE), { sopClass: CT, sopInstance: ORIG.sop, ts: TSX.ImplicitLE }));
      const file = readFileSync(ctPath);
      const ts = TS.ImplicitLE; // as the file is
      const meta = file.indexOf('DICM') + 4;
      const metaEnd = meta + 12 + file.readUInt32LE(meta + 8);
      const dataset = file.subarray(metaEnd);
      const sock = net.connect(node.scp.port, '127.0.0.1');
      await new Promise<void>((r) => sock.once('connect', () => r()));
      const rq = buildAssociateRq('STORESCU', 'DEID_ROUTER', [{ abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: ts }], 16384);
      const ac = new Promise<Buffer>((r) => sock.once('data', (d: Buffer) => r(d)));
      sock.write(rq);
      assert.equal((await ac)[0], 2, 'A-ASSOCIATE-AC');
      const cmd = Buffer.concat(elementChunks([
        { tag: 0x00000002, vr: 'UI', value: Buffer.from('1.2.840.10008.5.1.4.1.1.2\0'), undefinedLength: false },
        { tag: 0x00000100, vr: 'US', value: Buffer.from([1, 0]), undefinedLength: false },
        { tag: 0x00000110, vr: 'US', value: Buffer.from([1, 0]), undefinedLength: false },
        { tag: 0x00000800, vr: 'US', value: Buffer.from([0, 0]), undefinedLength: false },
      ], IMPLICIT_LE));
      sock.write(pdv(3, cmd));
      const half = dataset.subarray(0, dataset.length >> 1);
      for (let o = 0; o < half.length; o += 16000) sock.write(pdv(0, half.subarray(o, o + 16000)));
      // Wait until the router has the temp file open (the header went out), then cut the connection.
      const deadline = Date.now() + 10_000;
      const listing = () => (existsSync(out) ? readdirSync(out, { recursive: true }).map(String).filter((f) => /\.(tmp|dcm)$/.test(f)) : []);
      while (listing().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.equal(listing().length, 1, 'temp file while receiving');
      sock.destroy();
      const deadline2 = Date.now() + 10_000;
      while (listing().length > 0 && Date.now() < deadline2) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(listing(), []);
      if (hasTool('storescu')) {
        const r = await run('storescu', ['-xi', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(node.scp.port), ctPath]);
        assert.equal(r.code, 0, r.stderr);
        const stored = listing();
        assert.equal(stored.length, 1);
        assert.match(stored[0], /\.dcm$/);
        // The streamed file is the buffered path's output, byte for byte.
        const got = readFileSync(join(out, stored[0]));
        assert.equal(readPart10(got).transferSyntaxUid, ts); // -xi: sent as it is
        const expected = Buffer.concat(new DeidPipeline(config(dir), SALT).process({ kind: 'dataset', bytes: dataset, transferSyntaxUid: ts }, 'STORESCU').chunks!);
        assert.ok(got.equals(expected), 'streamed output equals the buffered output');
      }
    } finally {
      await node.stop();
    }
  });
});
