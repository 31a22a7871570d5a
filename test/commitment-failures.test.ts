// Storage commitment failure paths (PS3.4 Annex J), asked by our raw-PDU modality (helpers/commitment-scu.ts):
// - images still in the spool when the time limit (commitment.timeLimitSeconds) runs out are reported failed
//   with Processing failure (0x0110, PS3.3 C.14.1.1), and the request leaves state/commitment/requests;
// - an image the PACS refused until it became a dead letter is reported failed (0x0110), while the other
//   image of the same request, accepted by the PACS, and an image quarantined by policy (unknownStudy:
//   quarantine) are reported committed; sent again and taken by the PACS, the failed image is committed
//   (its earlier dead letter no longer counts).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { CommitmentIndex, type CommitmentEntry } from '../src/deliver/commitment-index';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run } from './helpers/dcmtk';
import { freePort, makeVariants, startRefusingScp, waitFor, type RefusingScp } from './helpers/peers';
import { CT, Modality } from './helpers/commitment-scu';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'commitment-failures-salt-c0ffee42';
const PROCESSING_FAILURE = 0x0110;
const skip = !corpusAvailable() || !hasTool('storescu') || !hasTool('dcmodify');

/** .dcm files in a folder (none if it does not exist). */
function dcmFiles(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.dcm') && !f.startsWith('.')) : [];
}

/** Writes n CT images with distinct SOP Instance UIDs; with protocolName, their ProtocolName (the study tag) is replaced. */
async function writeImages(n: number, seed: number, protocolName?: string): Promise<Array<{ path: string; uid: string }>> {
  const dir = tempDir('deid-commit-fail-in-');
  const out = makeVariants(readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm')), n, seed).map((v) => {
    const path = join(dir, `${v.sopInstanceUid}.dcm`);
    writeFileSync(path, v.bytes);
    return { path, uid: v.sopInstanceUid };
  });
  if (protocolName !== undefined) {
    const m = await run('dcmodify', ['-nb', '-m', `(0018,1030)=${protocolName}`, ...out.map((i) => i.path)]);
    assert.equal(m.code, 0, m.stderr);
  }
  return out;
}

async function storescu(routerPort: number, paths: string[]): Promise<void> {
  const up = await run('storescu', ['-aet', 'MODALITY', '-aec', 'DEID_ROUTER', '127.0.0.1', String(routerPort), ...paths]);
  assert.equal(up.code, 0, up.stderr);
}

function writeConfig(file: string, dir: string, routerPort: number, pacsPort: number, extra: Record<string, unknown>): void {
  writeFileSync(file, YAML.stringify({
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: routerPort },
    stateDir: join(dir, 'state'),
    destinations: { pacs: { type: 'dicom', aeTitle: 'RESEARCH', host: '127.0.0.1', port: pacsPort } },
    // The corpus CT's ProtocolName is STUDYA^T1: study STUDYA.
    stations: { default: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['MODALITY'] } },
    studies: { STUDYA: { Destinations: ['pacs'] } },
    ...extra,
  }));
}

