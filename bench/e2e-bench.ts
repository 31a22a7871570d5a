// Benchmark (issue "forward to a research PACS" performance): N distinct ~530 KB CT images end to end,
//   direct : storescu → storescp -od DIR
//   router : storescu → `dist/cli.js serve` (defaultDestination: pacs; spool + fsync, answer, then the
//            background ForwardQueue forwards) → storescp -od DIR
// alternating in the same run, several rounds. The router's time runs until ALL N images are in storescp's
// output directory (not just until storescu finishes; that "ingest" time is printed too). Prints images/s of
// both, the ratio router/direct, the router's peak RSS (VmHWM just before stopping it), and one more run with
// 3×N images to show whether the router's peak RSS grows with the number of images.
//
// Build: npm run build && npx tsc -p tsconfig.test.json
// Usage: node .build-test/bench/e2e-bench.js [--rounds 3] [--count 500] [--big 1500|0] [--max-assoc 2] [--warmup 100] [--profile DIR]
// The last line is "RESULT e2e ratio=X.XX rss500=..MB rss1500=..MB".
// dcmtk tools run with TCP_NODELAY=1; everything on 127.0.0.1 with free ports; processes stopped by pid.
// storescp has no --fork here: it serves one association at a time (a second association from the
// router waits for the first to be released).
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { stopProcess } from '../test/helpers/dcmtk';
import {
  MB, SOURCE_NAME, CLI, argValue, tmp, makeSources, peakRss, countFilesFlat, countFilesDeep, sleep, median, now,
  startDcmtkStorescp, startRouter, storescu, summariseProfile, runFloor, runSyncFloor, settle,
} from './scp-bench';

interface Direct {
  secs: number;
}
interface Routed {
  /** storescu start → storescu exit (all images spooled + answered). */
  ingestSecs: number;
  /** storescu start → N files in storescp's directory. */
  secs: number;
  /** storescu start → first file in storescp's directory. */
  firstSecs: number;
  /** Images in storescp's directory when storescu finished. */
  arrivedAtIngestEnd: number;
  rss: number;
}

/** Images sent first, untimed, to each fresh receiver (--warmup; see scp-bench's warmFiles). */
let warmFiles: string[] = [];

async function runDirect(files: string[]): Promise<Direct> {
  const out = await tmp('bench-pacs-');
  const { proc, port } = await startDcmtkStorescp(out, 'PACS');
  try {
    if (warmFiles.length) await storescu('PACS', port, warmFiles);
    settle();
    const t0 = now();
    await storescu('PACS', port, files);
    const secs = now() - t0;
    const got = countFilesFlat(out) - warmFiles.length;
    if (got !== files.length) throw new Error(`direct: ${got}/${files.length} arrived`);
    return { secs };
  } finally {
    await stopProcess(proc);
  }
}

