// Benchmark (issue "network node" performance): one storescu association of N distinct ~530 KB CT images to
//   (a) dcmtk `storescp -od DIR` (receive + write, no de-identification, no fsync), and
//   (b) our `serve` (receive + de-identify + durable write: temp file, fsync, rename, fsync dir) with a folder
//       destination,
// alternating a/b in the same run, several rounds. Reports images/s, MB/s, the receiver's peak RSS (VmHWM,
// read from /proc just before stopping it), and the median per-round ratio b/a. A third, informative line
// per round, (c), is the durable-write floor of this disk: the same N de-identified-sized files written by
// writeFileAtomicSync (fdatasync + rename + dir fsync, as serve does) from this process, one at a time, with no network at all.
//
// Build: npm run build && npx tsc -p tsconfig.test.json
// Usage: node .build-test/bench/scp-bench.js [--rounds 3] [--count 500] [--assoc 1] [--warmup 100] [--profile DIR] [--no-floor] [--cli PATH]
//   --assoc N       N storescu associations in parallel (the images dealt round-robin), against storescp --fork
//   --peer orthanc  (a) is Orthanc with its default storage (it syncs each file) instead of storescp
//   --cli PATH      also time another build of ours (e.g. a copy of main's dist/ inside the repo) as (b')
//   --replicas N    also time N routers, each with its own state (the scale-out deployment on one host), the
//                   associations dealt to them in turn, as (b×N)
//   --warmup N      images each receiver gets, untimed, before the timed ones (default 100): a router's steady
//                   state, not a fresh process's JIT warm-up; 0 times cold processes
//   --profile DIR   start the router with `node --cpu-prof --cpu-prof-dir DIR` and print its top self-time
//                   functions after each (b) run.
// (d) is the write-ahead-log floor: each image overwritten into a preallocated file and fdatasync'd (a data
// flush with no metadata). With one association the sender waits for every answer, so a/(a+c) and a/(a+d) are
// the best ratios any receiver that makes each image durable before answering can reach on this disk.
// The last line is "RESULT scp ratio=X.XX" (targets: 0.8 for one association, 1.0 for four).
// All dcmtk tools run with TCP_NODELAY=1 (test/helpers/dcmtk); everything binds/connects on 127.0.0.1 with
// free ports, and every process is stopped by its pid.
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { run, startProcess, stopProcess, freePort, waitForPort, type StartedProcess } from '../test/helpers/dcmtk';
import { makeVariants, startOrthanc } from '../test/helpers/peers';
import { phiCorpusDir as generatedPhiDir } from '../test/helpers/corpus';
import { tempDir } from '../test/helpers/tmp';
import { writeFileAtomicSync } from '../src/deliver/folder';

// ------------------------------------------------------------------------------------------ shared helpers
// (exported for bench/e2e-bench.ts)

export const MB = 1024 * 1024;
// The largest implicit VR image of the in-repo corpus (the figures in bench/README.md before
// the corpus moved into the repository used a 525 KB GPL file, octave__CT-MONO2-16-ankle.dcm).
export const SOURCE_NAME = process.env.BENCH_SOURCE ?? 'heudiconv__01+AA+00001.dcm';

/** The generated corpus with planted data (test/helpers/corpus.ts), or DEID_PHI_DIR. */
export function phiCorpusDir(): string {
  return process.env.DEID_PHI_DIR ?? generatedPhiDir();
}

/** Repository root (the bench runs from .build-test/bench/). */
export const REPO = path.resolve(__dirname, '../..');
export const CLI = path.join(REPO, 'dist', 'cli.js');

export function argValue(name: string, dflt: string | undefined): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
export function argFlag(name: string): boolean {
  return process.argv.includes(name);
}

/**
 * A temp dir for one run, kept until the bench exits (tempDir removes it then). Not deleted between runs:
 * on ext4 without a journal (these machines) every new inode skips those deleted in the last minutes
 * (recently_deleted() in fs/ext4/ialloc.c), and deleting a round's 500-1,500 files made the next round's
 * file creations a sixth of the router's CPU in a perf profile, the router creating twice as many files
 * (image and commitment index entry) as storescp.
 */
export async function tmp(prefix: string): Promise<string> {
  return tempDir(prefix);
}

/** n distinct variants (distinct SOP Instance UIDs) of the source image, written to a fresh temp dir. */
export async function makeSources(n: number, seed: number): Promise<{ dir: string; files: string[]; bytes: number; sourceBytes: number }> {
  const src = path.join(phiCorpusDir(), SOURCE_NAME);
  const base = await fsp.readFile(src);
  const dir = await tmp('bench-src-');
  const files: string[] = [];
  let bytes = 0;
  const CHUNK = 250; // bound the bench's own memory for large n
  for (let from = 0; from < n; from += CHUNK) {
    for (const v of makeVariants(base, Math.min(CHUNK, n - from), seed, from)) {
      const f = path.join(dir, `${v.sopInstanceUid}.dcm`);
      await fsp.writeFile(f, v.bytes);
      files.push(f);
      bytes += v.bytes.length;
    }
  }
  return { dir, files, bytes, sourceBytes: base.length };
}

