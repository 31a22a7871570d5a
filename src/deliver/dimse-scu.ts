// A small DICOM Upper Layer / DIMSE storage SCU (PS3.8 for the PDUs, PS3.7 for the C-STORE messages).
//
// Why our own: dcmjs-dimse's Client re-encodes every dataset through a naturalized dcmjs Dataset (private
// elements dropped, values changed) and sends all requests of one Client on one pre-declared association.
// Here the dataset bytes sent are exactly the bytes of the spool file after its file meta, read from disk in
// chunks and fragmented into P-DATA-TF PDUs no larger than the peer's maximum PDU length.
//
// One association carries one operation at a time (no asynchronous operations window).
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { FileHandle } from 'node:fs/promises';

import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, TS } from '../dicom/uids';
import { PDU_TYPE, PduFramer, PduFramingError } from '../receive/framer';
import { element, pdvHeader, uidValue, us } from '../receive/dimse';

const APPLICATION_CONTEXT = '1.2.840.10008.3.1.1.1';
const IMPLICIT_VR_LE = TS.ImplicitLE;


/** Our PDU limit, both ways: announced to the peer (it must send no longer P-DATA-TF PDUs) and the
 * largest we send, whatever the peer announces (one that announces 4 GB would make us read and
 * buffer a whole dataset per PDU). */
const DEFAULT_MAX_PDU = 262144;
/** Largest PDU of any other type we take (an A-ASSOCIATE-AC, even with 128 contexts, is far smaller). */
const MAX_CONTROL_PDU = 1 << 20;
/** File read size: several PDUs per read. */
const READ_CHUNK = 1 << 20;

export interface PresentationContextProposal {
  abstractSyntaxUid: string;
  transferSyntaxUid: string;
}

export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  rejectUnauthorized?: boolean;
  servername?: string;
}

export interface AssociateOptions {
  host: string;
  port: number;
  callingAeTitle: string;
  calledAeTitle: string;
  /** One presentation context per entry (at most 128). */
  contexts: PresentationContextProposal[];
  /** Largest PDU we accept and send (default 256 KiB); see DEFAULT_MAX_PDU. */
  maxPduLength?: number;
  connectTimeoutMs?: number;
  /** ACSE timeout: waiting for A-ASSOCIATE-AC/RJ and A-RELEASE-RP. */
  associationTimeoutMs?: number;
  /** DIMSE timeout: socket inactivity while an operation is outstanding. */
  dimseTimeoutMs?: number;
  tls?: TlsOptions;
}

export interface AcceptedContext {
  id: number;
  abstractSyntaxUid: string;
  transferSyntaxUid: string;
}

export interface CStoreResult {
  status: number;
  errorComment?: string;
}

/** Dataset bytes to send: a byte range of an open file, or a buffer. */
export type DatasetSource = { fh: FileHandle; offset: number; length: number } | Buffer;

export class DimseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
/** Connection refused, reset, closed, TLS failure: the destination is unreachable. */
export class NetworkError extends DimseError {}
export class TimeoutError extends DimseError {}
export class AssociationRejectedError extends DimseError {
  constructor(
    readonly result: number,
    readonly source: number,
    readonly reason: number,
  ) {
    super(`association rejected (result ${result}, source ${source}, reason ${reason})`);
  }
}
export class AssociationAbortedError extends DimseError {
  constructor(
    readonly source: number,
    readonly reason: number,
  ) {
    super(`association aborted by peer (source ${source}, reason ${reason})`);
  }
}
export class ProtocolError extends DimseError {}

function padAe(ae: string): Buffer {
  const b = Buffer.alloc(16, 0x20);
  b.write(ae.slice(0, 16), 'latin1');
  return b;
}

function item(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt8(type, 0);
  h.writeUInt16BE(body.length, 2);
  return Buffer.concat([h, body]);
}

function uidItem(type: number, uid: string): Buffer {
  return item(type, Buffer.from(uid, 'latin1'));
}

function pdu(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(6);
  h.writeUInt8(type, 0);
  h.writeUInt32BE(body.length, 2);
  return Buffer.concat([h, body]);
}

