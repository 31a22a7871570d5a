// The read-only status page: the metrics' figures, the destinations with their backlog, the last
// associations and the last quarantine reasons. It shows configured names, AE titles, peer
// addresses, counts, statuses and reasons of our own wording, never a value from an image, and it
// is plain server-side HTML (no script) that refreshes itself.
import type { AssociationSummary, DestinationView, ImageEvent, NodeObserver, ReloadEvent } from './events';
import type { MetricTotals } from './metrics';
import { statusHex } from '../deliver/spool';

const KEEP = 25;
/** A spool whose oldest image waits longer than this is shown as needing attention. */
export const STUCK_AFTER_SECONDS = 900;

export interface RecentAssociation extends AssociationSummary { endedAt: number }
export interface RecentProblem { at: number; callingAe: string; station: string; study: string; outcome: string; stage: string; status: string; reason: string }
export interface RecentReload extends ReloadEvent { at: number }

/** Ring buffers of the last associations, quarantined or failed images and reloads. */
export class RecentActivity implements NodeObserver {
  readonly startedAt = Date.now();
  readonly associations: RecentAssociation[] = [];
  readonly problems: RecentProblem[] = [];
  readonly reloads: RecentReload[] = [];

  associationEnded(a: AssociationSummary): void {
    push(this.associations, { ...a, endedAt: Date.now() });
  }

  image(i: ImageEvent): void {
    if (i.outcome === 'stored') return;
    push(this.problems, {
      at: Date.now(), callingAe: i.callingAe, station: i.station, study: i.study, outcome: i.outcome,
      stage: i.stage ?? '', status: statusHex(i.status), reason: i.reason ?? '',
    });
  }

  reloaded(r: ReloadEvent): void {
    push(this.reloads, { ...r, at: Date.now() });
  }
}

function push<T>(list: T[], v: T): void {
  list.unshift(v);
  if (list.length > KEEP) list.length = KEEP;
}

export interface StatusView {
  aeTitle: string;
  listen: string;
  version: string;
  now: number;
  ready: { ok: boolean; checks: Record<string, boolean> };
  totals: MetricTotals;
  destinations: DestinationView[];
  activity: RecentActivity;
}

const esc = (v: unknown): string =>
  String(v).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);

const time = (ms: number): string => new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');

function duration(seconds: number): string {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function table(id: string, head: string[], rows: unknown[][], empty: string): string {
  if (!rows.length) return `<p class="empty" id="${id}">${esc(empty)}</p>`;
  return `<table id="${id}"><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

export function renderStatusPage(v: StatusView): string {
  const t = v.totals;
  const figure = (id: string, label: string, n: number) => `<div class="fig"><span class="n" id="${id}">${n}</span><span class="l">${esc(label)}</span></div>`;
  const stuck = v.destinations.filter((d) => d.state === 'down' || d.deadLetters > 0 || (d.backlog > 0 && d.oldestAgeSeconds > STUCK_AFTER_SECONDS));
  const lastReload = v.activity.reloads[0];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(v.aeTitle)} · dicom-deid-router</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0}h2{font-size:1.05em;margin:1.4em 0 .4em}
.sub{color:#666}.ok{color:#17692c}.bad{color:#b00020;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:.6em;margin-top:1em}
.fig{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:7em}
.fig .n{display:block;font-size:1.6em;font-variant-numeric:tabular-nums}.fig .l{color:#666}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td{font-variant-numeric:tabular-nums}th{background:#f0f0f0}.empty{color:#666}
</style></head>
<body>
<h1>${esc(v.aeTitle)} <span class="sub">dicom-deid-router ${esc(v.version)}</span></h1>
<p class="sub">DICOM on ${esc(v.listen)} · up since ${time(v.activity.startedAt)} · page drawn ${time(v.now)} ·
<span id="ready" class="${v.ready.ok ? 'ok' : 'bad'}">${v.ready.ok ? 'ready' : 'NOT READY'}</span>
${Object.entries(v.ready.checks).filter(([, ok]) => !ok).map(([k]) => `<span class="bad">${esc(k)}: no</span>`).join(' ')}
${stuck.length ? `<span class="bad" id="stuck">attention: ${stuck.map((d) => esc(d.name)).join(', ')}</span>` : ''}</p>
<div class="figs">
${figure('received', 'images received', t.received)}
${figure('stored', 'stored', t.stored)}
${figure('forwarded', 'forwarded', t.forwarded)}
${figure('quarantined', 'quarantined', t.quarantined)}
${figure('failed', 'answered a failure', t.failed)}
${figure('dead-lettered', 'dead letters', t.deadLettered)}
${figure('associations', 'associations', t.associations)}
</div>
<h2>Destinations</h2>
${table('destinations', ['destination', 'type', 'target', 'state', 'backlog', 'oldest', 'in flight', 'dead letters'],
    v.destinations.map((d) => [d.name, d.type, d.target, d.state, d.type !== 'folder' ? d.backlog : '', d.type !== 'folder' && d.backlog ? duration(d.oldestAgeSeconds) : '', d.type !== 'folder' ? d.inFlight : '', d.type !== 'folder' ? d.deadLetters : '']),
    'no destinations')}
<h2>By station and study</h2>
${table('studies', ['station', 'study', 'received', 'stored', 'quarantined', 'failed'], t.byStudy.map((s) => [s.station, s.study, s.received, s.stored, s.quarantined, s.failed]), 'nothing received yet')}
<h2>Last associations</h2>
${table('associations-table', ['ended', 'calling AE', 'called AE', 'peer', 'images', 'failed', 'MB', 'seconds', 'result'],
    v.activity.associations.map((a) => [time(a.endedAt), a.callingAe, a.calledAe, a.peer, a.images, a.failed, (a.bytes / 1e6).toFixed(1), (a.durationMs / 1000).toFixed(1), a.detail ? `${a.result} (${a.detail})` : a.result]),
    'no association yet')}
<h2>Last quarantined or failed images</h2>
${table('problems', ['when', 'calling AE', 'station', 'study', 'outcome', 'stage', 'status', 'reason'],
    v.activity.problems.map((p) => [time(p.at), p.callingAe, p.station, p.study, p.outcome, p.stage, p.status, p.reason.slice(0, 300)]),
    'none')}
<h2>Configuration</h2>
<p id="reload">${lastReload ? `last reload ${time(lastReload.at)}: ${lastReload.ok ? 'applied' : '<span class="bad">refused, previous configuration kept</span>'}${lastReload.messages.length ? `<br>${lastReload.messages.slice(0, 10).map(esc).join('<br>')}` : ''}` : 'loaded at start; SIGHUP reloads stations, studies and destinations'}</p>
</body></html>
`;
}
