// The Dockerfile, docker-compose.yml, deploy/haproxy and deploy/kubernetes must name the same
// ports, volumes, config paths, salt file, health paths and CLI command as the code and its
// container configuration (deploy/config), so they cannot drift apart. The compose file is also
// validated by a real compose client where one is installed (Debian's docker-compose needs no daemon).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'child_process';
import { readFileSync, writeFileSync } from 'fs';
import { dirname, join, posix } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { HEALTH_PATH, READY_PATH } from '../src/observe/http';
import type { DicomDestinationConfig, FolderDestinationConfig, RouterConfig } from '../src/config/types';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** The Dockerfile's instructions, continuation lines joined. */
function dockerfile(): Array<{ op: string; args: string }> {
  const text = readFileSync('Dockerfile', 'utf8').replace(/\\\n/g, ' ');
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')).map((l) => {
    const m = /^(\S+)\s+(.*)$/.exec(l)!;
    return { op: m[1].toUpperCase(), args: m[2].trim() };
  });
}

const CONTAINER_CONFIG_DIR = '/etc/dicom-deid-router';

function containerConfig(): RouterConfig {
  // Loaded as the container would (no DEID_SALT: the salt is the mounted file).
  return loadConfig('deploy/config', {});
}

function dockerFacts() {
  const ins = dockerfile();
  const last = <T>(op: string, f: (a: string) => T) => f(ins.filter((i) => i.op === op).pop()!.args);
  const from = ins.find((i) => i.op === 'ARG' && i.args.startsWith('NODE_IMAGE='))!.args.split('=')[1];
  return {
    nodeImage: from,
    exposed: ins.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/)).map(Number).sort(),
    volumes: last('VOLUME', (a) => JSON.parse(a) as string[]).sort(),
    entrypoint: last('ENTRYPOINT', (a) => JSON.parse(a) as string[]),
    cmd: last('CMD', (a) => JSON.parse(a) as string[]),
    healthcheck: last('HEALTHCHECK', (a) => a),
    user: last('USER', (a) => a),
    copiesConfig: ins.some((i) => i.op === 'COPY' && i.args === `deploy/config ${CONTAINER_CONFIG_DIR}`),
  };
}

test('Dockerfile: ports, volumes, health check and command are those of the code and deploy/config', () => {
  const c = containerConfig();
  const d = dockerFacts();
  const folder = [...c.destinations.values()].find((x): x is FolderDestinationConfig => x.type === 'folder')!;
  assert.deepEqual(d.exposed, [c.http!.port, c.listen.port].sort());
  assert.deepEqual(d.volumes, [c.stateDir, folder.path, CONTAINER_CONFIG_DIR].sort());
  assert.equal(d.cmd.join(' '), `serve --config ${CONTAINER_CONFIG_DIR}`);
  assert.deepEqual(d.entrypoint, ['node', '/app/dist/cli.js']);
  assert.ok(d.copiesConfig, 'the image carries deploy/config as its default configuration');
  assert.match(d.healthcheck, new RegExp(`http://127\\.0\\.0\\.1:${c.http!.port}${HEALTH_PATH}`));
  assert.notEqual(d.user, 'root');
  // The salt is never baked in: a file mounted at run time.
  assert.equal(c.salt, undefined);
  assert.equal(c.saltFile, '/run/secrets/deid_salt');
  assert.doesNotMatch(readFileSync('Dockerfile', 'utf8'), /DEID_SALT|\bsalt\b.*=/i);
  // The command exists in the CLI, and the container configuration passes its checks.
  const help = spawnSync(process.execPath, ['dist/cli.js', '--help'], { encoding: 'utf8' }).stdout;
  assert.match(help, new RegExp(`dicom-deid-router ${d.cmd[0]} --config PATH`));
  const check = spawnSync(process.execPath, ['dist/cli.js', 'check-config', '--config', 'deploy/config'], { encoding: 'utf8', env: { ...process.env, DEID_SALT: '' } });
  assert.equal(check.status, 0, check.stderr);
});

