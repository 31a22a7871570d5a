// The HTTP face of a running node: metrics scraped after real storescu runs (counts equal what was
// sent, quarantined and forwarded to a real storescp; the scrape parses as Prometheus text), the
// status page rendered in headless Debian Chromium (figures, destinations, no patient data, a
// screenshot kept), and the Bearer token.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync } from 'fs';
import { join, resolve } from 'path';
import * as http from 'http';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { startNode, RunningNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { readPart10 } from '../src/dicom/read';
import { writePart10 } from '../src/dicom/write';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { PHI_MARKERS } from './helpers/leaks';
import { run } from './helpers/dcmtk';
import { makeVariants, startStorescp, waitFor, type Peer } from './helpers/peers';
import { hasTool } from './helpers/tools';
import { parsePrometheusText, sampleValue, type Exposition } from './helpers/prometheus';
import { launchChromium } from './helpers/browser';
import { tempDir } from './helpers/tmp';

const SALT = 'observe-http-test-salt-41c9';
const TOKEN = 'test-token-0123456789abcdef';
const skip = !corpusAvailable() || !hasTool('storescu') || !hasTool('storescp');
const FOLDER_IMAGES = 6;
const FORWARD_IMAGES = 4;

function httpGet(port: number, path: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolveGet, reject) => {
    http.get({ host: '127.0.0.1', port, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolveGet({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: Buffer.concat(chunks).toString('utf8') }));
    }).on('error', reject);
  });
}

const auth = { authorization: `Bearer ${TOKEN}` };

