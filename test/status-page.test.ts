// The status page as HTML, without a network: what needs attention is flagged, every value is
// escaped, and the page carries no script.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RecentActivity, renderStatusPage, STUCK_AFTER_SECONDS, type StatusView } from '../src/observe/status-page';
import type { DestinationView } from '../src/observe/events';

const dest = (name: string, extra: Partial<DestinationView>): DestinationView => ({
  name, type: 'dicom', target: `PACS@10.0.0.1:104`, state: 'up', backlog: 0, oldestAgeSeconds: 0, inFlight: 0, deadLetters: 0, ...extra,
});

function view(destinations: DestinationView[], activity = new RecentActivity()): StatusView {
  return {
    aeTitle: 'DEID_ROUTER', listen: '0.0.0.0:11112', version: '0.1.0', now: Date.now(),
    ready: { ok: true, checks: { listening: true } },
    totals: { associations: 0, received: 0, stored: 0, quarantined: 0, failed: 0, forwarded: 0, deadLettered: 0, receivedBytes: 0, byStudy: [] },
    destinations, activity,
  };
}

test('destinations down, with dead letters or with an old backlog are flagged; healthy ones are not', () => {
  const html = renderStatusPage(view([
    dest('healthy', { backlog: 3, oldestAgeSeconds: 5 }),
    dest('down', { state: 'down' }),
    dest('dead', { deadLetters: 1 }),
    dest('slow', { backlog: 1, oldestAgeSeconds: STUCK_AFTER_SECONDS + 1 }),
  ]));
  const stuck = /<span class="bad" id="stuck">attention: ([^<]*)<\/span>/.exec(html)?.[1];
  assert.equal(stuck, 'down, dead, slow');
  assert.doesNotMatch(renderStatusPage(view([dest('healthy', {})])), /id="stuck"/);
});

test('values are escaped and the page has no script', () => {
  const activity = new RecentActivity();
  activity.associationEnded({ associationId: 1, callingAe: '<script>x</script>', calledAe: 'A&B', peer: '"p"', images: 1, failed: 0, bytes: 10, durationMs: 5, result: 'released' });
  activity.image({ callingAe: 'M', station: 's', study: 't', outcome: 'quarantined', status: 0xc000, bytes: 1, stage: 'read', reason: "unreadable <b>'x'</b>" });
  const html = renderStatusPage(view([], activity));
  assert.doesNotMatch(html, /<script|<b>/i);
  assert.match(html, /&lt;script&gt;x&lt;\/script&gt;/);
  assert.match(html, /A&amp;B/);
  assert.match(html, /unreadable &lt;b&gt;&#39;x&#39;&lt;\/b&gt;/);
  assert.match(html, /0xC000/);
});
