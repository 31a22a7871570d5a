// The dcmjs-dimse internals the storage SCP relies on (src/receive/scp.ts, notes at its end). The
// version is pinned exactly in package.json; an upgrade that removes or renames one of these fails
// here with the internal's name instead of breaking the SCP at run time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'net';
import { Scp, Implementation } from 'dcmjs-dimse';
import { readFileSync } from 'fs';
import { join } from 'path';

const pkg = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };

test('dcmjs-dimse is pinned to an exact version', () => {
  const spec = pkg.dependencies['dcmjs-dimse'];
  assert.match(spec, /^\d+\.\d+\.\d+$/, `package.json pins dcmjs-dimse exactly (is "${spec}")`);
});

test('internals of Network/Scp used by the SCP exist', async () => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  const socket = await accepted;
  try {
    const scp = new Scp(socket, {}) as unknown as Record<string, unknown>;
    // Whole PDUs in, replacing the library's accumulator (the 'data' listener it adds in _wrapSocket).
    assert.equal(typeof scp._processPdu, 'function', 'Network._processPdu is missing');
    assert.ok(socket.listenerCount('data') > 0, 'Network._wrapSocket no longer adds a socket data listener');
    // The library's interval timer, which the SCP clears.
    assert.ok('timeoutIntervalId' in scp, 'Network.timeoutIntervalId is missing');
    clearInterval(scp.timeoutIntervalId as ReturnType<typeof setInterval>);
    assert.ok('lastPduTime' in scp, 'Network.lastPduTime is missing');
    for (const m of ['sendAssociationAccept', 'sendAssociationReject', 'sendAssociationReleaseResponse', 'sendAbort', 'associationRequested', 'associationReleaseRequested', 'abort']) {
      assert.equal(typeof scp[m], 'function', `Scp.${m} is missing`);
    }
    for (const m of ['getMaxPduLength', 'setMaxPduLength', 'getImplementationClassUid', 'setImplementationClassUid', 'getImplementationVersion', 'setImplementationVersion']) {
      assert.equal(typeof (Implementation as unknown as Record<string, unknown>)[m], 'function', `Implementation.${m} is missing`);
    }
  } finally {
    client.destroy();
    socket.destroy();
    server.close();
  }
});