describe('HTTP face: metrics, status page, token', { skip }, () => {
  let node: RunningNode;
  let pacs: Peer;
  let dir: string;
  let httpPort: number;
  let dicomPort: number;
  const originalUids: string[] = [];
  let exposition: Exposition;

  before(async () => {
    dir = tempDir('deid-http-');
    mkdirSync(join(dir, 'pacs'));
    pacs = await startStorescp({ dir: join(dir, 'pacs'), aeTitle: 'RESEARCH_PACS' });
    const cfg = {
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0, token: TOKEN },
      stateDir: join(dir, 'state'),
      destinations: {
        outgoing: { type: 'folder', path: join(dir, 'outgoing') },
        pacs: { type: 'dicom', aeTitle: 'RESEARCH_PACS', host: '127.0.0.1', port: pacs.port, callingAeTitle: 'DEID_ROUTER' },
      },
      defaultDestination: 'outgoing',
      // ProtocolName is STUDYA^T1 in the corpus: one station files it under STUDYA, the other under T1.
      stations: {
        scanner: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['MODALITY'] },
        lab: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 1, AETitles: ['LABSCU'] },
      },
      studies: { STUDYA: { AnonymizeTag: { PatientName: 'hash' } }, T1: { Destinations: ['pacs'] } },
    };
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify(cfg));
    node = await startNode(loadConfig(join(dir, 'router.yaml'), {}), SALT, silentLogger());
    httpPort = node.http!.port;
    dicomPort = node.scp.port;

    const ct = readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'));
    const write = (name: string, bytes: Buffer) => {
      writeFileSync(join(dir, name), bytes);
      return join(dir, name);
    };
    const folderFiles = makeVariants(ct, FOLDER_IMAGES, 11).map((v, i) => (originalUids.push(v.sopInstanceUid), write(`a${i}.dcm`, v.bytes)));
    const forwardFiles = makeVariants(ct, FORWARD_IMAGES, 12).map((v, i) => (originalUids.push(v.sopInstanceUid), write(`b${i}.dcm`, v.bytes)));
    const src = readPart10(ct);
    originalUids.push('1.3.6.1.4.1.5962.1.2.1.20040119072730.12322', '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322');
    // The same image without StudyInstanceUID: the engine refuses it (quarantined, failure status).
    const bad = write('bad.dcm', writePart10({ ...src, dataset: src.dataset.filter((e) => e.tag !== 0x0020000d) }));

    const storescu = (aet: string, files: string[]) => run('storescu', ['-aet', aet, '-aec', 'DEID_ROUTER', '127.0.0.1', String(dicomPort), ...files]);
    for (const [aet, files] of [['MODALITY', folderFiles], ['LABSCU', forwardFiles]] as const) {
      const r = await storescu(aet, files);
      assert.equal(r.code, 0, r.stderr);
    }
    const r = await run('storescu', ['-v', '-aet', 'MODALITY', '-aec', 'DEID_ROUTER', '127.0.0.1', String(dicomPort), bad]);
    assert.match(r.stderr + r.stdout, /Received Store Response \(Error: DataSetDoesNotMatchSOPClass\)/);
    const stranger = await run('echoscu', ['-aet', 'STRANGER', '-aec', 'DEID_ROUTER', '127.0.0.1', String(dicomPort)]);
    assert.notEqual(stranger.code, 0);

    await waitFor(async () => {
      const m = parsePrometheusText((await httpGet(httpPort, '/metrics', auth)).body);
      return sampleValue(m, 'deid_router_images_forwarded_total', { destination: 'pacs' }) === FORWARD_IMAGES
        && sampleValue(m, 'deid_router_spool_backlog_images', { destination: 'pacs' }) === 0
        && sampleValue(m, 'deid_router_associations_total', { calling_ae: 'STRANGER', result: 'rejected' }) === 1;
    }, 30_000, 'the forwarder to deliver to storescp');
    const res = await httpGet(httpPort, '/metrics', auth);
    assert.equal(res.status, 200);
    assert.match(res.type, /^text\/plain; version=0\.0\.4/);
    exposition = parsePrometheusText(res.body);
  });

  after(async () => {
    await node?.stop();
    await pacs?.stop();
  });

  test('metrics after storescu runs: counts equal what was sent, stored, quarantined and forwarded', () => {
    const v = (name: string, labels: Record<string, string> = {}) => sampleValue(exposition, name, labels);
    assert.equal(v('deid_router_images_received_total', { station: 'scanner', study: 'STUDYA' }), FOLDER_IMAGES);
    assert.equal(v('deid_router_images_stored_total', { station: 'scanner', study: 'STUDYA' }), FOLDER_IMAGES);
    assert.equal(v('deid_router_images_received_total', { station: 'lab', study: 'T1' }), FORWARD_IMAGES);
    assert.equal(v('deid_router_images_stored_total', { station: 'lab', study: 'T1' }), FORWARD_IMAGES);
    assert.equal(v('deid_router_images_received_total'), FOLDER_IMAGES + FORWARD_IMAGES + 1);
    assert.equal(v('deid_router_images_quarantined_total', { stage: 'deidentify' }), 1);
    assert.equal(v('deid_router_images_failed_total', { status: '0xA900' }), 1);
    assert.equal(v('deid_router_images_forwarded_total', { destination: 'pacs' }), FORWARD_IMAGES);
    assert.equal(v('deid_router_images_dead_lettered_total'), 0);
    // What storescp holds is what was forwarded.
    assert.equal(readdirSync(join(dir, 'pacs')).length, FORWARD_IMAGES);
    assert.equal(v('deid_router_associations_total', { calling_ae: 'MODALITY', result: 'released' }), 2);
    assert.equal(v('deid_router_associations_total', { calling_ae: 'LABSCU', result: 'released' }), 1);
    assert.equal(v('deid_router_associations_total', { calling_ae: 'STRANGER', result: 'rejected' }), 1);
    const sent = FOLDER_IMAGES + FORWARD_IMAGES + 1;
    const bytes = v('deid_router_received_bytes_total');
    assert.ok(bytes > sent * 30_000 && bytes < sent * 45_000, `bytes ${bytes}`);
    assert.equal(v('deid_router_deidentify_seconds_count'), FOLDER_IMAGES + FORWARD_IMAGES);
    assert.equal(v('deid_router_store_seconds_count', { study: 'T1' }), FORWARD_IMAGES);
    assert.equal(v('deid_router_spool_backlog_images', { destination: 'pacs' }), 0);
    assert.equal(v('deid_router_spool_dead_letters', { destination: 'pacs' }), 0);
    assert.equal(v('deid_router_destination_up', { destination: 'pacs', type: 'dicom' }), 1);
    assert.equal(v('deid_router_destination_up', { destination: 'outgoing', type: 'folder' }), 1);
    assert.equal(v('deid_router_build_info', { version: JSON.parse(readFileSync('package.json', 'utf8')).version }), 1);
    assert.ok(exposition.families.has('nodejs_eventloop_lag_p99_seconds'), 'event-loop delay');
    assert.equal(exposition.families.get('deid_router_deidentify_seconds')?.type, 'histogram');
    assert.equal(exposition.families.get('deid_router_spool_oldest_age_seconds')?.type, 'gauge');
  });

  test('every metric the alerts (deploy/prometheus/alerts.yml) and the README\'s PromQL use exists in the scrape', () => {
    const readme = readFileSync('README.md', 'utf8');
    const promql = [...readme.matchAll(/```promql\n([\s\S]*?)```/g)].map((m) => m[1]).join('\n');
    const alerts = readFileSync('deploy/prometheus/alerts.yml', 'utf8');
    assert.ok(promql.length > 200, 'the README has PromQL examples');
    const used = new Set([...(promql + alerts).matchAll(/\b((?:deid_router|nodejs|process)_[a-z0-9_]+)\b/g)].map((m) => m[1]));
    assert.ok(used.size >= 10, [...used].join(', '));
    const exposed = new Set([...exposition.families.keys(), ...exposition.samples.map((x) => x.name)]);
    for (const name of used) assert.ok(exposed.has(name), `${name} is used but not exposed`);
  });

  test('token: every path but /healthz refuses a request without the Bearer token', async () => {
    assert.equal((await httpGet(httpPort, '/healthz')).status, 200);
    for (const p of ['/metrics', '/readyz', '/', '/status.json']) {
      assert.equal((await httpGet(httpPort, p)).status, 401, p);
      assert.equal((await httpGet(httpPort, p, { authorization: `Bearer ${TOKEN}x` })).status, 401, p);
      assert.equal((await httpGet(httpPort, p, { authorization: TOKEN })).status, 401, p);
    }
    const ready = await httpGet(httpPort, '/readyz', auth);
    assert.equal(ready.status, 200);
    assert.deepEqual(JSON.parse(ready.body).checks, { listening: true, stateDirWritable: true, configLoaded: true });
    assert.equal((await httpGet(httpPort, '/nothing', auth)).status, 404);
  });

  test('status page in headless Chromium: figures and destinations as in the metrics, no patient data, screenshot kept', async (t) => {
    const browser = await launchChromium();
    if (!browser) return t.skip('chromium is not installed');
    try {
      const context = await browser.newContext({ extraHTTPHeaders: auth });
      const page = await context.newPage();
      const res = await page.goto(`http://127.0.0.1:${httpPort}/`);
      assert.equal(res?.status(), 200);
      const num = async (id: string) => Number(await page.locator(`#${id}`).innerText());
      const v = (name: string) => sampleValue(exposition, name, {});
      assert.equal(await num('received'), v('deid_router_images_received_total'));
      assert.equal(await num('stored'), FOLDER_IMAGES + FORWARD_IMAGES);
      assert.equal(await num('forwarded'), FORWARD_IMAGES);
      assert.equal(await num('quarantined'), 1);
      assert.equal(await num('failed'), 1);
      const rows = await page.locator('#destinations tbody tr').allInnerTexts();
      assert.equal(rows.length, 2);
      assert.match(rows.find((r) => r.startsWith('pacs')) ?? '', new RegExp(`pacs\\s+dicom\\s+RESEARCH_PACS@127\\.0\\.0\\.1:${pacs.port}\\s+up\\s+0`));
      assert.match(rows.find((r) => r.startsWith('outgoing')) ?? '', /outgoing\s+folder\s+\S+outgoing\s+up/);
      const studies = await page.locator('#studies tbody tr').allInnerTexts();
      assert.ok(studies.some((r) => /^scanner\s+STUDYA\s+6\s+6\s+0\s+0$/.test(r)), studies.join('\n'));
      assert.ok(studies.some((r) => /^lab\s+T1\s+4\s+4\s+0\s+0$/.test(r)), studies.join('\n'));
      const assocs = await page.locator('#associations-table tbody tr').allInnerTexts();
      assert.ok(assocs.some((r) => /STRANGER\s+DEID_ROUTER\s+127\.0\.0\.1\s+0\s+0\s+[\d.]+\s+[\d.]+\s+rejected/.test(r)), assocs.join('\n'));
      assert.ok(assocs.some((r) => /LABSCU\s+DEID_ROUTER\s+127\.0\.0\.1\s+4\s+0\s+/.test(r)), assocs.join('\n'));
      assert.match(await page.locator('#problems').innerText(), /MODALITY[\s\S]*deidentify\s+0xA900\s+the dataset has no StudyInstanceUID/);

      // Nothing from the images: planted markers (the study name STUDYA^T1 among them), original UIDs.
      const html = await page.content();
      const text = await page.locator('body').innerText();
      for (const m of PHI_MARKERS) {
        for (const s of [html, text]) assert.ok(!s.includes(m.toString('latin1')) && !s.includes(m.toString('utf8')), `marker ${m.toString('latin1')} on the page`);
      }
      for (const uid of originalUids) assert.ok(!html.includes(uid), `original UID ${uid} on the page`);
      const json = (await httpGet(httpPort, '/status.json', auth)).body;
      for (const uid of originalUids) assert.ok(!json.includes(uid));
      for (const m of PHI_MARKERS) assert.ok(!json.includes(m.toString('latin1')));

      const artifacts = resolve('.build-test', 'artifacts');
      mkdirSync(artifacts, { recursive: true });
      const shot = join(artifacts, 'status-page.png');
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok(existsSync(shot) && readFileSync(shot).subarray(1, 4).toString() === 'PNG');
    } finally {
      await browser.close();
    }
  });
});