describe('storage commitment failures', { skip }, () => {
  test('time limit: images still spooled when it runs out are reported failed (0x0110) and the request is removed', async () => {
    const dir = tempDir('deid-commit-fail-limit-');
    const routerPort = await freePort();
    const pacsPort = await freePort(); // nothing listens there: the research PACS is down
    const file = join(dir, 'router.yaml');
    // 1 s is the smallest time limit the configuration takes.
    writeConfig(file, dir, routerPort, pacsPort, { commitment: { timeLimitSeconds: 1 } });
    const config = loadConfig(file, {});
    assert.equal(config.commitment?.timeLimitSeconds, 1);
    const reqDir = join(config.stateDir, 'commitment', 'requests');
    const spoolDir = join(config.stateDir, 'spool', 'pacs');
    const requestFiles = (): string[] => (existsSync(reqDir) ? readdirSync(reqDir).filter((f) => f.endsWith('.req')) : []);
    const node = await startNode(config, SALT, silentLogger());
    let m: Modality | undefined;
    try {
      const images = await writeImages(2, 611);
      await storescu(routerPort, images.map((i) => i.path));
      assert.equal(dcmFiles(spoolDir).length, 2, 'both images answered Success and waiting in the spool');

      m = await Modality.open(routerPort);
      const asked = Date.now();
      assert.equal(await m.request(1, '2.25.61100', images.map((i) => [CT, i.uid])), 0x0000);
      assert.equal(requestFiles().length, 1, 'the request is kept while its images are spooled');
      const report = await m.nextReport(1, 20_000);
      // A lower bound only: the answer may not come before the limit (the images never settle).
      assert.ok(Date.now() - asked >= 1000, 'the report waited for the time limit');
      assert.deepEqual(report.result, {
        eventTypeId: 2, transactionUid: '2.25.61100', committed: [],
        failed: images.map((i) => [i.uid, PROCESSING_FAILURE]),
      });
      // Reported failed because the limit ran out, not because they were lost: both are still spooled.
      assert.equal(dcmFiles(spoolDir).length, 2, 'the images are still in the spool at the report');
      m.answer(report.messageId, 0x0000);
      await waitFor(() => requestFiles().length === 0, 10_000, 'the request file removed once the report was acknowledged');
      await m.release();
      m = undefined;
    } finally {
      m?.peer.destroy();
      await node.stop();
    }
  });

  test('dead letter: the refused image is reported failed (0x0110), the one the PACS took and one quarantined by policy committed; sent again and stored, committed', async () => {
    const dir = tempDir('deid-commit-fail-dead-');
    const routerPort = await freePort();
    const downPort = await freePort();
    const file = join(dir, 'router.yaml');
    const extra = { unknownStudy: 'quarantine' };
    writeConfig(file, dir, routerPort, downPort, extra);
    let config = loadConfig(file, {});
    const reqDir = join(config.stateDir, 'commitment', 'requests');
    const spoolDir = join(config.stateDir, 'spool', 'pacs');
    const deadDir = join(config.stateDir, 'deadletter', 'pacs');
    const requestFiles = (): string[] => (existsSync(reqDir) ? readdirSync(reqDir).filter((f) => f.endsWith('.req')) : []);
    const index = new CommitmentIndex(config.stateDir, SALT);
    const entryOf = (uid: string): CommitmentEntry => JSON.parse(readFileSync(index.entryPath(uid)!, 'utf8')) as CommitmentEntry;

    const [refused, accepted] = await writeImages(2, 612);
    const [quarantined] = await writeImages(1, 613, 'NotAConfiguredStudy');

    // Run 1, the PACS down: the two images of the configured study are spooled, the third is quarantined;
    // the index tells which new SOP Instance UID the refused one was given.
    let node = await startNode(config, SALT, silentLogger());
    let newRefusedUid: string;
    try {
      await storescu(routerPort, [refused.path, accepted.path, quarantined.path]);
      await waitFor(() => [refused, accepted, quarantined].every((i) => index.entryPath(i.uid) !== undefined), 10_000, 'index entries written');
      assert.equal(dcmFiles(spoolDir).length, 2);
      assert.deepEqual(entryOf(quarantined.uid), { q: true });
      const d = entryOf(refused.uid).d ?? [];
      assert.equal(d.length, 1);
      assert.equal(d[0][0], 'pacs');
      newRefusedUid = d[0][2];
      assert.ok(newRefusedUid && newRefusedUid !== refused.uid, 'a regenerated UID');
    } finally {
      await node.stop();
    }

    // Run 2, a PACS that refuses that image three times (0xA900: data set does not match SOP class, not a
    // transient status): after its three attempts it becomes a dead letter; the other image is stored.
    let pacs: RefusingScp | undefined;
    let m: Modality | undefined;
    try {
      pacs = await startRefusingScp({ refuseSopInstanceUid: newRefusedUid, status: 0xa900, refuseTimes: 3 });
      writeConfig(file, dir, routerPort, pacs.port, extra);
      config = loadConfig(file, {});
      node = await startNode(config, SALT, silentLogger());
      await waitFor(() => dcmFiles(deadDir).length === 1 && dcmFiles(spoolDir).length === 0, 30_000, 'the refused image dead-lettered, the other delivered');
      assert.equal(pacs.refusedCount, 3, 'refused on each of its three attempts');
      assert.equal(pacs.received.size, 2, 'only the two images of the configured study reached the PACS');
      assert.ok(pacs.received.has(newRefusedUid));

      m = await Modality.open(routerPort);
      assert.equal(await m.request(1, '2.25.61200', [[CT, refused.uid], [CT, accepted.uid], [CT, quarantined.uid]]), 0x0000);
      const report = await m.nextReport(1, 20_000);
      assert.deepEqual(report.result, {
        eventTypeId: 2, transactionUid: '2.25.61200',
        committed: [accepted.uid, quarantined.uid].sort(),
        failed: [[refused.uid, PROCESSING_FAILURE]],
      });
      m.answer(report.messageId, 0x0000);
      await waitFor(() => requestFiles().length === 0, 10_000, 'the request file removed once the report was acknowledged');

      // The technologist sends the failed image again, and the PACS now takes it (it refused only its first
      // three copies): the earlier dead letter no longer speaks for the instance, which is committed.
      await storescu(routerPort, [refused.path]);
      await waitFor(() => dcmFiles(spoolDir).length === 0, 30_000, 'the resent image delivered');
      assert.equal(pacs.refusedCount, 3, 'the resent copy was not refused');
      assert.equal(await m.request(2, '2.25.61201', [[CT, refused.uid]]), 0x0000);
      const again = await m.nextReport(2, 20_000);
      assert.deepEqual(again.result, { eventTypeId: 1, transactionUid: '2.25.61201', committed: [refused.uid], failed: [] });
      m.answer(again.messageId, 0x0000);
      await waitFor(() => requestFiles().length === 0, 10_000, 'the second request file removed');
      await m.release();
      m = undefined;
    } finally {
      m?.peer.destroy();
      await node.stop();
      await pacs?.stop();
    }
  });
});