async function runRouted(files: string[], maxAssociations: number, profileDir?: string): Promise<Routed> {
  const out = await tmp('bench-pacs-');
  const pacs = await startDcmtkStorescp(out, 'PACS');
  let router: Awaited<ReturnType<typeof startRouter>> | undefined;
  let stopped = false;
  try {
    router = await startRouter({ defaultDestination: 'pacs', pacsPort: pacs.port, pacsAeTitle: 'PACS', maxAssociations, profileDir });
    const r = router;
    // Warm-up, untimed: sent, and arrived in the PACS, before the clock starts.
    const w = warmFiles.length;
    if (w) {
      await storescu('DEID_ROUTER', r.port, warmFiles);
      for (let i = 0; i < 6000 && countFilesFlat(out) < w; i++) await sleep(20);
      if (countFilesFlat(out) < w) throw new Error(`router: warm-up stuck at ${countFilesFlat(out)}/${w} in the PACS`);
      await sleep(200); // storescp writes under the final name while receiving: let the last one finish
    }
    const n = files.length + w;
    let done = false;
    let secs = 0;
    let firstSecs = NaN;
    settle();
    const t0 = now();
    // Watch storescp's directory while storescu runs (images are forwarded as they arrive).
    const watcher = (async () => {
      let last = -1;
      let lastChange = now();
      while (!done) {
        const got = countFilesFlat(out);
        if (got > w && Number.isNaN(firstSecs)) firstSecs = now() - t0;
        if (got >= n) {
          secs = now() - t0;
          return;
        }
        if (got !== last) {
          last = got;
          lastChange = now();
        } else if (now() - lastChange > 120) {
          throw new Error(`router: stuck at ${got}/${n} images in the PACS for 120 s\n${r.problems().slice(0, 10).join('\n')}`);
        }
        if (r.proc.child.exitCode !== null) throw new Error(`router exited: ${r.proc.output().stdout.slice(-2000)}`);
        await sleep(20);
      }
    })();
    try {
      await storescu('DEID_ROUTER', r.port, files);
    } catch (e) {
      done = true;
      await watcher.catch(() => undefined);
      throw e;
    }
    const ingestSecs = now() - t0;
    const arrivedAtIngestEnd = countFilesFlat(out) - w;
    await watcher;
    const rss = peakRss(r.proc.pid);
    // storescp writes a file under its final name while receiving: let the last one finish, then check.
    await sleep(200);
    await stopProcess(r.proc, 15_000);
    stopped = true;
    const got = countFilesFlat(out);
    const spoolLeft = countFilesDeep(path.join(r.stateDir, 'spool'));
    const problems = r.problems();
    if (problems.length) console.log(`  router log problems (${problems.length}):\n    ${problems.slice(0, 10).join('\n    ')}`);
    if (got !== n) throw new Error(`router: ${got}/${n} arrived`);
    if (spoolLeft) console.log(`  note: ${spoolLeft} files left under ${path.join(r.stateDir, 'spool')} after stop`);
    if (profileDir) console.log(summariseProfile(profileDir));
    return { ingestSecs, secs, firstSecs, arrivedAtIngestEnd, rss };
  } finally {
    if (router && !stopped) await stopProcess(router.proc, 15_000);
    await stopProcess(pacs.proc);
  }
}

