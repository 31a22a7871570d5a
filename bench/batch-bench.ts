// Batch throughput benchmark: our `anonymize` command against gdcmanon (GDCM, PS3.15 basic profile).
//
//   npm run build && npx tsc -p tsconfig.test.json
//   node .build-test/bench/batch-bench.js [--files 2000] [--runs 1] [--keep] [--cli PATH] [--baseline PATH]
//
// Builds an input tree of >= --files DICOM files in a temp dir by copying the corpus
// (DEID_PHI_DIR, else the one generated from test/data/corpus, see test/helpers/corpus.ts) into rep0001/,
// rep0002/, ...; corpus files that gdcmanon cannot de-identify (it aborts a directory run on the
// first one) are probed one by one and left out of BOTH tools' input. Each tool is then timed
// wall-clock as a whole process (Node start-up included), with peak RSS from /usr/bin/time -v when
// present. Prints per-tool figures, the files/s ratio ours/gdcmanon and a final "RESULT ratio=X.XX".
// Must be run from the repo root (dist/cli.js and config/ are resolved from process.cwd()).
import { spawn, spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import { inflateRawSync, deflateRawSync } from 'zlib';
import { copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'fs';
import { cpus, tmpdir } from 'os';
import { basename, join, resolve } from 'path';
import { parseArgs } from 'util';
import { phiCorpusDir } from '../test/helpers/corpus';

interface RunResult {
  tool: string;
  files: number;
  bytes: number;
  seconds: number;
  rssKb: number | undefined;
  /** user + system CPU seconds from time(1): less sensitive than wall-clock to a busy machine. */
  cpuSeconds: number | undefined;
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

const TIME = '/usr/bin/time';

class BenchError extends Error {}

/** Throws, so that the temp dir is still removed by main's finally. */
function die(msg: string): never {
  throw new BenchError(msg);
}

function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** Runs cmd under /usr/bin/time -v (when available) and measures wall-clock from spawn to exit. */
function timed(tool: string, cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; timeFile: string; files: number; bytes: number }): Promise<RunResult> {
  const useTime = existsSync(TIME);
  const argv = useTime ? ['-v', '-o', opts.timeFile, cmd, ...args] : args;
  const exe = useTime ? TIME : cmd;
  return new Promise((res, rej) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(exe, argv, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', rej);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      let rssKb: number | undefined;
      let cpuSeconds: number | undefined;
      let exitCode = code;
      if (useTime && existsSync(opts.timeFile)) {
        const t = readFileSync(opts.timeFile, 'utf8');
        const m = /Maximum resident set size \(kbytes\):\s*(\d+)/.exec(t);
        if (m) rssKb = Number(m[1]);
        const u = /User time \(seconds\):\s*([\d.]+)/.exec(t);
        const k = /System time \(seconds\):\s*([\d.]+)/.exec(t);
        if (u && k) cpuSeconds = Number(u[1]) + Number(k[1]);
        // time(1) exits with the child's code; it also notes signals in its report.
        const sig = /Command terminated by signal (\d+)/.exec(t);
        if (sig) exitCode = 128 + Number(sig[1]);
      }
      res({ tool, files: opts.files, bytes: opts.bytes, seconds, rssKb, cpuSeconds, exitCode, stdout, stderr });
    });
  });
}

/** SOP Instance UID of a file as dcmdump (DCMTK) reads it, or undefined. */
function dcmdumpSopInstanceUid(file: string): string | undefined {
  const r = spawnSync('dcmdump', ['-q', '+L', '+P', '0008,0018', file], { encoding: 'utf8' });
  if (r.error) return undefined;
  const line = r.stdout.split('\n').find((l) => l.startsWith('(0008,0018)'));
  if (!line) return undefined;
  const ui = /^\(0008,0018\) \w\w \[([^\]]*)\]/.exec(line);
  if (ui) return ui[1].trim();
  // Read as UN (e.g. implicit VR with an unknown-to-DCMTK layout): hex bytes 31\2e\39...
  const un = /^\(0008,0018\) UN ((?:[0-9a-f]{2}\\?)+)/.exec(line);
  if (un) return Buffer.from(un[1].split('\\').map((h) => parseInt(h, 16))).toString('latin1').replace(/[\0 ]+$/, '');
  return undefined;
}