/** Busy and total CPU ticks of the host (/proc/stat: user+nice+system+irq+softirq+steal; iowait counts as idle). */
function cpuTicks(): { busy: number; total: number } {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  const busy = user + nice + system + irq + softirq + (steal ?? 0);
  return { busy, total: busy + idle + iowait };
}

/** Share of the host's CPU time that was busy since `t0` (all cores). */
function hostBusySince(t0: { busy: number; total: number }): number {
  const t1 = cpuTicks();
  return (t1.busy - t0.busy) / Math.max(1, t1.total - t0.total);
}

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on every Linux this runs on). */
const TICKS = 100;

/** CPU seconds the whole host was busy since `t0` (all cores together). */
function hostBusySecondsSince(t0: { busy: number; total: number }): number {
  return (cpuTicks().busy - t0.busy) / TICKS;
}

/** CPU seconds (all threads) a live process has used so far: user and system (kernel on its behalf). */
export function processCpu(pid: number): { user: number; sys: number } {
  // The fields after the command name (which may hold spaces, hence the last ')'): utime is the 12th.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(f[11]) / TICKS, sys: Number(f[12]) / TICKS };
}

/** CPU used by a process since `c0` (a processCpu reading). */
function processCpuSince(pid: number, c0: { user: number; sys: number }): { user: number; sys: number } {
  const c1 = processCpu(pid);
  return { user: c1.user - c0.user, sys: c1.sys - c0.sys };
}

