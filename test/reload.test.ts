// SIGHUP while an association is open: a good configuration is applied to the next image on the
// same association, a bad one is refused with its located error in the log and the running one kept;
// the association is never dropped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import * as http from 'http';
import YAML from 'yaml';
import { StoreAssociation } from '../src/deliver/dimse-scu';
import { parsePart10Meta } from '../src/deliver/spool';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { makeVariants, waitFor } from './helpers/peers';
import { parsePrometheusText, sampleValue } from './helpers/prometheus';
import { tempDir } from './helpers/tmp';

const skip = !corpusAvailable();

function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.dcm'));
}

function get(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

test('SIGHUP reload with an open association: good config applied, bad config refused and logged, association kept', { skip }, async () => {
  const dir = tempDir('deid-reload-');
  const config = (studyDestination: string, extraStudies: Record<string, unknown> = {}) => ({
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    salt: 'reload-test-salt-5be2c1',
    stateDir: join(dir, 'state'),
    destinations: {
      first: { type: 'folder', path: join(dir, 'first') },
      ...(studyDestination === 'second' ? { second: { type: 'folder', path: join(dir, 'second') } } : {}),
    },
    defaultDestination: 'first',
    stations: { scanner: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['MODALITY'] } },
    studies: { STUDYA: { Destinations: [studyDestination] }, ...extraStudies },
  });
  const cfgFile = join(dir, 'router.yaml');
  writeFileSync(cfgFile, YAML.stringify(config('first')));

  const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', cfgFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const lines = () => log.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  const line = (msg: string) => lines().find((l) => l.msg === msg);
  const count = (msg: string) => lines().filter((l) => l.msg === msg).length;
  let assoc: StoreAssociation | undefined;
  try {
    await waitFor(() => line('listening') !== undefined || child.exitCode !== null, 60_000, 'serve to listen');
    assert.equal(child.exitCode, null, log);
    const port = line('listening')!.port as number;
    const httpPort = line('HTTP face listening (/metrics, /healthz, /readyz, /)')!.port as number;

    const ct = readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm'));
    const meta = parsePart10Meta(ct);
    const images = makeVariants(ct, 3, 21).map((v) => v.bytes.subarray(meta.datasetOffset));
    assoc = await StoreAssociation.connect({
      host: '127.0.0.1', port, callingAeTitle: 'MODALITY', calledAeTitle: 'DEID_ROUTER',
      contexts: [{ abstractSyntaxUid: meta.sopClassUid, transferSyntaxUid: meta.transferSyntaxUid }],
    });
    const pc = assoc.contextFor(meta.sopClassUid, meta.transferSyntaxUid)!;
    const store = async (i: number) => (await assoc!.cStore(pc, meta.sopClassUid, makeVariants(ct, 3, 21)[i].sopInstanceUid, images[i])).status;

    assert.equal(await store(0), 0);
    assert.equal(walk(join(dir, 'first')).length, 1);

    // A good configuration: STUDYA now goes to a new destination. Its new storage commitment settings take
    // effect at the next start (the service keeps its own), and the reload says so.
    writeFileSync(cfgFile, YAML.stringify({ ...config('second'), commitment: { indexRetentionDays: 7 } }));
    process.kill(child.pid!, 'SIGHUP');
    await waitFor(() => count('configuration reloaded') === 1, 10_000, 'the reload');
    assert.deepEqual(line('configuration reloaded')!.notes, ['commitment: changed; takes effect at the next start']);
    assert.equal(await store(1), 0);
    assert.equal(walk(join(dir, 'second')).length, 1, 'the image after the reload follows the new rule');
    assert.equal(walk(join(dir, 'first')).length, 1);

    // A bad configuration (a misspelt action): refused, logged with its location, old one kept.
    writeFileSync(cfgFile, YAML.stringify(config('first', { TRIALB: { AnonymizeTag: { PatientAge: { action: 'hsah' } } } })));
    process.kill(child.pid!, 'SIGHUP');
    await waitFor(() => count('configuration reload refused; the running configuration is kept') === 1, 10_000, 'the refusal');
    const refused = line('configuration reload refused; the running configuration is kept')!;
    assert.equal(refused.level, 50);
    assert.match(JSON.stringify(refused.problems), /studies\.TRIALB\.AnonymizeTag\.PatientAge\.action: \\"hsah\\" is not one of delete, clear, hash/);
    assert.equal(await store(2), 0);
    assert.equal(walk(join(dir, 'second')).length, 2, 'the running configuration still routes to the second folder');
    assert.equal(walk(join(dir, 'first')).length, 1);

    const m = parsePrometheusText(await get(httpPort, '/metrics'));
    assert.equal(sampleValue(m, 'deid_router_config_reloads_total', { result: 'applied' }), 1);
    assert.equal(sampleValue(m, 'deid_router_config_reloads_total', { result: 'refused' }), 1);
    const status = JSON.parse(await get(httpPort, '/status.json'));
    assert.equal(status.activity.reloads[0].ok, false);
    assert.equal(status.ready.ok, true);

    await assoc.release();
    assoc = undefined;
    await waitFor(() => line('association released') !== undefined, 5000, 'the release');
    const ended = line('association released')!;
    assert.equal(ended.images, 3, 'one association carried all three images');
    assert.equal(ended.failed, 0);
    assert.equal(child.exitCode, null, 'still running');
  } finally {
    if (assoc) assoc.abort();
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      process.kill(child.pid!, 'SIGTERM');
      await exited;
    }
  }
});

test('serve with its HTTP port taken: exits 3 naming the address, nothing left running', async () => {
  const dir = tempDir('deid-httptaken-');
  const blocker = http.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  const taken = (blocker.address() as import('net').AddressInfo).port;
  try {
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: taken },
      salt: 'http-taken-test-salt-11aa',
      stateDir: join(dir, 'state'),
      destinations: { pacs: { type: 'dicom', aeTitle: 'NOWHERE', host: '127.0.0.1', port: 9 } },
    }));
    const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', join(dir, 'router.yaml')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    assert.equal(code, 3, err);
    assert.match(err, new RegExp(`EADDRINUSE.*127\\.0\\.0\\.1:${taken}`));
  } finally {
    blocker.close();
  }
});