/**
 * The same-length variant number `n` of a UID: its last `digits` digit characters (dots kept) are
 * replaced by n written in base 9 with the digits 1-9, so no component gets a leading zero.
 */
function uidVariant(uid: string, n: number, digits: number): string | undefined {
  const code: string[] = [];
  for (let k = 0, v = n; k < digits; k++, v = Math.floor(v / 9)) code.push(String((v % 9) + 1));
  const chars = uid.split('');
  let j = 0;
  for (let i = chars.length - 1; i >= 0 && j < digits; i--) if (chars[i] !== '.') chars[i] = code[j++];
  return j === digits ? chars.join('') : undefined;
}

/** Replaces every occurrence of `from` by the same-length `to` in a buffer (in place). */
function replaceAll(buf: Buffer, from: Buffer, to: Buffer): number {
  let count = 0;
  for (let at = buf.indexOf(from); at >= 0; at = buf.indexOf(from, at + from.length)) {
    to.copy(buf, at);
    count++;
  }
  return count;
}

/** End of the Part-10 file meta group (explicit VR little endian) and its transfer syntax. */
function metaEnd(buf: Buffer): { end: number; ts: string } | undefined {
  if (buf.length < 132 || buf.toString('latin1', 128, 132) !== 'DICM') return undefined;
  let p = 132;
  let ts = '';
  while (p + 8 <= buf.length && buf.readUInt16LE(p) === 0x0002) {
    const el = buf.readUInt16LE(p + 2);
    const vr = buf.toString('latin1', p + 4, p + 6);
    let len: number;
    let hdr: number;
    if (['OB', 'OW', 'OF', 'OD', 'OL', 'OV', 'SQ', 'UT', 'UN', 'UC', 'UR'].includes(vr)) {
      len = buf.readUInt32LE(p + 8);
      hdr = 12;
    } else {
      len = buf.readUInt16LE(p + 6);
      hdr = 8;
    }
    if (el === 0x0010) ts = buf.toString('latin1', p + hdr, p + hdr + len).replace(/[\0 ]+$/, '');
    p += hdr + len;
  }
  return { end: p, ts };
}

/**
 * A copy of a Part-10 file whose SOP Instance UID (meta and dataset, and any reference to it)
 * is replaced by a same-length variant, so that every copy is a distinct instance. Lengths do not
 * change, except for a deflated dataset, which is inflated, patched and deflated again.
 */
function withUid(original: Buffer, uid: string, newUid: string): { bytes: Buffer; replaced: number } {
  const from = Buffer.from(uid, 'latin1');
  const to = Buffer.from(newUid, 'latin1');
  const m = metaEnd(original);
  if (m && m.ts === '1.2.840.10008.1.2.1.99') {
    const meta = Buffer.from(original.subarray(0, m.end));
    const body = inflateRawSync(original.subarray(m.end));
    const replaced = replaceAll(meta, from, to) + replaceAll(body, from, to);
    return { bytes: Buffer.concat([meta, deflateRawSync(body)]), replaced };
  }
  const bytes = Buffer.from(original);
  return { bytes, replaced: replaceAll(bytes, from, to) };
}