export function buildAssociateRq(
  callingAe: string,
  calledAe: string,
  contexts: PresentationContextProposal[],
  maxPdu: number,
): Buffer {
  const fixed = Buffer.alloc(68);
  fixed.writeUInt16BE(1, 0); // protocol version
  padAe(calledAe).copy(fixed, 4);
  padAe(callingAe).copy(fixed, 20);
  const parts: Buffer[] = [fixed, uidItem(0x10, APPLICATION_CONTEXT)];
  contexts.forEach((c, i) => {
    const head = Buffer.from([1 + 2 * i, 0, 0, 0]);
    parts.push(item(0x20, Buffer.concat([head, uidItem(0x30, c.abstractSyntaxUid), uidItem(0x40, c.transferSyntaxUid)])));
  });
  const maxLen = Buffer.alloc(4);
  maxLen.writeUInt32BE(maxPdu, 0);
  parts.push(
    item(
      0x50,
      Buffer.concat([item(0x51, maxLen), uidItem(0x52, IMPLEMENTATION_CLASS_UID), uidItem(0x55, IMPLEMENTATION_VERSION_NAME)]),
    ),
  );
  return pdu(PDU_TYPE.AssociateRq, Buffer.concat(parts));
}

interface ParsedAc {
  maxPdu: number;
  results: Map<number, { result: number; transferSyntaxUid?: string }>;
}

function parseAssociateAc(body: Buffer): ParsedAc {
  const results = new Map<number, { result: number; transferSyntaxUid?: string }>();
  let maxPdu = 0;
  let pos = 68;
  while (pos + 4 <= body.length) {
    const type = body[pos];
    const len = body.readUInt16BE(pos + 2);
    const start = pos + 4;
    const end = start + len;
    if (end > body.length) throw new ProtocolError('A-ASSOCIATE-AC item runs past the PDU');
    if (type === 0x21) {
      const id = body[start];
      const result = body[start + 2];
      let ts: string | undefined;
      let p = start + 4;
      while (p + 4 <= end) {
        const st = body[p];
        const sl = body.readUInt16BE(p + 2);
        if (st === 0x40) ts = body.toString('latin1', p + 4, p + 4 + sl).replace(/[\0 ]+$/, '');
        p += 4 + sl;
      }
      results.set(id, { result, transferSyntaxUid: ts });
    } else if (type === 0x50) {
      let p = start;
      while (p + 4 <= end) {
        const st = body[p];
        const sl = body.readUInt16BE(p + 2);
        if (st === 0x51 && sl === 4) maxPdu = body.readUInt32BE(p + 4);
        p += 4 + sl;
      }
    }
    pos = end;
  }
  return { maxPdu, results };
}

// ---- DIMSE command sets (implicit VR little endian, group 0000 with group length) ----

const cmdElement = (tag: number, value: Buffer): Buffer => element(0x0000, tag, value);
const ui = uidValue;

export function buildCStoreRq(messageId: number, sopClassUid: string, sopInstanceUid: string): Buffer {
  const elems = Buffer.concat([
    cmdElement(0x0002, ui(sopClassUid)),
    cmdElement(0x0100, us(0x0001)), // C-STORE-RQ
    cmdElement(0x0110, us(messageId)),
    cmdElement(0x0700, us(0x0000)), // priority MEDIUM
    cmdElement(0x0800, us(0x0000)), // a dataset follows
    cmdElement(0x1000, ui(sopInstanceUid)),
  ]);
  const gl = Buffer.alloc(4);
  gl.writeUInt32LE(elems.length, 0);
  return Buffer.concat([cmdElement(0x0000, gl), elems]);
}

export interface ParsedCommand {
  commandField?: number;
  messageIdBeingRespondedTo?: number;
  status?: number;
  dataSetType?: number;
  errorComment?: string;
  affectedSopInstanceUid?: string;
}