async function main(): Promise<void> {
  const rounds = Number(argValue('--rounds', '3'));
  const count = Number(argValue('--count', '500'));
  const big = Number(argValue('--big', String(3 * count)));
  const maxAssoc = Number(argValue('--max-assoc', '2'));
  const profileDir = argValue('--profile', undefined);
  const warmup = Number(argValue('--warmup', '100'));
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} missing: run npm run build`);
  if (profileDir) await fsp.mkdir(profileDir, { recursive: true });

  const warm = warmup > 0 ? await makeSources(warmup, 87) : undefined;
  warmFiles = warm?.files ?? [];
  let src = await makeSources(count, 88);
  console.log(
    `e2e bench: ${count} distinct × ${(src.sourceBytes / 1024).toFixed(0)} KB (${SOURCE_NAME}) = ${(src.bytes / MB).toFixed(0)} MB, ` +
      `one storescu association, storescp -od (no --fork), router maxAssociations ${maxAssoc}, TCP_NODELAY=1, ${rounds} rounds, ` +
      `${os.cpus().length} cores, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`,
  );
  console.log('  direct: storescu → storescp;  router: storescu → serve (spool, fsync) → ForwardQueue → storescp, timed until all N are in storescp\'s dir');
  console.log(`  each receiver first gets ${warmup} other images, untimed (--warmup; 0 times cold processes)`);
  const ratios: number[] = [];
  const ceilings: number[] = [];
  const rss500: number[] = [];
  const line = (label: string, n: number, secs: number, extra = '') =>
    `  ${label} ${(n / secs).toFixed(1).padStart(7)} images/s ${secs.toFixed(2).padStart(7)} s${extra}`;
  const routedLine = (n: number, r: Routed) =>
    line(
      'router',
      n,
      r.secs,
      `  (storescu done after ${r.ingestSecs.toFixed(2)} s = ${(n / r.ingestSecs).toFixed(1)} images/s ingest, ${r.arrivedAtIngestEnd} in the PACS by then; ` +
        `first in the PACS after ${r.firstSecs.toFixed(2)} s)  peak RSS ${(r.rss / MB).toFixed(0)} MB`,
    );
  try {
    for (let r = 0; r < rounds; r++) {
      console.log(`round ${r + 1} (load ${os.loadavg()[0].toFixed(1)})`);
      const d = await runDirect(src.files);
      console.log(line('direct', count, d.secs));
      const ro = await runRouted(src.files, maxAssoc, profileDir);
      console.log(routedLine(count, ro) + `  ratio router/direct ${(d.secs / ro.secs).toFixed(2)}`);
      ratios.push(d.secs / ro.secs);
      rss500.push(ro.rss);
      // The sender waits for each answer, and the router answers once the image is durable in its spool:
      // no router that keeps that can beat direct/(direct + the disk's durable-write floor).
      const floor = (await runFloor(count, src.sourceBytes)).secs;
      console.log(line('floor ', count, floor, `  (temp + fdatasync + rename + folder fsync, no network)  ceiling direct/(direct+floor) ${(d.secs / (d.secs + floor)).toFixed(2)}`));
      // The router writes each image into its spool while the PDVs arrive: after the last one only the sync
      // part (c') remains, so its ceiling is direct/(direct + c').
      const syncPart = await runSyncFloor(count, src.sourceBytes);
      ceilings.push(d.secs / (d.secs + syncPart));
      console.log(line("sync' ", count, syncPart, `  (fdatasync + rename + folder fsync of files already written)  ceiling direct/(direct+sync') ${(d.secs / (d.secs + syncPart)).toFixed(2)}`));
    }
  } finally {
    await fsp.rm(src.dir, { recursive: true, force: true });
  }
  let rssBig: number | undefined;
  if (big > 0) {
    src = await makeSources(big, 89);
    try {
      console.log(`${big} images (${(src.bytes / MB).toFixed(0)} MB), once (load ${os.loadavg()[0].toFixed(1)})`);
      const d = await runDirect(src.files);
      console.log(line('direct', big, d.secs));
      const ro = await runRouted(src.files, maxAssoc, profileDir);
      console.log(routedLine(big, ro) + `  ratio router/direct ${(d.secs / ro.secs).toFixed(2)}`);
      rssBig = ro.rss;
    } finally {
      await fsp.rm(src.dir, { recursive: true, force: true });
    }
  }
  const r500 = median(rss500) / MB;
  console.log(`ratios router/direct: ${ratios.map((x) => x.toFixed(2)).join(', ')}; router peak RSS (${count}): ${rss500.map((x) => (x / MB).toFixed(0)).join(', ')} MB`);
  if (rssBig !== undefined) {
    const grow = rssBig / MB - r500;
    console.log(`memory: peak RSS ${r500.toFixed(0)} MB at ${count} images, ${(rssBig / MB).toFixed(0)} MB at ${big} (${grow >= 0 ? '+' : ''}${grow.toFixed(0)} MB): ${Math.abs(grow) < 0.25 * r500 ? 'flat' : 'GROWS with the number of images'}`);
  }
  console.log(`target >= 0.6; physical ceiling of a router that writes while receiving and syncs before answering: ${median(ceilings).toFixed(2)}; router reaches ${(median(ratios) / median(ceilings)).toFixed(2)} of it`);
  console.log(`RESULT e2e ratio=${median(ratios).toFixed(2)} rss${count}=${r500.toFixed(0)}MB` + (rssBig !== undefined ? ` rss${big}=${(rssBig / MB).toFixed(0)}MB` : ''));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
