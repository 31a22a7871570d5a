// Storage commitment on the requesting association (PS3.4 J.3.3.1.2): a modality of our own (raw PDUs from
// helpers/pdu.ts) stores images with dcmtk's storescu, sends the N-ACTION-RQ and waits on that association for
// the N-EVENT-REPORT-RQ; when it does not acknowledge the report there (a failure status, or it releases the
// association at once, as Orthanc does), the report goes on a new association to the station's Commitment
// address (a dcmjs-dimse SCP here). Also: N-ACTION-RQs that are not a storage commitment request we provide.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { readDataset } from '../src/dicom/read';
import { elementString, findElement, type Element } from '../src/dicom/dataset';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run } from './helpers/dcmtk';
import { freePort, makeVariants, sleep, startReportScp, startStorescp, waitFor, type Peer } from './helpers/peers';
import { associate, commandSet, messagesIn, pData, releaseRq, PDU, IMPLICIT_LE, EXPLICIT_LE, type RawPeer } from './helpers/pdu';
import { hasTool } from './helpers/tools';

const SALT = 'commitment-association-salt-5e1f';
const COMMITMENT = '1.2.840.10008.1.20.1';
const COMMITMENT_INSTANCE = '1.2.840.10008.1.20.1.1';
const CT = '1.2.840.10008.5.1.4.1.1.2';
const N_ACTION_RSP = 0x8130;
const N_EVENT_REPORT_RQ = 0x0100;
const skip = !corpusAvailable() || !hasTool('storescp') || !hasTool('storescu');

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

interface Result { eventTypeId: number; transactionUid: string; committed: string[]; failed: Array<[string, number]> }

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
class Modality {
  private constructor(readonly peer: RawPeer, readonly ts: string) {}