/** Peak resident set size (VmHWM) of a live process, in bytes. */
export function peakRss(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(s);
  if (!m) throw new Error(`no VmHWM for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** Regular files under dir, recursively, that are not our temp files (.tmp-*). */
export function countFilesDeep(dir: string, suffix = ''): number {
  if (!fs.existsSync(dir)) return 0;
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && !e.name.startsWith('.tmp-') && e.name.endsWith(suffix)) n++;
  }
  return n;
}

/** Files directly in dir (storescp -od writes flat). */
export function countFilesFlat(dir: string): number {
  try {
    return fs.readdirSync(dir).length;
  } catch {
    return 0;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

export interface StageTimings {
  images: number;
  streamed?: number;
  buffered?: number;
  streamedPerImageMs?: { receive: number; engine: number; lastPduToDurable: number };
  perImageMs: { process: number; deliver: number };
  perFileMs: { open: number; write: number; fdatasync: number; rename: number; dirSyncWait: number };
  files: number;
  dirSyncs: number;
  eventLoopDelayMs: { p50: number; p99: number; max: number };
}

/** The router's 'stage timings' line (logged when it stops), if any. */
export function stageTimings(stdout: string): StageTimings | undefined {
  for (const line of stdout.split('\n').reverse()) {
    if (!line.includes('"stage timings"')) continue;
    try {
      return JSON.parse(line) as StageTimings;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

export function formatStages(t: StageTimings | undefined): string {
  if (!t) return '  (no stage timings logged)';
  const f = t.perFileMs;
  const s = t.streamedPerImageMs;
  const streamed = s && t.streamed
    ? `  router: ${t.streamed} images streamed, ${t.buffered} buffered; per streamed image: first to last PDV ${s.receive.toFixed(2)} ms ` +
      `(engine ${s.engine.toFixed(2)} ms of it), last PDV to durable ${s.lastPduToDurable.toFixed(2)} ms\n`
    : '';
  return (
    streamed +
    `  router per image: parse+deidentify+encode ${t.perImageMs.process.toFixed(2)} ms, deliver ${t.perImageMs.deliver.toFixed(2)} ms ` +
    `(open ${f.open.toFixed(2)}, write ${f.write.toFixed(2)}, fdatasync ${f.fdatasync.toFixed(2)}, rename ${f.rename.toFixed(2)}, ` +
    `dir fsync wait ${f.dirSyncWait.toFixed(2)}; ${t.dirSyncs} dir fsyncs for ${t.files} files); ` +
    `event-loop delay p50 ${t.eventLoopDelayMs.p50} ms p99 ${t.eventLoopDelayMs.p99} ms max ${t.eventLoopDelayMs.max} ms`
  );
}

/** storescp (no --fork: one process) writing into dir; stopped by pid with stopProcess. */
export async function startDcmtkStorescp(dir: string, aeTitle: string, fork = false): Promise<{ proc: StartedProcess; port: number }> {
  const port = await freePort();
  const proc = startProcess('storescp', [...(fork ? ['--fork'] : []), '-aet', aeTitle, '-od', dir, String(port)]);
  try {
    await Promise.race([
      waitForPort(port),
      proc.exited.then((e) => {
        throw new Error(`storescp exited (${e.code ?? e.signal}): ${proc.output().stderr}`);
      }),
    ]);
  } catch (e) {
    await stopProcess(proc);
    throw e;
  }
  return { proc, port };
}

export interface RouterProcess {
  proc: StartedProcess;
  port: number;
  dir: string;
  outgoing: string;
  stateDir: string;
  /** Log lines at warn (40) or above, and any stderr. */
  problems(): string[];
}

/** `node dist/cli.js serve --config DIR/router.yaml` with a fresh temp dir, free port and random salt. */
export async function startRouter(opts: {
  defaultDestination: 'outgoing' | 'pacs';
  pacsPort?: number;
  pacsAeTitle?: string;
  maxAssociations?: number;
  profileDir?: string;
  /** Another build's cli.js (e.g. a copy of main's dist/ inside the repo), to compare builds in one run. */
  cli?: string;
  /** More router.yaml lines (top-level keys). */
  extraYaml?: string;
}): Promise<RouterProcess> {
  const dir = await tmp('bench-router-');
  const port = await freePort();
  const outgoing = path.join(dir, 'outgoing');
  const stateDir = path.join(dir, 'state');
  const dest = opts.pacsPort
    ? `  pacs: { type: dicom, aeTitle: ${opts.pacsAeTitle ?? 'PACS'}, host: 127.0.0.1, port: ${opts.pacsPort}, callingAeTitle: DEID_ROUTER, maxAssociations: ${opts.maxAssociations ?? 2} }\n`
    : '';
  const yaml =
    `listen: { aeTitle: DEID_ROUTER, host: 127.0.0.1, port: ${port}, allowUnknownCallers: false }\n` +
    `stateDir: ${stateDir}\n` +
    `destinations:\n` +
    `  outgoing: { type: folder, path: ${outgoing} }\n` +
    dest +
    `defaultDestination: ${opts.defaultDestination}\n` +
    `stations: { default: { TagForStudy: ProtocolName, AETitles: [STORESCU] } }\n` +
    (opts.extraYaml ?? '');
  await fsp.writeFile(path.join(dir, 'router.yaml'), yaml);
  const nodeArgs = opts.profileDir ? ['--cpu-prof', '--cpu-prof-dir', opts.profileDir] : [];
  const proc = startProcess(process.execPath, [...nodeArgs, opts.cli ?? CLI, 'serve', '--config', path.join(dir, 'router.yaml')], {
    env: { DEID_SALT: randomBytes(16).toString('hex') },
    cwd: dir,
  });
  const deadline = Date.now() + 20_000;
  while (!/"msg":"listening"/.test(proc.output().stdout)) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
      throw new Error(`router exited before listening:\n${proc.output().stdout}\n${proc.output().stderr}`);
    }
    if (Date.now() > deadline) {
      await stopProcess(proc);
      throw new Error(`router did not log "listening" within 20 s:\n${proc.output().stdout}\n${proc.output().stderr}`);
    }
    await sleep(20);
  }
  await waitForPort(port);
  const problems = (): string[] => {
    const out: string[] = [];
    for (const line of proc.output().stdout.split('\n')) {
      if (!line.trim()) continue;
      try {
        const j = JSON.parse(line) as { level?: number };
        if ((j.level ?? 0) >= 40) out.push(line);
      } catch {
        out.push(`(not JSON) ${line}`);
      }
    }
    const err = proc.output().stderr.trim();
    if (err) out.push(`stderr: ${err}`);
    return out;
  };
  return { proc, port, dir, outgoing, stateDir, problems };
}

const TIME = '/usr/bin/time';
const SENDER_CPU = 'SENDER_CPU';

/**
 * Sends the files over `associations` parallel storescu associations; resolves to the CPU seconds the
 * storescu processes used (user + system, from time(1)), or NaN without /usr/bin/time.
 */
export async function storescu(aec: string, port: number, files: string[], associations = 1): Promise<number> {
  if (associations > 1) {
    const parts: string[][] = Array.from({ length: associations }, () => []);
    files.forEach((f, i) => parts[i % associations].push(f));
    const cpu = await Promise.all(parts.map((p) => storescu(aec, port, p)));
    return cpu.reduce((a, b) => a + b, 0);
  }
  const args = ['-aet', 'STORESCU', '-aec', aec, '127.0.0.1', String(port), ...files];
  const timed = fs.existsSync(TIME);
  const r = timed
    ? await run(TIME, ['-f', `${SENDER_CPU} %U %S`, 'storescu', ...args], { timeoutMs: 30 * 60_000 })
    : await run('storescu', args, { timeoutMs: 30 * 60_000 });
  if (r.code !== 0) throw new Error(`storescu exit ${r.code ?? r.signal}: ${(r.stderr + r.stdout).slice(-2000)}`);
  const m = new RegExp(`${SENDER_CPU} ([\\d.]+) ([\\d.]+)`).exec(r.stderr);
  return m ? Number(m[1]) + Number(m[2]) : NaN;
}

/**
 * Summary of the newest .cpuprofile in dir: top self-time functions and files, and inclusive time of the
 * project's own functions (dist/). Samples under module loading (require) are counted apart as start-up.
 */
export function summariseProfile(dir: string, top = 20): string {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(dir, f));
  if (!files.length) return `(no .cpuprofile in ${dir})`;
  files.sort((x, y) => fs.statSync(y).mtimeMs - fs.statSync(x).mtimeMs);
  const file = files[0];
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }>;
    samples: number[];
    timeDeltas: number[];
    startTime: number;
    endTime: number;
  };
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const label = (id: number): { fn: string; file: string } => {
    const n = byId.get(id)!;
    const url = n.callFrame.url.replace(/^file:\/\//, '').replace(REPO + '/', '');
    return { fn: `${n.callFrame.functionName || '(anonymous)'}  ${url}${url ? ':' + (n.callFrame.lineNumber + 1) : ''}`, file: url || n.callFrame.functionName };
  };
  const startup = new Map<number, boolean>();
  const isStartup = (id: number): boolean => {
    const known = startup.get(id);
    if (known !== undefined) return known;
    const n = byId.get(id)!;
    const p = parent.get(id);
    const v = (n.callFrame.functionName === 'Module._load' || n.callFrame.functionName === '_load') || (p !== undefined && isStartup(p));
    startup.set(id, v);
    return v;
  };
  const selfUs = new Map<number, number>();
  for (let i = 0; i < prof.samples.length; i++) selfUs.set(prof.samples[i], (selfUs.get(prof.samples[i]) ?? 0) + (prof.timeDeltas[i] ?? 0));
  const total = prof.endTime - prof.startTime;
  const fn = new Map<string, number>();
  const byFile = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let startupUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const l = label(id);
    if (l.fn.startsWith('(idle)')) {
      idleUs += us;
      continue;
    }
    if (isStartup(id)) {
      startupUs += us;
      continue;
    }
    fn.set(l.fn, (fn.get(l.fn) ?? 0) + us);
    byFile.set(l.file, (byFile.get(l.file) ?? 0) + us);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const c = label(cur);
      if (!c.file.startsWith('dist/') || seen.has(c.fn)) continue;
      seen.add(c.fn);
      inclusive.set(c.fn, (inclusive.get(c.fn) ?? 0) + us);
    }
  }
  const busy = total - idleUs - startupUs;
  const row = (us: number, what: string) => `    ${(us / 1000).toFixed(0).padStart(7)} ms ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${what}`;
  const lines = [
    `profile ${path.basename(file)}: ${(total / 1e6).toFixed(2)} s wall = ${(idleUs / 1e6).toFixed(2)} s idle + ` +
      `${(startupUs / 1e6).toFixed(2)} s start-up (require) + ${(busy / 1e6).toFixed(2)} s busy (percentages below are of busy)`,
  ];
  lines.push('  top self time (function  file:line):');
  for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(row(us, k));
  lines.push('  self time by file:');
  for (const [k, us] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 12)) lines.push(row(us, k));
  lines.push('  inclusive time of project functions (dist/):');
  for (const [k, us] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 15)) lines.push(row(us, k));
  return lines.join('\n');
}

// ------------------------------------------------------------------------------------------ the bench

/**
 * Images each receiver gets, untimed, on a fresh process before the timed ones (--warmup): a router runs for
 * months, so its steady state is what a site sees, and a fresh Node process runs its first hundreds of images
 * in V8's unoptimised tiers (measured: the second 500 images went 15-35 % faster than the first 500).
 */
let warmFiles: string[] = [];

/**
 * Writes back every dirty page (sync(1)) before a timed phase: storescp's files are not synced, and the kernel
 * would otherwise write them back while the next receiver or floor is being timed (outputs now stay until the
 * bench exits, so their dirty pages are no longer dropped with them).
 */
export function settle(): void {
  spawnSync('sync');
}

/** Sends the warm-up images (not timed) over `assoc` associations. */
async function warmUp(aec: string, port: number, assoc: number): Promise<void> {
  if (warmFiles.length) await storescu(aec, port, warmFiles, assoc);
}

interface Figures {
  secs: number;
  rss: number;
  /** Share of the host's CPU busy while the images were sent (both cores). */
  hostBusy?: number;
  /** CPU seconds while the images were sent: the whole host, the storescu senders, and the receiver (its
   * own process times when `receiverMeasured`, else what the host used beyond the senders). */
  cpu?: { host: number; senders: number; receiver: number; receiverSys?: number; receiverMeasured: boolean };
  stages?: StageTimings;
}

/** CPU figures of one run; `receiverCpu` undefined: estimated as host minus senders. */
function cpuFigures(c0: { busy: number; total: number }, senders: number, receiverCpu?: { user: number; sys: number }): Figures['cpu'] {
  const host = hostBusySecondsSince(c0);
  return receiverCpu
    ? { host, senders, receiver: receiverCpu.user + receiverCpu.sys, receiverSys: receiverCpu.sys, receiverMeasured: true }
    : { host, senders, receiver: host - senders, receiverMeasured: false };
}

async function runStorescp(files: string[], assoc: number): Promise<Figures> {
  const out = await tmp('bench-storescp-');
  const { proc, port } = await startDcmtkStorescp(out, 'STORESCP', assoc > 1);
  try {
    await warmUp('STORESCP', port, assoc);
    settle();
    const c0 = cpuTicks();
    const t0 = now();
    const senders = await storescu('STORESCP', port, files, assoc);
    const secs = now() - t0;
    const hostBusy = hostBusySince(c0);
    // storescp --fork's children are not all reaped yet, so their times are not in the parent's: the
    // receiver's share is what the host used beyond the senders (background load included).
    const cpu = cpuFigures(c0, senders);
    const rss = peakRss(proc.pid);
    // storescp --fork: a child may still be finishing its last file after its storescu exited.
    const expected = files.length + warmFiles.length;
    for (let i = 0; i < 50 && countFilesFlat(out) < expected; i++) await sleep(20);
    const got = countFilesFlat(out);
    if (got !== expected) throw new Error(`storescp: ${got}/${expected} files written`);
    return { secs, rss, hostBusy, cpu };
  } finally {
    await stopProcess(proc);
  }
}

/** Orthanc with its default storage (SyncStorageArea: each file synced), the same images. */
async function runOrthanc(files: string[], assoc: number): Promise<Figures> {
  const dir = await tmp('bench-orthanc-');
  const o = await startOrthanc({ dir, aeTitle: 'STORESCP' });
  try {
    await warmUp('STORESCP', o.port, assoc);
    settle();
    const c0 = cpuTicks();
    const p0 = o.pid ? processCpu(o.pid) : undefined;
    const t0 = now();
    const senders = await storescu('STORESCP', o.port, files, assoc);
    const secs = now() - t0;
    const hostBusy = hostBusySince(c0);
    const cpu = cpuFigures(c0, senders, o.pid && p0 ? processCpuSince(o.pid, p0) : undefined);
    const rss = o.pid ? peakRss(o.pid) : 0;
    const stats = (await o.get('/statistics')) as { CountInstances: number };
    if (stats.CountInstances !== files.length + warmFiles.length) throw new Error(`Orthanc: ${stats.CountInstances}/${files.length + warmFiles.length} instances`);
    return { secs, rss, hostBusy, cpu };
  } finally {
    await o.stop();
  }
}

async function runRouter(files: string[], assoc: number, profileDir?: string, cli?: string): Promise<Figures> {
  const r = await startRouter({ defaultDestination: 'outgoing', profileDir, cli });
  let stopped = false;
  try {
    await warmUp('DEID_ROUTER', r.port, assoc);
    settle();
    const c0 = cpuTicks();
    const p0 = processCpu(r.proc.pid);
    const t0 = now();
    const senders = await storescu('DEID_ROUTER', r.port, files, assoc);
    const secs = now() - t0;
    const hostBusy = hostBusySince(c0);
    const cpu = cpuFigures(c0, senders, processCpuSince(r.proc.pid, p0));
    const rss = peakRss(r.proc.pid);
    await stopProcess(r.proc, 10_000);
    stopped = true;
    const got = countFilesDeep(r.outgoing, '.dcm');
    const quarantined = countFilesDeep(path.join(r.stateDir, 'quarantine'));
    const problems = r.problems();
    if (problems.length) console.log(`  router log problems (${problems.length}):\n    ${problems.slice(0, 10).join('\n    ')}`);
    if (got !== files.length + warmFiles.length) throw new Error(`router: ${got}/${files.length + warmFiles.length} files under outgoing (quarantine: ${quarantined} files)`);
    if (quarantined) console.log(`  note: ${quarantined} files in quarantine`);
    if (profileDir) console.log(summariseProfile(profileDir));
    return { secs, rss, hostBusy, cpu, stages: stageTimings(r.proc.output().stdout) };
  } finally {
    if (!stopped) await stopProcess(r.proc, 10_000);
  }
}

/** `replicas` routers (own state each, as the scale-out deployment runs them), the associations dealt to
 * them in turn (what HAProxy's leastconn does with equal associations), without the proxy's own cost. */
async function runReplicas(files: string[], assoc: number, replicas: number, cli?: string): Promise<Figures> {
  const routers = await Promise.all(Array.from({ length: replicas }, () => startRouter({ defaultDestination: 'outgoing', cli })));
  let stopped = false;
  try {
    const parts: string[][] = Array.from({ length: assoc }, () => []);
    files.forEach((f, i) => parts[i % assoc].push(f));
    await Promise.all(routers.map((r) => warmUp('DEID_ROUTER', r.port, Math.max(1, Math.floor(assoc / replicas)))));
    settle();
    const c0 = cpuTicks();
    const p0 = routers.map((r) => processCpu(r.proc.pid));
    const t0 = now();
    const sent = await Promise.all(parts.map((p, k) => storescu('DEID_ROUTER', routers[k % replicas].port, p)));
    const secs = now() - t0;
    const hostBusy = hostBusySince(c0);
    const used = routers.map((r, k) => processCpuSince(r.proc.pid, p0[k]));
    const cpu = cpuFigures(c0, sent.reduce((a, b) => a + b, 0), { user: used.reduce((n, u) => n + u.user, 0), sys: used.reduce((n, u) => n + u.sys, 0) });
    const rss = Math.max(...routers.map((r) => peakRss(r.proc.pid)));
    await Promise.all(routers.map((r) => stopProcess(r.proc, 10_000)));
    stopped = true;
    const got = routers.reduce((n, r) => n + countFilesDeep(r.outgoing, '.dcm'), 0);
    if (got !== files.length + warmFiles.length * replicas) throw new Error(`routers: ${got}/${files.length + warmFiles.length * replicas} files under outgoing`);
    return { secs, rss, hostBusy, cpu };
  } finally {
    if (!stopped) await Promise.all(routers.map((r) => stopProcess(r.proc, 10_000)));
  }
}

/** The durable-write floor: N files of this size, each temp + fsync + rename + dir fsync, by `parallel`
 * threads at once (one: sequentially), as `parallel` associations would. */
/** The durable-write floor's time, and the host CPU seconds it kept busy (this process, and the kernel's
 * flusher and journal threads that the syncs put to work at once). */
export interface FloorFigures {
  secs: number;
  hostCpu: number;
}

export async function runFloor(n: number, size: number, parallel = 1): Promise<FloorFigures> {
  const dir = await tmp('bench-floor-');
  if (parallel <= 1) {
    const buf = randomBytes(size);
    settle();
    const c0 = cpuTicks();
    const t0 = now();
    for (let i = 0; i < n; i++) {
      buf.writeUInt32LE(i, 0);
      writeFileAtomicSync(path.join(dir, 'a', 'b', `${i}.dcm`), [buf], { durable: true });
    }
    return { secs: now() - t0, hostCpu: hostBusySecondsSince(c0) };
  }
  const folderJs = require.resolve('../src/deliver/folder');
  const code =
    "const { workerData: w, parentPort } = require('worker_threads'); const { join } = require('path');" +
    "const { writeFileAtomicSync } = require(w.folderJs); const buf = require('crypto').randomBytes(w.size);" +
    "parentPort.once('message', () => { for (let i = 0; i < w.n; i++) { buf.writeUInt32LE(i, 0);" +
    " writeFileAtomicSync(join(w.dir, 'a', 'b', w.k + '-' + i + '.dcm'), [buf], { durable: true }); } parentPort.postMessage('done'); });" +
    "parentPort.postMessage('ready');";
  const workers = Array.from({ length: parallel }, (_, k) =>
    new Worker(code, { eval: true, workerData: { folderJs, size, n: Math.ceil(n / parallel), dir, k } }));
  const next = (w: Worker) => new Promise<void>((resolve, reject) => { w.once('message', () => resolve()); w.once('error', reject); });
  await Promise.all(workers.map(next)); // loaded: start together
  settle();
  const c0 = cpuTicks();
  const t0 = now();
  const done = workers.map(next);
  workers.forEach((w) => w.postMessage('go'));
  await Promise.all(done);
  const t = { secs: now() - t0, hostCpu: hostBusySecondsSince(c0) };
  await Promise.all(workers.map((w) => w.terminate()));
  return t;
}

/**
 * The part of the durable write a streaming receiver cannot overlap with receiving (c'): each image's temp file
 * is created and written first, untimed (serve writes while the PDVs arrive); timed is what follows the last
 * PDV: fdatasync, close, rename, folder fsync, one image after the other.
 */
export async function runSyncFloor(n: number, size: number): Promise<number> {
  const dir = await tmp('bench-syncfloor-');
  const buf = randomBytes(size);
  const fds: number[] = [];
  for (let i = 0; i < n; i++) {
    buf.writeUInt32LE(i, 0);
    const fd = fs.openSync(path.join(dir, `.tmp-${i}`), 'w');
    fs.writeSync(fd, buf);
    fds.push(fd);
  }
  const t0 = now();
  for (let i = 0; i < n; i++) {
    fs.fdatasyncSync(fds[i]);
    fs.closeSync(fds[i]);
    fs.renameSync(path.join(dir, `.tmp-${i}`), path.join(dir, `${i}.dcm`));
    const d = fs.openSync(dir, 'r');
    fs.fsyncSync(d);
    fs.closeSync(d);
  }
  return now() - t0;
}

/** The write-ahead-log floor: the same N images each overwritten into a slot of a preallocated, already
 * written file and fdatasync'd. Overwriting allocated blocks changes no file-system metadata, so each sync
 * is a data flush alone: the least any receiver that makes an image durable before answering can pay. */
async function runJournalFloor(n: number, size: number): Promise<number> {
  const dir = await tmp('bench-wal-');
  const buf = randomBytes(size);
  const SLOTS = 64;
  const file = path.join(dir, 'journal');
  const fd = fs.openSync(file, 'w+');
  try {
    for (let i = 0; i < SLOTS; i++) fs.writeSync(fd, buf, 0, size, i * size);
    fs.fsyncSync(fd);
    settle();
    const t0 = now();
    for (let i = 0; i < n; i++) {
      buf.writeUInt32LE(i, 0);
      fs.writeSync(fd, buf, 0, size, (i % SLOTS) * size);
      fs.fdatasyncSync(fd);
    }
    return now() - t0;
  } finally {
    fs.closeSync(fd);
  }
}

async function main(): Promise<void> {
  const rounds = Number(argValue('--rounds', '3'));
  const count = Number(argValue('--count', '500'));
  const profileDir = argValue('--profile', undefined);
  const floor = !argFlag('--no-floor');
  const assoc = Number(argValue('--assoc', '1'));
  const otherCli = argValue('--cli', undefined);
  const replicas = Number(argValue('--replicas', '1'));
  const warmup = Number(argValue('--warmup', '100'));
  const replicaRatios: number[] = [];
  const peer = argValue('--peer', 'storescp');
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} missing: run npm run build`);
  if (profileDir) await fsp.mkdir(profileDir, { recursive: true });

  const all = await makeSources(count + warmup, 77);
  const src = { ...all, files: all.files.slice(warmup), bytes: (all.bytes * count) / (count + warmup) };
  warmFiles = all.files.slice(0, warmup);
  const totalMB = src.bytes / MB;
  console.log(
    `scp bench: ${count} distinct × ${(src.sourceBytes / 1024).toFixed(0)} KB (${SOURCE_NAME}) = ${totalMB.toFixed(0)} MB, ` +
      `${assoc} storescu association(s) in parallel${assoc > 1 ? ' (storescp --fork)' : ''}, TCP_NODELAY=1, ${rounds} rounds, ${os.cpus().length} cores, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`,
  );
  console.log(peer === 'orthanc' ? '  (a) Orthanc (default storage)  : receive + index + write, each file synced' : '  (a) storescp -od DIR          : receive + write (no fsync)');
  console.log('  (b) dist/cli.js serve (folder) : receive + de-identify + durable write (fsync file + dir)');
  if (floor) console.log('  (c) durable-write floor        : writeFileAtomicSync (what serve uses) of N same-size files, no network, no de-identification');
  console.log('  MB = 2^20 bytes; RSS = VmHWM of the receiver just before it is stopped');
  console.log(`  each receiver first gets ${warmup} other images, untimed (--warmup; 0 times a cold process)`);

  const fmt = (label: string, f: Figures, extra = '') =>
    `  ${label} ${(count / f.secs).toFixed(1).padStart(7)} images/s ${(totalMB / f.secs).toFixed(1).padStart(7)} MB/s ` +
    `${f.secs.toFixed(2).padStart(7)} s  peak RSS ${(f.rss / MB).toFixed(0).padStart(4)} MB` +
    `${f.hostBusy === undefined ? '' : `  host CPU busy ${(100 * f.hostBusy).toFixed(0)} %`}${extra}` +
    (f.cpu && !Number.isNaN(f.cpu.senders)
      ? `\n      CPU per image: host ${((1000 * f.cpu.host) / count).toFixed(2)} ms, senders ${((1000 * f.cpu.senders) / count).toFixed(2)} ms, ` +
        `receiver ${((1000 * f.cpu.receiver) / count).toFixed(2)} ms` +
        (f.cpu.receiverSys === undefined ? ' (host minus senders)' : ` (${((1000 * f.cpu.receiverSys) / count).toFixed(2)} ms of it in the kernel)`)
      : '');
  const cpuBounds: number[] = [];
  const cpuCeilings: number[] = [];

  const ratios: number[] = [];
  const ceilings: number[][] = [];
  const as: Figures[] = [];
  const bs: Figures[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      console.log(`round ${r + 1} (load ${os.loadavg()[0].toFixed(1)})`);
      const a = peer === 'orthanc' ? await runOrthanc(src.files, assoc) : await runStorescp(src.files, assoc);
      console.log(fmt(peer === 'orthanc' ? '(a) Orthanc ' : '(a) storescp', a));
      if (otherCli) {
        const o = await runRouter(src.files, assoc, undefined, path.resolve(otherCli));
        console.log(fmt(`(b') ${path.basename(path.dirname(path.resolve(otherCli)))}`.padEnd(12), o, `  event-loop delay p99 ${o.stages?.eventLoopDelayMs.p99 ?? '?'} ms  ratio b'/a ${(a.secs / o.secs).toFixed(2)}`));
        if (o.stages) console.log(formatStages(o.stages));
      }
      if (replicas > 1) {
        const rr = await runReplicas(src.files, assoc, replicas, otherCli ? path.resolve(otherCli) : undefined);
        console.log(fmt(`(b×${replicas}) replicas`, rr, `  (peak RSS of one)  ratio b×${replicas}/a ${(a.secs / rr.secs).toFixed(2)}`));
        replicaRatios.push(a.secs / rr.secs);
      }
      const b = await runRouter(src.files, assoc, profileDir);
      console.log(fmt('(b) router  ', b, `  event-loop delay p99 ${b.stages?.eventLoopDelayMs.p99 ?? '?'} ms  ratio b/a ${(a.secs / b.secs).toFixed(2)}`));
      console.log(formatStages(b.stages));
      if (floor) {
        const fl = await runFloor(count, src.sourceBytes, assoc);
        const s = fl.secs;
        console.log(
          `  (c) floor${assoc > 1 ? `×${assoc}` : '  '}  ${(count / s).toFixed(1).padStart(7)} images/s ${(totalMB / s).toFixed(1).padStart(7)} MB/s ${s.toFixed(2).padStart(7)} s` +
            `  host CPU per image ${((1000 * fl.hostCpu) / count).toFixed(2)} ms`,
        );
        if (assoc > 1 && a.cpu) {
          // A receiver that did all storescp does plus the durable write would need (a)'s host CPU and (c)'s
          // per image; with the cores as busy as (a) kept them, that caps its ratio, whatever its design.
          const bound = a.cpu.host / (a.cpu.host + fl.hostCpu);
          cpuCeilings.push(bound);
          console.log(`  CPU ceiling of storescp's work plus the durable write: a_cpu/(a_cpu+c_cpu) ${bound.toFixed(2)}`);
        }
        const j = assoc === 1 ? await runJournalFloor(count, src.sourceBytes) : NaN;
        if (assoc === 1) console.log(`  (d) WAL floor ${(count / j).toFixed(1).padStart(7)} images/s ${(totalMB / j).toFixed(1).padStart(7)} MB/s ${j.toFixed(2).padStart(7)} s`);
        const cs = assoc === 1 ? await runSyncFloor(count, src.sourceBytes) : NaN;
        if (assoc === 1) console.log(`  (c') sync part ${(count / cs).toFixed(1).padStart(7)} images/s ${''.padStart(13)} ${cs.toFixed(2).padStart(7)} s  (c without creating and writing the file, which streaming overlaps with receiving)`);
        if (assoc === 1 && peer === 'storescp') {
          // One association: the sender waits for each answer, so a receiver that does all storescp does and
          // then a durable write before answering takes at least a + c (or a + d with a write-ahead log).
          // A receiver that writes while the PDVs arrive (as serve does) pays only (c') after the last one.
          ceilings.push([a.secs / (a.secs + s), a.secs / (a.secs + j), a.secs / (a.secs + cs)]);
          console.log(
            `  ceiling of any receiver that syncs before answering: a/(a+c) ${(a.secs / (a.secs + s)).toFixed(2)}, ` +
              `a/(a+d) ${(a.secs / (a.secs + j)).toFixed(2)}; writing while receiving, a/(a+c') ${(a.secs / (a.secs + cs)).toFixed(2)}`,
          );
        } else if (peer === 'storescp') {
          // N associations: at best the durable writes of some overlap the receiving of others perfectly, so no
          // receiver that syncs before answering beats the disk's own parallel rate (c) nor storescp's.
          ceilings.push([Math.min(1, a.secs / s), Math.min(1, a.secs / s)]);
          console.log(`  ceiling with perfect overlap: min(1, a/c) ${Math.min(1, a.secs / s).toFixed(2)}`);
        }
      }
      if (assoc > 1 && a.cpu && b.cpu && !Number.isNaN(b.cpu.senders)) {
        // With the host's cores as busy as (a) kept them, the images cannot go faster than the CPU that
        // (b)'s senders and router need per image allows.
        const bound = a.cpu.host / (b.cpu.senders + b.cpu.receiver);
        cpuBounds.push(bound);
        console.log(`  CPU bound: (a)'s host CPU / (b)'s senders + router CPU = ${bound.toFixed(2)} (the ratio reachable at the router's CPU per image, host as busy as in (a))`);
      }
      as.push(a);
      bs.push(b);
      ratios.push(a.secs / b.secs);
    }
  } finally {
    await fsp.rm(src.dir, { recursive: true, force: true });
  }
  const med = (xs: Figures[], f: (x: Figures) => number) => median(xs.map(f));
  console.log(
    `median (a) ${med(as, (x) => count / x.secs).toFixed(1)} images/s, ${med(as, (x) => totalMB / x.secs).toFixed(1)} MB/s, RSS ${med(as, (x) => x.rss / MB).toFixed(0)} MB; ` +
      `(b) ${med(bs, (x) => count / x.secs).toFixed(1)} images/s, ${med(bs, (x) => totalMB / x.secs).toFixed(1)} MB/s, RSS ${med(bs, (x) => x.rss / MB).toFixed(0)} MB`,
  );
  const target = peer === 'orthanc' ? 'expected >= 3' : assoc > 1 ? 'target >= 1.0' : 'target >= 0.8';
  console.log(`ratios b/a: ${ratios.map((x) => x.toFixed(2)).join(', ')} (${target})`);
  if (ceilings.length) {
    console.log(
      assoc === 1
        ? `physical ceilings (one association, sync before answer): rename design ${median(ceilings.map((c) => c[0])).toFixed(2)}, ` +
            `written while receiving ${median(ceilings.map((c) => c[2])).toFixed(2)}, write-ahead log ${median(ceilings.map((c) => c[1])).toFixed(2)}; ` +
            `router reaches ${(median(ratios) / median(ceilings.map((c) => c[2]))).toFixed(2)} of the second`
        : `physical ceiling (${assoc} associations, perfect overlap): ${median(ceilings.map((c) => c[0])).toFixed(2)}; router reaches ${(median(ratios) / median(ceilings.map((c) => c[0]))).toFixed(2)} of it`,
    );
  }
  if (cpuBounds.length) console.log(`CPU bounds at the router's CPU per image: ${cpuBounds.map((x) => x.toFixed(2)).join(', ')}`);
  if (cpuCeilings.length) console.log(`CPU ceilings (storescp's work + durable write, host as busy as (a)): ${cpuCeilings.map((x) => x.toFixed(2)).join(', ')}`);
  if (replicaRatios.length) console.log(`ratios with ${replicas} replicas: ${replicaRatios.map((x) => x.toFixed(2)).join(', ')}`);
  console.log(`RESULT scp ratio=${median(ratios).toFixed(2)}`);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