/** Quarantine reason files grouped by stage and reason, with the source file names. */
function quarantineReasons(dir: string): { count: number; reasons: Map<string, Set<string>> } {
  const reasons = new Map<string, Set<string>>();
  let count = 0;
  if (!existsSync(dir)) return { count, reasons };
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.reason.json'))) {
    count++;
    try {
      const r = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { stage?: string; reason?: string; source?: string };
      const key = `${r.stage ?? '?'}: ${r.reason ?? '?'}`;
      if (!reasons.has(key)) reasons.set(key, new Set());
      reasons.get(key)!.add(basename(r.source ?? '?'));
    } catch (e) {
      reasons.set(`unreadable reason file ${f}: ${(e as Error).message}`, new Set());
    }
  }
  return { count, reasons };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function fmtRow(cells: string[], widths: number[]): string {
  return cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      files: { type: 'string', default: '2000' },
      runs: { type: 'string', default: '1' },
      keep: { type: 'boolean', default: false },
      'same-uids': { type: 'boolean', default: false },
      'short-reps': { type: 'string' },
      cli: { type: 'string' },
      baseline: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write('usage: node .build-test/bench/batch-bench.js [--files N (2000)] [--runs K (1)] [--keep] [--same-uids] [--cli PATH] [--baseline PATH]\n' +
      '  --same-uids      plain copies: every rep holds the same SOP instances (ours then writes each once)\n' +
      '  --short-reps K   also time both tools on the first K reps (default a quarter of them; 0: not), to split\n' +
      '                   each tool\'s time into a fixed cost and a cost per file (its steady state)\n' +
      '  --cli PATH       our cli.js to time (default dist/cli.js), e.g. a copy of an earlier build\n' +
      '  --baseline PATH  also time this cli.js (e.g. a copy of dist/ from before a change, kept inside the\n' +
      '                   repo) in the same runs, as "base", with its own ratio: A/B under the same load\n');
    return 0;
  }
  const wanted = parseInt(values.files ?? '2000', 10);
  const runs = Math.max(1, parseInt(values.runs ?? '1', 10) || 1);
  if (!(wanted > 0)) die('--files must be a positive number');

  const repo = process.cwd();
  const cli = values.cli ? resolve(values.cli) : join(repo, 'dist', 'cli.js');
  const config = join(repo, 'config');
  if (!existsSync(cli)) die(`${cli} not found: run "npm run build" first (and run this from the repo root)`);
  const baseline = values.baseline ? resolve(values.baseline) : undefined;
  if (baseline && !existsSync(baseline)) die(`--baseline ${baseline} not found`);
  if (!existsSync(config)) die(`${config} not found: run this from the repo root`);
  const corpus = process.env.DEID_PHI_DIR ?? phiCorpusDir();
  if (!existsSync(corpus)) die(`corpus ${corpus} not found (DEID_PHI_DIR)`);
  const gdcmanon = ['/usr/bin/gdcmanon', '/usr/local/bin/gdcmanon'].find((p) => existsSync(p));
  if (!gdcmanon) die('gdcmanon not found (apt install libgdcm-tools)');

  const work = mkdtempSync(join(tmpdir(), 'deid-batch-bench-'));
  const cleanup = () => {
    if (values.keep) process.stdout.write(`kept ${work}\n`);
    else rmSync(work, { recursive: true, force: true });
  };
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });

  try {
    // Throwaway certificate for gdcmanon -e (it encrypts the original attributes into an
    // Encrypted Attributes Sequence, as E.1.1 describes).
    const ssl = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'k.pem', '-out', 'c.pem', '-subj', '/CN=test', '-days', '1'], { cwd: work, encoding: 'utf8' });
    if (ssl.status !== 0) die(`openssl failed: ${ssl.stderr}`);
    const cert = join(work, 'c.pem');

    // Probe every corpus file with gdcmanon alone: a directory run stops at the first file it
    // cannot read, de-identify or write (--continue only covers unreadable/non-DICOM input).
    const corpusFiles = readdirSync(corpus).filter((f) => f.endsWith('.dcm')).sort();
    if (!corpusFiles.length) die(`no .dcm files in ${corpus}`);
    const probeDir = join(work, 'probe');
    mkdirSync(probeDir);
    const usable: string[] = [];
    const excluded: { file: string; why: string }[] = [];
    for (const f of corpusFiles) {
      const r = spawnSync(gdcmanon, ['-e', '-c', cert, '-i', join(corpus, f), '-o', join(probeDir, f)], { encoding: 'utf8' });
      if (r.status === 0 && existsSync(join(probeDir, f))) usable.push(f);
      else excluded.push({ file: f, why: `${(r.stderr || r.stdout || `exit ${r.status}`).trim().split('\n')[0].replace(corpus + '/', '').replace(probeDir + '/', '')}` });
    }
    // The probe outputs stay until the end: see the note on deletions in the run loop.
    if (!usable.length) die('gdcmanon could not process any corpus file');

    // Input tree: rep0001/..repNNNN/ each holding one copy of every usable corpus file. Unless
    // --same-uids, every copy gets its own SOP Instance UID (a same-length variant of the
    // original), so that both tools do the full work for every file: ours writes one output per
    // SOP instance (and skips later inputs holding an instance it has already written).
    const reps = Math.ceil(wanted / usable.length);
    const nFiles = reps * usable.length;
    const input = join(work, 'in');
    const uids = new Map<string, string | undefined>();
    if (!values['same-uids']) for (const f of usable) uids.set(f, dcmdumpSopInstanceUid(join(corpus, f)));
    const digits = Math.max(4, Math.ceil(Math.log(nFiles + 1) / Math.log(9)));
    const notUnique = new Set<string>();
    const expected = new Map<string, string>(); // rep0001 copy -> the UID it should hold
    let nBytes = 0;
    let serial = 0;
    for (let r = 1; r <= reps; r++) {
      const rep = `rep${String(r).padStart(4, '0')}`;
      const d = join(input, rep);
      mkdirSync(d, { recursive: true });
      for (const f of usable) {
        const src = join(corpus, f);
        const dst = join(d, f);
        const uid = uids.get(f);
        const newUid = uid ? uidVariant(uid, serial++, digits) : undefined;
        if (values['same-uids'] || !uid || !newUid) {
          if (!values['same-uids']) notUnique.add(f);
          copyFileSync(src, dst);
          nBytes += statSync(src).size;
          continue;
        }
        const { bytes, replaced } = withUid(readFileSync(src), uid, newUid);
        if (!replaced) notUnique.add(f);
        writeFileSync(dst, bytes);
        nBytes += bytes.length;
        if (r === 1) expected.set(dst, newUid);
      }
    }
    // The short input: the first K reps again, as hard links (no copy, same bytes, same page cache).
    const shortReps = Math.min(reps - 1, values['short-reps'] !== undefined ? parseInt(values['short-reps'], 10) || 0 : Math.floor(reps / 4));
    const shortInput = join(work, 'in-short');
    const nShort = shortReps > 0 ? shortReps * usable.length : 0;
    let shortBytes = 0;
    for (let r = 1; r <= shortReps; r++) {
      const rep = `rep${String(r).padStart(4, '0')}`;
      mkdirSync(join(shortInput, rep), { recursive: true });
      for (const f of usable) {
        linkSync(join(input, rep, f), join(shortInput, rep, f));
        shortBytes += statSync(join(input, rep, f)).size;
      }
    }
    // Check that DCMTK reads the new UIDs back from the first rep (the others are built alike).
    for (const [file, uid] of expected) {
      const got = dcmdumpSopInstanceUid(file);
      if (got !== uid) notUnique.add(`${basename(file)} (reads back ${got ?? 'nothing'})`);
    }
    // Flush the copies to disk now so that their write-back does not land inside a timed run.
    spawnSync('sync');

    process.stdout.write(`corpus: ${corpus}: ${corpusFiles.length} .dcm files, ${usable.length} usable, ${excluded.length} excluded from both inputs (gdcmanon fails on them):\n`);
    for (const e of excluded) process.stdout.write(`  - ${e.file}: ${e.why}\n`);
    process.stdout.write(`input: ${nFiles} files (${reps} x ${usable.length}), ${(nBytes / 1e6).toFixed(1)} MB in ${input}; ` +
      `${values['same-uids'] ? 'plain copies (same SOP instances in every rep)' : 'every copy has its own SOP Instance UID'}\n`);
    if (notUnique.size) process.stdout.write(`  warning: SOP Instance UID not made unique for: ${[...notUnique].join(', ')}\n`);
    process.stdout.write(`tools: ours = node dist/cli.js anonymize (${process.version}); gdcmanon = ${spawnSync(gdcmanon, ['--version'], { encoding: 'utf8' }).stdout.trim()}\n`);
    process.stdout.write(`peak RSS: ${existsSync(TIME) ? 'measured with /usr/bin/time -v' : 'not measured (/usr/bin/time missing: apt install time)'}\n\n`);

    const salt = `bench-${Date.now()}-${randomBytes(8).toString('hex')}-salt`;
    const ours: RunResult[] = [];
    const theirs: RunResult[] = [];
    const bases: RunResult[] = [];
    const shortOurs: RunResult[] = [];
    const shortTheirs: RunResult[] = [];
    let oursQuarantine = '';
    let oursOut = '';
    let theirOut = '';
    for (let i = 1; i <= runs; i++) {
      // Fresh output dirs each run; the input stays in the page cache for both tools alike.
      const out1 = join(work, `out-ours-${i}`);
      const q = join(work, `q-${i}`);
      const out2 = join(work, `out-gdcmanon-${i}`);
      const runOurs = async (path = cli, tag = 'ours', src = input, files = nFiles, bytes = nBytes) => {
        const o = tag === 'ours' ? out1 : join(work, `out-${tag}-${i}`);
        const r = await timed(tag, process.execPath, [path, 'anonymize', '--config', config, src, o, '--quarantine', tag === 'ours' ? q : join(work, `q-${tag}-${i}`)], {
          cwd: repo, env: { ...process.env, DEID_SALT: salt }, timeFile: join(work, `time-${tag}-${i}.txt`), files, bytes,
        });
        spawnSync('sync'); // the other tool should not pay for this one's write-back
        return r;
      };
      const runTheirs = async (src = input, out = out2, files = nFiles, bytes = nBytes) => {
        const r = await timed('gdcmanon', gdcmanon, ['-e', '-c', cert, '-r', '--continue', '-i', src, '-o', out], {
          cwd: work, env: process.env, timeFile: join(work, `time-gdcmanon-${i}.txt`), files, bytes,
        });
        spawnSync('sync');
        return r;
      };
      // Alternate which tool goes first, so that neither always runs right after the set-up.
      let o: RunResult;
      let g: RunResult;
      let b: RunResult | undefined;
      if (i % 2) {
        o = await runOurs();
        g = await runTheirs();
        if (baseline) b = await runOurs(baseline, 'base');
      } else {
        if (baseline) b = await runOurs(baseline, 'base');
        g = await runTheirs();
        o = await runOurs();
      }
      ours.push(o);
      theirs.push(g);
      if (b) bases.push(b);
      if (nShort) {
        // The same pair over the short input, in the other order.
        const so = () => runOurs(cli, 'short', shortInput, nShort, shortBytes);
        const st = () => runTheirs(shortInput, join(work, `out-gdcmanon-short-${i}`), nShort, shortBytes);
        if (i % 2) {
          shortTheirs.push(await st());
          shortOurs.push(await so());
        } else {
          shortOurs.push(await so());
          shortTheirs.push(await st());
        }
      }
      process.stdout.write(`run ${i}/${runs}: ours ${o.seconds.toFixed(2)} s (exit ${o.exitCode}), gdcmanon ${g.seconds.toFixed(2)} s (exit ${g.exitCode})` +
        `${b ? `, base ${b.seconds.toFixed(2)} s (exit ${b.exitCode})` : ''}\n`);
      // Earlier outputs stay until the end. Deleting them here made every later run slower, for
      // both tools: on ext4 without a journal (these machines), a new inode skips over inodes
      // deleted in the last minutes (recently_deleted() in fs/ext4/ialloc.c), and 4,000 fresh
      // deletions made each file creation ~10 times dearer.
      oursQuarantine = q;
      oursOut = out1;
      theirOut = out2;
    }

    // What each tool did with the input (last run).
    const last = ours[ours.length - 1];
    const summaryLine = last.stdout.split('\n').find((l) => l.startsWith('processed '));
    const oursOutFiles = existsSync(oursOut) ? listFiles(oursOut).length : 0;
    const gLast = theirs[theirs.length - 1];
    const gOutFiles = existsSync(theirOut) ? listFiles(theirOut).filter((f) => f.endsWith('.dcm')).length : 0;
    process.stdout.write('\nper tool (last run):\n');
    if (summaryLine) {
      process.stdout.write(`  ours: "${summaryLine.trim()}"; exit ${last.exitCode}; ${oursOutFiles} output files\n`);
    } else {
      process.stdout.write(`  ours: no summary line! exit ${last.exitCode}\n    stdout: ${last.stdout.trim()}\n    stderr: ${last.stderr.trim().slice(0, 2000)}\n`);
    }
    {
      const { count, reasons } = quarantineReasons(oursQuarantine);
      process.stdout.write(`  ours quarantine: ${count} files\n`);
      for (const [k, v] of reasons) process.stdout.write(`    ${k} [${[...v].join(', ')}]\n`);
    }
    // stderr: pino JSON lines; count them by message, show the non-routine ones.
    const byMsg = new Map<string, number>();
    const other: string[] = [];
    for (const l of last.stderr.split('\n').filter((x) => x.trim())) {
      try {
        const j = JSON.parse(l) as { level?: number; msg?: string };
        const k = `level ${j.level ?? '?'}: ${j.msg ?? '?'}`;
        byMsg.set(k, (byMsg.get(k) ?? 0) + 1);
      } catch {
        other.push(l);
      }
    }
    if (byMsg.size) process.stdout.write(`  ours log lines: ${[...byMsg].map(([k, n]) => `${n} x "${k}"`).join(', ')}\n`);
    if (other.length) process.stdout.write(`  ours stderr (not log lines), ${other.length} lines, first: ${other.slice(0, 5).join('\n    ')}\n`);
    process.stdout.write(`  gdcmanon: ${gOutFiles} output files of ${nFiles}, failed ${nFiles - gOutFiles}; exit ${gLast.exitCode}` +
      `${gLast.stderr.trim() ? `; stderr: ${gLast.stderr.trim().split('\n').slice(0, 5).join(' | ')}` : ''}\n`);

    // Untimed: what ours makes of the corpus files left out for gdcmanon's sake.
    if (excluded.length) {
      const exIn = join(work, 'excluded-in');
      mkdirSync(exIn);
      for (const e of excluded) copyFileSync(join(corpus, e.file), join(exIn, e.file));
      const exQ = join(work, 'excluded-q');
      const r = spawnSync(process.execPath, [cli, 'anonymize', '--config', config, exIn, join(work, 'excluded-out'), '--quarantine', exQ], {
        cwd: repo, env: { ...process.env, DEID_SALT: salt }, encoding: 'utf8',
      });
      const line = r.stdout.split('\n').find((l) => l.startsWith('processed ')) ?? `no summary line (exit ${r.status}): ${r.stderr.trim().slice(0, 500)}`;
      process.stdout.write(`  ours on the ${excluded.length} excluded files (untimed): "${line.trim()}"; exit ${r.status}\n`);
      for (const [k, v] of quarantineReasons(exQ).reasons) process.stdout.write(`    ${k} [${[...v].join(', ')}]\n`);
    }

    // Figures. files/s and MB/s count the whole input (every file each tool was given).
    const w = [12, 6, 7, 8, 8, 7, 8, 9];
    process.stdout.write('\n' + fmtRow(['tool', 'files', 'MB', 'seconds', 'files/s', 'MB/s', 'CPU s', 'peak RSS'], w) + '\n');
    const line = (r: RunResult, label: string) =>
      fmtRow([label, String(r.files), (r.bytes / 1e6).toFixed(1), r.seconds.toFixed(2), (r.files / r.seconds).toFixed(0), (r.bytes / 1e6 / r.seconds).toFixed(1),
        r.cpuSeconds !== undefined ? r.cpuSeconds.toFixed(2) : 'n/a',
        r.rssKb !== undefined ? `${(r.rssKb / 1024).toFixed(0)} MB` : 'n/a'], w);
    const mid = (rs: RunResult[]): RunResult => {
      const sec = median(rs.map((r) => r.seconds));
      const rss = rs.every((r) => r.rssKb !== undefined) ? Math.max(...rs.map((r) => r.rssKb!)) : undefined;
      const cpu = rs.every((r) => r.cpuSeconds !== undefined) ? median(rs.map((r) => r.cpuSeconds!)) : undefined;
      return { ...rs[0], seconds: sec, rssKb: rss, cpuSeconds: cpu };
    };
    for (const [name, rs] of [['ours', ours], ['gdcmanon', theirs], ['base', bases]] as const) {
      if (!rs.length) continue;
      if (runs > 1) rs.forEach((r, i) => process.stdout.write(line(r, `${name}#${i + 1}`) + '\n'));
      process.stdout.write(line(mid(rs), runs > 1 ? `${name} med` : name) + '\n');
    }
    // Runs are interleaved (ours, gdcmanon, ours, ...), so the per-run ratios are paired under
    // the same machine load; their median is the headline figure (with one run, it is that run's).
    const ratios = ours.map((o, i) => theirs[i].seconds / o.seconds);
    const ratio = median(ratios);
    const ratioOfMedians = median(theirs.map((r) => r.seconds)) / median(ours.map((r) => r.seconds));
    process.stdout.write(`\nours/gdcmanon files/s: ${ratio.toFixed(2)}x` +
      `${runs > 1 ? ` (median of paired runs ${ratios.map((r) => r.toFixed(2)).join(', ')}; ratio of median times ${ratioOfMedians.toFixed(2)}x)` : ''}` +
      `; target >= 2x: ${ratio >= 2 ? 'met' : 'NOT met'}\n`);
    if (bases.length) {
      const baseRatios = bases.map((b, i) => theirs[i].seconds / b.seconds);
      process.stdout.write(`base/gdcmanon files/s: ${median(baseRatios).toFixed(2)}x (paired runs ${baseRatios.map((r) => r.toFixed(2)).join(', ')}); ` +
        `ours/base: ${median(bases.map((b, i) => b.seconds / ours[i].seconds)).toFixed(2)}x` +
        `${bases.every((r) => r.cpuSeconds !== undefined) && ours.every((r) => r.cpuSeconds !== undefined) ? `, CPU seconds ours ${median(ours.map((r) => r.cpuSeconds!)).toFixed(2)} vs base ${median(bases.map((r) => r.cpuSeconds!)).toFixed(2)}` : ''}\n`);
    }
    if (ours.every((r) => r.cpuSeconds !== undefined) && theirs.every((r) => r.cpuSeconds !== undefined)) {
      const cpuRatio = median(theirs.map((r) => r.cpuSeconds!)) / median(ours.map((r) => r.cpuSeconds!));
      process.stdout.write(`ours/gdcmanon files per CPU second: ${cpuRatio.toFixed(2)}x (median CPU time; ours may use >1 core)\n`);
    }
    if (nShort) {
      // Each tool's time as fixed + files x per-file (two sizes, paired by run): the per-file part is its
      // steady state, the fixed part is start-up, loading and warming up. The ratio of the per-file parts is
      // what the ratio approaches as a run grows; Node's bare start-up is the part of the fixed cost no
      // JavaScript tool can avoid.
      const perFile = (full: RunResult[], short: RunResult[]) => median(full.map((f, k) => (f.seconds - short[k].seconds) / (nFiles - nShort)));
      const ourPer = perFile(ours, shortOurs);
      const theirPer = perFile(theirs, shortTheirs);
      const ourFixed = median(ours.map((r) => r.seconds)) - nFiles * ourPer;
      const theirFixed = median(theirs.map((r) => r.seconds)) - nFiles * theirPer;
      const bare: number[] = [];
      for (let k = 0; k < 5; k++) {
        const t0 = process.hrtime.bigint();
        spawnSync(process.execPath, ['-e', '0']);
        bare.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      process.stdout.write(`fixed cost + cost per file, from these runs and runs over the first ${shortReps} reps (${nShort} files; ` +
        `ours ${median(shortOurs.map((r) => r.seconds)).toFixed(2)} s, gdcmanon ${median(shortTheirs.map((r) => r.seconds)).toFixed(2)} s):\n` +
        `  ours     ${ourFixed.toFixed(2)} s + ${(1000 * ourPer).toFixed(3)} ms/file\n` +
        `  gdcmanon ${theirFixed.toFixed(2)} s + ${(1000 * theirPer).toFixed(3)} ms/file\n` +
        `  steady-state ratio (gdcmanon ms/file / ours ms/file): ${(theirPer / ourPer).toFixed(2)}x; \`node -e 0\` alone takes ${median(bare).toFixed(2)} s\n` +
        `  with ours' per-file cost, this run size reaches 2x only if ours' fixed cost is at most ${(median(theirs.map((r) => r.seconds)) / 2 - nFiles * ourPer).toFixed(2)} s\n`);
    }
    const wall = spawnSync('uptime', { encoding: 'utf8' }).stdout?.trim();
    if (wall) process.stdout.write(`machine: ${cpus().length} CPUs; ${wall}\n`);
    process.stdout.write(`RESULT ratio=${ratio.toFixed(2)}\n`);
    return 0;
  } finally {
    cleanup();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    if (e instanceof BenchError) {
      process.stderr.write(`batch-bench: ${e.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`batch-bench: ${(e as Error).stack ?? e}\n`);
      process.exitCode = 3;
    }
  },
);
