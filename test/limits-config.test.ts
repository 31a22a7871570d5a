// router.yaml `limits`: defaults, sizes with units, located errors, check-config, and the values reaching the
// storage SCP and the reader.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'fs';
import { join } from 'path';
import { spawnSync } from 'child_process';
import { loadConfig } from '../src/config/load';
import { ConfigError } from '../src/config/types';
import { DeidPipeline } from '../src/pipeline';
import { DEFAULT_NETWORK_LIMITS } from '../src/receive';
import { tempDir } from './helpers/tmp';

function configFile(yaml: string): string {
  const dir = tempDir('deid-limits-');
  writeFileSync(join(dir, 'router.yaml'), yaml);
  return join(dir, 'router.yaml');
}

function problems(file: string): string[] {
  try {
    loadConfig(file, {});
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return [];
}

describe('limits in router.yaml', () => {
  test('defaults without a limits key are the safe defaults', () => {
    const c = loadConfig(configFile('stateDir: ./state\n'), {});
    assert.equal(c.limits.maxAssociations, DEFAULT_NETWORK_LIMITS.maxAssociations);
    assert.equal(c.limits.maxPduBytes, 262144);
    assert.equal(c.limits.maxDatasetBytes, 1024 ** 3);
    assert.equal(c.limits.idleSeconds, 300);
    assert.equal(c.limits.maxSequenceDepth, 32);
  });

  test('values and units are read, and the reader limits reach the pipeline', () => {
    const c = loadConfig(configFile([
      'limits:',
      '  maxAssociations: 10',
      '  maxAssociationsPerCaller: 3',
      '  maxPduBytes: 64 KiB',
      '  maxDatasetBytes: "512 MiB"',
      '  maxBufferedBytes: 100 MiB',
      '  maxBufferedBytesTotal: 1 GiB',
      '  maxInflatedBytes: 2GB',
      '  maxSequenceDepth: 12',
      '  idleSeconds: 45',
      '  associationSeconds: 7200',
      '  associationRequestSeconds: 5',
    ].join('\n')), {});
    assert.deepEqual(c.limits, {
      maxAssociations: 10, maxAssociationsPerCaller: 3, maxPduBytes: 65536, maxDatasetBytes: 512 * 1024 * 1024, maxBufferedBytes: 100 * 1024 * 1024,
      maxBufferedBytesTotal: 1024 ** 3, maxInflatedBytes: 2e9, maxSequenceDepth: 12, idleSeconds: 45, associationSeconds: 7200, associationRequestSeconds: 5,
    });
    const pipeline = new DeidPipeline(c, 'limits-test-salt-1');
    assert.deepEqual(pipeline.readLimits, { maxInflatedBytes: 2e9, maxSequenceDepth: 12 });
  });

  test('bad values are located errors', () => {
    const got = problems(configFile([
      'limits:',
      '  maxAssociations: 0',
      '  maxAssociationsPerCaller: 2.5',
      '  maxPduBytes: 100',
      '  maxDatasetBytes: 3 GiB',
      '  maxSequenceDepth: deep',
      '  idleSeconds: -1',
      '  maxAsociations: 4',
    ].join('\n')));
    const at = (k: string) => got.find((g) => g.startsWith(`router.yaml: limits.${k}:`));
    assert.match(at('maxAssociations') ?? '', /integer from 1 to/);
    assert.match(at('maxAssociationsPerCaller') ?? '', /integer from 1 to/);
    assert.match(at('maxPduBytes') ?? '', /byte count from 4096 to 4194304/);
    assert.match(at('maxDatasetBytes') ?? '', /byte count from 1024 to 2147483647/);
    assert.match(at('maxSequenceDepth') ?? '', /integer/);
    assert.match(at('idleSeconds') ?? '', /seconds/);
    assert.match(at('maxAsociations') ?? '', /did you mean "maxAssociations"/);
    assert.match(problems(configFile('limits: 5\n'))[0], /router\.yaml: limits: must be a mapping/);
    assert.match(problems(configFile('limits:\n  maxAssociations: 2\n  maxAssociationsPerCaller: 4\n'))[0], /limits\.maxAssociationsPerCaller: 4 is more than maxAssociations/);
  });

  test('check-config shows the limits in force', () => {
    const file = configFile('limits:\n  maxAssociations: 12\n  maxDatasetBytes: 1 MiB\n');
    const r = spawnSync(process.execPath, [join(__dirname, '..', 'src', 'cli.js'), 'check-config', '--config', file], { encoding: 'utf8', env: { ...process.env, DEID_SALT: 'limits-test-salt-2' } });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /limits: 12 associations \(8 per calling AE\); PDU 262144 bytes; dataset 1048576 bytes \(268435456 held in memory whole, 536870912 over all associations\)/);
  });
});
