// Raw DICOM upper-layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E), built by hand so that tests can
// send what no well-behaved toolkit would: too many presentation contexts, unknown commands, truncated items.
import * as net from 'net';

export const PDU = { AssociateRq: 1, AssociateAc: 2, AssociateRj: 3, PData: 4, ReleaseRq: 5, ReleaseRp: 6, Abort: 7 } as const;
export const APPLICATION_CONTEXT = '1.2.840.10008.3.1.1.1';
export const VERIFICATION = '1.2.840.10008.1.1';
export const CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2';
export const SECONDARY_CAPTURE_STORAGE = '1.2.840.10008.5.1.4.1.1.7';
export const IMPLICIT_LE = '1.2.840.10008.1.2';
export const EXPLICIT_LE = '1.2.840.10008.1.2.1';

/** One PDU: type, reserved byte, 4-byte length, body. */
export function pdu(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(6);
  h[0] = type;
  h.writeUInt32BE(body.length, 2);
  return Buffer.concat([h, body]);
}

/** One item of an A-ASSOCIATE PDU: type, reserved byte, 2-byte length, body. */
export function item(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h[0] = type;
  h.writeUInt16BE(body.length, 2);
  return Buffer.concat([h, body]);
}

function ae(title: string): Buffer {
  return Buffer.from(title.padEnd(16, ' ').slice(0, 16), 'latin1');
}

export interface ProposedContext {
  id: number;
  abstractSyntax: string;
  transferSyntaxes: string[];
}

/** SCP/SCU Role Selection (PS3.7 D.3.3.4) proposed for an abstract syntax. */
export interface RoleSelection {
  abstractSyntax: string;
  scu: boolean;
  scp: boolean;
}

export function associateRq(p: { called: string; calling: string; contexts: ProposedContext[]; maxPdu?: number; implementationClassUid?: string; roles?: RoleSelection[] }): Buffer {
  const head = Buffer.alloc(68);
  head.writeUInt16BE(1, 0);
  ae(p.called).copy(head, 4);
  ae(p.calling).copy(head, 20);
  const items: Buffer[] = [head, item(0x10, Buffer.from(APPLICATION_CONTEXT))];
  for (const c of p.contexts) {
    const hdr = Buffer.from([c.id & 0xff, 0, 0, 0]);
    items.push(item(0x20, Buffer.concat([hdr, item(0x30, Buffer.from(c.abstractSyntax)), ...c.transferSyntaxes.map((t) => item(0x40, Buffer.from(t)))])));
  }
  const maxLen = Buffer.alloc(4);
  maxLen.writeUInt32BE(p.maxPdu ?? 16384, 0);
  const roleItems = (p.roles ?? []).map((r) => {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(r.abstractSyntax.length, 0);
    return item(0x54, Buffer.concat([len, Buffer.from(r.abstractSyntax, 'latin1'), Buffer.from([r.scu ? 1 : 0, r.scp ? 1 : 0])]));
  });
  items.push(item(0x50, Buffer.concat([item(0x51, maxLen), item(0x52, Buffer.from(p.implementationClassUid ?? '1.2.3.4.5.6')), ...roleItems])));
  return pdu(PDU.AssociateRq, Buffer.concat(items));
}

/** A P-DATA-TF PDU holding one PDV. */
export function pData(pcId: number, value: Buffer, o: { command: boolean; last: boolean }): Buffer {
  const pdv = Buffer.alloc(6);
  pdv.writeUInt32BE(value.length + 2, 0);
  pdv[4] = pcId;
  pdv[5] = (o.command ? 1 : 0) | (o.last ? 2 : 0);
  return pdu(PDU.PData, Buffer.concat([pdv, value]));
}

export function releaseRq(): Buffer {
  return pdu(PDU.ReleaseRq, Buffer.alloc(4));
}

export function abortPdu(source = 0, reason = 0): Buffer {
  return pdu(PDU.Abort, Buffer.from([0, 0, source, reason]));
}

// --- DIMSE command sets: Implicit VR Little Endian, group 0000 with its group length. ---

function uidBytes(uid: string): Buffer {
  return Buffer.from(uid.length % 2 ? `${uid}\0` : uid, 'latin1');
}

function elem(tag: number, value: Buffer): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt16LE(0, 0);
  b.writeUInt16LE(tag, 2);
  b.writeUInt32LE(value.length, 4);
  return Buffer.concat([b, value]);
}

function us(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v, 0);
  return b;
}

