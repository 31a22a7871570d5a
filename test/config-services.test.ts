// Configuration of the network services of issue 11: DICOMweb destinations, several (TLS) listening
// endpoints, storage commitment. Every key is checked with a located message.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import { loadConfig } from '../src/config/load';
import { ConfigError } from '../src/config/types';
import { tempDir } from './helpers/tmp';

function routerYaml(text: string): string {
  const dir = tempDir('deid-config-svc-');
  writeFileSync(join(dir, 'router.yaml'), text);
  return dir;
}

function problems(dir: string): string[] {
  try {
    loadConfig(dir, {});
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return [];
}

describe('dicomweb destinations', () => {
  test('a valid one resolves with its defaults; check-config describes it without credentials', () => {
    const dir = routerYaml('destinations:\n  web: { type: dicomweb, url: "http://127.0.0.1:8042/dicom-web", auth: { basic: { username: u, password: s3cret } } }\n');
    const c = loadConfig(dir, {});
    const d = c.destinations.get('web');
    assert.deepEqual(d, { type: 'dicomweb', name: 'web', url: 'http://127.0.0.1:8042/dicom-web', auth: { basic: { username: 'u', password: 's3cret' } }, tls: undefined, maxConnections: 2 });
    const r = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', dir], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /web \(default\): DICOMweb STOW-RS http:\/\/127\.0\.0\.1:8042\/dicom-web, basic auth, 2 connections/);
    assert.doesNotMatch(r.stdout, /s3cret/);
  });

  test('every key is checked, with its location', () => {
    const p = problems(routerYaml([
      'destinations:',
      '  a: { type: dicomweb, url: "ftp://x/dicom-web", maxConnections: 0, tls: { ca: /nonexistent/ca.pem, rejectUnauthorised: false } }',
      '  b: { type: dicomweb, url: "http://user:pw@x/dw", auth: { bearer: "" } }',
      '  c: { type: dicomweb, url: "not a url", auth: { basic: { username: "a:b" }, bearer: t } }',
      '  d: { type: dicomweb, auth: { basic: { username: u, password: p, realm: r } } }',
      '  e: { type: dicomwbe, url: "http://x" }',
    ].join('\n') + '\n')).join('\n');
    assert.match(p, /destinations\.a\.url: must be http:\/\/ or https:\/\/, not ftp:/);
    assert.match(p, /destinations\.a\.maxConnections: must be an integer from 1 to 64/);
    assert.match(p, /destinations\.a\.tls\.ca: cannot read \/nonexistent\/ca\.pem: ENOENT/);
    assert.match(p, /destinations\.a\.tls\.rejectUnauthorised: unknown key \(did you mean "rejectUnauthorized"\?\)/);
    assert.match(p, /destinations\.a\.tls: applies to https:\/\/ URLs only/);
    assert.match(p, /destinations\.b\.url: must not carry credentials/);
    assert.match(p, /destinations\.b\.auth\.bearer: must be the token/);
    assert.match(p, /destinations\.c\.url: is not a valid URL/);
    assert.match(p, /destinations\.c\.auth: must be \{ bearer: TOKEN \} or \{ basic: \{ username, password \} \}/);
    assert.match(p, /destinations\.d\.url: must be the DICOMweb base URL/);
    assert.match(p, /destinations\.d\.auth\.basic\.realm: unknown key/);
    assert.match(p, /destinations\.e\.type: "dicomwbe" is not one of folder, dicom, dicomweb/);
  });
});

describe('listening endpoints', () => {
  test('a list of endpoints, one with TLS, resolves; check-config lists them', () => {
    const dir = routerYaml('');
    writeFileSync(join(dir, 'c.pem'), 'x');
    writeFileSync(join(dir, 'k.pem'), 'x');
    writeFileSync(join(dir, 'router.yaml'), `listen:\n  - { host: 0.0.0.0, port: 104 }\n  - { host: 0.0.0.0, port: 2762, tls: { cert: ${join(dir, 'c.pem')}, key: ${join(dir, 'k.pem')}, ca: ${join(dir, 'c.pem')}, requireClientCert: true } }\n`);
    const c = loadConfig(dir, {});
    assert.equal(c.listeners.length, 2);
    assert.equal(c.listen, c.listeners[0]);
    assert.deepEqual(c.listeners[1].tls, { cert: join(dir, 'c.pem'), key: join(dir, 'k.pem'), ca: join(dir, 'c.pem'), requireClientCert: true });
    const r = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', dir], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /listen: DEID_ROUTER on 0\.0\.0\.0:104\n/);
    assert.match(r.stdout, /listen: DEID_ROUTER on 0\.0\.0\.0:2762, TLS with client certificates/);
  });

  test('every key is checked, with its location', () => {
    const p = problems(routerYaml([
      'listen:',
      '  - { port: 104 }',
      '  - { port: 104 }',
      '  - { port: 2762, tls: { cert: /nonexistent/c.pem, requireClientCert: yes, ciphers: x } }',
      '  - { port: 2763, tls: { cert: /etc/hostname, key: /etc/hostname, requireClientCert: true } }',
      '  - { port: 2764, tsl: {} }',
    ].join('\n') + '\n')).join('\n');
    assert.match(p, /listen\[1\]: 127\.0\.0\.1:104 is also listen\[0\]/);
    assert.match(p, /listen\[2\]\.tls\.cert: cannot read \/nonexistent\/c\.pem: ENOENT/);
    assert.match(p, /listen\[2\]\.tls: needs cert and key/);
    assert.match(p, /listen\[2\]\.tls\.requireClientCert: must be true or false/);
    assert.match(p, /listen\[2\]\.tls\.ciphers: unknown key/);
    assert.match(p, /listen\[3\]\.tls\.requireClientCert: needs ca/);
    assert.match(p, /listen\[4\]\.tsl: unknown key \(did you mean "tls"\?\)/);
    assert.match(problems(routerYaml('listen: []\n')).join('\n'), /listen: must list at least one endpoint/);
  });
});

describe('storage commitment', () => {
  test('station Commitment address and the time limit are checked, with their location', () => {
    const ok = loadConfig(routerYaml('commitment: { timeLimitSeconds: 600 }\nstations:\n  ct: { AETitles: [CT1], Commitment: { aeTitle: CT1, host: 10.0.0.5, port: 104 } }\n'), {});
    assert.deepEqual(ok.commitment, { timeLimitSeconds: 600, sameAssociation: true, indexRetentionDays: 30 });
    const noSame = routerYaml('commitment: { sameAssociation: false }\nstations:\n  ct: { AETitles: [CT1], Commitment: { aeTitle: CT1, host: 10.0.0.5, port: 104 } }\n');
    assert.deepEqual(loadConfig(noSame, {}).commitment, { timeLimitSeconds: 3600, sameAssociation: false, indexRetentionDays: 30 });
    assert.equal(loadConfig(routerYaml('commitment: { indexRetentionDays: 7 }\n'), {}).commitment?.indexRetentionDays, 7);
    const shown = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', noSame], { encoding: 'utf8' });
    assert.equal(shown.status, 0, shown.stderr);
    assert.match(shown.stdout, /storage commitment: answers wait up to 3600 s for spooled images; result on a new association to the station's Commitment address; instances remembered 30 days/);
    assert.match(shown.stdout, /ct: .*; commitment reports to CT1 at 10\.0\.0\.5:104/);
    assert.deepEqual(ok.stations.get('ct')?.commitment, { aeTitle: 'CT1', host: '10.0.0.5', port: 104 });
    for (const bad of ['0', '1.5', '"30"', '3651']) {
      assert.match(problems(routerYaml(`commitment: { indexRetentionDays: ${bad} }\n`)).join('\n'), /commitment\.indexRetentionDays: must be a whole number of days from 1 to 3650/, bad);
    }
    const p = problems(routerYaml('commitment: { timeLimitSeconds: 0, timeLimit: 5, sameAssociation: "yes" }\nstations:\n  ct: { AETitles: [CT1], Commitment: { aeTitle: "", port: 70000, hots: x } }\n  mr: { Comitment: {} }\n')).join('\n');
    assert.match(p, /commitment\.timeLimitSeconds: must be a number of seconds from 1 to 604800/);
    assert.match(p, /commitment\.timeLimit: unknown key/);
    assert.match(p, /commitment\.sameAssociation: must be true or false/);
    assert.match(p, /stations\.ct\.Commitment\.aeTitle: must be 1 to 16 characters/);
    assert.match(p, /stations\.ct\.Commitment\.host: must be a host name or address/);
    assert.match(p, /stations\.ct\.Commitment\.port: must be a port number/);
    assert.match(p, /stations\.ct\.Commitment\.hots: unknown key \(did you mean "host"\?\)/);
    assert.match(p, /stations\.mr\.Comitment: unknown key \(did you mean "Commitment"\?\)/);
  });
});
