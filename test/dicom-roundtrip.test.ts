import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'fs';
import { join } from 'path';
import { readPart10 } from '../src/dicom/read';
import { writePart10 } from '../src/dicom/write';
import { CORPUS_CLEAN } from './helpers/corpus';

// Reading and writing back without changes must reproduce every dataset byte: that is what
// makes "keep" mean keep, and pixel data pass through untouched.
test('read + write reproduces the dataset bytes of every clean corpus file', () => {
  const files = readdirSync(CORPUS_CLEAN).filter((f) => f.endsWith('.dcm'));
  assert.ok(files.length >= 60, `only ${files.length} files`);
  let identical = 0;
  for (const f of files) {
    const input = readFileSync(join(CORPUS_CLEAN, f));
    const obj = readPart10(input);
    const out = writePart10(obj);
    const again = readPart10(out);
    assert.equal(again.dataset.length, obj.dataset.length, f);
    if (obj.hadMeta && !obj.deflated) {
      // Dataset region of input = bytes after the meta; compare with ours.
      const inTail = input.subarray(input.length - datasetLength(out, again));
      const outTail = out.subarray(out.length - datasetLength(out, again));
      if (inTail.equals(outTail)) identical++;
      else assert.fail(`${f}: dataset bytes differ after round trip`);
    }
  }
  assert.ok(identical > 60, `identical: ${identical}`);
});

function datasetLength(part10: Buffer, obj: ReturnType<typeof readPart10>): number {
  const metaLen = part10.readUInt32LE(132 + 8);
  return part10.length - (132 + 12 + metaLen);
}
