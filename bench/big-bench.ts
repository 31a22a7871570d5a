// Benchmark (issue #9, big object): one uncompressed multiframe of about 2 GB (generated here, 512 x 512 x
// 16 bit frames, explicit VR little endian), sent once by storescu to
//   (a) dcmtk storescp -od DIR,
//   (b) our serve with a folder destination,
//   (c) our serve with a dicom destination (storescp behind it), timed until the file is complete there.
// Checks that the pixel data arrives identical (SHA-256 of the value bytes), and prints MB/s, the receiver's
// peak RSS (VmHWM; target < 300 MB for serve) and serve's event-loop delay. The generated file is removed at the end.
//
// Build: npm run build && npx tsc -p tsconfig.test.json
// Usage: node .build-test/bench/big-bench.js [--frames 4000] [--keep-going]
// The last line is "RESULT big folderMBs=.. dicomMBs=.. storescpMBs=.. rssFolder=..MB rssDicom=..MB".
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { createHash } from 'node:crypto';
import { stopProcess } from '../test/helpers/dcmtk';
import { EXPLICIT_LE, TS } from '../src/dicom/uids';
import { elementHeader, part10Chunks } from '../src/dicom/write';
import { makeElement, type Element } from '../src/dicom/dataset';
import { encodeString } from '../src/dicom/values';
import {
  MB, argValue, tmp, peakRss, countFilesFlat, countFilesDeep, sleep, now, startDcmtkStorescp, startRouter, storescu, stageTimings, formatStages,
} from './scp-bench';

/** The default largest dataset is 1 GiB; this object is 2 GB. */
export const BIG_LIMITS = 'limits: { maxDatasetBytes: 2147483647 }\n';
const ROWS = 512;
const COLS = 512;
const FRAME = ROWS * COLS * 2;

function str(tag: number, vr: string, text: string): Element {
  return makeElement(tag, vr, encodeString(vr, text));
}
function us(tag: number, v: number): Element {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return makeElement(tag, 'US', b);
}

/** Frame i of the generated object (deterministic, different per frame). */
export function frame(i: number, buf = Buffer.allocUnsafe(FRAME)): Buffer {
  for (let o = 0; o < FRAME; o += 4) buf.writeUInt32LE(((i * 2654435761) ^ (o * 40503)) >>> 0, o);
  return buf;
}

/**
 * Writes a multiframe CT of `frames` frames to `file` (Part 10, explicit VR LE) without holding it in memory.
 * Returns the SHA-256 of the pixel data value and its length.
 */
export async function writeBigObject(file: string, frames: number, sopInstanceUid = `2.25.${BigInt('0x' + createHash('sha1').update(file).digest('hex').slice(0, 24)).toString()}`): Promise<{ sha256: string; pixelBytes: number }> {
  const pixelBytes = FRAME * frames;
  const dataset: Element[] = [
    str(0x00080016, 'UI', '1.2.840.10008.5.1.4.1.1.2.1'), // Enhanced CT
    str(0x00080018, 'UI', sopInstanceUid),
    str(0x00080020, 'DA', '20240102'),
    str(0x00080060, 'CS', 'CT'),
    str(0x00100010, 'PN', 'BIG^OBJECT'),
    str(0x00100020, 'LO', 'BIG0001'),
    str(0x00181030, 'LO', 'BIGSTUDY'),
    str(0x0020000d, 'UI', '1.2.826.0.1.3680043.2.1125.9.1'),
    str(0x0020000e, 'UI', '1.2.826.0.1.3680043.2.1125.9.2'),
    us(0x00280002, 1),
    str(0x00280004, 'CS', 'MONOCHROME2'),
    str(0x00280008, 'IS', String(frames)),
    us(0x00280010, ROWS),
    us(0x00280011, COLS),
    us(0x00280100, 16),
    us(0x00280101, 16),
    us(0x00280102, 15),
    us(0x00280103, 0),
  ];
  const meta = [
    makeElement(0x00020001, 'OB', Buffer.from([0, 1])),
    str(0x00020002, 'UI', '1.2.840.10008.5.1.4.1.1.2.1'),
    str(0x00020003, 'UI', sopInstanceUid),
    str(0x00020010, 'UI', TS.ExplicitLE),
  ];
  const fh = await fsp.open(file, 'w');
  const hash = createHash('sha256');
  try {
    await fh.writev([...part10Chunks({ meta, dataset, transferSyntaxUid: TS.ExplicitLE, syntax: EXPLICIT_LE, deflated: false, hadMeta: true }), elementHeader(0x7fe00010, 'OW', pixelBytes, EXPLICIT_LE)]);
    const buf = Buffer.allocUnsafe(FRAME);
    for (let i = 0; i < frames; i++) {
      frame(i, buf);
      hash.update(buf);
      await fh.write(buf);
    }
  } finally {
    await fh.close();
  }
  return { sha256: hash.digest('hex'), pixelBytes };
}

/** SHA-256 of the (7FE0,0010) OW value of `pixelBytes` bytes in an explicit VR LE file, read in pieces. */
export async function pixelSha256(file: string, pixelBytes: number): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    const head = Buffer.alloc(1 << 20);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const marker = elementHeader(0x7fe00010, 'OW', pixelBytes, EXPLICIT_LE);
    const at = head.subarray(0, bytesRead).indexOf(marker);
    if (at < 0) throw new Error(`${file}: no pixel data of ${pixelBytes} bytes in the first MB`);
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(8 << 20);
    let pos = at + marker.length;
    let left = pixelBytes;
    while (left > 0) {
      const { bytesRead: n } = await fh.read(buf, 0, Math.min(buf.length, left), pos);
      if (n === 0) throw new Error(`${file}: pixel data cut short`);
      hash.update(buf.subarray(0, n));
      pos += n;
      left -= n;
    }
    return hash.digest('hex');
  } finally {
    await fh.close();
  }
}

