// The commitment index is written without an fsync per image; before a report claims instances committed,
// their entries are made durable. Checked with the router under strace (which fsyncs reach which files) and a
// simulated power cut: the router is SIGKILLed right after a store, restarted, asked about what it stored
// (answered committed, not wrongly failed), and SIGKILLed again the moment its report arrives. Every entry the
// report relied on must have been fsynced by then: deleting the entries no fsync reached (what a power cut
// could take) leaves every claimed instance committed for the next request, answered by a third run.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'fs';
import { spawnSync } from 'child_process';
import { dirname, join } from 'path';
import YAML from 'yaml';
import { loadConfig } from '../src/config/load';
import { CommitmentIndex } from '../src/deliver/commitment-index';
import { CORPUS_PHI, corpusAvailable } from './helpers/corpus';
import { run, startProcess, waitForPort, type StartedProcess } from './helpers/dcmtk';
import { freePort, makeVariants, startReportScp, waitFor } from './helpers/peers';
import { CT, Modality } from './helpers/commitment-scu';
import { hasTool } from './helpers/tools';
import { tempDir } from './helpers/tmp';

const SALT = 'commitment-durability-salt-77a1';

/** Why strace cannot trace here (no ptrace in this container), or undefined. */
function straceRefusal(): string | undefined {
  if (!hasTool('strace')) return 'strace is not installed';
  const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=fsync', '-o', '/dev/null', 'true'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : `strace cannot trace here: ${(r.stderr || '').trim()}`;
}

const skip = !corpusAvailable() ? 'corpus not available' : !hasTool('storescu') ? 'dcmtk not installed' : straceRefusal() ?? false;

/** The router (dist/cli.js serve) under strace, logging every fsync/fdatasync with the path of its descriptor. */
function startTracedRouter(configFile: string, log: string): StartedProcess {
  return startProcess('strace', ['-f', '-qq', '--seccomp-bpf', '-e', 'trace=fsync,fdatasync', '-y', '-o', log, process.execPath, 'dist/cli.js', 'serve', '--config', configFile], { env: { DEID_SALT: SALT } });
}

