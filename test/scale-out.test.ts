// Scale-out behind a real load balancer: Debian's haproxy (TCP mode, leastconn, /readyz checks) on
// loopback in front of three `serve` processes sharing the salt and one outgoing folder; a second
// study goes to a dicom destination (storescp) through each replica's own spool. dcmsend sends the
// corpus in 4 parallel associations; one replica is SIGKILLed midway and restarted; the senders
// retry what was not answered Success. Every image arrives, the union of the outputs is byte for
// byte what a single replica writes for the same input, and the killed replica's spool drains
// after its restart (storescp is started only then, so that spool is not empty when it dies).
// The corpus and two variants of each file: enough images that an association lasts long enough
// to be seen open and cut.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import * as http from 'http';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { DeidPipeline } from '../src/pipeline';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run, startProcess, stopProcess, type StartedProcess } from './helpers/dcmtk';
import { corpusFiles, freePort, makeVariants, readReceived, startStorescp, uniqueCorpus, waitFor, sleep, type Peer } from './helpers/peers';
import { parsePrometheusText, sampleValue } from './helpers/prometheus';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'scale-out-test-salt-93f0a2';
const skip = !corpusAvailable() || !hasTool('haproxy') || !hasTool('dcmsend') || !hasTool('storescp');
const SENDERS: Array<{ ae: string }> = [{ ae: 'MODALITY' }, { ae: 'LABSCU' }, { ae: 'MODALITY' }, { ae: 'LABSCU' }];

interface Replica { name: string; port: number; httpPort: number; stateDir: string; config: string; child?: ChildProcess; log: string }

function routerConfig(r: { port: number; httpPort: number; stateDir: string }, outgoing: string, pacsPort: number): Record<string, unknown> {
  return {
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: r.port },
    http: { host: '127.0.0.1', port: r.httpPort },
    salt: SALT,
    stateDir: r.stateDir,
    destinations: {
      outgoing: { type: 'folder', path: outgoing },
      pacs: { type: 'dicom', aeTitle: 'RESEARCH_PACS', host: '127.0.0.1', port: pacsPort, callingAeTitle: 'DEID_ROUTER' },
    },
    defaultDestination: 'outgoing',
    // The corpus's ProtocolName is STUDYA^T1: MODALITY's images are study STUDYA (folder), LABSCU's
    // are study T1 (research PACS).
    stations: {
      scanner: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['MODALITY'] },
      lab: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 1, AETitles: ['LABSCU'] },
    },
    studies: {
      STUDYA: { ProfileOptions: ['retainLongitudinalModifiedDates'], DateOffset: { range: [-3650, -365] }, AnonymizeTag: { PatientID: 'hash', PatientName: 'hash' } },
      T1: { Destinations: ['pacs'], AnonymizeTag: { PatientID: 'hash' } },
    },
  };
}

async function startReplica(r: Replica): Promise<void> {
  r.log = '';
  const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', r.config], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (r.log += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (r.log += d.toString()));
  r.child = child;
  await waitFor(() => {
    if (child.exitCode !== null) throw new Error(`${r.name} exited: ${r.log}`);
    return r.log.includes('"msg":"listening"');
  }, 60_000, `${r.name} to listen`);
}

async function stopReplica(r: Replica): Promise<void> {
  const c = r.child;
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((res) => c.once('exit', res));
  process.kill(c.pid!, 'SIGTERM');
  await exited;
}

function metrics(port: number): Promise<ReturnType<typeof parsePrometheusText>> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(parsePrometheusText(body)));
    }).on('error', reject);
  });
}

const spooled = (stateDir: string) => {
  const d = join(stateDir, 'spool', 'pacs');
  return existsSync(d) ? readdirSync(d).filter((f) => !f.startsWith('.') && f.endsWith('.dcm')).length : 0;
};

function folderOutputs(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  if (!existsSync(dir)) return out;
  for (const f of readdirSync(dir, { recursive: true }).map(String).filter((x) => x.endsWith('.dcm')).sort()) out.set(f, readFileSync(join(dir, f)));
  return out;
}

