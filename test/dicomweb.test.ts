// DICOMweb STOW-RS destination against a real Orthanc with Debian's orthanc-dicomweb plugin:
// modality (dcmtk) -> serve -> spool -> StowQueue -> Orthanc /dicom-web/studies.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode } from '../src/commands/serve';
import { DeidPipeline } from '../src/pipeline';
import { silentLogger } from '../src/observe/logger';
import { StowQueue, stowOutcome } from '../src/deliver/dicomweb';
import { Spool } from '../src/deliver/spool';
import { part10FromRawDataset } from '../src/dicom/write';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { findLeaks } from './helpers/leaks';
import { run } from './helpers/dcmtk';
import { freePort, makeVariants, startOrthanc, waitFor, ORTHANC_DICOMWEB_PLUGIN, type OrthancPeer } from './helpers/peers';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'dicomweb-test-salt-5eed7a11';
const skip = !corpusAvailable() || !hasTool('Orthanc') || !existsSync(ORTHANC_DICOMWEB_PLUGIN) || !hasTool('storescu');

function writeConfig(dir: string, url: string): string {
  const file = join(dir, 'router.yaml');
  writeFileSync(file, YAML.stringify({
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0 },
    stateDir: join(dir, 'state'),
    destinations: { web: { type: 'dicomweb', url, maxConnections: 2 } },
    stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['STORESCU'] } },
  }));
  return file;
}

const filesIn = (dir: string, ext: string) => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(ext) && !f.startsWith('.')) : []);

interface Tags { MainDicomTags: Record<string, string> }

describe('STOW-RS outcome of one instance', () => {
  const uid = '2.25.1234';
  const ref = { '00081199': { vr: 'SQ', Value: [{ '00081155': { vr: 'UI', Value: [uid] } }] } };
  test('referenced: stored; failed: refused with its FailureReason; 409 and 400 refused; 5xx, 401, 429 retried', () => {
    assert.equal(stowOutcome(200, ref, uid).kind, 'stored');
    const failed = stowOutcome(202, { '00081198': { vr: 'SQ', Value: [{ '00081155': { vr: 'UI', Value: [uid] }, '00081197': { vr: 'US', Value: [0xa700] } }] } }, uid);
    assert.deepEqual(failed, { kind: 'refused', failureReason: 0xa700, reason: 'HTTP 202, FailureReason 0xA700' });
    assert.equal(stowOutcome(202, { '00081199': { vr: 'SQ', Value: [{ '00081155': { vr: 'UI', Value: ['2.25.9'] } }] } }, uid).kind, 'refused');
    assert.deepEqual(stowOutcome(409, undefined, uid), { kind: 'refused', reason: 'HTTP 409 Conflict' });
    assert.equal(stowOutcome(400, { '00081198': { vr: 'SQ' } }, uid).kind, 'refused');
    for (const s of [500, 503, 401, 403, 429]) assert.equal(stowOutcome(s, undefined, uid).kind, 'retry', String(s));
  });
});

