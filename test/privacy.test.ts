// Privacy of what the router says and where it writes: no planted patient value in any log line
// or quarantine reason (serve and anonymize at trace level), the salt never printed, and study
// names cannot lead a path out of the output folder.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'fs';
import { tmpdir } from 'os';
import { join, relative, resolve, sep } from 'path';
import YAML from 'yaml';
import { phiCorpusDir } from './helpers/corpus';
import { PHI_MARKERS } from './helpers/leaks';
import { el } from './helpers/build';
import { makeVariants } from './helpers/peers';
import { freePort, run, waitForPort } from './helpers/dcmtk';
import { hasTool } from './helpers/tools';
import { readPart10 } from '../src/dicom/read';
import { writePart10 } from '../src/dicom/write';
import { elementString, findElement, type DicomObject, type Element } from '../src/dicom/dataset';
import { sanitizePathComponent } from '../src/identify';
import { tempDir } from './helpers/tmp';

const PHI = phiCorpusDir();
const PROTOCOL_NAME = 0x00181030;
const SPECIFIC_CHARACTER_SET = 0x00080005;

/** A fresh salt per run: finding it anywhere means it was printed, not a coincidence. */
const SALT = `privacy-${randomBytes(12).toString('hex')}`;

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, ['dist/cli.js', ...args], { env: { ...process.env, ...env }, timeout: 60_000 });
}

/** Original UIDs of the generated corpus: logs must not carry them either. */
function originalUids(): string[] {
  const out = new Set<string>();
  for (const f of readdirSync(PHI).filter((x) => x.endsWith('.dcm'))) {
    try {
      const o = readPart10(readFileSync(join(PHI, f)));
      for (const t of [0x00080018, 0x0020000d, 0x0020000e]) {
        const u = elementString(findElement(o.dataset, t));
        if (u && u.length > 12) out.add(u);
      }
    } catch { /* unreadable on purpose: nothing to look for */ }
  }
  return [...out];
}

/** What of the planted data (and, given, other secrets) the bytes hold, each with the text
 * around its first occurrence. */
function leaksIn(bytes: Buffer, extra: string[] = []): string[] {
  const needles = [...PHI_MARKERS, ...extra.map((s) => Buffer.from(s, 'utf8'))];
  return needles.filter((m) => bytes.includes(m)).map((m) => {
    const at = bytes.indexOf(m);
    return `${m.toString('latin1')} in "${bytes.toString('latin1', Math.max(0, at - 80), at + m.length + 40)}"`;
  });
}

function reasonFiles(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.reason.json')).map((f) => join(dir, f)) : [];
}

/** The image with this ProtocolName, in UTF-8 (the name may be any text). */
function setProtocolName(obj: DicomObject, name: string): DicomObject {
  const dataset: Element[] = obj.dataset.filter((e) => e.tag !== PROTOCOL_NAME && e.tag !== SPECIFIC_CHARACTER_SET);
  dataset.push(el('ProtocolName', 'LO', name), el('SpecificCharacterSet', 'CS', 'ISO_IR 192'));
  dataset.sort((a, b) => a.tag - b.tag);
  return { ...obj, dataset };
}

/** n copies of a generated file, each its own SOP instance, with the given ProtocolName. */
function variantsNamed(file: string, names: string[], seed: number): Buffer[] {
  return makeVariants(readFileSync(join(PHI, file)), names.length, seed).map((v, i) => writePart10(setProtocolName(readPart10(v.bytes), names[i])));
}

/** Images the router must refuse, each for a different reason, all full of planted data. */
function refusedImages(dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  const ct = readFileSync(join(PHI, 'pydicom__CT_small.dcm'));
  const obj = readPart10(ct);
  const files: Array<[string, Buffer]> = [
    ['truncated.dcm', ct.subarray(0, 3000)], // read fails mid-dataset
    ['no-series.dcm', writePart10({ ...obj, dataset: obj.dataset.filter((e) => e.tag !== 0x0020000e) })],
    ['no-study.dcm', writePart10({ ...obj, dataset: obj.dataset.filter((e) => e.tag !== 0x0020000d) })],
  ];
  return files.map(([name, bytes]) => {
    writeFileSync(join(dir, name), bytes);
    return join(dir, name);
  });
}

