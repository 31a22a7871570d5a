// Test peers for the forwarder: dcmtk storescp, Orthanc, and a tiny dcmjs-dimse SCP that refuses one image.
// Every server is stopped by its pid / handle; dcmtk tools always run with TCP_NODELAY=1.
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { after, type TestContext } from 'node:test';
import { datasetSopUids, parsePart10Meta, type Part10Meta } from '../../src/deliver/spool';
import { CLEAN_DIR } from './corpus';
import { tempDir } from './tmp';

export const CORPUS = process.env.CORPUS_DIR ?? CLEAN_DIR;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** A temp dir removed when the process exits (helpers/tmp), for callers that also remove it sooner. */
export async function tmpDir(prefix: string): Promise<string> {
  return tempDir(prefix);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, what = 'condition'): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export interface Peer {
  port: number;
  pid?: number;
  stop(): Promise<void>;
}

/** What a test file cleans up: call once at its top level (it registers the file's after() hook). */
export function fileCleanups(): {
  /** A temp dir removed when the test file ends. */
  tmp(prefix: string): Promise<string>;
  /** Stop the peer when the test ends, pass or fail (and at the very end, as a safety net). */
  withPeer<T extends Peer>(t: TestContext, p: Promise<T>): Promise<T>;
  /** Run when the test file ends (before the temp dirs are removed). */
  atEnd(f: () => Promise<void>): void;
} {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });
  return {
    async tmp(prefix) {
      const d = await tmpDir(prefix);
      cleanups.unshift(() => fsp.rm(d, { recursive: true, force: true }));
      return d;
    },
    async withPeer(t, p) {
      const peer = await p;
      let stopped: Promise<void> | undefined;
      const stop = () => (stopped ??= peer.stop());
      t.after(stop);
      cleanups.push(stop);
      return peer;
    },
    atEnd(f) {
      cleanups.push(f);
    },
  };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  process.kill(child.pid!, 'SIGTERM');
  const t = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
  }, 5000);
  await exited;
  clearTimeout(t);
}

/**
 * dcmtk storescp writing bit-preserving Part-10 files into dir, accepting all transfer syntaxes and SOP classes.
 * Note: storescp 3.6.7 has no option to bind one address; it listens on all interfaces of a free port.
 */
