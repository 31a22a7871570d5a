// A 2 GB multiframe through serve (issue #9): stored with its pixel data identical, in bounded memory.
// Skipped unless BIG=1 (it writes about 4 GB to the temp folder and takes minutes); the big bench
// (bench/big-bench.ts) runs the same path with storescp for comparison.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'fs';
import { join } from 'path';
import { BIG_LIMITS, writeBigObject, pixelSha256 } from '../bench/big-bench';
import { MB, tmp, peakRss, startRouter, storescu } from '../bench/scp-bench';
import { stopProcess } from './helpers/dcmtk';
import { hasTool } from './helpers/tools';

const big = process.env.BIG === '1';

test('a 2 GB multiframe through serve: pixel data identical, peak RSS under 300 MB', { skip: !big || !hasTool('storescu') ? 'set BIG=1 (needs storescu)' : false, timeout: 30 * 60_000 }, async () => {
  const work = await tmp('big-object-');
  try {
    const src = join(work, 'big.dcm');
    const frames = Number(process.env.BIG_FRAMES ?? 4000); // 4000 x 512 KB = 2 GB
    const { sha256, pixelBytes } = await writeBigObject(src, frames);
    const r = await startRouter({ defaultDestination: 'outgoing', extraYaml: BIG_LIMITS });
    let rss: number;
    try {
      await storescu('DEID_ROUTER', r.port, [src]);
      rss = peakRss(r.proc.pid);
    } finally {
      await stopProcess(r.proc, 30_000);
    }
    const files = (await fsp.readdir(r.outgoing, { recursive: true })).map(String).filter((f) => f.endsWith('.dcm'));
    assert.equal(files.length, 1, r.problems().join('\n'));
    assert.equal(await pixelSha256(join(r.outgoing, files[0]), pixelBytes), sha256, 'pixel data identical');
    assert.ok(rss < 300 * MB, `peak RSS ${(rss / MB).toFixed(0)} MB`);
    await fsp.rm(r.dir, { recursive: true, force: true });
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
});
