// Benchmark: ForwardQueue -> storescp versus dcmtk storescu -> storescp, same 500 files, same run.
// Usage: npx tsc -p tsconfig.test.json && node .build-test/bench/forward-bench.js [count] [rounds]
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { ForwardQueue } from '../src/deliver/forwarder';
import { Spool } from '../src/deliver/spool';
import { silentLogger } from '../src/observe/logger';
import { CORPUS, makeVariants, startStorescp, tmpDir, waitFor } from '../test/helpers/peers';

const COUNT = Number(process.argv[2] ?? 500);
const ROUNDS = Number(process.argv[3] ?? 2);
const SOURCE = path.join(CORPUS, process.env.BENCH_SOURCE ?? 'heudiconv__01+AA+00001.dcm'); // 207 KB, MR, implicit VR LE

async function runOurs(srcDir: string, maxAssociations: number): Promise<number> {
  const state = await tmpDir('bench-state-');
  const out = await tmpDir('bench-ours-');
  const spool = new Spool(state, 'pacs');
  const names = await fsp.readdir(srcDir);
  for (const n of names) {
    const bytes = await fsp.readFile(path.join(srcDir, n));
    await spool.enqueue(bytes, { sopInstanceUid: n.slice(0, -4), sopClassUid: '', transferSyntaxUid: '', studyInstanceUid: '' });
  }
  const scp = await startStorescp({ dir: out });
  try {
    const q = new ForwardQueue({
      destination: { name: 'pacs', aeTitle: 'STORESCP', host: '127.0.0.1', port: scp.port, callingAeTitle: 'BENCH', maxAssociations },
      spool,
      logger: silentLogger(),
      batchSize: 64,
      idleReleaseMs: 100,
    });
    const t0 = process.hrtime.bigint();
    q.start();
    await waitFor(async () => (await spool.listIds()).length === 0, 300000, 'spool drained');
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    await q.stop();
    const arrived = (await fsp.readdir(out)).length;
    if (arrived !== names.length) throw new Error(`only ${arrived}/${names.length} arrived`);
    return names.length / secs;
  } finally {
    await scp.stop();
    await fsp.rm(state, { recursive: true, force: true });
    await fsp.rm(out, { recursive: true, force: true });
  }
}

async function runStorescu(srcDir: string, n: number): Promise<number> {
  const out = await tmpDir('bench-storescu-');
  const scp = await startStorescp({ dir: out });
  try {
    const names = (await fsp.readdir(srcDir)).map((f) => path.join(srcDir, f));
    const t0 = process.hrtime.bigint();
    await new Promise<void>((resolve, reject) => {
      const c = spawn('storescu', ['-aec', 'STORESCP', '-aet', 'BENCH', '127.0.0.1', String(scp.port), ...names], {
        env: { ...process.env, TCP_NODELAY: '1' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let err = '';
      c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      c.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`storescu exit ${code}: ${err.slice(-500)}`))));
    });
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const arrived = (await fsp.readdir(out)).length;
    if (arrived !== n) throw new Error(`storescu: only ${arrived}/${n} arrived`);
    return n / secs;
  } finally {
    await scp.stop();
    await fsp.rm(out, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const base = await fsp.readFile(SOURCE);
  const srcDir = await tmpDir('bench-src-');
  for (let k = 0; k < COUNT; k++) {
    const v = makeVariants(base, 1, 42, k)[0];
    await fsp.writeFile(path.join(srcDir, v.sopInstanceUid + '.dcm'), v.bytes);
  }
  console.log(`${COUNT} × ${(base.length / 1024).toFixed(0)} KB (${path.basename(SOURCE)}), storescp --bit-preserving -od tmpdir, TCP_NODELAY=1, ${ROUNDS} rounds`);
  const ours1: number[] = [];
  const ours2: number[] = [];
  const theirs: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    ours1.push(await runOurs(srcDir, 1));
    theirs.push(await runStorescu(srcDir, COUNT));
    ours2.push(await runOurs(srcDir, 2));
  }
  await fsp.rm(srcDir, { recursive: true, force: true });
  const best = (a: number[]) => Math.max(...a);
  const fmt = (a: number[]) => a.map((x) => x.toFixed(0)).join(', ');
  console.log(`ForwardQueue, 1 association : ${fmt(ours1)} images/s (best ${best(ours1).toFixed(0)})`);
  console.log(`ForwardQueue, 2 associations: ${fmt(ours2)} images/s (best ${best(ours2).toFixed(0)}) [storescp serves one association at a time]`);
  console.log(`dcmtk storescu              : ${fmt(theirs)} images/s (best ${best(theirs).toFixed(0)})`);
  console.log(`ratio ours(1 assoc)/storescu: ${(best(ours1) / best(theirs)).toFixed(2)}`);
  console.log(`peak RSS of this process    : ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB (spooling + forwarding ${((COUNT * base.length) / 1048576).toFixed(0)} MB)`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