/** One dcmsend association for `files`; the files answered Success (or a warning) and those dcmsend
 * would not send at all. -d names each file before its C-STORE. */
async function dcmsend(port: number, ae: string, files: string[]): Promise<{ stored: Set<string>; unsendable: Set<string>; code: number | null; tail: string }> {
  const r = await run('dcmsend', ['-d', '-nh', '-aet', ae, '-aec', 'DEID_ROUTER', '127.0.0.1', String(port), ...files], { timeoutMs: 60_000 });
  const stored = new Set<string>();
  const unsendable = new Set<string>();
  let current: string | undefined;
  let answered: string | undefined;
  for (const line of (r.stdout + '\n' + r.stderr).split('\n')) {
    const s = /sending SOP instance from file: (.+)$/.exec(line);
    if (s) current = s[1].trim();
    else if (/Received C-STORE Response/.test(line)) answered = current;
    const st = /DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})/.exec(line);
    if (st && answered) {
      const status = parseInt(st[1], 16);
      if (status === 0 || status === 1 || (status >= 0xb000 && status <= 0xbfff)) stored.add(answered);
      answered = undefined;
    }
    const bad = /cannot add DICOM file to the transfer list: ([^:]+):/.exec(line);
    if (bad) unsendable.add(bad[1]);
  }
  const tail = (r.stdout + r.stderr).split('\n').filter((l) => /^[IWEF]:/.test(l)).slice(-15).join('\n');
  return { stored, unsendable, code: r.code, tail };
}

/** Sends until every sendable file was answered Success; returns how many retries that took. */
async function sendAll(port: number, ae: string, files: string[]): Promise<{ retries: number; unsendable: Set<string> }> {
  let todo = files;
  const unsendable = new Set<string>();
  let last = '';
  for (let attempt = 0; attempt < 8; attempt++) {
    const r = await dcmsend(port, ae, todo);
    last = r.tail;
    r.unsendable.forEach((f) => unsendable.add(f));
    todo = todo.filter((f) => !r.stored.has(f) && !unsendable.has(f));
    if (!todo.length) return { retries: attempt, unsendable };
    await sleep(300);
  }
  throw new Error(`${todo.length} files never answered Success: ${todo.slice(0, 3).join(', ')}\n${last}`);
}