function findFile(dir: string): string {
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && e.name.endsWith('.dcm') && !e.name.startsWith('.')) return path.join((e as unknown as { parentPath?: string; path: string }).parentPath ?? e.path, e.name);
  }
  for (const e of fs.readdirSync(dir)) return path.join(dir, e);
  throw new Error(`no file in ${dir}`);
}

async function main(): Promise<void> {
  const frames = Number(argValue('--frames', '4000'));
  const work = await tmp('bench-big-');
  const src = path.join(work, 'big.dcm');
  try {
    let t0 = now();
    const { sha256, pixelBytes } = await writeBigObject(src, frames);
    const size = fs.statSync(src).size;
    const mb = size / MB;
    console.log(`big bench: one ${frames}-frame ${ROWS}x${COLS}x16 multiframe, ${mb.toFixed(0)} MB (written in ${(now() - t0).toFixed(1)} s), storescu TCP_NODELAY=1, ${os.cpus().length} cores, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);

    // (a) storescp
    const outA = path.join(work, 'storescp');
    await fsp.mkdir(outA);
    const a = await startDcmtkStorescp(outA, 'STORESCP');
    let aSecs: number;
    let aRss: number;
    try {
      t0 = now();
      await storescu('STORESCP', a.port, [src]);
      aSecs = now() - t0;
      aRss = peakRss(a.proc.pid);
    } finally {
      await stopProcess(a.proc);
    }
    if ((await pixelSha256(findFile(outA), pixelBytes)) !== sha256) throw new Error('storescp: pixel data differs');
    await fsp.rm(outA, { recursive: true, force: true });
    console.log(`  (a) storescp        ${(mb / aSecs).toFixed(1).padStart(6)} MB/s ${aSecs.toFixed(1).padStart(6)} s  peak RSS ${(aRss / MB).toFixed(0)} MB`);

    // (b) serve, folder destination
    const rb = await startRouter({ defaultDestination: 'outgoing', extraYaml: BIG_LIMITS });
    let bSecs: number;
    let bRss: number;
    try {
      t0 = now();
      await storescu('DEID_ROUTER', rb.port, [src]);
      bSecs = now() - t0;
      bRss = peakRss(rb.proc.pid);
    } finally {
      await stopProcess(rb.proc, 30_000);
    }
    const bStages = stageTimings(rb.proc.output().stdout);
    if (countFilesDeep(rb.outgoing, '.dcm') !== 1) throw new Error(`serve (folder): ${countFilesDeep(rb.outgoing, '.dcm')} files, ${rb.problems().slice(0, 5).join('\n')}`);
    const bSame = (await pixelSha256(findFile(rb.outgoing), pixelBytes)) === sha256;
    await fsp.rm(rb.dir, { recursive: true, force: true });
    console.log(`  (b) serve (folder)  ${(mb / bSecs).toFixed(1).padStart(6)} MB/s ${bSecs.toFixed(1).padStart(6)} s  peak RSS ${(bRss / MB).toFixed(0)} MB  pixel data ${bSame ? 'identical' : 'DIFFERS'}  ratio b/a ${(aSecs / bSecs).toFixed(2)}`);
    console.log(formatStages(bStages));

    // (c) serve, dicom destination -> storescp
    const outC = path.join(work, 'pacs');
    await fsp.mkdir(outC);
    const pacs = await startDcmtkStorescp(outC, 'PACS');
    const rc = await startRouter({ defaultDestination: 'pacs', pacsPort: pacs.port, pacsAeTitle: 'PACS', maxAssociations: 1, extraYaml: BIG_LIMITS });
    let cSecs = 0;
    let cIngest: number;
    let cRss: number;
    try {
      t0 = now();
      await storescu('DEID_ROUTER', rc.port, [src]);
      cIngest = now() - t0;
      // Arrived: the spool is empty again (the forwarder deletes the file once the PACS answered Success).
      for (;;) {
        if (countFilesFlat(outC) > 0 && countFilesDeep(path.join(rc.stateDir, 'spool'), '.dcm') === 0) break;
        if (now() - t0 > 1800) throw new Error('dicom destination: not arrived after 30 min');
        await sleep(50);
      }
      cSecs = now() - t0;
      cRss = peakRss(rc.proc.pid);
    } finally {
      await stopProcess(rc.proc, 30_000);
      await stopProcess(pacs.proc);
    }
    const cSame = (await pixelSha256(findFile(outC), pixelBytes)) === sha256;
    await fsp.rm(rc.dir, { recursive: true, force: true });
    console.log(`  (c) serve (dicom)   ${(mb / cSecs).toFixed(1).padStart(6)} MB/s ${cSecs.toFixed(1).padStart(6)} s (storescu done after ${cIngest.toFixed(1)} s)  peak RSS ${(cRss / MB).toFixed(0)} MB  pixel data ${cSame ? 'identical' : 'DIFFERS'}`);
    if (!bSame || !cSame) throw new Error('pixel data changed on the way');
    console.log(`RESULT big storescpMBs=${(mb / aSecs).toFixed(1)} folderMBs=${(mb / bSecs).toFixed(1)} dicomMBs=${(mb / cSecs).toFixed(1)} rssFolder=${(bRss / MB).toFixed(0)}MB rssDicom=${(cRss / MB).toFixed(0)}MB`);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