export async function startStorescp(opts: { dir: string; port?: number; aeTitle?: string; extraArgs?: string[] }): Promise<Peer> {
  const port = opts.port ?? (await freePort());
  const args = ['--bit-preserving', '--accept-all', '--promiscuous', '-aet', opts.aeTitle ?? 'STORESCP', '-od', opts.dir, ...(opts.extraArgs ?? []), String(port)];
  const child = spawn('storescp', args, {
    env: { ...process.env, TCP_NODELAY: '1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`storescp exited: ${stderr}`);
    return portOpen(port);
  }, 10000, 'storescp to listen');
  return { port, pid: child.pid, stop: () => stopChild(child) };
}

function httpRequest(port: number, p: string, body?: unknown, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request({ host: '127.0.0.1', port, path: p, method: data ? 'POST' : 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const all = Buffer.concat(chunks);
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode} for ${p}: ${all.toString('utf8').slice(0, 500)}`));
        resolve(all);
      });
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end(data);
  });
}

async function httpGetJson(port: number, p: string): Promise<unknown> {
  return JSON.parse((await httpRequest(port, p)).toString('utf8'));
}

/** Where Debian's orthanc-dicomweb package puts the plugin. */
export const ORTHANC_DICOMWEB_PLUGIN = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';

export interface OrthancPeer extends Peer {
  httpPort: number;
  aeTitle: string;
  get(p: string): Promise<unknown>;
  getBinary(p: string): Promise<Buffer>;
  /** POST a JSON body to the REST API; resolves to the parsed answer. */
  post(p: string, body: unknown): Promise<unknown>;
}

/** Orthanc with its own config: temp storage, free ports, REST on loopback only, no auth. */
export async function startOrthanc(opts: {
  dir: string;
  aeTitle?: string;
  /** Fixed ports (to restart an Orthanc on the same storage); default free ones. */
  port?: number;
  httpPort?: number;
  /** Load the Debian orthanc-dicomweb plugin (DICOMweb under /dicom-web/). */
  dicomweb?: boolean;
  /** Merged into the configuration (e.g. DicomModalities). */
  extraConfig?: Record<string, unknown>;
}): Promise<OrthancPeer> {
  const port = opts.port ?? (await freePort());
  const httpPort = opts.httpPort ?? (await freePort());
  const aeTitle = opts.aeTitle ?? 'ORTHANCTEST';
  const storage = path.join(opts.dir, 'storage');
  await fsp.mkdir(storage, { recursive: true });
  const config = {
    Name: 'forward-test',
    StorageDirectory: storage,
    IndexDirectory: storage,
    DicomServerEnabled: true,
    DicomAet: aeTitle,
    DicomPort: port,
    DicomCheckCalledAet: false,
    HttpPort: httpPort,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    HttpServerEnabled: true,
    Plugins: [],
    DicomModalities: {},
    StableAge: 1,
    ConcurrentJobs: 1,
    DicomScpTimeout: 30,
    ...(opts.dicomweb ? { Plugins: [ORTHANC_DICOMWEB_PLUGIN], DicomWeb: { Enable: true, Root: '/dicom-web/' } } : {}),
    ...opts.extraConfig,
  };
  const cfgPath = path.join(opts.dir, 'orthanc.json');
  await fsp.writeFile(cfgPath, JSON.stringify(config, null, 2));
  const child = spawn('Orthanc', [cfgPath], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env } });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`Orthanc exited: ${stderr}`);
    try {
      await httpGetJson(httpPort, '/system');
      return portOpen(port);
    } catch {
      return false;
    }
  }, 30000, 'Orthanc to start');
  return { port, httpPort, aeTitle, pid: child.pid, stop: () => stopChild(child), get: (p) => httpGetJson(httpPort, p),
    getBinary: (p) => httpRequest(httpPort, p),
    post: async (p, body) => JSON.parse((await httpRequest(httpPort, p, body, 120_000)).toString('utf8')) };
}

export interface RefusingScp extends Peer {
  /** SOP instance UID -> dataset bytes received (all, including refused ones). */
  received: Map<string, Buffer>;
  refusedCount: number;
}

/** Serves a dcmjs-dimse Scp on 127.0.0.1 (a free port), one instance per connection; stop() drops them all. */
async function serveScp(makeScp: (socket: net.Socket) => { on(event: 'networkError', f: () => void): unknown }): Promise<{ port: number; stop: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    const scp = makeScp(socket);
    (scp as any).connected = true;
    scp.on('networkError', () => socket.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    stop: async () => {
      sockets.forEach((s) => s.destroy());
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * A minimal storage SCP (dcmjs-dimse, on a net server bound to 127.0.0.1) that answers `status` for one SOP
 * instance UID (every time, or its first refuseTimes times) and Success for every other image. Datasets are kept as raw bytes (no dcmjs parsing).
 */
export async function startRefusingScp(opts: { refuseSopInstanceUid: string; status: number; /** only the first n times */ refuseTimes?: number }): Promise<RefusingScp> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const dimse = require('dcmjs-dimse') as typeof import('dcmjs-dimse');
  dimse.log.setLevel('silent');
  const { Scp, Dataset, responses, constants } = dimse;
  const received = new Map<string, Buffer>();
  const state = { refusedCount: 0 };

  class RefusingScpImpl extends Scp {
    private chunks = new Map<Writable, Buffer[]>();
    override associationRequested(association: any): void {
      for (const pc of association.getPresentationContexts()) {
        const ctx = association.getPresentationContext(pc.id);
        const ts = ctx.getTransferSyntaxUids();
        ctx.setResult(constants.PresentationContextResult.Accept, ts[0]);
      }
      this.sendAssociationAccept();
    }
    override associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }
    override createStoreWritableStream(): Writable {
      const parts: Buffer[] = [];
      const w = new Writable({
        write(chunk: Buffer, _enc, cb) {
          parts.push(Buffer.from(chunk));
          cb();
        },
      });
      this.chunks.set(w, parts);
      return w;
    }
    override createDatasetFromStoreWritableStream(writable: Writable, ctx: any, callback: (d: any) => void): void {
      const parts = this.chunks.get(writable) ?? [];
      this.chunks.delete(writable);
      const ds = new Dataset({}, ctx.getAcceptedTransferSyntaxUid());
      (ds as any).__raw = Buffer.concat(parts);
      callback(ds);
    }
    override cStoreRequest(request: any, callback: (r: any) => void): void {
      const uid: string = request.getAffectedSopInstanceUid();
      received.set(uid, (request.getDataset() as any)?.__raw ?? Buffer.alloc(0));
      const rsp = responses.CStoreResponse.fromRequest(request);
      if (uid === opts.refuseSopInstanceUid && (opts.refuseTimes === undefined || state.refusedCount < opts.refuseTimes)) {
        state.refusedCount++;
        rsp.setStatus(opts.status);
      } else {
        rsp.setStatus(constants.Status.Success);
      }
      callback(rsp);
    }
    override abort(): void {}
  }

  const { port, stop } = await serveScp((socket) => new RefusingScpImpl(socket, {}));
  return {
    port,
    received,
    get refusedCount() {
      return state.refusedCount;
    },
    stop,
  };
}

// ---------------------------------------------------------------- files

export interface CorpusFile extends Part10Meta {
  file: string;
  /** The dataset's own SOPInstanceUID (what a PACS files the image under); meta's if unreadable. */
  datasetSopInstanceUid: string;
  bytes: Buffer;
  studyInstanceUid: string;
}

/** Corpus files that have a Part-10 meta with SOP class, SOP instance and transfer syntax. */
export function corpusFiles(dir = CORPUS): CorpusFile[] {
  const out: CorpusFile[] = [];
  for (const f of fs.readdirSync(dir).sort()) {
    if (!f.endsWith('.dcm')) continue;
    const bytes = fs.readFileSync(path.join(dir, f));
    let meta: Part10Meta;
    try {
      meta = parsePart10Meta(bytes);
    } catch {
      continue;
    }
    const ds = datasetSopUids(bytes.subarray(meta.datasetOffset, meta.datasetOffset + 65536), meta.transferSyntaxUid);
    out.push({ ...meta, file: f, bytes, studyInstanceUid: findStudyUid(bytes, meta) ?? '', datasetSopInstanceUid: ds.sopInstanceUid || meta.sopInstanceUid });
  }
  return out;
}

/** Best-effort StudyInstanceUID (0020,000D) lookup in little endian datasets (for the Orthanc check). */
export function findStudyUid(bytes: Buffer, meta: Part10Meta): string | undefined {
  if (meta.transferSyntaxUid === '1.2.840.10008.1.2.2' || meta.transferSyntaxUid === '1.2.840.10008.1.2.1.99') return undefined;
  const explicit = meta.transferSyntaxUid !== '1.2.840.10008.1.2';
  const tag = Buffer.from([0x20, 0x00, 0x0d, 0x00]);
  let i = bytes.indexOf(tag, meta.datasetOffset);
  while (i >= 0) {
    let len: number;
    let start: number;
    if (explicit && bytes.toString('latin1', i + 4, i + 6) === 'UI') {
      len = bytes.readUInt16LE(i + 6);
      start = i + 8;
    } else if (!explicit) {
      len = bytes.readUInt32LE(i + 4);
      start = i + 8;
    } else {
      i = bytes.indexOf(tag, i + 1);
      continue;
    }
    if (len > 0 && len <= 64) return bytes.toString('latin1', start, start + len).replace(/[\0 ]+$/, '');
    i = bytes.indexOf(tag, i + 1);
  }
  return undefined;
}

/**
 * The corpus with one file per SOP instance UID: several corpus files are the same instance in different
 * transfer syntaxes (MR_small*); later duplicates get a new UID of the same length (see makeVariants).
 */
export function uniqueCorpus(files = corpusFiles()): CorpusFile[] {
  const seen = new Set<string>();
  const out: CorpusFile[] = [];
  files.forEach((f, i) => {
    if (!seen.has(f.sopInstanceUid) && !seen.has(f.datasetSopInstanceUid)) {
      seen.add(f.sopInstanceUid);
      seen.add(f.datasetSopInstanceUid);
      out.push(f);
      return;
    }
    // Files whose dataset UID differs from the meta UID cannot be varied consistently: leave them out.
    if (f.sopInstanceUid !== f.datasetSopInstanceUid) return;
    const v = makeVariants(f.bytes, 1, i)[0];
    seen.add(v.sopInstanceUid);
    const ds = datasetSopUids(v.bytes.subarray(f.datasetOffset, f.datasetOffset + 65536), f.transferSyntaxUid).sopInstanceUid;
    out.push({ ...f, bytes: v.bytes, sopInstanceUid: v.sopInstanceUid, datasetSopInstanceUid: ds || v.sopInstanceUid });
  });
  return out;
}

/** Dataset bytes (after the file meta) of a Part-10 file. */
export function datasetBytes(part10: Buffer): Buffer {
  return part10.subarray(parsePart10Meta(part10).datasetOffset);
}

/** What storescp wrote: SOP instance UID -> dataset bytes. */
export async function readReceived(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const f of await fsp.readdir(dir)) {
    const p = path.join(dir, f);
    const st = await fsp.stat(p);
    if (!st.isFile()) continue;
    try {
      const b = await fsp.readFile(p);
      const m = parsePart10Meta(b);
      out.set(m.sopInstanceUid, b.subarray(m.datasetOffset));
    } catch {
      /* partial or foreign file */
    }
  }
  return out;
}

/** Count files in a directory that are not temp files. */
export async function countFiles(dir: string): Promise<number> {
  return (await fsp.readdir(dir)).length;
}

/**
 * n copies of a Part-10 file, each with a distinct SOP instance UID of the same length, replaced everywhere
 * the original UID string occurs (file meta and dataset), so lengths and offsets do not change.
 */
export function makeVariants(part10: Buffer, n: number, seed = 1, from = 0): Array<{ bytes: Buffer; sopInstanceUid: string }> {
  const meta = parsePart10Meta(part10);
  const uid = meta.sopInstanceUid;
  if (uid.length < 12) throw new Error('UID too short to vary');
  const needle = Buffer.from(uid, 'latin1');
  const positions: number[] = [];
  for (let i = part10.indexOf(needle); i >= 0; i = part10.indexOf(needle, i + 1)) positions.push(i);
  const out: Array<{ bytes: Buffer; sopInstanceUid: string }> = [];
  const width = uid.length - 5; // "2.25." + digits
  for (let k = from; k < from + n; k++) {
    const prefix = String(100 + (seed % 900)); // always 3 digits, no leading zero
    const body = String(k).padStart(width - prefix.length, '0');
    if (prefix.length + body.length !== width) throw new Error('too many variants for this UID length');
    const newUid = '2.25.' + prefix + body;
    const b = Buffer.from(part10);
    for (const p of positions) b.write(newUid, p, 'latin1');
    out.push({ bytes: b, sopInstanceUid: newUid });
  }
  return out;
}

export interface ReportScp extends Peer {
  /** The N-EVENT-REPORT-RQs received: event type and the event information (naturalized by dcmjs). */
  reports: Array<{ eventTypeId: number; info: Record<string, any> }>;
}

/**
 * A storage commitment SCU's listening side (dcmjs-dimse, on a net server bound to 127.0.0.1): accepts any
 * association and answers every N-EVENT-REPORT-RQ with Success, keeping what it said.
 */
export async function startReportScp(): Promise<ReportScp> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const dimse = require('dcmjs-dimse') as typeof import('dcmjs-dimse');
  dimse.log.setLevel('silent');
  const { Scp, responses, constants } = dimse;
  const reports: ReportScp['reports'] = [];
  class ReportScpImpl extends Scp {
    override associationRequested(association: any): void {
      for (const pc of association.getPresentationContexts()) {
        const ctx = association.getPresentationContext(pc.id);
        ctx.setResult(constants.PresentationContextResult.Accept, ctx.getTransferSyntaxUids()[0]);
      }
      this.sendAssociationAccept();
    }
    override associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }
    override nEventReportRequest(request: any, callback: (r: any) => void): void {
      reports.push({ eventTypeId: request.getEventTypeId(), info: request.getDataset()?.getElements() ?? {} });
      const rsp = responses.NEventReportResponse.fromRequest(request);
      rsp.setStatus(constants.Status.Success);
      callback(rsp);
    }
    override abort(): void {}
  }
  return { reports, ...(await serveScp((socket) => new ReportScpImpl(socket, {}))) };
}