describe('privacy: what anonymize prints and keeps', () => {
  test('trace-level logs, summary and quarantine reasons hold no planted value, original UID or salt', () => {
    const base = tempDir('deid-priv-anon-');
    const inc = join(base, 'in');
    mkdirSync(inc);
    for (const f of readdirSync(PHI).filter((x) => x.endsWith('.dcm'))) copyFileSync(join(PHI, f), join(inc, f));
    refusedImages(join(inc, 'refused'));
    // An unconfigured study name that is itself patient data: it must not be echoed anywhere.
    variantsNamed('pydicom__MR_small.dcm', ['ZZPHIUNKNOWN^ZZPID999'], 11).forEach((b, i) => writeFileSync(join(inc, `unknown-${i}.dcm`), b));
    const cfgDir = join(base, 'cfg');
    mkdirSync(cfgDir);
    writeFileSync(join(cfgDir, 'router.yaml'), YAML.stringify({
      stateDir: join(base, 'state'), unknownStudy: 'quarantine',
      destinations: { outgoing: { type: 'folder', path: join(base, 'unused') } },
      stations: { default: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['STORESCU'] } },
      studies: JSON.parse(readFileSync('config/studies.json', 'utf8')),
    }));
    const r = cli(['anonymize', '--config', cfgDir, '--log-level', 'trace', '--quarantine', join(base, 'q'), inc, join(base, 'out')], { DEID_SALT: SALT });
    const printed = Buffer.concat([r.stdout, r.stderr]);
    assert.match(r.stdout.toString(), /processed \d+, quarantined [1-9]\d*/, printed.toString().slice(0, 2000));
    assert.ok(r.stderr.length > 0, 'trace level prints log lines');
    const uids = originalUids();
    assert.deepEqual(leaksIn(printed, [SALT, ...uids]), [], 'stdout/stderr');
    const reasons = reasonFiles(join(base, 'q'));
    assert.ok(reasons.length >= 4, `${reasons.length} reason files`);
    for (const f of reasons) assert.deepEqual(leaksIn(readFileSync(f), [SALT, ...uids]), [], relative(base, f));
  });

  test('a generated salt is written to its file, never printed', () => {
    const base = tempDir('deid-priv-gen-');
    mkdirSync(join(base, 'in'));
    copyFileSync(join(PHI, 'pydicom__MR_small.dcm'), join(base, 'in', 'a.dcm'));
    writeFileSync(join(base, 'router.yaml'), YAML.stringify({ stateDir: join(base, 'state') }));
    const env = { ...process.env };
    delete env.DEID_SALT;
    const r = spawnSync(process.execPath, ['dist/cli.js', 'anonymize', '--config', join(base, 'router.yaml'), '--log-level', 'trace', join(base, 'in'), join(base, 'out')], { env });
    assert.equal(r.status, 0, r.stderr.toString());
    const salt = readFileSync(join(base, 'state', 'salt'), 'utf8').trim();
    assert.ok(salt.length >= 32);
    assert.match(r.stderr.toString(), /generated/);
    assert.ok(!Buffer.concat([r.stdout, r.stderr]).includes(salt));
  });
});

