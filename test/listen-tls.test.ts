// Several listening endpoints, one of them DICOM TLS with client certificates, against dcmtk's
// storescu/echoscu +tls and a test CA made with openssl here.
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync, existsSync, statSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import { Writable } from 'stream';
import YAML from 'yaml';
import pino from 'pino';
import { loadConfig } from '../src/config/load';
import { startNode, type RunningNode } from '../src/commands/serve';
import { DeidPipeline } from '../src/pipeline';
import { readPart10 } from '../src/dicom/read';
import { elementString, findElement } from '../src/dicom/dataset';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run } from './helpers/dcmtk';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'listen-tls-test-salt-0b5e55ed';
const skip = !corpusAvailable() || !hasTool('storescu') || !hasTool('openssl');

function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate it signed; and a client of another CA. */
function makePki(dir: string): void {
  const p = (f: string) => join(dir, f);
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('ca.key'), '-out', p('ca.pem'), '-subj', '/CN=Test Hospital CA', '-days', '2']);
  const leaf = (name: string, cn: string, ext: string, ca = 'ca') => {
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`), '-subj', `/CN=${cn}`]);
    writeFileSync(p(`${name}.ext`), ext);
    openssl(['x509', '-req', '-in', p(`${name}.csr`), '-CA', p(`${ca}.pem`), '-CAkey', p(`${ca}.key`), '-CAcreateserial', '-out', p(`${name}.pem`), '-days', '2', '-extfile', p(`${name}.ext`)]);
  };
  leaf('server', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  leaf('client', 'CT-SCANNER-7', 'extendedKeyUsage=clientAuth\n');
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('rogue-ca.key'), '-out', p('rogue-ca.pem'), '-subj', '/CN=Rogue CA', '-days', '2']);
  leaf('rogue', 'ROGUE-DEVICE-42', 'extendedKeyUsage=clientAuth\n', 'rogue-ca');
}

const files = (dir: string): string[] => {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) out.push(...files(p));
    else if (f.endsWith('.dcm')) out.push(p);
  }
  return out;
};

describe('listening endpoints: plain and DICOM TLS side by side', { skip }, () => {
  let dir: string;
  before(() => {
    dir = tempDir('deid-listen-tls-');
    makePki(dir);
  });

  test('trusted client over TLS is served; untrusted, certificate-less and plain-TCP clients on the TLS port fail; the plain port keeps working', async () => {
    const out = join(dir, 'out');
    const file = join(dir, 'router.yaml');
    writeFileSync(file, YAML.stringify({
      listen: [
        { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0 },
        { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0, tls: { cert: join(dir, 'server.pem'), key: join(dir, 'server.key'), ca: join(dir, 'ca.pem'), requireClientCert: true } },
      ],
      stateDir: join(dir, 'state'),
      destinations: { out: { type: 'folder', path: out } },
      stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['STORESCU', 'ECHOSCU'] } },
    }));
    const config = loadConfig(file, {});
    assert.equal(config.listeners.length, 2);
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, new Writable({ write(c, _e, cb) { lines.push(String(c)); cb(); } }));
    const node: RunningNode = await startNode(config, SALT, logger);
    const [plainPort, tlsPort] = node.scps.map((s) => s.port);
    const ct = join(CORPUS_PHI, 'pydicom__CT_small.dcm');
    const mr = join(CORPUS_PHI, 'pydicom__MR_small.dcm');
    const tlsArgs = (name: string, ca = 'ca.pem') => ['+tls', join(dir, `${name}.key`), join(dir, `${name}.pem`), '+cf', join(dir, ca)];
    try {
      // Trusted client: echo and store over TLS.
      const echo = await run('echoscu', [...tlsArgs('client'), '-aet', 'ECHOSCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(tlsPort)]);
      assert.equal(echo.code, 0, echo.stderr);
      const stored = await run('storescu', [...tlsArgs('client'), '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(tlsPort), ct]);
      assert.equal(stored.code, 0, stored.stderr);
      const pipeline = new DeidPipeline(config, SALT);
      const ctUid = pipeline.process({ kind: 'file', bytes: readFileSync(ct) }).uids!.sopInstanceUid;
      const sopOf = (f: string) => elementString(findElement(readPart10(readFileSync(f)).dataset, 0x00080018));
      assert.deepEqual(files(out).map(sopOf), [ctUid]);

      // The AE policy is the same over TLS: an unknown calling AE is rejected.
      const unknownAe = await run('echoscu', [...tlsArgs('client'), '-aet', 'NOBODY', '-aec', 'DEID_ROUTER', '127.0.0.1', String(tlsPort)]);
      assert.notEqual(unknownAe.code, 0);
      assert.match(unknownAe.stderr + unknownAe.stdout, /Calling AE Title Not Recognized/i);

      // A client whose certificate another CA signed, one with no certificate, and plain TCP: refused.
      const rogue = await run('storescu', [...tlsArgs('rogue'), '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(tlsPort), mr]);
      assert.notEqual(rogue.code, 0, 'a client of another CA must fail');
      assert.doesNotMatch(rogue.stdout + rogue.stderr, /Association Accepted/i);
      const anonymous = await run('storescu', ['+tla', '+cf', join(dir, 'ca.pem'), '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(tlsPort), mr]);
      assert.notEqual(anonymous.code, 0, 'a client without a certificate must fail');
      const plainOnTls = await run('storescu', ['-to', '5', '-ta', '5', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(tlsPort), mr]);
      assert.notEqual(plainOnTls.code, 0, 'plain TCP on the TLS port must fail');
      assert.equal(files(out).length, 1, 'nothing from the refused clients was stored');

      // The plain port keeps working.
      const plain = await run('storescu', ['-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(plainPort), mr]);
      assert.equal(plain.code, 0, plain.stderr);
      const mrUid = pipeline.process({ kind: 'file', bytes: readFileSync(mr) }).uids!.sopInstanceUid;
      assert.deepEqual(files(out).map(sopOf).sort(), [ctUid, mrUid].sort());
    } finally {
      await node.stop();
    }
    // Each refusal is logged with its reason; no certificate contents (subjects) in the log.
    const refusals = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'TLS connection refused');
    assert.ok(refusals.length >= 3, JSON.stringify(refusals));
    for (const r of refusals) assert.ok(typeof r.reason === 'string' && r.reason.length > 0 && r.peer === '127.0.0.1', JSON.stringify(r));
    const reasons = refusals.map((r) => r.reason as string);
    assert.ok(reasons.some((r) => /not a TLS client/.test(r)), JSON.stringify(reasons));
    assert.ok(reasons.some((r) => /^client certificate not trusted: [A-Z_]+$/.test(r)), JSON.stringify(reasons));
    assert.ok(reasons.some((r) => /no certificate/.test(r)), JSON.stringify(reasons));
    const all = lines.join('');
    for (const secret of ['CT-SCANNER-7', 'ROGUE-DEVICE-42', 'Rogue CA', 'Test Hospital CA', 'BEGIN CERTIFICATE']) assert.ok(!all.includes(secret), secret);
  });
});
