// Storage commitment on the requesting association (PS3.4 J.3.3.1.2): a modality of our own (raw PDUs from
// helpers/pdu.ts) stores images with dcmtk's storescu, sends the N-ACTION-RQ and waits on that association for
// the N-EVENT-REPORT-RQ; when it does not acknowledge the report there (a failure status, or it releases the
// association at once, as Orthanc does), the report goes on a new association to the station's Commitment
// address (a dcmjs-dimse SCP here). Also: N-ACTION-RQs that are not a storage commitment request we provide.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run } from './helpers/dcmtk';
import { freePort, makeVariants, sleep, startReportScp, startStorescp, waitFor, type Peer } from './helpers/peers';
import { associate, EXPLICIT_LE } from './helpers/pdu';
import { COMMITMENT, CT, Modality } from './helpers/commitment-scu';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'commitment-association-salt-5e1f';
const skip = !corpusAvailable() || !hasTool('storescp') || !hasTool('storescu');

describe('storage commitment result on the requesting association', { skip }, () => {
  test('reported on the same association (at once, and once the spool drains); not acknowledged there: on a new association; N-ACTIONs refused by type, class and instance', async () => {
    const dir = tempDir('deid-commit-assoc-');
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
      const imgDir = tempDir('deid-commit-assoc-in-');
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
      pacs = await startStorescp({ dir: tempDir('deid-commit-assoc-pacs-'), port: pacsPort, aeTitle: 'RESEARCH' });
      const r1 = await m1.nextReport(1, 90_000);
      assert.deepEqual(r1.result, { eventTypeId: 1, transactionUid: '2.25.1001', committed: uids, failed: [] });
      m1.answer(r1.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 0, 10_000, 'the request removed once acknowledged');
      await m1.release();

      // 2. Settled already: answered at once, here in Explicit VR Little Endian and with SCP/SCU Role Selection
      //    proposed (modality SCU only: the N-EVENT-REPORT comes from us as SCP); a never-sent UID fails (0x0112).
      const never = '2.25.9090909090909090909';
      const m2 = await Modality.open(routerPort, EXPLICIT_LE, { roleSelection: true });
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

      // A requester proposing only the SCP role for the SOP class is granted no role it did not propose.
      const scpOnly = await associate('127.0.0.1', routerPort, {
        called: 'DEID_ROUTER', calling: 'MODALITY', contexts: [{ id: 1, abstractSyntax: COMMITMENT, transferSyntaxes: [EXPLICIT_LE] }],
        roles: [{ abstractSyntax: COMMITMENT, scu: false, scp: true }],
      });
      scpOnly.peer.destroy();
      assert.deepEqual(scpOnly.roles, [{ abstractSyntax: COMMITMENT, scu: false, scp: false }]);

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

      // 6. A modality that never acknowledges its report (the router waits up to 30 s for it there) holds up
      //    only its own report: another modality's comes meanwhile.
      const m6 = await Modality.open(routerPort);
      open.push(m6);
      assert.equal(await m6.request(1, '2.25.1011', [[CT, variants[0].sopInstanceUid]]), 0x0000);
      const r6 = await m6.nextReport(1, 10_000);
      assert.equal(r6.result.transactionUid, '2.25.1011');
      const m7 = await Modality.open(routerPort);
      open.push(m7);
      assert.equal(await m7.request(1, '2.25.1012', [[CT, variants[1].sopInstanceUid]]), 0x0000);
      const r7 = await m7.nextReport(1, 10_000);
      assert.deepEqual(r7.result, { eventTypeId: 1, transactionUid: '2.25.1012', committed: [variants[1].sopInstanceUid], failed: [] });
      m7.answer(r7.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 1, 10_000, 'the answered request removed, the unanswered one kept');
      m6.answer(r6.messageId, 0x0000);
      await waitFor(() => pendingFiles() === 0, 10_000, 'both removed');
      await m6.release();
      await m7.release();
    } finally {
      for (const m of open) m.peer.destroy();
      await node.stop();
      await pacs?.stop();
      await station.stop();
    }
  });
});
