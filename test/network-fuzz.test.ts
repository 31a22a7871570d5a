// Network fuzz of the running node (issue #8): a real `serve` child process on loopback, fed with associations
// captured from storescu in this test and then mutated, random PDUs, slow senders, 200 idle connections,
// abrupt closes, A-ABORT in every state and oversized datasets. Afterwards the node must still serve
// (echoscu), its RSS must be back near its baseline, and every image it answered Success for must be on
// disk, complete. Bounded in count and time; FUZZ_SEED=<n> replays a run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'net';
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { el } from './helpers/build';
import { writePart10 } from '../src/dicom/write';
import { readPart10 } from '../src/dicom/read';
import { findElement, type Element } from '../src/dicom/dataset';
import { TS, EXPLICIT_LE } from '../src/dicom/uids';
import { run, freePort, haveTool, startProcess, stopProcess, waitForPort } from './helpers/dcmtk';
import {
  PDU, RawPeer, associateRq, pData, dataPdus, cStoreRq, cEchoRq, commandsIn, releaseRq, abortPdu, splitPdus, splitRawPdus,
  VERIFICATION, CT_IMAGE_STORAGE, EXPLICIT_LE as EXPLICIT_LE_UID, IMPLICIT_LE, ProposedContext,
} from './helpers/pdu';
import { tempDir } from './helpers/tmp';

const HOST = '127.0.0.1';
const AE = 'DEID_ROUTER';
const CALLER = 'FUZZER';
const SALT = 'network-fuzz-salt-5b1f0c';
const PATIENT = 'FUZZ^PATIENT';
const PIXEL_BYTES = 8192;
const skip = ['echoscu', 'storescu'].every(haveTool) ? false : 'needs dcmtk (echoscu, storescu)';

/** Small deterministic PRNG (mulberry32), so a failing run can be replayed with FUZZ_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface TestImage {
  id: number;
  sop: string;
  marker: Buffer;
  file: Buffer;
  /** The dataset after the file meta (Explicit VR LE), as a C-STORE carries it. */
  dataset: Buffer;
}

/** An image whose pixel data starts with a marker naming it: de-identification keeps pixel data as is. */
function makeImage(id: number): TestImage {
  const sop = `1.2.826.0.1.3680043.10.1.${id}`;
  const marker = Buffer.from(`FUZZIMG-${String(id).padStart(8, '0')}`, 'latin1');
  const pixel = Buffer.alloc(PIXEL_BYTES);
  for (let i = 0; i < PIXEL_BYTES; i++) pixel[i] = (i * 7 + id) & 0xff;
  marker.copy(pixel, 0);
  const els: Element[] = [
    el('SpecificCharacterSet', 'CS', 'ISO_IR 100'),
    el('SOPClassUID', 'UI', CT_IMAGE_STORAGE),
    el('SOPInstanceUID', 'UI', sop),
    el('StudyDate', 'DA', '20240102'),
    el('Modality', 'CS', 'CT'),
    el('PatientName', 'PN', PATIENT),
    el('PatientID', 'LO', 'FUZZPID01'),
    el('ProtocolName', 'LO', 'FUZZ'),
    el('StudyInstanceUID', 'UI', '1.2.826.0.1.3680043.10.2.1'),
    el('SeriesInstanceUID', 'UI', `1.2.826.0.1.3680043.10.3.${id % 4}`),
    el('SamplesPerPixel', 'US', '1'),
    el('PhotometricInterpretation', 'CS', 'MONOCHROME2'),
    el('Rows', 'US', '64'),
    el('Columns', 'US', '64'),
    el('BitsAllocated', 'US', '16'),
    el('BitsStored', 'US', '16'),
    el('HighBit', 'US', '15'),
    el('PixelRepresentation', 'US', '0'),
    el('PixelData', 'OW', pixel),
  ].sort((a, b) => a.tag - b.tag);
  const file = writePart10({
    meta: [el(0x00020002, 'UI', CT_IMAGE_STORAGE), el(0x00020003, 'UI', sop), el(0x00020010, 'UI', TS.ExplicitLE)],
    dataset: els, transferSyntaxUid: TS.ExplicitLE, syntax: EXPLICIT_LE, deflated: false, hadMeta: true,
  });
  const metaLen = file.readUInt32LE(132 + 8);
  return { id, sop, marker, file, dataset: file.subarray(132 + 12 + metaLen) };
}

function rssOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s*(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MB = (n: number) => `${(n / 1048576).toFixed(0)} MB`;

/** Records what a client sends through a loopback proxy to the node. */
async function capture(port: number, client: (proxyPort: number) => Promise<void>): Promise<Buffer> {
  const sent: Buffer[] = [];
  const proxy = net.createServer((c) => {
    const upstream = net.connect({ host: HOST, port });
    c.on('data', (d: Buffer) => {
      sent.push(Buffer.from(d));
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => c.write(d));
    c.on('close', () => upstream.destroy());
    upstream.on('close', () => c.destroy());
    c.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  await new Promise<void>((r) => proxy.listen(0, HOST, () => r()));
  const addr = proxy.address() as net.AddressInfo;
  try {
    await client(addr.port);
  } finally {
    await new Promise<void>((r) => proxy.close(() => r()));
  }
  return Buffer.concat(sent);
}

/** Success answers of C-STORE, by the SOP Instance UID the response names. */
function storeSuccesses(received: Buffer): string[] {
  return commandsIn(splitPdus(received))
    .filter((c) => c.get(0x0100)?.readUInt16LE(0) === 0x8001 && c.get(0x0900)?.readUInt16LE(0) === 0)
    .map((c) => (c.get(0x1000) ?? Buffer.alloc(0)).toString('latin1').replace(/[\0 ]+$/, ''));
}

/** Sends a byte stream (all at once, or in slices with pauses), then waits until the node closes or goes quiet. */
async function play(port: number, parts: Buffer[], o: { pauseMs?: number; quietMs?: number; maxMs?: number; cutAfter?: number } = {}): Promise<RawPeer> {
  const peer = new RawPeer(HOST, port);
  try {
    await peer.ready;
  } catch {
    return peer;
  }
  let sent = 0;
  for (const p of parts) {
    if (peer.closed) break;
    if (o.cutAfter !== undefined && sent + p.length >= o.cutAfter) {
      peer.send(p.subarray(0, o.cutAfter - sent));
      peer.destroy();
      return peer;
    }
    peer.send(p);
    sent += p.length;
    if (o.pauseMs) await sleep(o.pauseMs);
  }
  const deadline = Date.now() + (o.maxMs ?? 3000);
  let seen = -1;
  while (!peer.closed && Date.now() < deadline && peer.received.length !== seen) {
    seen = peer.received.length;
    await peer.until(() => false, o.quietMs ?? 150).catch(() => undefined);
  }
  peer.destroy();
  return peer;
}

/** Runs tasks with at most n at once. */
async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

test('network fuzz: the node survives hostile and broken peers, keeps serving, loses no image it answered Success for', { skip, timeout: 120_000 }, async (t) => {
  const seed = Number(process.env.FUZZ_SEED ?? 20261130);
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const dir = tempDir('deid-fuzz-');
  const out = join(dir, 'outgoing');
  const port = await freePort();
  const httpPort = await freePort();
  writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
    listen: { aeTitle: AE, host: HOST, port },
    http: { host: HOST, port: httpPort },
    stateDir: join(dir, 'state'),
    destinations: { outgoing: { type: 'folder', path: out } },
    stations: { fuzz: { TagForStudy: 'ProtocolName', AETitles: [CALLER] } },
    limits: { maxAssociations: 64, maxAssociationsPerCaller: 48, maxPduBytes: 65536, maxDatasetBytes: '1 MiB', idleSeconds: 3, associationRequestSeconds: 3, associationSeconds: 30 },
  }));
  const cli = join(__dirname, '..', 'src', 'cli.js');
  // SIGUSR2 makes the node collect garbage (test fixture), so that RSS after the fuzz is memory still held.
  const gcOnSignal = join(__dirname, 'fixtures', 'gc-on-signal.js');
  // RSS after a full collection still holds V8's young generation, committed at its configured size: Node 24
  // sizes it from the machine's memory (measured here: +75 MB RSS over Node 20 for the same run, none of it
  // retained objects). The semi-space is pinned to Node 20's 16 MB so the bound below measures memory the
  // node keeps, alike on every supported Node.
  const node = startProcess(process.execPath, ['--expose-gc', '--max-semi-space-size=16', '-r', gcOnSignal, cli, 'serve', '--config', dir], { env: { DEID_SALT: SALT, LOG_LEVEL: 'info' } });
  const collect = async () => {
    process.kill(node.pid, 'SIGUSR2');
    await sleep(300);
    process.kill(node.pid, 'SIGUSR2');
    await sleep(700);
  };
  let exitedEarly: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void node.exited.then((e) => (exitedEarly ??= e));
  const tried: Record<string, number> = {};
  const count = (kind: string, n = 1) => (tried[kind] = (tried[kind] ?? 0) + n);
  const answeredSuccess = new Set<string>();
  const noteSuccesses = (peer: RawPeer) => storeSuccesses(peer.received).forEach((u) => answeredSuccess.add(u));
  const echo = () => run('echoscu', ['-aet', CALLER, '-aec', AE, HOST, String(port)]);
  try {
    await waitForPort(port, HOST, 15_000);
    const images = Array.from({ length: 64 }, (_, i) => makeImage(i + 1));
    const byUid = new Map(images.map((im) => [im.sop, im]));
    const files = images.map((im) => {
      const f = join(dir, `img${im.id}.dcm`);
      writeFileSync(f, im.file);
      return f;
    });

    // Warm-up and baseline.
    assert.equal((await echo()).code, 0);
    const warm = await run('storescu', ['-aet', CALLER, '-aec', AE, HOST, String(port), files[0], files[1]]);
    assert.equal(warm.code, 0, warm.stderr);
    [images[0], images[1]].forEach((im) => answeredSuccess.add(im.sop));
    await collect();
    const baseline = rssOf(node.pid).rss;

    // Associations captured from real dcmtk peers: these are what the mutations start from.
    const captures: Buffer[][] = [];
    for (const [i, j] of [[2, 3], [4, 5]]) {
      const bytes = await capture(port, async (p) => {
        const r = await run('storescu', ['-aet', CALLER, '-aec', AE, HOST, String(p), files[i], files[j]]);
        assert.equal(r.code, 0, r.stderr);
      });
      [images[i], images[j]].forEach((im) => answeredSuccess.add(im.sop));
      captures.push(splitRawPdus(bytes));
    }
    captures.push(splitRawPdus(await capture(port, async (p) => assert.equal((await run('echoscu', ['-aet', CALLER, '-aec', AE, HOST, String(p)])).code, 0))));
    count('captured associations', captures.length);

    // A valid raw association storing one image, for slow senders, abrupt closes and A-ABORT states.
    const ctx: ProposedContext[] = [
      { id: 1, abstractSyntax: VERIFICATION, transferSyntaxes: [IMPLICIT_LE] },
      { id: 3, abstractSyntax: CT_IMAGE_STORAGE, transferSyntaxes: [EXPLICIT_LE_UID] },
    ];
    const storeStream = (im: TestImage, messageId = 1): Buffer[] => [
      associateRq({ called: AE, calling: CALLER, contexts: ctx, maxPdu: 16384 }),
      pData(3, cStoreRq(messageId, CT_IMAGE_STORAGE, im.sop), { command: true, last: true }),
      ...dataPdus(3, im.dataset, 4096),
      releaseRq(),
    ];

    const mutate = (pdus: Buffer[]): Buffer[] => {
      const m = pdus.map((p) => Buffer.from(p));
      const ops = 1 + int(3);
      for (let k = 0; k < ops; k++) {
        const i = int(m.length);
        switch (int(8)) {
          case 0: // flip bytes near the start of a PDU (headers, items, PDV headers, command set)
            for (let f = 0; f < 1 + int(4); f++) m[i][int(Math.min(64, m[i].length))] ^= 1 << int(8);
            break;
          case 1: // a wrong length field
            m[i].writeUInt32BE([0, 1, m[i].length, 0xffffffff, int(1 << 20)][int(5)] >>> 0, 2);
            break;
          case 2: // truncate the stream
            m.splice(i + 1);
            m[i] = m[i].subarray(0, int(m[i].length));
            break;
          case 3:
            m.splice(i, 0, m[i]);
            break;
          case 4:
            m.splice(i, 1);
            break;
          case 5: {
            const j = int(m.length);
            [m[i], m[j]] = [m[j], m[i]];
            break;
          }
          case 6: { // a random PDU
            const body = Buffer.alloc(int(300));
            for (let b = 0; b < body.length; b++) body[b] = int(256);
            const h = Buffer.from([1 + int(7), 0, 0, 0, 0, 0]);
            h.writeUInt32BE(body.length, 2);
            m.splice(i, 0, Buffer.concat([h, body]));
            break;
          }
          default: // another PDV presentation context or control byte
            if (m[i][0] === PDU.PData && m[i].length > 12) m[i][10 + int(2)] = int(256);
            else m[i][0] = 1 + int(7);
        }
        if (m.length === 0) break;
      }
      return m;
    };

    const started = Date.now();
    const phaseRss: string[] = [];
    // Slow senders run alongside everything else.
    const slow = Promise.all(Array.from({ length: 8 }, async (_, s) => {
      count('slow senders');
      const whole = Buffer.concat(storeStream(images[10 + s]));
      const slices: Buffer[] = [];
      for (let off = 0; off < whole.length;) {
        const n = 64 + int(700);
        slices.push(whole.subarray(off, off + n));
        off += n;
      }
      noteSuccesses(await play(port, slices, { pauseMs: 20 + int(30), maxMs: 4000 }));
    }));

    // Mutated captured associations and random PDUs.
    const mutated = Array.from({ length: Number(process.env.FUZZ_MUTATIONS ?? 600) }, () => mutate(captures[int(captures.length)]));
    await pool(mutated, 8, async (pdus) => {
      count('mutated captured associations');
      noteSuccesses(await play(port, pdus, { quietMs: 120, maxMs: 2000 }));
    });
    await pool(Array.from({ length: 150 }, (_, i) => i), 8, async (i) => {
      count('random byte streams');
      const len = 1 + int(3000);
      const b = Buffer.alloc(len);
      for (let k = 0; k < len; k++) b[k] = int(256);
      if (i % 2 === 0 && len >= 6) {
        b[0] = 1 + int(7);
        b[1] = 0;
        b.writeUInt32BE(int(len + 64), 2);
      }
      await play(port, [b], { quietMs: 100, maxMs: 1500 });
    });

    // A-ASSOCIATE-RQs dcmjs-dimse could not answer (more than 128 presentation contexts, repeated IDs).
    for (let k = 0; k < 6; k++) {
      count('hostile A-ASSOCIATE-RQs');
      const n = 129 + int(200);
      const many = Array.from({ length: n }, (_, i) => ({ id: ((2 * i) % 256) + 1, abstractSyntax: CT_IMAGE_STORAGE, transferSyntaxes: [EXPLICIT_LE_UID] }));
      const peer = await play(port, [associateRq({ called: AE, calling: CALLER, contexts: many })]);
      assert.deepEqual(peer.pdus().map((p) => p.type), [PDU.AssociateRj]);
    }
    phaseRss.push(`after mutated/random ${MB(rssOf(node.pid).rss)}`);

    // Abrupt closes at random points of a valid association.
    await pool(Array.from({ length: 60 }, (_, i) => i), 8, async (i) => {
      count('abrupt closes');
      const stream = storeStream(images[20 + (i % 20)]);
      const total = stream.reduce((n, b) => n + b.length, 0);
      noteSuccesses(await play(port, stream, { cutAfter: 1 + int(total - 1) }));
    });

    // A-ABORT in every state of an association.
    const im = images[45];
    const [rq, cmd, ...rest] = storeStream(im);
    const data = rest.slice(0, -1);
    const states: Array<[string, Buffer[]]> = [
      ['connected', []],
      ['A-ASSOCIATE-RQ sent', [rq]],
      ['associated', [rq]],
      ['C-ECHO sent', [rq, pData(1, cEchoRq(1), { command: true, last: true })]],
      ['C-STORE command sent', [rq, cmd]],
      ['mid-dataset', [rq, cmd, ...data.slice(0, 1)]],
      ['C-STORE complete', [rq, cmd, ...data]],
      ['A-RELEASE-RQ sent', [rq, cmd, ...data, releaseRq()]],
    ];
    for (const [name, parts] of states) {
      for (let k = 0; k < 3; k++) {
        count('A-ABORT in a state');
        const peer = new RawPeer(HOST, port);
        await peer.ready;
        for (const p of parts) peer.send(p);
        if (name === 'associated') await peer.until((p) => p.pdus().length > 0, 2000).catch(() => undefined);
        peer.send(abortPdu());
        await peer.untilClosed(5000).catch(() => undefined);
        noteSuccesses(peer);
        assert.ok(peer.closed, `the node closes the connection after an A-ABORT (${name})`);
        peer.destroy();
      }
    }

    // Oversized datasets: 0xA700, the association goes on.
    for (let k = 0; k < 3; k++) {
      count('oversized datasets');
      const big = Buffer.concat([images[50].dataset, Buffer.alloc(0)]);
      const huge = Buffer.alloc(2 * 1024 * 1024 + big.length);
      big.copy(huge);
      const peer = await play(port, [associateRq({ called: AE, calling: CALLER, contexts: ctx, maxPdu: 16384 }), pData(3, cStoreRq(9, CT_IMAGE_STORAGE, images[50].sop), { command: true, last: true }), ...dataPdus(3, huge, 65536), pData(1, cEchoRq(10), { command: true, last: true }), releaseRq()], { maxMs: 5000 });
      const statuses = commandsIn(peer.pdus()).map((c) => c.get(0x0900)!.readUInt16LE(0));
      assert.deepEqual(statuses, [0xa700, 0], 'oversized C-STORE answered 0xA700, then the C-ECHO Success');
    }

    // 200 idle connections; a real caller still gets through.
    count('idle connections', 200);
    const idle = await Promise.all(Array.from({ length: 200 }, async () => {
      const s = net.connect({ host: HOST, port });
      s.on('error', () => undefined);
      await new Promise<void>((r) => { s.once('connect', () => r()); s.once('close', () => r()); });
      return s;
    }));
    const duringIdle = await echo();
    assert.equal(duringIdle.code, 0, `echoscu among 200 idle connections: ${duringIdle.stderr}`);
    idle.forEach((s) => s.destroy());
    await slow;
    phaseRss.push(`after idle/slow ${MB(rssOf(node.pid).rss)}`);

    // Valid stores after all that, on several associations.
    for (let a = 0; a < 3; a++) {
      count('valid associations after the fuzz');
      const msgs = [associateRq({ called: AE, calling: CALLER, contexts: ctx, maxPdu: 16384 })];
      for (let k = 0; k < 5; k++) {
        const img = images[30 + a * 5 + k];
        msgs.push(pData(3, cStoreRq(k + 1, CT_IMAGE_STORAGE, img.sop), { command: true, last: true }), ...dataPdus(3, img.dataset, 16384));
      }
      msgs.push(releaseRq());
      const peer = await play(port, msgs, { maxMs: 5000 });
      noteSuccesses(peer);
      assert.equal(storeSuccesses(peer.received).length, 5, 'all five answered Success');
    }
    const fuzzSeconds = (Date.now() - started) / 1000;
    phaseRss.push(`after valid stores ${MB(rssOf(node.pid).rss)}`);

    // The node still serves and its memory came back.
    const after = await echo();
    assert.equal(after.code, 0, after.stderr);
    assert.equal(exitedEarly, undefined, 'the node process is alive');
    await collect();
    const { rss, peak } = rssOf(node.pid);

    // Every image answered Success is on disk, complete (parses; pixel data whole, starting with its marker).
    const onDisk = new Map<string, boolean>();
    const walk = (d: string): string[] => (existsSync(d) ? readdirSync(d, { recursive: true }).map(String).filter((f) => f.endsWith('.dcm')).map((f) => join(d, f)) : []);
    for (const f of walk(out)) {
      let complete = false;
      let marker = '';
      try {
        const o = readPart10(readFileSync(f));
        const px = findElement(o.dataset, 0x7fe00010)?.value;
        if (px) {
          marker = px.subarray(0, 16).toString('latin1');
          complete = px.length === PIXEL_BYTES;
        }
      } catch {
        complete = false;
      }
      if (marker) onDisk.set(marker, (onDisk.get(marker) ?? false) || complete);
    }
    let lost = 0;
    let unattributable = 0;
    for (const uid of answeredSuccess) {
      const img = byUid.get(uid);
      if (!img) {
        unattributable++;
        continue;
      }
      if (onDisk.get(img.marker.toString('latin1')) !== true) lost++;
    }

    // Refusals are counted where operators look: /metrics.
    const metrics = await (await fetch(`http://${HOST}:${httpPort}/metrics`)).text();
    const refusals = (reason: string) => Number(new RegExp(`scp_refusals_total\\{reason="${reason}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
    assert.equal(refusals('too-many-presentation-contexts'), tried['hostile A-ASSOCIATE-RQs']);
    assert.equal(refusals('dataset-too-large'), tried['oversized datasets']);
    assert.ok(refusals('malformed-pdu') > 0);

    await stopProcess(node, 10_000);
    const exit = await node.exited;
    const log = node.output().stdout;
    const counters = /"scp":(\{[^\n]*?\}\}),"msg":"storage SCP counters"/.exec(log)?.[1] ?? '{}';
    const crashes = exit.code === 0 ? 0 : 1;
    t.diagnostic(`network fuzz (seed ${seed}, ${fuzzSeconds.toFixed(1)} s): inputs tried ${Object.entries(tried).map(([k, v]) => `${k}: ${v}`).join(', ')}; crashes: ${crashes}; images answered Success but lost: ${lost} (of ${answeredSuccess.size} answered Success, ${unattributable} with a UID no test image has); RSS baseline ${MB(baseline)}, after ${MB(rss)}, peak ${MB(peak)}`);
    t.diagnostic(`node counters: ${counters}`);
    t.diagnostic(`RSS by phase: ${phaseRss.join(', ')}`);
    assert.equal(crashes, 0, `node exit ${JSON.stringify(exit)}; stderr: ${node.output().stderr.slice(-2000)}`);
    assert.equal(lost, 0);
    assert.ok(rss < baseline + 100 * 1024 * 1024, `RSS ${MB(rss)} vs baseline ${MB(baseline)}`);
    assert.ok(!log.includes(PATIENT) && !log.includes('FUZZPID01') && !log.includes('1.2.826.0.1.3680043.10.1.'), 'no patient data in the log');
    assert.ok(!/uncaught|unhandled/i.test(log + node.output().stderr), 'no uncaught exception or unhandled rejection');
  } finally {
    await stopProcess(node, 5000);
  }
});