export function parseCommand(buf: Buffer): ParsedCommand {
  const out: ParsedCommand = {};
  let pos = 0;
  while (pos + 8 <= buf.length) {
    const group = buf.readUInt16LE(pos);
    const el = buf.readUInt16LE(pos + 2);
    const len = buf.readUInt32LE(pos + 4);
    const v = buf.subarray(pos + 8, pos + 8 + len);
    pos += 8 + len;
    if (group !== 0) continue;
    switch (el) {
      case 0x0100:
        out.commandField = v.readUInt16LE(0);
        break;
      case 0x0120:
        out.messageIdBeingRespondedTo = v.readUInt16LE(0);
        break;
      case 0x0800:
        out.dataSetType = v.readUInt16LE(0);
        break;
      case 0x0900:
        out.status = v.readUInt16LE(0);
        break;
      case 0x0902:
        out.errorComment = v.toString('latin1').replace(/[\0 ]+$/, '');
        break;
      case 0x1000:
        out.affectedSopInstanceUid = v.toString('latin1').replace(/[\0 ]+$/, '');
        break;
    }
  }
  return out;
}

type Waiter = { resolve: (v: unknown) => void; reject: (e: Error) => void };

/** An established association. Create with `StoreScu.connect()`. */
export class StoreAssociation {
  /** Splits the byte stream into PDUs; refuses one longer than we accept as soon as its header is in. */
  private readonly framer: PduFramer;
  private waiter: (Waiter & { kind: 'ac' | 'rsp' | 'rp' }) | undefined;
  private closedError: Error | undefined;
  private cmdFragments: Buffer[] = [];
  private nextMessageId = 1;
  private peerMaxPdu: number;
  private readonly ownMaxPdu: number;
  private accepted: AcceptedContext[] = [];
  private readonly dimseTimeoutMs: number;
  private readonly associationTimeoutMs: number;
  private drainWaiters: Array<() => void> = [];
  private released = false;

  private constructor(
    private readonly socket: net.Socket,
    opts: AssociateOptions,
  ) {
    this.ownMaxPdu = opts.maxPduLength ?? DEFAULT_MAX_PDU;
    this.framer = new PduFramer(MAX_CONTROL_PDU, this.ownMaxPdu);
    this.peerMaxPdu = this.ownMaxPdu;
    this.dimseTimeoutMs = opts.dimseTimeoutMs ?? 60000;
    this.associationTimeoutMs = opts.associationTimeoutMs ?? 30000;
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('drain', () => {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      w.forEach((f) => f());
    });
    socket.on('error', (e) => this.fail(new NetworkError(`network error: ${e.message}`)));
    socket.on('close', () => this.fail(new NetworkError('connection closed by peer')));
    socket.on('timeout', () => {
      if (this.waiter) {
        this.abort();
        this.fail(new TimeoutError(`no answer from peer within ${this.currentTimeout()} ms`));
      }
    });
  }