export function commandSet(fields: {
  sopClass?: string; requestedSopClass?: string; command: number; messageId?: number; respondingTo?: number; priority?: number; hasDataset: boolean;
  status?: number; sopInstance?: string; requestedSopInstance?: string; actionTypeId?: number;
}): Buffer {
  const els: Buffer[] = [];
  if (fields.sopClass !== undefined) els.push(elem(0x0002, uidBytes(fields.sopClass)));
  if (fields.requestedSopClass !== undefined) els.push(elem(0x0003, uidBytes(fields.requestedSopClass)));
  els.push(elem(0x0100, us(fields.command)));
  if (fields.messageId !== undefined) els.push(elem(0x0110, us(fields.messageId)));
  if (fields.respondingTo !== undefined) els.push(elem(0x0120, us(fields.respondingTo)));
  if (fields.priority !== undefined) els.push(elem(0x0700, us(fields.priority)));
  els.push(elem(0x0800, us(fields.hasDataset ? 0x0000 : 0x0101)));
  if (fields.status !== undefined) els.push(elem(0x0900, us(fields.status)));
  if (fields.sopInstance !== undefined) els.push(elem(0x1000, uidBytes(fields.sopInstance)));
  if (fields.requestedSopInstance !== undefined) els.push(elem(0x1001, uidBytes(fields.requestedSopInstance)));
  if (fields.actionTypeId !== undefined) els.push(elem(0x1008, us(fields.actionTypeId)));
  const body = Buffer.concat(els);
  const gl = Buffer.alloc(4);
  gl.writeUInt32LE(body.length, 0);
  return Buffer.concat([elem(0x0000, gl), body]);
}

export function cEchoRq(messageId: number): Buffer {
  return commandSet({ sopClass: VERIFICATION, command: 0x0030, messageId, hasDataset: false });
}

export function cStoreRq(messageId: number, sopClass: string, sopInstance: string): Buffer {
  return commandSet({ sopClass, command: 0x0001, messageId, priority: 0, hasDataset: true, sopInstance });
}

export function cCancelRq(respondingTo: number): Buffer {
  return commandSet({ command: 0x0fff, respondingTo, hasDataset: false });
}

// --- reading what the SCP sends back ---

export interface ReceivedPdu {
  type: number;
  body: Buffer;
}

/** Splits a byte stream into whole PDUs (a trailing partial PDU is ignored). */
export function splitPdus(buf: Buffer): ReceivedPdu[] {
  const out: ReceivedPdu[] = [];
  let off = 0;
  while (off + 6 <= buf.length) {
    const len = buf.readUInt32BE(off + 2);
    if (off + 6 + len > buf.length) break;
    out.push({ type: buf[off], body: buf.subarray(off + 6, off + 6 + len) });
    off += 6 + len;
  }
  return out;
}

/** Results of an A-ASSOCIATE-AC: presentation context id -> result (0 = acceptance), and the max PDU length. */
export function parseAssociateAc(body: Buffer): { results: Map<number, number>; maxPdu: number; roles: RoleSelection[] } {
  const results = new Map<number, number>();
  const roles: RoleSelection[] = [];
  let maxPdu = -1;
  let off = 68;
  while (off + 4 <= body.length) {
    const type = body[off];
    const len = body.readUInt16BE(off + 2);
    const v = body.subarray(off + 4, off + 4 + len);
    if (type === 0x21) results.set(v[0], v[2]);
    if (type === 0x50) {
      let o = 0;
      while (o + 4 <= v.length) {
        const t = v[o];
        const l = v.readUInt16BE(o + 2);
        if (t === 0x51) maxPdu = v.readUInt32BE(o + 4);
        if (t === 0x54) {
          const n = v.readUInt16BE(o + 4);
          roles.push({ abstractSyntax: v.toString('latin1', o + 6, o + 6 + n), scu: v[o + 6 + n] === 1, scp: v[o + 7 + n] === 1 });
        }
        o += 4 + l;
      }
    }
    off += 4 + len;
  }
  return { results, maxPdu, roles };
}

/** The command set elements (group 0000) of a DIMSE message in Implicit VR LE: tag element -> value. */
export function parseCommand(cmd: Buffer): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let off = 0;
  while (off + 8 <= cmd.length) {
    const el = cmd.readUInt16LE(off + 2);
    const len = cmd.readUInt32LE(off + 4);
    out.set(el, cmd.subarray(off + 8, off + 8 + len));
    off += 8 + len;
  }
  return out;
}

/** The DIMSE messages carried by the P-DATA-TF PDUs in a list: each command set (parsed) with the dataset
 * that followed it, if any. */