/** SIGKILL for the traced node process (strace's child), then wait for strace to finish its log. */
async function killTraced(p: StartedProcess): Promise<void> {
  const children = spawnSync('pgrep', ['-P', String(p.pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
  assert.ok(children.length > 0, 'the traced router process');
  for (const pid of children) process.kill(Number(pid), 'SIGKILL');
  await p.exited;
}

/** Paths that an fsync or fdatasync completed on, from strace -f -y logs (lines "PID call(FD<path>) = 0", or
 * split in two by another thread: "PID call(FD<path> <unfinished ...>" then "PID <... call resumed>) = 0"). */
function fsyncedPaths(...logs: string[]): Set<string> {
  const out = new Set<string>();
  for (const log of logs) {
    const unfinished = new Map<string, string>();
    for (const line of readFileSync(log, 'utf8').split('\n')) {
      const whole = /^(\d+)\s+f(?:data)?sync\(\d+<([^>]+)>\)\s*=\s*0/.exec(line);
      const start = /^(\d+)\s+f(?:data)?sync\(\d+<([^>]+)> <unfinished \.\.\.>/.exec(line);
      const resumed = /^(\d+)\s+<\.\.\. f(?:data)?sync resumed>\)\s*=\s*0/.exec(line);
      if (whole) out.add(whole[2]);
      else if (start) unfinished.set(start[1], start[2]);
      else if (resumed && unfinished.has(resumed[1])) out.add(unfinished.get(resumed[1])!);
    }
  }
  return out;
}

describe('storage commitment index durability', { skip }, () => {
  test('a report claims only entries made durable before it; SIGKILL after a store does not fail what was stored', async () => {
    const dir = tempDir('deid-commit-durable-');
    const routerPort = await freePort();
    const station = await startReportScp();
    const configFile = join(dir, 'router.yaml');
    writeFileSync(configFile, YAML.stringify({
      listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: routerPort },
      stateDir: join(dir, 'state'),
      logLevel: 'warn',
      destinations: { out: { type: 'folder', path: join(dir, 'out') } },
      stations: { default: { TagForStudy: 'ProtocolName', AETitles: ['MODALITY'], Commitment: { aeTitle: 'MODALITY', host: '127.0.0.1', port: station.port } } },
      studies: { Supplement142: { Destinations: ['out'] } },
    }));
    const stateDir = loadConfig(configFile, {}).stateDir;
    const index = new CommitmentIndex(stateDir, SALT);
    const entry = (uid: string): string | undefined => index.entryPath(uid);
    const variants = makeVariants(readFileSync(join(CORPUS_PHI, 'pydicom__CT_small.dcm')), 3, 321);
    const imgDir = tempDir('deid-commit-durable-in-');
    const paths = variants.map((v) => {
      const f = join(imgDir, `${v.sopInstanceUid}.dcm`);
      writeFileSync(f, v.bytes);
      return f;
    });
    const [a, b, c] = variants.map((v) => v.sopInstanceUid);
    const never = '2.25.5151515151515151';
    const logA = join(dir, 'strace-a.log');
    const logB = join(dir, 'strace-b.log');
    let router: StartedProcess | undefined;
    const open: Modality[] = [];
    try {
      // Run A: three images stored (answered Success), then SIGKILL at once: no report was made.
      router = startTracedRouter(configFile, logA);
      await waitForPort(routerPort, '127.0.0.1', 30_000);
      const up = await run('storescu', ['-aet', 'MODALITY', '-aec', 'DEID_ROUTER', '127.0.0.1', String(routerPort), ...paths]);
      assert.equal(up.code, 0, up.stderr);
      await killTraced(router);
      router = undefined;
      for (const u of [a, b, c]) assert.ok(entry(u) !== undefined, 'index entry written');
      const entryOfC = entry(c)!;
      // No fsync per image on the C-STORE path.
      const syncedInA = fsyncedPaths(logA);
      assert.equal([a, b, c].filter((u) => syncedInA.has(entry(u)!)).length, 0, 'index entries fsynced one by one while storing');

      // Run B: asked about two of them and one never sent. The report is right (the killed run's entries
      // are on disk: not wrongly failed), and the router is killed the moment it arrives, unacknowledged.
      router = startTracedRouter(configFile, logB);
      await waitForPort(routerPort, '127.0.0.1', 30_000);
      const m1 = await Modality.open(routerPort);
      open.push(m1);
      assert.equal(await m1.request(1, '2.25.7001', [[CT, a], [CT, b], [CT, never]]), 0x0000);
      const report = await m1.nextReport(1, 30_000);
      await killTraced(router);
      router = undefined;
      m1.peer.destroy();
      assert.deepEqual(report.result, { eventTypeId: 2, transactionUid: '2.25.7001', committed: [a, b].sort(), failed: [[never, 0x0112]] });
      const synced = fsyncedPaths(logA, logB);
      for (const u of report.result.committed) assert.ok(synced.has(entry(u)!), 'every claimed entry fsynced before the report');
      for (const u of report.result.committed) assert.ok(synced.has(dirname(entry(u)!)), 'the day folder of every claimed entry fsynced before the report');
      assert.ok(synced.has(index.root), 'the folder naming the day folders fsynced before the report');
      assert.ok(synced.has(dirname(index.root)), 'and the folder naming it');

      // A power cut now: whatever no fsync reached may be gone. The unclaimed third entry goes.
      for (const day of readdirSync(index.root)) {
        for (const f of readdirSync(join(index.root, day))) if (!synced.has(join(index.root, day, f))) rmSync(join(index.root, day, f));
      }
      assert.equal(existsSync(entryOfC), false, 'the unreported entry was never fsynced');
      assert.equal(entry(c), undefined);

      // Run C: the claimed instances are still committed; the one whose entry the cut took is failed
      // (never received: the modality sends it again). The unacknowledged request of run B is answered
      // after the restart, on a new association to the station.
      router = startProcess(process.execPath, ['dist/cli.js', 'serve', '--config', configFile], { env: { DEID_SALT: SALT } });
      await waitForPort(routerPort, '127.0.0.1', 30_000);
      await waitFor(() => station.reports.some((r) => r.info.TransactionUID === '2.25.7001'), 30_000, 'run B\'s request answered after the restart');
      const resumed = station.reports.find((r) => r.info.TransactionUID === '2.25.7001')!;
      assert.deepEqual(resumed.info.ReferencedSOPSequence.map((i: any) => i.ReferencedSOPInstanceUID).sort(), [a, b].sort());
      const m2 = await Modality.open(routerPort);
      open.push(m2);
      assert.equal(await m2.request(1, '2.25.7002', [[CT, a], [CT, b], [CT, c]]), 0x0000);
      const again = await m2.nextReport(1, 30_000);
      m2.answer(again.messageId, 0x0000);
      assert.deepEqual(again.result, { eventTypeId: 2, transactionUid: '2.25.7002', committed: [a, b].sort(), failed: [[c, 0x0112]] });
      await m2.release();
    } finally {
      for (const m of open) m.peer.destroy();
      if (router && router.child.exitCode === null && router.child.signalCode === null) {
        // A traced router: its node process first (strace then ends); an untraced one is the process itself.
        for (const pid of spawnSync('pgrep', ['-P', String(router.pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
        try {
          process.kill(router.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await router.exited;
      }
      await station.stop();
    }
  });
});