describe('privacy: the salt is never printed', () => {
  function configWith(base: string, router: Record<string, unknown>, studies?: unknown): string {
    const dir = join(base, `cfg-${randomBytes(3).toString('hex')}`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify({ stateDir: join(base, 'state'), ...router }));
    if (studies) writeFileSync(join(dir, 'studies.json'), JSON.stringify(studies));
    return dir;
  }

  test('check-config with the salt in the file, in DEID_SALT, in a salt file, per study and per rule', () => {
    const base = tempDir('deid-priv-salt-');
    const saltFile = join(base, 'salt.txt');
    writeFileSync(saltFile, `${SALT}-file\n`);
    const studySalt = `${SALT}-study`;
    const ruleSalt = `${SALT}-rule`;
    const studies = { STUDYA: { salt: studySalt, AnonymizeTag: { PatientID: { action: 'hash', salt: ruleSalt } } } };
    const runs = [
      cli(['check-config', '--config', configWith(base, { salt: SALT }, studies)], { DEID_SALT: '' }),
      cli(['check-config', '--config', configWith(base, {}, studies)], { DEID_SALT: SALT }),
      cli(['check-config', '--config', configWith(base, { saltFile }, studies)], { DEID_SALT: '' }),
    ];
    for (const r of runs) {
      assert.equal(r.status, 0, r.stderr.toString());
      assert.match(r.stdout.toString(), /salt: (from (config|env)|file )/);
      assert.deepEqual(leaksIn(Buffer.concat([r.stdout, r.stderr]), [SALT, studySalt, ruleSalt]), []);
    }
  });

  test('configuration errors do not echo the salt, even when the file around it is broken', () => {
    const base = tempDir('deid-priv-salterr-');
    const broken: string[] = [
      // A wrong value elsewhere in an otherwise valid file.
      YAML.stringify({ salt: SALT, stateDir: join(base, 'state'), unknownStudy: 'sometimes' }),
      // YAML that does not parse, right around the salt line.
      `salt: ${SALT}\nlisten: [aeTitle: X\n  port: : 1\n`,
      `stateDir: ${join(base, 'state')}\nsalt: "${SALT}\n`,
      // A salt of the wrong type.
      YAML.stringify({ salt: [SALT], stateDir: join(base, 'state') }),
      YAML.stringify({ salt: { value: SALT }, stateDir: join(base, 'state') }),
    ];
    broken.forEach((text, i) => {
      const f = join(base, `broken-${i}.yaml`);
      writeFileSync(f, text);
      for (const command of ['check-config', 'serve']) {
        const r = cli([command, '--config', f], { DEID_SALT: '' });
        assert.notEqual(r.status, 0, `${command} broken-${i} must fail`);
        assert.ok(r.stderr.length > 0, `${command} broken-${i} says why`);
        assert.deepEqual(leaksIn(Buffer.concat([r.stdout, r.stderr]), [SALT]), [], `${command} broken-${i}: ${r.stderr.toString().slice(0, 300)}`);
      }
    });
    // A bad study salt is named, not shown.
    const dir = join(base, 'bad-study');
    mkdirSync(dir);
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify({ salt: SALT, stateDir: join(base, 'state') }));
    writeFileSync(join(dir, 'studies.json'), JSON.stringify({ S: { salt: 42, AnonymizeTag: { PatientID: { action: 'hash', salt: ['x', SALT] } } } }));
    const r = cli(['check-config', '--config', dir], { DEID_SALT: '' });
    assert.notEqual(r.status, 0);
    assert.deepEqual(leaksIn(Buffer.concat([r.stdout, r.stderr]), [SALT]), [], r.stderr.toString());
  });
});

describe('privacy: what serve prints and keeps', { skip: !hasTool('dcmsend') || !hasTool('storescu') }, () => {
  test('trace-level logs of the whole corpus, refused images and refused callers hold no planted value, original UID or salt', async () => {
    const base = tempDir('deid-priv-serve-');
    const port = await freePort();
    writeFileSync(join(base, 'router.yaml'), YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port },
      stateDir: join(base, 'state'), unknownStudy: 'quarantine',
      destinations: { outgoing: { type: 'folder', path: join(base, 'out') } },
      stations: { default: { TagForStudy: 'ProtocolName', Split: '^', SplitIndex: 0, AETitles: ['STORESCU'] } },
      studies: JSON.parse(readFileSync('config/studies.json', 'utf8')),
    }));
    const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', join(base, 'router.yaml'), '--log-level', 'trace'], {
      env: { ...process.env, DEID_SALT: SALT }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => out.push(d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitForPort(port);
      await run('dcmsend', ['-nh', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(port), '--scan-directories', PHI], { timeoutMs: 120_000 });
      const refusedDir = join(base, 'refused');
      const refused = refusedImages(refusedDir).filter((f) => !f.endsWith('truncated.dcm')); // storescu will not send a broken file
      variantsNamed('pydicom__MR_small.dcm', ['ZZPHIUNKNOWN^ZZPID999'], 12).forEach((b, i) => {
        writeFileSync(join(refusedDir, `unknown-${i}.dcm`), b);
        refused.push(join(refusedDir, `unknown-${i}.dcm`));
      });
      for (const f of refused) await run('storescu', ['-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(port), f]);
      await run('echoscu', ['-aet', 'STRANGER', '-aec', 'DEID_ROUTER', '127.0.0.1', String(port)]);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
    const printed = Buffer.concat(out);
    assert.match(printed.toString(), /"level":(10|20)/, 'debug or trace lines were written');
    const stored = readdirSync(join(base, 'out'), { recursive: true }).map(String).filter((f) => f.endsWith('.dcm'));
    assert.ok(stored.length >= 40, `${stored.length} images stored`);
    assert.match(printed.toString(), /quarantine/);
    const uids = originalUids();
    assert.deepEqual(leaksIn(printed, [SALT, ...uids]), [], 'serve output');
    const reasons = reasonFiles(join(base, 'state', 'quarantine'));
    assert.ok(reasons.length >= 3, `${reasons.length} reason files`);
    for (const f of reasons) assert.deepEqual(leaksIn(readFileSync(f), [SALT, ...uids]), [], relative(base, f));
  });
});