  /** Open a TCP (or TLS) connection and negotiate the association. */
  static async connect(opts: AssociateOptions): Promise<StoreAssociation> {
    if (opts.contexts.length === 0 || opts.contexts.length > 128) {
      throw new DimseError(`need 1..128 presentation contexts, got ${opts.contexts.length}`);
    }
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s: net.Socket = opts.tls
        ? tls.connect({ host: opts.host, port: opts.port, ...opts.tls })
        : net.connect({ host: opts.host, port: opts.port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new NetworkError(`connect to ${opts.host}:${opts.port} timed out`));
      }, opts.connectTimeoutMs ?? 10000);
      const onErr = (e: Error) => {
        clearTimeout(timer);
        s.destroy();
        reject(new NetworkError(`connect to ${opts.host}:${opts.port} failed: ${e.message}`));
      };
      s.once('error', onErr);
      s.once(opts.tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        s.off('error', onErr);
        resolve(s);
      });
    });
    socket.setNoDelay(true);
    const a = new StoreAssociation(socket, opts);
    const maxPdu = a.ownMaxPdu;
    const ac = (await a.request(
      'ac',
      buildAssociateRq(opts.callingAeTitle, opts.calledAeTitle, opts.contexts, maxPdu),
      a.associationTimeoutMs,
    )) as ParsedAc;
    // 0 means "no limit": ours applies then, as it does to any larger announcement.
    a.peerMaxPdu = ac.maxPdu === 0 ? maxPdu : Math.min(maxPdu, Math.max(ac.maxPdu, 64));
    opts.contexts.forEach((c, i) => {
      const id = 1 + 2 * i;
      const r = ac.results.get(id);
      if (r && r.result === 0) {
        a.accepted.push({ id, abstractSyntaxUid: c.abstractSyntaxUid, transferSyntaxUid: r.transferSyntaxUid ?? c.transferSyntaxUid });
      }
    });
    return a;
  }

  get acceptedContexts(): readonly AcceptedContext[] {
    return this.accepted;
  }
  get maxPduLength(): number {
    return this.peerMaxPdu;
  }
  get isOpen(): boolean {
    return !this.closedError && !this.released;
  }

  /** Presentation context id accepted for exactly this SOP class and transfer syntax, if any. */
  contextFor(sopClassUid: string, transferSyntaxUid: string): number | undefined {
    return this.accepted.find((c) => c.abstractSyntaxUid === sopClassUid && c.transferSyntaxUid === transferSyntaxUid)?.id;
  }

  /** Send one C-STORE-RQ with the dataset bytes as they are, and wait for the C-STORE-RSP. */
  async cStore(pcId: number, sopClassUid: string, sopInstanceUid: string, data: DatasetSource): Promise<CStoreResult> {
    if (this.closedError) throw this.closedError;
    const messageId = this.nextMessageId;
    this.nextMessageId = (this.nextMessageId % 0xffff) + 1;
    const respP = this.expect('rsp', this.dimseTimeoutMs) as Promise<ParsedCommand>;
    respP.catch(() => undefined); // observed below
    await this.sendPdvs(pcId, true, buildCStoreRq(messageId, sopClassUid, sopInstanceUid));
    if (Buffer.isBuffer(data)) {
      await this.sendPdvs(pcId, false, data);
    } else {
      await this.sendFileRange(pcId, data.fh, data.offset, data.length);
    }
    const rsp = await respP;
    if (rsp.commandField !== 0x8001) throw new ProtocolError(`expected C-STORE-RSP, got command 0x${rsp.commandField?.toString(16)}`);
    if (rsp.messageIdBeingRespondedTo !== messageId) throw new ProtocolError('C-STORE-RSP for another message id');
    if (rsp.status === undefined) throw new ProtocolError('C-STORE-RSP without status');
    return { status: rsp.status, errorComment: rsp.errorComment };
  }

  /** Orderly A-RELEASE; falls back to closing the socket. */
  async release(): Promise<void> {
    if (!this.isOpen) {
      this.socket.destroy();
      return;
    }
    try {
      await this.request('rp', pdu(PDU_TYPE.ReleaseRq, Buffer.alloc(4)), this.associationTimeoutMs);
    } catch {
      // peer closed instead of answering: fine, nothing is outstanding
    } finally {
      this.released = true;
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
  }

  /** A-ABORT and close. */
  abort(): void {
    if (!this.socket.destroyed) {
      try {
        this.socket.write(pdu(PDU_TYPE.Abort, Buffer.from([0, 0, 0, 0])));
      } catch {
        /* ignore */
      }
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 200).unref();
    }
    this.released = true;
  }

  // ---- internals ----

  private currentTimeout(): number {
    return this.waiter?.kind === 'rsp' ? this.dimseTimeoutMs : this.associationTimeoutMs;
  }

  private expect(kind: 'ac' | 'rsp' | 'rp', timeoutMs: number): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.waiter) return Promise.reject(new DimseError('another operation is outstanding'));
    this.socket.setTimeout(timeoutMs);
    return new Promise((resolve, reject) => {
      this.waiter = {
        kind,
        resolve: (v) => {
          this.socket.setTimeout(0);
          resolve(v);
        },
        reject: (e) => {
          this.socket.setTimeout(0);
          reject(e);
        },
      };
    });
  }

  private async request(kind: 'ac' | 'rp', data: Buffer, timeoutMs: number): Promise<unknown> {
    const p = this.expect(kind, timeoutMs);
    p.catch(() => undefined);
    await this.write([data]);
    return p;
  }

  private settle(kind: 'ac' | 'rsp' | 'rp', value: unknown): void {
    const w = this.waiter;
    if (!w || w.kind !== kind) return;
    this.waiter = undefined;
    w.resolve(value);
  }

  private fail(err: Error): void {
    if (!this.closedError) this.closedError = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.closedError);
    const d = this.drainWaiters;
    this.drainWaiters = [];
    d.forEach((f) => f());
    this.socket.destroy();
  }

  private async write(chunks: Buffer[]): Promise<void> {
    if (this.closedError) throw this.closedError;
    this.socket.cork();
    let ok = true;
    for (const c of chunks) ok = this.socket.write(c);
    this.socket.uncork();
    if (!ok) {
      await new Promise<void>((r) => this.drainWaiters.push(r));
      if (this.closedError) throw this.closedError;
    }
  }

  /** Send a whole buffer as command or dataset PDVs, fragmented to the peer's max PDU. */
  private async sendPdvs(pcId: number, command: boolean, data: Buffer): Promise<void> {
    const maxData = this.peerMaxPdu - 6;
    let off = 0;
    do {
      const n = Math.min(maxData, data.length - off);
      const last = off + n >= data.length;
      await this.write(this.pdvPdu(pcId, command, last, data.subarray(off, off + n)));
      off += n;
    } while (off < data.length);
  }

  private pdvPdu(pcId: number, command: boolean, last: boolean, frag: Buffer): Buffer[] {
    return [pdvHeader(pcId, command, last, frag.length), frag];
  }

  /** Stream a byte range of a file as dataset PDVs, reading about 1 MB at a time. */
  private async sendFileRange(pcId: number, fh: FileHandle, offset: number, length: number): Promise<void> {
    const maxData = this.peerMaxPdu - 6;
    const chunk = Math.max(maxData, Math.floor(READ_CHUNK / maxData) * maxData);
    if (length === 0) {
      await this.write(this.pdvPdu(pcId, false, true, Buffer.alloc(0)));
      return;
    }
    let sent = 0;
    while (sent < length) {
      const want = Math.min(chunk, length - sent);
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, offset + sent + got);
        if (bytesRead === 0) throw new DimseError('spool file shorter than expected');
        got += bytesRead;
      }
      const frames: Buffer[] = [];
      for (let o = 0; o < want; o += maxData) {
        const n = Math.min(maxData, want - o);
        const last = sent + o + n >= length;
        frames.push(...this.pdvPdu(pcId, false, last, buf.subarray(o, o + n)));
      }
      await this.write(frames);
      sent += want;
    }
  }

  private onData(d: Buffer): void {
    try {
      this.framer.push(d, (whole) => this.onPdu(whole[0], whole.subarray(6)));
    } catch (e) {
      this.abort();
      this.fail(e instanceof PduFramingError ? new ProtocolError(`PDU refused: ${e.message}`) : e instanceof Error ? e : new ProtocolError(String(e)));
    }
  }

  private onPdu(type: number, body: Buffer): void {
    switch (type) {
      case PDU_TYPE.AssociateAc:
        this.settle('ac', parseAssociateAc(body));
        return;
      case PDU_TYPE.AssociateRj:
        this.fail(new AssociationRejectedError(body[1], body[2], body[3]));
        return;
      case PDU_TYPE.PDataTf: {
        let pos = 0;
        while (pos + 6 <= body.length) {
          const len = body.readUInt32BE(pos);
          const hdr = body[pos + 5];
          const frag = body.subarray(pos + 6, pos + 4 + len);
          pos += 4 + len;
          if (hdr & 1) {
            this.cmdFragments.push(Buffer.from(frag));
            if (hdr & 2) {
              const cmd = parseCommand(Buffer.concat(this.cmdFragments));
              this.cmdFragments = [];
              if (cmd.status !== undefined && (cmd.status === 0xff00 || cmd.status === 0xff01)) continue; // pending
              this.settle('rsp', cmd);
            }
          }
          // dataset fragments of a response are ignored
        }
        return;
      }
      case PDU_TYPE.ReleaseRq:
        // Peer wants to release: answer and close.
        this.socket.write(pdu(PDU_TYPE.ReleaseRp, Buffer.alloc(4)));
        this.fail(new NetworkError('peer released the association'));
        return;
      case PDU_TYPE.ReleaseRp:
        this.settle('rp', undefined);
        return;
      case PDU_TYPE.Abort:
        this.fail(new AssociationAbortedError(body[2], body[3]));
        return;
      default:
        throw new ProtocolError(`unknown PDU type 0x${type.toString(16)}`);
    }
  }
}
