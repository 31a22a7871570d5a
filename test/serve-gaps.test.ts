// Issue #8 item 1 and #13 item 7 over the network: crafted datasets whose sequences arrive as UN
// or OB (small ones, and ones large enough for the streaming path's bulk values), sent byte for
// byte by our own SCU (dcmtk's storescu would re-encode them) to a real `serve` process. Every
// image answered Success must be on disk, and no output may hold a planted value or original UID.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import { readFileSync, readdirSync, writeFileSync } from 'fs';
import { join } from 'path';
import YAML from 'yaml';
import { StoreAssociation } from '../src/deliver/dimse-scu';
import { freePort, waitForPort } from './helpers/dcmtk';
import { CEl, CT, ELE, ILE, Enc, MARK, ORIG, PIXELS, TSX, ctElements, encodeDataset, s } from './fixtures/craft';
import { readPart10 } from '../src/dicom/read';
import { findElement } from '../src/dicom/dataset';
import { tempDir } from './helpers/tmp';

const SALT = 'serve-gaps-salt-2b9e41d07c';

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? walk(join(dir, d.name)) : [join(dir, d.name)]));
}

test('sequences sent as UN or OB reach no output unread, small or streamed', async () => {
  const base = tempDir('deid-serve-gaps-');
  const port = await freePort();
  const out = join(base, 'out');
  writeFileSync(join(base, 'router.yaml'), YAML.stringify({
    salt: SALT, stateDir: join(base, 'state'),
    listen: { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port, allowUnknownCallers: true },
    destinations: { outgoing: { type: 'folder', path: out } },
  }));
  const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', join(base, 'router.yaml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  try {
    await waitForPort(port);
    const big = 'x'.repeat(80 * 1024); // past the streaming path's bulk threshold
    const content = (text: string): CEl[][] => [[s(0x0040a040, 'CS', 'TEXT'), s(0x0040a123, 'PN', `${MARK}PERSON`), s(0x0040a160, 'UT', `${MARK}TEXT ${text}`), s(0x00081155, 'UI', ORIG.other)]];
    const cases: Array<{ name: string; enc: Enc; extra: CEl[] }> = [];
    for (const as of ['UN', 'OB'] as const) {
      for (const undef of [false, true]) {
        cases.push({ name: `${as}-${undef ? 'undef' : 'defined'}-small`, enc: ELE, extra: [{ tag: 0x00081140, vr: 'SQ', as, undef, items: [[s(0x00081150, 'UI', CT), s(0x00081155, 'UI', ORIG.other), s(0x0040a123, 'PN', `${MARK}REF`)]] }] });
        cases.push({ name: `${as}-${undef ? 'undef' : 'defined'}-big`, enc: ELE, extra: [{ tag: 0x0040a730, vr: 'SQ', as, undef, items: content(big) }] });
      }
    }
    cases.push({ name: 'implicit-big', enc: ILE, extra: [{ tag: 0x0040a730, vr: 'SQ', undef: false, items: content(big) }] });

    const assoc = await StoreAssociation.connect({
      host: '127.0.0.1', port, callingAeTitle: 'GAPTEST', calledAeTitle: 'DEID_ROUTER',
      contexts: [{ abstractSyntaxUid: CT, transferSyntaxUid: TSX.ExplicitLE }, { abstractSyntaxUid: CT, transferSyntaxUid: TSX.ImplicitLE }],
    });
    const answered: Array<{ name: string; status: number }> = [];
    for (const [i, c] of cases.entries()) {
      const sop = `${ORIG.sop}.${i + 1}`;
      const ds = encodeDataset(ctElements(c.extra, { sop }), c.enc);
      const ts = c.enc.explicit ? TSX.ExplicitLE : TSX.ImplicitLE;
      const pc = assoc.contextFor(CT, ts);
      assert.ok(pc, `context for ${ts} accepted`);
      const r = await assoc.cStore(pc, CT, sop, ds);
      answered.push({ name: c.name, status: r.status });
    }
    await assoc.release();

    const succeeded = answered.filter((a) => a.status === 0);
    assert.equal(succeeded.length, cases.length, `every crafted image is accepted: ${JSON.stringify(answered)}`);
    const files = walk(out).filter((f) => f.endsWith('.dcm'));
    assert.equal(files.length, succeeded.length, 'every image answered Success is on disk');
    for (const f of files) {
      const bytes = readFileSync(f);
      const text = bytes.toString('latin1');
      for (const n of [MARK, ...Object.values(ORIG)]) assert.ok(!text.includes(n), `${f}: holds ${n}`);
      assert.ok(findElement(readPart10(bytes).dataset, 0x7fe00010)?.value?.equals(PIXELS), 'pixel data identical');
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
  assert.doesNotMatch(stderr, /Error|TypeError/);
});
