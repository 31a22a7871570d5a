// The storage commitment index forgets what it must not keep for ever: one folder of entries per day,
// removed after commitment.indexRetentionDays, and the flat entries of earlier versions removed by age.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'fs';
import { basename, dirname, join } from 'path';
import { CommitmentIndex, FAILURE } from '../src/deliver/commitment-index';
import { tempDir } from './helpers/tmp';

const SALT = 'commitment-index-test-salt-0123456789';
const DAY = 86_400_000;
const T0 = Date.UTC(2026, 9, 1, 12); // 2026-10-01 12:00 UTC

describe('storage commitment index retention', () => {
  test('entries live in one folder per UTC day, the newest entry of an instance wins, and days past the retention are removed', async () => {
    const stateDir = tempDir('deid-commit-index-');
    let clock = T0;
    const index = new CommitmentIndex(stateDir, SALT, (e) => assert.fail(String(e)), { retentionDays: 30, now: () => clock });
    try {
      const [u1, u2, u3] = ['2.25.111', '2.25.222', '2.25.333'];
      index.record(u1, { d: [['pacs', 'dicom', '2.25.9001']] });
      index.record(u3, { d: [['out', 'folder', '2.25.9003']] });
      await index.settled();
      assert.equal(basename(dirname(index.entryPath(u1)!)), '2026-10-01');
      assert.equal(dirname(dirname(index.entryPath(u1)!)), index.root);
      // No original UID on disk: the file is named by a keyed hash.
      assert.deepEqual(readdirSync(join(index.root, '2026-10-01')).sort(), [`${index.keyOf(u1)}.json`, `${index.keyOf(u3)}.json`].sort());
      assert.deepEqual(index.stateOf(u3), { state: 'committed' });

      // Ten days later the modality sends u1 again (to a folder this time), and u2.
      clock = T0 + 10 * DAY;
      index.record(u1, { d: [['out', 'folder', '2.25.9011']] });
      index.record(u2, { q: true });
      await index.settled();
      assert.equal(basename(dirname(index.entryPath(u1)!)), '2026-10-11', 'the newest entry is found first');
      assert.deepEqual(index.stateOf(u1), { state: 'committed' }, 'the folder copy, not the spooled one of day 1');

      // 35 days after the first images: day 1 is past the 30 days, day 11 is not.
      clock = T0 + 35 * DAY;
      await index.prune();
      assert.deepEqual(readdirSync(index.root), ['2026-10-11']);
      assert.deepEqual(index.stateOf(u3), { state: 'failed', reason: FAILURE.NoSuchObjectInstance, why: 'never received' });
      assert.equal(index.entryPath(u3), undefined);
      assert.deepEqual(index.stateOf(u1), { state: 'committed' });
      assert.deepEqual(index.stateOf(u2), { state: 'committed' });

      clock = T0 + 45 * DAY;
      await index.prune();
      assert.deepEqual(readdirSync(index.root), []);
      assert.equal(index.stateOf(u1).state, 'failed');
    } finally {
      await index.close();
    }
  });

  test('flat entries of earlier versions are read, and removed once older than the retention', async () => {
    const stateDir = tempDir('deid-commit-index-legacy-');
    const clock = T0;
    const index = new CommitmentIndex(stateDir, SALT, (e) => assert.fail(String(e)), { retentionDays: 7, now: () => clock });
    try {
      mkdirSync(index.legacyDir, { recursive: true });
      const recent = '2.25.444';
      const old = '2.25.555';
      const put = (uid: string, ageDays: number): string => {
        const f = join(index.legacyDir, `${index.keyOf(uid)}.json`);
        writeFileSync(f, JSON.stringify({ d: [['out', 'folder', '2.25.1']] }));
        const t = (clock - ageDays * DAY) / 1000;
        utimesSync(f, t, t);
        return f;
      };
      const recentFile = put(recent, 2);
      const oldFile = put(old, 8);
      assert.equal(index.entryPath(recent), recentFile);
      assert.deepEqual(index.stateOf(old), { state: 'committed' }, 'read until pruned');

      await index.prune();
      assert.equal(existsSync(oldFile), false);
      assert.equal(existsSync(recentFile), true);
      assert.equal(index.stateOf(old).state, 'failed');
      assert.deepEqual(index.stateOf(recent), { state: 'committed' });

      // Once the last one is past the retention, the old folder goes too.
      const t = (clock - 9 * DAY) / 1000;
      utimesSync(recentFile, t, t);
      await index.prune();
      assert.equal(existsSync(index.legacyDir), false);
      assert.equal(index.entryPath(recent), undefined);
    } finally {
      await index.close();
    }
  });
});
