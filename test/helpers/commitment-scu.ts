// The modality's side of storage commitment, from raw PDUs (helpers/pdu.ts): an association proposing the
// Storage Commitment Push Model SOP class, N-ACTION-RQs, and the N-EVENT-REPORT-RQs the router sends back on it.
import assert from 'node:assert/strict';
import { readDataset } from '../../src/dicom/read';
import { elementString, findElement, type Element } from '../../src/dicom/dataset';
import { associate, commandSet, messagesIn, pData, releaseRq, PDU, IMPLICIT_LE, EXPLICIT_LE, type RawPeer } from './pdu';

export const COMMITMENT = '1.2.840.10008.1.20.1';
export const COMMITMENT_INSTANCE = '1.2.840.10008.1.20.1.1';
export const CT = '1.2.840.10008.5.1.4.1.1.2';
const N_ACTION_RSP = 0x8130;
const N_EVENT_REPORT_RQ = 0x0100;

/** One element, Implicit or Explicit VR Little Endian (UI, US and defined-length SQ are all we need). */
function el(tag: number, vr: 'UI' | 'US' | 'SQ', value: Buffer, explicit: boolean): Buffer {
  const h = Buffer.alloc(explicit && vr === 'SQ' ? 12 : 8);
  h.writeUInt16LE(tag >>> 16, 0);
  h.writeUInt16LE(tag & 0xffff, 2);
  if (!explicit) h.writeUInt32LE(value.length, 4);
  else if (vr === 'SQ') {
    h.write('SQ', 4, 'latin1');
    h.writeUInt32LE(value.length, 8);
  } else {
    h.write(vr, 4, 'latin1');
    h.writeUInt16LE(value.length, 6);
  }
  return Buffer.concat([h, value]);
}
const uid = (u: string): Buffer => Buffer.from(u.length % 2 ? `${u}\0` : u, 'latin1');

/** The Action Information of a Request Storage Commitment (TransactionUID, ReferencedSOPSequence). */
function actionInformation(transactionUid: string, refs: Array<[string, string]>, explicit: boolean): Buffer {
  const items = refs.map(([c, i]) => {
    const body = Buffer.concat([el(0x00081150, 'UI', uid(c), explicit), el(0x00081155, 'UI', uid(i), explicit)]);
    const h = Buffer.alloc(8);
    h.writeUInt16LE(0xfffe, 0);
    h.writeUInt16LE(0xe000, 2);
    h.writeUInt32LE(body.length, 4);
    return Buffer.concat([h, body]);
  });
  return Buffer.concat([el(0x00081195, 'UI', uid(transactionUid), explicit), el(0x00081199, 'SQ', Buffer.concat(items), explicit)]);
}

export interface Result { eventTypeId: number; transactionUid: string; committed: string[]; failed: Array<[string, number]> }

function parseResult(eventTypeId: number, dataset: Buffer, ts: string): Result {
  const ds = readDataset(dataset, ts).dataset;
  const items = (tag: number): Element[][] => (findElement(ds, tag)?.items ?? []).map((i) => i.elements);
  const str = (e: Element[], tag: number): string => elementString(findElement(e, tag))?.replace(/\0/g, '').trim() ?? '';
  return {
    eventTypeId,
    transactionUid: str(ds, 0x00081195),
    committed: items(0x00081199).map((e) => str(e, 0x00081155)).sort(),
    failed: items(0x00081198).map((e): [string, number] => [str(e, 0x00081155), findElement(e, 0x00081197)?.value?.readUInt16LE(0) ?? -1]),
  };
}

/** The modality's side of one association: the storage commitment context, proposed in one transfer syntax. */
export class Modality {
  private constructor(readonly peer: RawPeer, readonly ts: string) {}

  /** With roleSelection, SCP/SCU Role Selection is proposed for the SOP class (the modality as SCU only) and
   * must come back the same. */
  static async open(port: number, ts = IMPLICIT_LE, o: { roleSelection?: boolean } = {}): Promise<Modality> {
    const { peer, results, roles } = await associate('127.0.0.1', port, {
      called: 'DEID_ROUTER', calling: 'MODALITY', maxPdu: 16384,
      contexts: [{ id: 1, abstractSyntax: COMMITMENT, transferSyntaxes: [ts] }],
      roles: o.roleSelection ? [{ abstractSyntax: COMMITMENT, scu: true, scp: false }] : undefined,
    });
    assert.equal(results.get(1), 0, 'storage commitment context accepted');
    if (o.roleSelection) assert.deepEqual(roles, [{ abstractSyntax: COMMITMENT, scu: true, scp: false }]);
    return new Modality(peer, ts);
  }

  private messages() {
    return messagesIn(this.peer.pdus());
  }

  /** Sends an N-ACTION-RQ and returns the status of its N-ACTION-RSP. */
  async request(messageId: number, transactionUid: string, refs: Array<[string, string]>, o: { actionTypeId?: number; requestedSopClass?: string; requestedSopInstance?: string } = {}): Promise<number> {
    const before = this.messages().length;
    this.peer.send(pData(1, commandSet({
      command: 0x0130, messageId, hasDataset: true,
      requestedSopClass: o.requestedSopClass ?? COMMITMENT, requestedSopInstance: o.requestedSopInstance ?? COMMITMENT_INSTANCE, actionTypeId: o.actionTypeId ?? 1,
    }), { command: true, last: true }));
    this.peer.send(pData(1, actionInformation(transactionUid, refs, this.ts === EXPLICIT_LE), { command: false, last: true }));
    await this.peer.until(() => this.messages().slice(before).some((m) => m.command.get(0x0100)?.readUInt16LE(0) === N_ACTION_RSP), 10_000);
    const rsp = this.messages().slice(before).find((m) => m.command.get(0x0100)?.readUInt16LE(0) === N_ACTION_RSP)!;
    assert.equal(rsp.command.get(0x0120)?.readUInt16LE(0), messageId);
    return rsp.command.get(0x0900)!.readUInt16LE(0);
  }

  /** The N-EVENT-REPORT-RQs received so far, with their Message IDs. */
  reports(): Array<{ messageId: number; result: Result }> {
    return this.messages()
      .filter((m) => m.command.get(0x0100)?.readUInt16LE(0) === N_EVENT_REPORT_RQ && m.dataset)
      .map((m) => {
        assert.equal(m.command.get(0x0002)?.toString('latin1').replace(/\0/g, ''), COMMITMENT);
        assert.equal(m.command.get(0x1000)?.toString('latin1').replace(/\0/g, ''), COMMITMENT_INSTANCE);
        return { messageId: m.command.get(0x0110)!.readUInt16LE(0), result: parseResult(m.command.get(0x1002)!.readUInt16LE(0), m.dataset!, this.ts) };
      });
  }

  async nextReport(count: number, timeoutMs: number): Promise<{ messageId: number; result: Result }> {
    await this.peer.until(() => this.reports().length >= count, timeoutMs);
    const r = this.reports()[count - 1];
    assert.ok(r, `N-EVENT-REPORT-RQ number ${count} on the requesting association`);
    return r;
  }

  answer(messageId: number, status: number): void {
    this.peer.send(pData(1, commandSet({ sopClass: COMMITMENT, command: 0x8100, respondingTo: messageId, hasDataset: false, status, sopInstance: COMMITMENT_INSTANCE }), { command: true, last: true }));
  }

  async release(): Promise<void> {
    this.peer.send(releaseRq());
    await this.peer.until((p) => p.pdus().some((x) => x.type === PDU.ReleaseRp), 5000);
    this.peer.destroy();
  }
}