test('Node versions: engines covers the Node of CI and of the image; the image is an LTS line still maintained', () => {
  const engines = JSON.parse(readFileSync('package.json', 'utf8')).engines.node as string;
  const majors = engines.split('||').map((r) => Number(/\^(\d+)\./.exec(r.trim())?.[1]));
  const imageMajor = Number(/^node:(\d+)-/.exec(dockerFacts().nodeImage)?.[1]);
  assert.ok([22, 24].includes(imageMajor), `image Node ${imageMajor}`);
  assert.ok(majors.includes(imageMajor), `engines "${engines}" lacks the image's Node ${imageMajor}`);
  assert.ok(majors.includes(Number(process.versions.node.split('.')[0])), `engines "${engines}" lacks this Node ${process.versions.node}`);
  assert.match(readFileSync('README.md', 'utf8'), new RegExp(`node:${imageMajor}`), 'the README names the image\'s Node');
});

test('stations.json and studies.json of deploy/config are the example ones of config/', () => {
  for (const f of ['stations.json', 'studies.json']) assert.equal(readFileSync(join('deploy/config', f), 'utf8'), readFileSync(join('config', f), 'utf8'), f);
});

function composeFile(): Obj {
  return YAML.parse(readFileSync('docker-compose.yml', 'utf8'), { merge: true }) as Obj;
}

test('docker-compose.yml: replicas, volumes, salt secret, command and the research PACS agree with the code', () => {
  const c = containerConfig();
  const d = dockerFacts();
  const compose = composeFile();
  const routers = Object.entries(compose.services as Obj).filter(([name]) => name.startsWith('router-'));
  assert.ok(routers.length >= 3, 'three replicas for --profile scale');
  const folder = [...c.destinations.values()].find((x): x is FolderDestinationConfig => x.type === 'folder')!;
  const stateVolumes = new Set<string>();
  for (const [name, s] of routers) {
    assert.deepEqual(s.command, d.cmd, name);
    assert.equal(s.build, '.', name);
    const mounts = new Map((s.volumes as string[]).map((v) => { const [src, target] = v.split(':'); return [target, src]; }));
    assert.equal(mounts.get(CONTAINER_CONFIG_DIR), './deploy/config', name);
    assert.equal(mounts.get(folder.path), 'outgoing', `${name}: one outgoing volume for all`);
    const state = mounts.get(c.stateDir)!;
    assert.ok(state && !state.startsWith('.'), `${name}: a named state volume`);
    stateVolumes.add(state);
    assert.ok(state in compose.volumes && 'outgoing' in compose.volumes);
    const secret = (s.secrets as Obj[])[0];
    assert.equal(posix.join('/run/secrets', secret.target), c.saltFile, name);
    assert.equal(secret.source, 'deid_salt');
    const http = (s.ports as string[]).map((p) => p.split(':')).find((p) => Number(p[2]) === c.http!.port);
    assert.ok(http && http[0] === '127.0.0.1', `${name}: HTTP face published on loopback only`);
    if (name !== 'router-1') assert.deepEqual(s.profiles, ['scale'], name);
  }
  assert.equal(stateVolumes.size, routers.length, 'a state volume per replica');
  assert.ok(compose.secrets.deid_salt.file, 'the salt is a compose secret from a file');
  // The research PACS the router forwards to is the Orthanc service, on its DICOM port.
  const pacs = [...c.destinations.values()].find((x): x is DicomDestinationConfig => x.type === 'dicom')!;
  const orthanc = compose.services[pacs.host] as Obj;
  assert.match(orthanc.image, /^jodogne\/orthanc:\d/);
  const orthancJson = JSON.parse(readFileSync('deploy/orthanc/orthanc.json', 'utf8'));
  assert.equal(orthancJson.DicomPort, pacs.port);
  assert.equal(orthancJson.DicomAet, pacs.aeTitle);
  assert.ok((orthanc.ports as string[]).some((p) => p.endsWith(`:${orthancJson.HttpPort}`)), 'Orthanc web UI published');
  assert.ok((orthanc.volumes as string[]).includes('./deploy/orthanc/orthanc.json:/etc/orthanc/orthanc.json:ro'));
  // HAProxy: the one DICOM port, in front of every replica.
  const lb = compose.services.haproxy as Obj;
  assert.ok((lb.ports as string[]).includes(`${c.listen.port}:${c.listen.port}`));
  const cfg = readFileSync('deploy/haproxy/haproxy.cfg', 'utf8');
  assert.match(cfg, /^\s*mode tcp$/m);
  assert.match(cfg, /^\s*balance leastconn$/m);
  assert.match(cfg, new RegExp(`^\\s*bind :${c.listen.port}$`, 'm'));
  assert.match(cfg, new RegExp(`http-check send meth GET uri ${READY_PATH}$`, 'm'));
  assert.match(cfg, new RegExp(`default-server check port ${c.http!.port} `, 'm'));
  if (hasTool('haproxy')) {
    // Debian's haproxy checks the file (the compose host names do not resolve here: those servers
    // are only disabled, as in compose before --profile scale).
    const checked = spawnSync('haproxy', ['-c', '-f', 'deploy/haproxy/haproxy.cfg'], { encoding: 'utf8' });
    assert.equal(checked.status, 0, checked.stderr);
  }
  // Prometheus scrapes every replica's HTTP face.
  const prom = YAML.parse(readFileSync('deploy/prometheus/prometheus.yml', 'utf8')) as Obj;
  const job = (prom.scrape_configs as Obj[]).find((j) => j.job_name === 'dicom-deid-router')!;
  assert.equal(job.metrics_path, '/metrics');
  assert.deepEqual(job.static_configs[0].targets, routers.map(([name]) => `${name}:${c.http!.port}`));
  assert.ok((compose.services.prometheus.volumes as string[]).includes('./deploy/prometheus:/etc/prometheus:ro'));
  assert.deepEqual(prom.rule_files, ['/etc/prometheus/alerts.yml']);
  const servers = [...cfg.matchAll(/^\s*server (\S+) (\S+):(\d+)$/gm)].map((m) => [m[2], Number(m[3])]);
  assert.deepEqual(servers, routers.map(([name]) => [name, c.listen.port]));
});