describe('DICOMweb STOW-RS to Orthanc', { skip }, () => {
  test('the corpus arrives: instance, series and study counts and UIDs match over Orthanc REST', async () => {
    const dir = tempDir('deid-stow-');
    const orthanc: OrthancPeer = await startOrthanc({ dir, dicomweb: true });
    const config = loadConfig(writeConfig(dir, `http://127.0.0.1:${orthanc.httpPort}/dicom-web`), {});
    const node = await startNode(config, SALT, silentLogger());
    try {
      const r = await run('dcmsend', ['-nh', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(node.scp.port), '--scan-directories', CORPUS_PHI], { timeoutMs: 120_000 });
      const refused = new Set([...(r.stderr + r.stdout).matchAll(/cannot add DICOM file to the transfer list: (\S+):/g)].map((m) => m[1].split('/').pop()));
      const pipeline = new DeidPipeline(config, SALT);
      const expected = new Map<string, { study: string; series: string }>();
      for (const f of readdirSync(CORPUS_PHI).filter((x) => x.endsWith('.dcm') && !refused.has(x))) {
        try {
          const u = pipeline.process({ kind: 'file', bytes: readFileSync(join(CORPUS_PHI, f)) }).uids!;
          expected.set(u.sopInstanceUid, { study: u.studyInstanceUid, series: u.seriesInstanceUid });
        } catch {
          /* refused by the engine: quarantined, not delivered */
        }
      }
      assert.ok(expected.size > 30, `${expected.size}`);
      const spoolDir = join(config.stateDir, 'spool', 'web');
      const deadDir = join(config.stateDir, 'deadletter', 'web');
      await waitFor(() => filesIn(spoolDir, '.dcm').length === 0, 90_000, 'the spool to drain');
      // Orthanc refuses (HTTP 400, "missing a mandatory tag") the output of a corpus file whose every
      // attribute is encoded with VR UN (pydicom's rtdose_rle_1frame); it shares its SOP instance with
      // other files, so whichever copy was spooled last decides. A refusal is a dead letter, never a loss.
      const dead = filesIn(deadDir, '.reason.json').map((f) => JSON.parse(readFileSync(join(deadDir, f), 'utf8')));
      for (const d of dead) assert.match(d.message, /^HTTP 4\d\d/, d.sopInstanceUid);
      assert.ok(dead.length <= 1, dead.map((d) => `${d.sopInstanceUid}: ${d.message}`).join('; '));
      const instances = (await orthanc.get('/instances?expand')) as Tags[];
      const stored = new Set(instances.map((i) => i.MainDicomTags.SOPInstanceUID));
      // A dead letter whose instance an earlier copy delivered is in Orthanc; otherwise it is not expected there.
      for (const d of dead) if (!stored.has(d.sopInstanceUid)) expected.delete(d.sopInstanceUid);
      const series = (await orthanc.get('/series?expand')) as Tags[];
      const studies = (await orthanc.get('/studies?expand')) as Tags[];
      const exp = [...expected.values()];
      assert.deepEqual(instances.map((i) => i.MainDicomTags.SOPInstanceUID).sort(), [...expected.keys()].sort());
      assert.deepEqual(series.map((s) => s.MainDicomTags.SeriesInstanceUID).sort(), [...new Set(exp.map((e) => e.series))].sort());
      assert.deepEqual(studies.map((s) => s.MainDicomTags.StudyInstanceUID).sort(), [...new Set(exp.map((e) => e.study))].sort());
      // What Orthanc holds is de-identified: no marker of the PHI corpus in any stored file.
      const one = (await orthanc.getBinary(`/instances/${(await orthanc.get('/instances') as string[])[0]}/file`));
      assert.deepEqual(findLeaks(one), []);
    } finally {
      await node.stop();
      await orthanc.stop();
    }
  });

  test('Orthanc stopped: images wait in the spool and arrive after it starts; a 4xx-refused instance is a dead letter', async () => {
    const dir = tempDir('deid-stow-down-');
    const httpPort = await freePort();
    const port = await freePort();
    const configFile = writeConfig(dir, `http://127.0.0.1:${httpPort}/dicom-web/`);
    const config = loadConfig(configFile, {});
    const node = await startNode(config, SALT, silentLogger());
    let orthanc: OrthancPeer | undefined;
    try {
      const imgDir = tempDir('deid-stow-in-');
      const files = makeVariants(readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm')), 6, 321).map((v) => {
        const f = join(imgDir, `${v.sopInstanceUid}.dcm`);
        writeFileSync(f, v.bytes);
        return f;
      });
      const r = await run('storescu', ['-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(node.scp.port), ...files]);
      assert.equal(r.code, 0, r.stderr); // answered Success while the archive is down
      const spoolDir = join(config.stateDir, 'spool', 'web');
      assert.equal(filesIn(spoolDir, '.dcm').length, 6);
      // An instance Orthanc refuses (HTTP 400: no StudyInstanceUID, "missing a mandatory tag"), queued as the
      // router would queue it.
      const sopClass = '1.2.840.10008.5.1.4.1.1.7';
      const badUid = '2.25.9999000111222333';
      const el = (tag: number, v: string) => {
        const val = Buffer.from(v.length % 2 ? v + '\0' : v, 'latin1');
        const h = Buffer.alloc(8);
        h.writeUInt16LE(tag >>> 16, 0);
        h.writeUInt16LE(tag & 0xffff, 2);
        h.write('UI', 4, 'latin1');
        h.writeUInt16LE(val.length, 6);
        return Buffer.concat([h, val]);
      };
      const bad = Buffer.concat(part10FromRawDataset(Buffer.concat([el(0x00080016, sopClass), el(0x00080018, badUid)]), sopClass, badUid, '1.2.840.10008.1.2.1'));
      await new Spool(config.stateDir, 'web').enqueue(bad, { sopInstanceUid: badUid, sopClassUid: sopClass, transferSyntaxUid: '1.2.840.10008.1.2.1', studyInstanceUid: '' });
      await new Promise((res) => setTimeout(res, 3000));
      assert.equal(filesIn(spoolDir, '.dcm').length, 7, 'everything waits while Orthanc is down');

      orthanc = await startOrthanc({ dir, dicomweb: true, port, httpPort });
      await waitFor(() => filesIn(spoolDir, '.dcm').length === 0, 60_000, 'the spool to drain');
      const pipeline = new DeidPipeline(config, SALT);
      const expected = files.map((f) => pipeline.process({ kind: 'file', bytes: readFileSync(f) }).uids!.sopInstanceUid).sort();
      const instances = (await orthanc.get('/instances?expand')) as Tags[];
      assert.deepEqual(instances.map((i) => i.MainDicomTags.SOPInstanceUID).sort(), expected);
      const deadDir = join(config.stateDir, 'deadletter', 'web');
      assert.deepEqual(filesIn(deadDir, '.dcm'), [`${badUid}.dcm`]);
      const reason = JSON.parse(readFileSync(join(deadDir, `${badUid}.reason.json`), 'utf8'));
      assert.equal(reason.sopInstanceUid, badUid);
      assert.match(reason.message, /^HTTP 400/);
      const list = spawnSync(process.execPath, ['dist/cli.js', 'spool', '--config', configFile], { encoding: 'utf8' });
      assert.equal(list.status, 0, list.stderr);
      assert.match(list.stdout, /web \(STOW-RS http:\/\/127\.0\.0\.1:\d+\/dicom-web\/\): backlog 0 images.*dead letters 1/);
      assert.match(list.stdout, new RegExp(`dead: ${badUid.replace(/\./g, '\\.')} status none after 1 attempts: HTTP 400`));
    } finally {
      await node.stop();
      await orthanc?.stop();
    }
  });
});

describe('STOW-RS queue stop', () => {
  test('a server that takes the request and never answers: stop(graceMs) returns after the grace period, the image stays spooled and is sent by the next queue', async () => {
    const dir = tempDir('deid-stow-stop-');
    const http = await import('node:http');
    const received: string[] = [];
    let answer = false;
    const server = http.createServer((req, res) => {
      received.push(`${req.method} ${req.url}`);
      req.resume();
      // The first server hangs; once `answer` is set it says every instance is stored.
      req.on('end', () => {
        if (!answer) return;
        res.writeHead(200, { 'content-type': 'application/dicom+json' });
        res.end(JSON.stringify({ '00081199': { vr: 'SQ', Value: [{ '00081155': { vr: 'UI', Value: [uid] } }] } }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as import('node:net').AddressInfo).port;
    const v = makeVariants(readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm')), 1, 77)[0];
    const uid = v.sopInstanceUid;
    const spool = new Spool(join(dir, 'state'), 'web');
    await spool.enqueue(v.bytes, { sopInstanceUid: uid, sopClassUid: '1.2.840.10008.5.1.4.1.1.2', transferSyntaxUid: '1.2.840.10008.1.2.1', studyInstanceUid: '' });
    const destination = { type: 'dicomweb' as const, name: 'web', url: `http://127.0.0.1:${port}/dicom-web`, maxConnections: 1 };
    try {
      const q1 = new StowQueue({ destination, spool, logger: silentLogger() });
      q1.start();
      await waitFor(() => received.length === 1, 10_000, 'the request reached the server');
      const t0 = Date.now();
      await q1.stop(500);
      const took = Date.now() - t0;
      assert.ok(took < 5000, `stop took ${took} ms`);
      assert.deepEqual(await spool.listIds(), [uid], 'still spooled');
      answer = true;
      const q2 = new StowQueue({ destination, spool, logger: silentLogger() });
      q2.start();
      await waitFor(async () => (await spool.listIds()).length === 0, 10_000, 'sent by the next queue');
      await q2.stop();
      assert.deepEqual(received, ['POST /dicom-web/studies', 'POST /dicom-web/studies']);
      assert.equal((await spool.listDeadLetters()).length, 0);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