test('scale-out: 3 replicas behind haproxy, one SIGKILLed and restarted; outputs identical to one replica, the killed spool drains', { skip, timeout: 180_000 }, async (t) => {
  const t0 = Date.now();
  const phase = (what: string) => t.diagnostic(`${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const dir = tempDir('deid-scale-');
  const input = join(dir, 'input');
  mkdirSync(input);

  // The corpus (one file per SOP instance) and two variants of each, so that each association
  // lasts long enough to be cut; only images the engine accepts (the others are quarantined, which
  // serve.test covers).
  const probe = join(dir, 'probe.yaml');
  writeFileSync(probe, YAML.stringify(routerConfig({ port: 1, httpPort: 2, stateDir: join(dir, 'probe-state') }, join(dir, 'probe-out'), 3)));
  const pipeline = new DeidPipeline(loadConfig(probe, {}), SALT);
  const files: string[] = [];
  const outcome = new Map<string, { folder: string; pacs: string }>();
  uniqueCorpus(corpusFiles(CORPUS_PHI)).forEach((f, i) => {
    const copies = [f.bytes];
    if (f.sopInstanceUid === f.datasetSopInstanceUid && f.sopInstanceUid.length >= 20) copies.push(...makeVariants(f.bytes, 2, 500 + i).map((v) => v.bytes));
    copies.forEach((bytes, k) => {
      const name = join(input, `${String(files.length).padStart(4, '0')}-${k}-${f.file}`);
      try {
        const folder = pipeline.process({ kind: 'file', bytes }, 'MODALITY').relativePath!;
        const pacs = pipeline.process({ kind: 'file', bytes }, 'LABSCU').uids!.sopInstanceUid;
        outcome.set(name, { folder, pacs });
      } catch {
        return;
      }
      writeFileSync(name, bytes);
      files.push(name);
    });
  });
  assert.ok(files.length > 140, `${files.length} inputs`);
  const share = (s: number) => files.filter((_, i) => i % SENDERS.length === s);
  const expected = { STUDYA: new Set<string>(), T1: new Set<string>() };
  SENDERS.forEach((sender, s) => {
    for (const f of share(s)) {
      if (sender.ae === 'MODALITY') expected.STUDYA.add(outcome.get(f)!.folder);
      else expected.T1.add(outcome.get(f)!.pacs);
    }
  });
  phase(`${files.length} inputs ready`);
  const peers: Peer[] = [];
  const replicas: Replica[] = [];
  let lb: StartedProcess | undefined;
  try {
    // ---- Start everything at once: the reference (one replica, its own folders, its PACS up)
    // and three replicas behind haproxy (their PACS comes up only after the kill and restart).
    const refOut = join(dir, 'ref-outgoing');
    const refPacsDir = join(dir, 'ref-pacs');
    const outgoing = join(dir, 'outgoing');
    const pacsDir = join(dir, 'pacs');
    mkdirSync(refPacsDir);
    mkdirSync(pacsDir);
    const pacsPort = await freePort();
    const refPacs = await startStorescp({ dir: refPacsDir, aeTitle: 'RESEARCH_PACS' });
    peers.push(refPacs);
    const ref: Replica = { name: 'reference', port: await freePort(), httpPort: await freePort(), stateDir: join(dir, 'ref-state'), config: join(dir, 'ref.yaml'), log: '' };
    writeFileSync(ref.config, YAML.stringify(routerConfig(ref, refOut, refPacs.port)));
    replicas.push(ref);
    const trio: Replica[] = [];
    for (const name of ['r1', 'r2', 'r3']) {
      const r: Replica = { name, port: await freePort(), httpPort: await freePort(), stateDir: join(dir, `state-${name}`), config: join(dir, `${name}.yaml`), log: '' };
      writeFileSync(r.config, YAML.stringify(routerConfig(r, outgoing, pacsPort)));
      trio.push(r);
      replicas.push(r);
    }
    await Promise.all(replicas.map(startReplica));
    const lbPort = await freePort();
    const cfg = join(dir, 'haproxy.cfg');
    writeFileSync(cfg, [
      'global', '    maxconn 256',
      'defaults', '    mode tcp', '    timeout connect 2s', '    timeout client 60s', '    timeout server 60s', '    retries 3', '    option redispatch',
      'frontend dicom', `    bind 127.0.0.1:${lbPort}`, '    default_backend routers',
      'backend routers', '    balance leastconn', '    option httpchk', '    http-check send meth GET uri /readyz', '    http-check expect status 200',
      '    default-server inter 200ms fall 1 rise 1',
      ...trio.map((r) => `    server ${r.name} 127.0.0.1:${r.port} check port ${r.httpPort}`),
      '',
    ].join('\n'));
    lb = startProcess('haproxy', ['-db', '-f', cfg]);
    phase('replicas up');

    const refSent = await Promise.all(SENDERS.map((s, i) => sendAll(ref.port, s.ae, share(i))));
    const unsendable = new Set(refSent.flatMap((r) => [...r.unsendable]));
    await waitFor(async () => spooled(ref.stateDir) === 0 && (await readReceived(refPacsDir)).size >= expected.T1.size - unsendable.size, 30_000, 'the reference spool to drain');
    await stopReplica(ref);
    const refFolder = folderOutputs(refOut);
    const refPacsImages = await readReceived(refPacsDir);
    phase('reference run done');

    await waitFor(async () => {
      if (lb!.child.exitCode !== null) throw new Error(`haproxy exited: ${lb!.output().stderr}`);
      return (await run('echoscu', ['-aet', 'MODALITY', '-aec', 'DEID_ROUTER', '127.0.0.1', String(lbPort)])).code === 0;
    }, 10_000, 'haproxy to pass an echo');
    const sending = SENDERS.map((s, i) => sendAll(lbPort, s.ae, share(i)));
    // Kill midway the first replica that has spooled images of study T1 (the PACS is down, so they
    // stay in its spool) while its LABSCU association is still open (no LABSCU association has
    // ended there yet): that sender is cut off and must retry.
    let victim: Replica | undefined;
    const deadline = Date.now() + 30_000;
    while (!victim) {
      for (const r of trio) {
        const m = await metrics(r.httpPort).catch(() => undefined);
        if (m && sampleValue(m, 'deid_router_images_stored_total', { station: 'lab' }) >= 2
          && sampleValue(m, 'deid_router_associations_total', { calling_ae: 'LABSCU' }) === 0) victim = r;
      }
      if (Date.now() > deadline) throw new Error('no replica was seen receiving LABSCU images while the association was open');
      if (!victim) await sleep(20);
    }
    victim!.child!.kill('SIGKILL');
    await new Promise((res) => victim!.child!.once('exit', res));
    phase(`${victim!.name} killed`);
    const spooledAtKill = spooled(victim!.stateDir);
    assert.ok(spooledAtKill > 0, 'the killed replica had images in its spool');
    await sleep(500);
    await startReplica(victim!);
    const sent = await Promise.all(sending);
    const retries = sent.reduce((n, s) => n + s.retries, 0);
    assert.ok(retries > 0, 'the kill interrupted at least one sender, which retried');

    phase(`senders done after ${retries} retries`);
    peers.push(await startStorescp({ dir: pacsDir, port: pacsPort, aeTitle: 'RESEARCH_PACS' }));
    await waitFor(async () => trio.every((r) => spooled(r.stateDir) === 0) && (await readReceived(pacsDir)).size >= refPacsImages.size, 60_000, 'every spool to drain');
    phase('spools drained');
    const restarted = await metrics(victim!.httpPort);
    assert.ok(sampleValue(restarted, 'deid_router_images_forwarded_total', { destination: 'pacs' }) >= spooledAtKill, 'the restarted replica forwarded what its predecessor spooled');

    // ---- Every image arrived; the union is byte for byte the single replica's output.
    const folder = folderOutputs(outgoing);
    const pacsImages = await readReceived(pacsDir);
    assert.equal(refFolder.size, expected.STUDYA.size - [...unsendable].filter((f) => share(0).includes(f) || share(2).includes(f)).length);
    assert.ok(refFolder.size > 40 && refPacsImages.size > 40, `${refFolder.size} + ${refPacsImages.size}`);
    for (const rel of refFolder.keys()) assert.ok(expected.STUDYA.has(rel), rel);
    for (const uid of refPacsImages.keys()) assert.ok(expected.T1.has(uid), uid);
    assert.deepEqual([...folder.keys()].sort(), [...refFolder.keys()].sort());
    for (const [rel, bytes] of refFolder) assert.ok(bytes.equals(folder.get(rel)!), `${rel} differs from the single replica's`);
    assert.deepEqual([...pacsImages.keys()].sort(), [...refPacsImages.keys()].sort());
    for (const [uid, bytes] of refPacsImages) assert.ok(bytes.equals(pacsImages.get(uid)!), `${uid} differs at the PACS`);
    // The work really was spread over the replicas.
    const perReplica = await Promise.all(trio.map(async (r) => sampleValue(await metrics(r.httpPort), 'deid_router_images_stored_total')));
    assert.ok(perReplica.filter((n) => n > 0).length >= 2, `images per replica after restart: ${perReplica.join(', ')}`);
  } finally {
    if (lb) await stopProcess(lb);
    await Promise.all(replicas.map(stopReplica));
    await Promise.all(peers.map((p) => p.stop()));
  }
});