export function messagesIn(pdus: ReceivedPdu[]): Array<{ pcId: number; command: Map<number, Buffer>; dataset?: Buffer }> {
  const out: Array<{ pcId: number; command: Map<number, Buffer>; dataset?: Buffer }> = [];
  let cmd: Buffer[] = [];
  let data: Buffer[] = [];
  for (const p of pdus) {
    if (p.type !== PDU.PData) continue;
    let off = 0;
    while (off + 6 <= p.body.length) {
      const len = p.body.readUInt32BE(off);
      const pcId = p.body[off + 4];
      const ctl = p.body[off + 5];
      const value = p.body.subarray(off + 6, off + 4 + len);
      off += 4 + len;
      if (ctl & 1) {
        cmd.push(value);
        if (ctl & 2) {
          out.push({ pcId, command: parseCommand(Buffer.concat(cmd)) });
          cmd = [];
        }
      } else {
        data.push(value);
        if (ctl & 2) {
          const last = out[out.length - 1];
          if (last) last.dataset = Buffer.concat(data);
          data = [];
        }
      }
    }
  }
  return out;
}

/** Command PDVs (concatenated per message) carried by the P-DATA-TF PDUs in a list. */
export function commandsIn(pdus: ReceivedPdu[]): Array<Map<number, Buffer>> {
  const out: Array<Map<number, Buffer>> = [];
  let partial: Buffer[] = [];
  for (const p of pdus) {
    if (p.type !== PDU.PData) continue;
    let off = 0;
    while (off + 6 <= p.body.length) {
      const len = p.body.readUInt32BE(off);
      const ctl = p.body[off + 5];
      const value = p.body.subarray(off + 6, off + 4 + len);
      if (ctl & 1) {
        partial.push(value);
        if (ctl & 2) {
          out.push(parseCommand(Buffer.concat(partial)));
          partial = [];
        }
      }
      off += 4 + len;
    }
  }
  return out;
}

/** A raw TCP peer that records everything the SCP sends. */
export class RawPeer {
  readonly socket: net.Socket;
  private chunks: Buffer[] = [];
  closed = false;
  readonly ready: Promise<void>;
  private waiters: Array<() => void> = [];

  constructor(host: string, port: number) {
    this.socket = net.connect({ host, port });
    this.socket.setNoDelay(true);
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('connect', () => resolve());
      this.socket.once('error', reject);
    });
    this.socket.on('error', () => undefined);
    this.socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.wake();
    });
    this.socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  private wake(): void {
    this.waiters.splice(0).forEach((f) => f());
  }

  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  pdus(): ReceivedPdu[] {
    return splitPdus(this.received);
  }

  send(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  /** Resolves once test() holds or the connection is closed; rejects after timeoutMs. */
  async until(test: (p: RawPeer) => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!test(this) && !this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`peer condition not met within ${timeoutMs} ms (received ${this.received.length} bytes)`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits for the SCP to close the connection. */
  async untilClosed(timeoutMs = 5000): Promise<void> {
    await this.until(() => false, timeoutMs).catch((e) => {
      if (!this.closed) throw e;
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Connects, proposes the contexts and waits for the A-ASSOCIATE-AC (throws on anything else). */
export async function associate(host: string, port: number, p: { called: string; calling: string; contexts: ProposedContext[]; maxPdu?: number; roles?: RoleSelection[] }): Promise<{ peer: RawPeer; maxPdu: number; results: Map<number, number>; roles: RoleSelection[] }> {
  const peer = new RawPeer(host, port);
  await peer.ready;
  peer.send(associateRq(p));
  await peer.until((x) => x.pdus().length > 0);
  const first = peer.pdus()[0];
  if (!first || first.type !== PDU.AssociateAc) {
    peer.destroy();
    throw new Error(`association not accepted: PDU type ${first?.type}`);
  }
  return { peer, ...parseAssociateAc(first.body) };
}

/** A dataset-sized payload split into P-DATA-TF PDUs of at most maxPdu bytes (variable field). */
export function dataPdus(pcId: number, data: Buffer, maxPdu: number): Buffer[] {
  const out: Buffer[] = [];
  const frag = maxPdu - 6;
  for (let off = 0; off < data.length || off === 0; off += frag) {
    const part = data.subarray(off, off + frag);
    out.push(pData(pcId, part, { command: false, last: off + frag >= data.length }));
    if (data.length === 0) break;
  }
  return out;
}

/** The Status (0000,0900) and Command Field (0000,0100) of a parsed command. */
export function statusOf(cmd: Map<number, Buffer>): { status: number; field: number; respondingTo: number } {
  return { status: cmd.get(0x0900)!.readUInt16LE(0), field: cmd.get(0x0100)!.readUInt16LE(0), respondingTo: cmd.get(0x0120)?.readUInt16LE(0) ?? -1 };
}

/** Splits a byte stream into whole PDUs, header included (a trailing partial PDU is dropped). */
export function splitRawPdus(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off + 6 <= buf.length) {
    const end = off + 6 + buf.readUInt32BE(off + 2);
    if (end > buf.length) break;
    out.push(buf.subarray(off, end));
    off = end;
  }
  return out;
}