  static async open(port: number, ts = IMPLICIT_LE): Promise<Modality> {
    const { peer, results } = await associate('127.0.0.1', port, {
      called: 'DEID_ROUTER', calling: 'MODALITY', maxPdu: 16384,
      contexts: [{ id: 1, abstractSyntax: COMMITMENT, transferSyntaxes: [ts] }],
    });
    assert.equal(results.get(1), 0, 'storage commitment context accepted');
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

describe('storage commitment result on the requesting association', { skip }, () => {
  test('reported on the same association (at once, and once the spool drains); not acknowledged there: on a new association; N-ACTIONs refused by type, class and instance', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'deid-commit-assoc-'));
    const routerPort = await freePort();
    const pacsPort = await freePort();
    const station = await startReportScp();
    const file = join(dir, 'router.yaml');
    writeFileSync(file, YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: routerPort },
      stateDir: join(dir, 'state'),
      destinations: { out: { type: 'folder', path: join(dir, 'out') }, pacs: { type: 'dicom', aeTitle: 'RESEARCH', host: '127.0.0.1', port: pacsPort } },
      stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['MODALITY'], Commitment: { aeTitle: 'MODALITY', host: '127.0.0.1', port: station.port } } },
      studies: { Supplement142: { Destinations: ['out', 'pacs'] } },
    }));
    const config = loadConfig(file, {});
    const reqDir = join(config.stateDir, 'commitment', 'requests');
    const pendingFiles = (): number => (existsSync(reqDir) ? readdirSync(reqDir).filter((f) => f.endsWith('.req')).length : 0);
    const node = await startNode(config, SALT, silentLogger());
    let pacs: Peer | undefined;
    const open: Modality[] = [];
    try {
      // Two CT images reach the router while the research PACS is down: answered Success, still spooled.
      const imgDir = mkdtempSync(join(tmpdir(), 'deid-commit-assoc-in-'));
      const variants = makeVariants(readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm')), 2, 515);
      const paths = variants.map((v) => {
        const f = join(imgDir, `${v.sopInstanceUid}.dcm`);
        writeFileSync(f, v.bytes);
        return f;
      });
      const up = await run('storescu', ['-aet', 'MODALITY', '-aec', 'DEID_ROUTER', '127.0.0.1', String(routerPort), ...paths]);
      assert.equal(up.code, 0, up.stderr);
      const uids = variants.map((v) => v.sopInstanceUid).sort();

      // 1. The modality asks and keeps its association open: the answer waits for the spool ...
      const m1 = await Modality.open(routerPort);
      open.push(m1);
      assert.equal(await m1.request(7, '2.25.1001', variants.map((v) => [CT, v.sopInstanceUid])), 0x0000);
      assert.equal(pendingFiles(), 1);
      await sleep(2000);
      assert.equal(m1.reports().length, 0, 'no result while the images are spooled');
      // ... and comes on that association once the PACS has them.
      pacs = await startStorescp({ dir: mkdtempSync(join(tmpdir(), 'deid-commit-assoc-pacs-')), port: pacsPort, aeTitle: 'RESEARCH' });
      const r1 = await m1.nextReport(1, 90_000);
      assert.deepEqual(r1.result, { eventTypeId: 1, transactionUid: '2.25.1001', committed: uids, failed: [] });
      m1.answer(r1.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 0, 10_000, 'the request removed once acknowledged');
      await m1.release();

      // 2. Settled already: answered at once, here in Explicit VR Little Endian; a never-sent UID fails (0x0112).
      const never = '2.25.9090909090909090909';
      const m2 = await Modality.open(routerPort, EXPLICIT_LE);
      open.push(m2);
      assert.equal(await m2.request(8, '2.25.1002', [[CT, variants[0].sopInstanceUid], [CT, never]]), 0x0000);
      const r2 = await m2.nextReport(1, 10_000);
      assert.deepEqual(r2.result, { eventTypeId: 2, transactionUid: '2.25.1002', committed: [variants[0].sopInstanceUid], failed: [[never, 0x0112]] });
      m2.answer(r2.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 0, 10_000, 'the second request removed');
      // Two requests on one association, each answered there.
      assert.equal(await m2.request(9, '2.25.1003', [[CT, variants[1].sopInstanceUid]]), 0x0000);
      const r3 = await m2.nextReport(2, 10_000);
      assert.notEqual(r3.messageId, r2.messageId);
      assert.deepEqual(r3.result, { eventTypeId: 1, transactionUid: '2.25.1003', committed: [variants[1].sopInstanceUid], failed: [] });
      m2.answer(r3.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 0, 10_000, 'the third request removed');
      await m2.release();
      assert.equal(station.reports.length, 0, 'nothing went on a new association');

      // 3. The modality refuses the report on its association (0x0110): it goes to the Commitment address.
      const m3 = await Modality.open(routerPort);
      open.push(m3);
      assert.equal(await m3.request(1, '2.25.1004', [[CT, variants[1].sopInstanceUid], [CT, never]]), 0x0000);
      const r4 = await m3.nextReport(1, 10_000);
      assert.equal(r4.result.transactionUid, '2.25.1004');
      m3.answer(r4.messageId, 0x0110);
      await waitFor(() => station.reports.length === 1, 30_000, 'the report on a new association');
      const s1 = station.reports[0];
      assert.equal(s1.eventTypeId, 2);
      assert.equal(s1.info.TransactionUID, '2.25.1004');
      assert.deepEqual((s1.info.ReferencedSOPSequence ?? []).map((i: any) => i.ReferencedSOPInstanceUID), [variants[1].sopInstanceUid]);
      assert.deepEqual((s1.info.FailedSOPSequence ?? []).map((i: any) => [i.ReferencedSOPInstanceUID, i.FailureReason]), [[never, 0x0112]]);
      await waitFor(() => pendingFiles() === 0, 10_000, 'the fourth request removed');
      await m3.release();

      // 4. The modality releases right after the N-ACTION-RSP (as Orthanc does): the report goes to the
      //    Commitment address all the same.
      const m4 = await Modality.open(routerPort);
      open.push(m4);
      assert.equal(await m4.request(1, '2.25.1005', [[CT, variants[0].sopInstanceUid]]), 0x0000);
      await m4.release();
      await waitFor(() => station.reports.length === 2, 30_000, 'the report after the release');
      assert.equal(station.reports[1].eventTypeId, 1);
      assert.equal(station.reports[1].info.TransactionUID, '2.25.1005');
      assert.deepEqual(station.reports[1].info.ReferencedSOPSequence.map((i: any) => i.ReferencedSOPInstanceUID), [variants[0].sopInstanceUid]);
      await waitFor(() => pendingFiles() === 0, 10_000, 'the fifth request removed');

      // 5. N-ACTION-RQs that are not "Request Storage Commitment" on the well-known instance (PS3.7 Annex C).
      const m5 = await Modality.open(routerPort);
      open.push(m5);
      const ref: Array<[string, string]> = [[CT, variants[0].sopInstanceUid]];
      assert.equal(await m5.request(1, '2.25.1006', ref, { actionTypeId: 2 }), 0x0123, 'no such action');
      assert.equal(await m5.request(2, '2.25.1007', ref, { requestedSopClass: '1.2.840.10008.5.1.4.1.1.2' }), 0x0118, 'no such SOP class');
      assert.equal(await m5.request(3, '2.25.1008', ref, { requestedSopInstance: '1.2.840.10008.1.20.1.2' }), 0x0112, 'no such SOP instance');
      assert.equal(await m5.request(4, '2.25.1009', ref, { requestedSopInstance: '1.2.840.10008.1.20.1.01' }), 0x0117, 'invalid SOP instance UID');
      assert.equal(await m5.request(5, '2.25.1010', ref), 0x0000, 'a proper request on the same association');
      const r5 = await m5.nextReport(1, 10_000);
      assert.equal(r5.result.transactionUid, '2.25.1010');
      m5.answer(r5.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 0, 10_000, 'only the proper request was kept');
      assert.equal(m5.reports().length, 1, 'refused requests get no report');
      await m5.release();
      assert.equal(station.reports.length, 2);
    } finally {
      for (const m of open) m.peer.destroy();
      await node.stop();
      await pacs?.stop();
      await station.stop();
    }
  });
});
