// Storage Commitment Push Model SCP with Orthanc as the requesting modality: Orthanc sends images to the
// router (REST /modalities/{id}/store with StorageCommitment), then asks about them; the router answers
// by N-EVENT-REPORT on a new association to Orthanc, whose REST API shows the report.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { CommitmentIndex } from '../src/deliver/commitment-index';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run } from './helpers/dcmtk';
import { freePort, makeVariants, startOrthanc, startStorescp, waitFor, type Peer } from './helpers/peers';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'commitment-test-salt-a11ce5e7';
const skip = !corpusAvailable() || !hasTool('Orthanc') || !hasTool('storescp');

interface Report { Status: string; Success?: Array<{ SOPClassUID: string; SOPInstanceUID: string }>; Failures?: Array<{ SOPClassUID: string; SOPInstanceUID: string; FailureReason: number }> }

describe('storage commitment with Orthanc as the modality', { skip }, () => {
  test('committed once durable everywhere (waits for a PACS that is down, across a restart of the router); a never-sent UID is reported failed', async () => {
    const dir = tempDir('deid-commit-');
    const routerPort = await freePort();
    const pacsPort = await freePort();
    const orthanc = await startOrthanc({
      dir, aeTitle: 'ORTHANC',
      extraConfig: { DicomModalities: { router: ['DEID_ROUTER', '127.0.0.1', routerPort] } },
    });
    const file = join(dir, 'router.yaml');
    writeFileSync(file, YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: routerPort },
      stateDir: join(dir, 'state'),
      destinations: { out: { type: 'folder', path: join(dir, 'out') }, pacs: { type: 'dicom', aeTitle: 'RESEARCH', host: '127.0.0.1', port: pacsPort } },
      stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['ORTHANC'], Commitment: { aeTitle: 'ORTHANC', host: '127.0.0.1', port: orthanc.port } } },
      studies: { Supplement142: { Destinations: ['out', 'pacs'] } },
    }));
    const config = loadConfig(file, {});
    let node = await startNode(config, SALT, silentLogger());
    let pacs: Peer | undefined;
    try {
      // The modality's images: three CT instances, put into Orthanc by C-STORE.
      const imgDir = tempDir('deid-commit-in-');
      const variants = makeVariants(readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm')), 3, 777);
      const paths = variants.map((v) => {
        const f = join(imgDir, `${v.sopInstanceUid}.dcm`);
        writeFileSync(f, v.bytes);
        return f;
      });
      const up = await run('storescu', ['-aet', 'CT1', '-aec', 'ORTHANC', '127.0.0.1', String(orthanc.port), ...paths]);
      assert.equal(up.code, 0, up.stderr);
      const ids = (await orthanc.get('/instances')) as string[];
      assert.equal(ids.length, 3);

      // The research PACS is down: the images are answered Success (spooled), the commitment waits.
      const sent = (await orthanc.post('/modalities/router/store', { Resources: ids, StorageCommitment: true, Synchronous: true })) as Record<string, unknown>;
      const txn = String(sent.StorageCommitmentTransactionUID ?? '');
      assert.match(txn, /^[0-9.]+$/, JSON.stringify(sent));
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal(((await orthanc.get(`/storage-commitment/${txn}`)) as Report).Status, 'Pending');
      // The index holds no original UID (keys are keyed hashes).
      const indexRoot = join(config.stateDir, 'commitment', 'entries');
      const entryFiles = readdirSync(indexRoot, { recursive: true }).map(String).filter((f) => f.endsWith('.json'));
      const onDisk = entryFiles.map((f) => f + readFileSync(join(indexRoot, f), 'utf8')).join('\n');
      assert.equal(entryFiles.length, 3);
      assert.ok(entryFiles.every((f) => /^\d{4}-\d{2}-\d{2}\/[0-9a-f]{64}\.json$/.test(f)), entryFiles.join(', '));
      for (const v of variants) assert.ok(!onDisk.includes(v.sopInstanceUid), 'original UID on disk');
      const reqDir = join(config.stateDir, 'commitment', 'requests');
      for (const f of readdirSync(reqDir)) for (const v of variants) assert.ok(!readFileSync(join(reqDir, f)).includes(Buffer.from(v.sopInstanceUid)));

      // The router restarts while the request is pending: the request is durable state, reloaded
      // at start, and the report comes from the new process.
      await node.stop();
      node = await startNode(loadConfig(file, {}), SALT, silentLogger());
      assert.equal(((await orthanc.get(`/storage-commitment/${txn}`)) as Report).Status, 'Pending');

      // The PACS comes up: the spool drains and the report says committed, every instance.
      const pacsDir = tempDir('deid-commit-pacs-');
      pacs = await startStorescp({ dir: pacsDir, port: pacsPort, aeTitle: 'RESEARCH' });
      await waitFor(async () => ((await orthanc.get(`/storage-commitment/${txn}`)) as Report).Status !== 'Pending', 90_000, 'the commitment report');
      const report = (await orthanc.get(`/storage-commitment/${txn}`)) as Report;
      assert.equal(report.Status, 'Success', JSON.stringify(report));
      assert.deepEqual((report.Success ?? []).map((s) => s.SOPInstanceUID).sort(), variants.map((v) => v.sopInstanceUid).sort());
      assert.deepEqual(report.Failures ?? [], []);
      assert.equal(readdirSync(pacsDir).length, 3);
      assert.equal(readdirSync(join(dir, 'out')).length > 0, true);

      // A second request naming one UID that was never sent: that one comes back failed (0x0112).
      const never = '2.25.4242424242424242424242';
      const second = (await orthanc.post('/modalities/router/storage-commitment', {
        DicomInstances: [
          { SOPClassUID: '1.2.840.10008.5.1.4.1.1.2', SOPInstanceUID: variants[0].sopInstanceUid },
          { SOPClassUID: '1.2.840.10008.5.1.4.1.1.2', SOPInstanceUID: never },
        ],
      })) as Record<string, unknown>;
      const txn2 = String(second.ID ?? '');
      assert.match(txn2, /^[0-9.]+$/, JSON.stringify(second));
      await waitFor(async () => ((await orthanc.get(`/storage-commitment/${txn2}`)) as Report).Status !== 'Pending', 30_000, 'the second report');
      const r2 = (await orthanc.get(`/storage-commitment/${txn2}`)) as Report;
      assert.equal(r2.Status, 'Failure', JSON.stringify(r2));
      assert.deepEqual((r2.Success ?? []).map((s) => s.SOPInstanceUID), [variants[0].sopInstanceUid]);
      assert.deepEqual((r2.Failures ?? []).map((f) => [f.SOPInstanceUID, f.FailureReason]), [[never, 0x0112]]);
      await waitFor(() => !existsSync(reqDir) || readdirSync(reqDir).length === 0, 10_000, 'no request left pending');
      // The index answers from the keyed hash alone.
      assert.equal(new CommitmentIndex(config.stateDir, SALT).stateOf(variants[1].sopInstanceUid).state, 'committed');
      assert.equal(new CommitmentIndex(config.stateDir, 'another-salt-entirely').stateOf(variants[1].sopInstanceUid).state, 'failed');
    } finally {
      await node.stop();
      await pacs?.stop();
      await orthanc.stop();
    }
  });
});
