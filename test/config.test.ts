import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync, readFileSync, statSync, existsSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import { loadConfig } from '../src/config/load';
import { resolveSalt } from '../src/config/salt';
import { ConfigError } from '../src/config/types';
import { resolveStudy, sanitizePathComponent } from '../src/identify';
import { el, makeObject } from './helpers/build';
import { tempDir } from './helpers/tmp';

function dirWith(files: Record<string, unknown>): string {
  const dir = tempDir('deid-config-');
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content, null, 1));
  }
  return dir;
}

function problems(dir: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    loadConfig(dir, env);
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return [];
}

describe('configuration errors are located and clear', () => {
  test('misspelt action, misspelt keyword, hash on DA, example salts', () => {
    const dir = dirWith({
      'studies.json': {
        TRIALB: {
          AnonymizeTag: {
            PatientAge: { action: 'hsah' },
            PatientNmae: { action: 'clear' },
            PatientBirthDate: { action: 'hash' },
            PatientSex: { action: 'value', value: 'female' },
            AccessionNumber: { action: 'hash', salt: 'astring' },
          },
          AnonymizeVR: { XX: { action: 'clear' } },
          RemovePrivateTgas: true,
        },
      },
    });
    const p = problems(dir);
    const text = p.join('\n');
    assert.match(text, /studies\.json: studies\.TRIALB\.AnonymizeTag\.PatientAge\.action: "hsah" is not one of delete, clear, hash, keep, value, offset, regen/);
    assert.match(text, /PatientNmae: "PatientNmae" is not a DICOM keyword or tag \(did you mean "PatientName"/);
    assert.match(text, /PatientBirthDate\.action: hash cannot give a valid DA value/);
    assert.match(text, /PatientSex\.value: "female" is not a valid CS/);
    assert.match(text, /AccessionNumber\.salt: must be a secret string/);
    assert.match(text, /AnonymizeVR\.XX: "XX" is not a VR/);
    assert.match(text, /RemovePrivateTgas: unknown key \(did you mean "RemovePrivateTags"\?\)/);
    assert.equal(p.length, 7, text);
  });

  test('the example salt and an empty DEID_SALT-free salt are refused', () => {
    assert.match(problems(dirWith({ 'router.yaml': 'salt: RANDOM_UUID\n' })).join('\n'), /salt: is empty or an example value/);
    assert.match(problems(dirWith({ 'router.yaml': "salt: ''\n" })).join('\n'), /salt: is empty or an example value/);
    assert.match(problems(dirWith({ 'router.yaml': 'stateDir: /tmp/x\n' }), { DEID_SALT: 'changeme' }).join('\n'), /DEID_SALT: is empty or an example value/);
  });

  test('destinations and listen are checked', () => {
    const p = problems(dirWith({ 'router.yaml': 'listen: { port: 99999 }\ndestinations: { pacs: { type: dicom, host: h, port: 104 } }\ndefaultDestination: nowhere\n' })).join('\n');
    assert.match(p, /listen\.port: must be a port number/);
    assert.match(p, /destinations\.pacs\.aeTitle: must be 1 to 16 characters/);
    assert.match(p, /defaultDestination: "nowhere" is not one of the destinations/);
  });

  test('shutdownGraceSeconds: a number of seconds from 0 to 3600, 10 when absent', () => {
    assert.match(problems(dirWith({ 'router.yaml': 'shutdownGraceSeconds: soon\n' })).join('\n'), /shutdownGraceSeconds: must be a number of seconds from 0 to 3600/);
    assert.match(problems(dirWith({ 'router.yaml': 'shutdownGraceSeconds: -1\n' })).join('\n'), /shutdownGraceSeconds: must be/);
    assert.equal(loadConfig(dirWith({ 'router.yaml': 'shutdownGraceSeconds: 2.5\n' }), {}).shutdownGraceSeconds, 2.5);
    assert.equal(loadConfig(dirWith({ 'router.yaml': '' }), {}).shutdownGraceSeconds, 10);
  });

  test('check-config exits non-zero with the errors, zero with the resolved config', () => {
    const bad = dirWith({ 'studies.json': { S: { AnonymizeTag: { PatientNmae: { action: 'clear' } } } } });
    const r1 = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', bad], { encoding: 'utf8' });
    assert.equal(r1.status, 2);
    assert.match(r1.stderr, /PatientNmae/);
    assert.doesNotMatch(r1.stderr, /at .*\.js:\d+/); // no stack trace
    const r2 = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', 'config/'], { encoding: 'utf8' });
    assert.equal(r2.status, 0, r2.stderr);
    assert.match(r2.stdout, /MRC12345: study from StudyDescription split on "\^" index 0/);
  });
});

describe('salt', () => {
  test('generated once into the state directory with mode 0600, then reused', () => {
    const dir = dirWith({ 'router.yaml': '' });
    const state = join(dir, 'state');
    writeFileSync(join(dir, 'router.yaml'), `stateDir: ${state}\n`);
    const c = loadConfig(dir, {});
    const s1 = resolveSalt(c);
    assert.ok(s1.length >= 32);
    assert.equal(statSync(join(state, 'salt')).mode & 0o777, 0o600);
    assert.equal(resolveSalt(loadConfig(dir, {})), s1);
    assert.equal(resolveSalt(loadConfig(dir, { DEID_SALT: 'from-the-environment-1' })), 'from-the-environment-1');
  });
});

describe('station and study resolution (seed format)', () => {
  // stations.json / studies.json exactly as the original script's README describes them.
  const dir = dirWith({
    'stations.json': {
      default: { TagForStudy: 'ProtocolName', Split: null },
      MRC12345: { TagForStudy: 'StudyDescription', Split: '^', SplitIndex: 0 },
      CTSCANNER: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 5, AETitles: ['CT_AE'] },
    },
    'studies.json': {
      Supplement142: { RemovePrivateTags: true, AnonymizeTag: { AccessionNumber: { action: 'clear' } } },
      STUDYA: {
        RemovePrivateTags: true,
        AnonymizeTag: {
          PatientID: { action: 'hash', salt: 'per-tag-secret-1' },
          PatientName: { action: 'value', value: 'SUBJECT' },
          InstitutionName: { action: 'keep' },
        },
        AnonymizeVR: { PN: { action: 'hash' } },
      },
      MRSTUDY: { AnonymizeTag: { AccessionNumber: { action: 'keep' } } },
    },
  });
  const config = loadConfig(dir, {});

  test('station by calling AE, then by StationName, then default', () => {
    const obj = makeObject([el('StationName', 'SH', ' mrc12345 '), el('StudyDescription', 'LO', 'MRSTUDY^T1'), el('ProtocolName', 'LO', 'STUDYA^x')]);
    assert.equal(resolveStudy(config, 'CT_AE', obj).station.name, 'CTSCANNER');
    assert.equal(resolveStudy(config, 'ct_ae  ', obj).station.name, 'CTSCANNER');
    assert.equal(resolveStudy(config, 'OTHER', obj).station.name, 'MRC12345');
    assert.equal(resolveStudy(config, undefined, obj).studyName, 'MRSTUDY');
    const plain = makeObject([el('ProtocolName', 'LO', 'STUDYA')]);
    assert.equal(resolveStudy(config, undefined, plain).station.name, 'default');
    assert.equal(resolveStudy(config, undefined, plain).studyName, 'STUDYA');
  });

  test('split edge cases fall back to Supplement142, never crash', () => {
    const viaCt = (protocol: string | undefined) =>
      resolveStudy(config, 'CT_AE', makeObject(protocol === undefined ? [] : [el('ProtocolName', 'LO', protocol)]));
    assert.equal(viaCt('a^b').studyName, 'Supplement142'); // index 5 out of range
    assert.equal(viaCt(undefined).studyName, 'Supplement142'); // tag missing
    assert.equal(viaCt('').studyName, 'Supplement142');
    const r = viaCt('0^1^2^3^4^STUDYA');
    assert.equal(r.studyName, 'STUDYA');
    assert.equal(r.unknown, false);
    const obj = makeObject([el('StationName', 'SH', 'MRC12345'), el('StudyDescription', 'LO', '^^^')]);
    assert.equal(resolveStudy(config, undefined, obj).studyName, 'Supplement142');
  });

  test('unknownStudy: quarantine', () => {
    writeFileSync(join(dir, 'router.yaml'), 'unknownStudy: quarantine\n');
    const q = loadConfig(dir, {});
    const r = resolveStudy(q, undefined, makeObject([el('ProtocolName', 'LO', 'NOPE')]));
    assert.equal(r.study, undefined);
    assert.equal(r.unknown, true);
  });

  test('study names are safe path components', () => {
    assert.equal(sanitizePathComponent('../../etc'), '__.._etc');
    assert.equal(sanitizePathComponent('a/b\0c\nd'), 'a_b_c_d');
    assert.equal(sanitizePathComponent(''), '_');
    assert.ok(!sanitizePathComponent('..').startsWith('.'));
  });

  test('rules of the seed studies.json are compiled with their keys', () => {
    const s = config.studies.get('STUDYA')!;
    assert.equal(s.tagRules.get(0x00100020)!.action, 'hash');
    assert.equal(s.tagRules.get(0x00100020)!.salt, 'per-tag-secret-1');
    assert.equal(s.vrRules.get('PN')!.action, 'hash');
    assert.equal(s.removePrivateTags, true);
    assert.ok(existsSync(join(dir, 'stations.json')));
    assert.ok(readFileSync(join(dir, 'studies.json'), 'utf8').includes('AnonymizeVR'));
  });
});