test('docker-compose.yml is valid for a real compose client, with and without --profile scale', (t) => {
  if (!hasTool('docker-compose')) return t.skip('docker-compose is not installed');
  const dir = tempDir('deid-compose-');
  const salt = join(dir, 'salt');
  writeFileSync(salt, 'a'.repeat(64));
  const run = (args: string[]) => spawnSync('docker-compose', ['-f', 'docker-compose.yml', ...args], { encoding: 'utf8', env: { ...process.env, DEID_SALT_FILE: salt } });
  const plain = run(['config']);
  assert.equal(plain.status, 0, plain.stderr);
  const resolved = YAML.parse(plain.stdout) as Obj;
  assert.equal(resolved.secrets.deid_salt.file, salt);
  assert.deepEqual(resolved.services['router-1'].command, dockerFacts().cmd);
  // What runs without a profile, and what --profile scale adds (as the client resolved it).
  const profiles = Object.fromEntries(Object.entries(resolved.services as Obj).map(([n, v]) => [n, (v as Obj).profiles ?? []]));
  assert.deepEqual(profiles, { haproxy: [], orthanc: [], prometheus: ['monitoring'], 'router-1': [], 'router-2': ['scale'], 'router-3': ['scale'] });
  const scale = run(['--profile', 'scale', 'config', '--services']);
  assert.equal(scale.status, 0, scale.stderr);
  assert.deepEqual(scale.stdout.trim().split('\n').sort(), ['haproxy', 'orthanc', 'prometheus', 'router-1', 'router-2', 'router-3']);
  // It can fail: a broken file is refused.
  const broken = join(dir, 'broken.yml');
  writeFileSync(broken, readFileSync('docker-compose.yml', 'utf8').replace('services:', 'services:\n  bad:\n    ports: 7\n'));
  assert.notEqual(spawnSync('docker-compose', ['-f', broken, 'config'], { encoding: 'utf8', env: { ...process.env, DEID_SALT_FILE: salt }, cwd: dirname(broken) }).status, 0);
});