describe('privacy: study names cannot leave the output folder', () => {
  const HOSTILE = [
    '..', '.', '../escape', '../../../../tmp/escape', 'a/../../b', '..\\..\\win', '/abs/olute', 'x\0y', 'line\nbreak',
    'tab\tand\rcr', '\x1b[31mred', 'bell\x07', 'del\x7f', 'c1\u0085next', '\u202eright-to-left', 'zero\u200bwidth',
    ' .. ', '...', '.hidden', '~', '-', 'CON', '', '   ', 'é'.repeat(100), '😀'.repeat(40), 'a'.repeat(300),
  ];

  test('sanitizePathComponent gives one harmless path component for every hostile name', () => {
    const root = resolve(tmpdir(), 'root');
    const seen = new Map<string, string>();
    for (const name of HOSTILE) {
      const s = sanitizePathComponent(name);
      const show = JSON.stringify(name);
      assert.ok(s.length > 0, show);
      assert.ok(s !== '.' && s !== '..', `${show} -> ${s}`);
      assert.ok(!s.startsWith('.'), `${show} -> ${s}: hidden or relative`);
      assert.doesNotMatch(s, /[/\\]/, show);
      assert.doesNotMatch(s, /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]/u, show);
      assert.ok([...s].length <= 64, `${show}: ${[...s].length} characters`);
      assert.ok(!/[\ud800-\udbff]$/.test(s), `${show}: cut inside a character`);
      assert.equal(Buffer.from(s, 'utf8').toString('utf8'), s, `${show}: not valid text`);
      const p = resolve(root, s);
      assert.equal(p, root + sep + s, `${show} -> ${s} leaves ${root}`);
      seen.set(s, name);
    }
    // Sanitizing is stable: a sanitized name stays as it is.
    for (const s of seen.keys()) assert.equal(sanitizePathComponent(s), s);
  });

  test('anonymize: images of studies with hostile names land inside OUTGOING, one folder per study', () => {
    const base = tempDir('deid-priv-path-');
    const names = HOSTILE.filter((n) => n.trim() !== '' && !n.includes('\0') && !/[\\^]/.test(n));
    const studies: Record<string, unknown> = {};
    for (const n of names) studies[n] = { RemovePrivateTags: true };
    const cfgDir = join(base, 'cfg');
    mkdirSync(cfgDir);
    writeFileSync(join(cfgDir, 'router.yaml'), YAML.stringify({
      stateDir: join(base, 'state'),
      stations: { default: { TagForStudy: 'ProtocolName', Split: null, AETitles: ['STORESCU'] } },
      studies,
    }));
    const inc = join(base, 'in');
    mkdirSync(inc);
    variantsNamed('pydicom__CT_small.dcm', names, 21).forEach((b, i) => writeFileSync(join(inc, `${i}.dcm`), b));
    const outDir = join(base, 'deep', 'out');
    const r = cli(['anonymize', '--config', cfgDir, '--quarantine', join(base, 'q'), inc, outDir], { DEID_SALT: SALT });
    assert.equal(r.status, 0, r.stdout.toString() + r.stderr.toString());
    // Nothing was created anywhere but the expected places.
    assert.deepEqual(readdirSync(base).sort(), ['cfg', 'deep', 'in', 'state'].filter((d) => existsSync(join(base, d))).sort());
    assert.deepEqual(readdirSync(join(base, 'deep')), ['out']);
    const written = readdirSync(outDir, { recursive: true }).map(String).filter((f) => f.endsWith('.dcm'));
    assert.equal(written.length, names.length);
    const folders = new Set(written.map((f) => f.split(sep)[0]));
    for (const n of names) assert.ok(folders.has(sanitizePathComponent(n)), `${JSON.stringify(n)} -> ${sanitizePathComponent(n)} not among ${[...folders].join(' | ')}`);
    for (const f of written) {
      const parts = f.split(sep);
      assert.equal(parts.length, 4, f);
      assert.ok(resolve(outDir, f).startsWith(outDir + sep), f);
    }
  });
});