test('deploy/ Kubernetes manifests: StatefulSet with a state volume per pod, Secret salt, probes and command as the code', () => {
  const c = containerConfig();
  const d = dockerFacts();
  const kustomization = YAML.parse(readFileSync('deploy/kustomization.yaml', 'utf8')) as Obj;
  const docs: Obj[] = (kustomization.resources as string[]).flatMap((r) => YAML.parseAllDocuments(readFileSync(join('deploy', r), 'utf8')).map((x) => x.toJS() as Obj));
  const byKind = (k: string) => docs.filter((x) => x.kind === k);
  const sts = byKind('StatefulSet')[0];
  assert.ok(sts, 'a StatefulSet');
  const pod = sts.spec.template.spec as Obj;
  const ctr = pod.containers[0] as Obj;
  assert.deepEqual(ctr.args, d.cmd);
  const ports = Object.fromEntries((ctr.ports as Obj[]).map((p) => [p.name, p.containerPort]));
  assert.deepEqual(ports, { dicom: c.listen.port, http: c.http!.port });
  assert.equal(ctr.livenessProbe.httpGet.path, HEALTH_PATH);
  assert.equal(ctr.readinessProbe.httpGet.path, READY_PATH);
  assert.equal(ctr.readinessProbe.httpGet.port, 'http');
  assert.equal(pod.securityContext.runAsNonRoot, true);
  const mounts = Object.fromEntries((ctr.volumeMounts as Obj[]).map((m) => [m.name, m.mountPath]));
  const folder = [...c.destinations.values()].find((x): x is FolderDestinationConfig => x.type === 'folder')!;
  assert.equal(mounts.config, CONTAINER_CONFIG_DIR);
  assert.equal(mounts.state, c.stateDir);
  assert.equal(mounts.outgoing, folder.path);
  // state: one claim per pod; outgoing: one shared claim; salt: the Secret's key at saltFile.
  assert.deepEqual((sts.spec.volumeClaimTemplates as Obj[]).map((v) => v.metadata.name), ['state']);
  const volumes = Object.fromEntries((pod.volumes as Obj[]).map((v) => [v.name, v]));
  assert.equal(volumes.outgoing.persistentVolumeClaim.claimName, byKind('PersistentVolumeClaim')[0].metadata.name);
  assert.deepEqual(byKind('PersistentVolumeClaim')[0].spec.accessModes, ['ReadWriteMany']);
  const secret = byKind('Secret')[0];
  assert.equal(volumes.salt.secret.secretName, secret.metadata.name);
  const item = volumes.salt.secret.items[0];
  assert.ok(item.key in secret.stringData);
  assert.equal(posix.join(mounts.salt, item.path), c.saltFile);
  assert.equal(volumes.config.configMap.name, kustomization.configMapGenerator[0].name);
  assert.deepEqual((kustomization.configMapGenerator[0].files as string[]).map((f) => f.replace(/^config\//, '')).sort(), ['router.yaml', 'stations.json', 'studies.json']);
  // The placeholder salt is one the router refuses: applying it unchanged cannot run with it.
  const placeholder = join(tempDir('deid-k8s-'), 'router.yaml');
  writeFileSync(placeholder, YAML.stringify({ salt: secret.stringData[item.key] }));
  assert.throws(() => loadConfig(placeholder, {}), /example value/);
  // The Service sends the DICOM port to the pods' dicom port.
  const svc = byKind('Service').find((s) => s.spec.clusterIP !== 'None')!;
  assert.deepEqual(svc.spec.ports.map((p: Obj) => [p.port, p.targetPort]), [[c.listen.port, 'dicom']]);
  assert.deepEqual(svc.spec.selector, sts.spec.selector.matchLabels);
  assert.equal(byKind('Service').find((s) => s.spec.clusterIP === 'None')!.metadata.name, sts.spec.serviceName);
});
