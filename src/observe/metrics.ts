// Prometheus metrics of a running node (prom-client, its own registry per node). Fed by the
// NodeObserver hooks; spool and destination gauges are read from the node when scraped. Label
// values are configured names, AE titles, DIMSE statuses and stages: bounded, and never data.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AssociationSummary, DestinationView, ForwardEvent, ImageEvent, NodeObserver, RefusalEvent, ReloadEvent } from './events';
import { buildInfo } from './build-info';
import { statusHex } from '../deliver/spool';

const PREFIX = 'deid_router_';

/** Totals for the status page, read back from the counters (one source for both faces). */
export interface MetricTotals {
  associations: number;
  received: number;
  stored: number;
  quarantined: number;
  failed: number;
  forwarded: number;
  deadLettered: number;
  receivedBytes: number;
  /** Per configured study: received, stored, quarantined, failed. */
  byStudy: Array<{ station: string; study: string; received: number; stored: number; quarantined: number; failed: number }>;
}

export class RouterMetrics implements NodeObserver {
  readonly registry = new Registry();
  private readonly associations: Counter<'calling_ae' | 'result'>;
  private readonly received: Counter<'station' | 'study'>;
  private readonly stored: Counter<'station' | 'study'>;
  private readonly quarantined: Counter<'station' | 'study' | 'stage'>;
  private readonly failed: Counter<'station' | 'study' | 'status'>;
  private readonly forwardedImages: Counter<'destination'>;
  private readonly deadLettered: Counter<'destination'>;
  private readonly receivedBytes: Counter<'station' | 'study'>;
  private readonly forwardedBytes: Counter<'destination'>;
  private readonly deidSeconds: Histogram<'study'>;
  private readonly storeSeconds: Histogram<'study'>;
  private readonly reloads: Counter<'result'>;
  private readonly refusals: Counter<'reason'>;
  private readonly flagged: Counter<'station' | 'study' | 'check'>;

  constructor(destinations: () => DestinationView[]) {
    const registers = [this.registry];
    const bi = buildInfo();
    new Gauge({ name: `${PREFIX}build_info`, help: 'Version of the router and of Node.js (always 1)', labelNames: ['version', 'node_version', 'revision'], registers })
      .set({ version: bi.version, node_version: process.versions.node, revision: bi.revision }, 1);
    this.associations = new Counter({ name: `${PREFIX}associations_total`, help: 'Associations ended, by calling AE title and result (released, rejected, aborted-by-peer, aborted, error, timeout, closed)', labelNames: ['calling_ae', 'result'], registers });
    this.received = new Counter({ name: `${PREFIX}images_received_total`, help: 'C-STORE requests received, by station and study (unknown: unreadable before identification)', labelNames: ['station', 'study'], registers });
    this.stored = new Counter({ name: `${PREFIX}images_stored_total`, help: 'Images de-identified and durably delivered (written or spooled) before Success was answered', labelNames: ['station', 'study'], registers });
    this.quarantined = new Counter({ name: `${PREFIX}images_quarantined_total`, help: 'Images kept aside untouched in the quarantine, by stage (read, identify, deidentify, phi-gate, burned-in, deliver)', labelNames: ['station', 'study', 'stage'], registers });
    this.failed = new Counter({ name: `${PREFIX}images_failed_total`, help: 'C-STORE requests answered with a failure status, by DIMSE status', labelNames: ['station', 'study', 'status'], registers });
    this.forwardedImages = new Counter({ name: `${PREFIX}images_forwarded_total`, help: 'Spooled images the research PACS answered Success or a warning for', labelNames: ['destination'], registers });
    this.deadLettered = new Counter({ name: `${PREFIX}images_dead_lettered_total`, help: 'Spooled images given up on and moved to the dead letters', labelNames: ['destination'], registers });
    this.receivedBytes = new Counter({ name: `${PREFIX}received_bytes_total`, help: 'Dataset bytes received by C-STORE', labelNames: ['station', 'study'], registers });
    this.forwardedBytes = new Counter({ name: `${PREFIX}forwarded_bytes_total`, help: 'Part-10 bytes of the images forwarded', labelNames: ['destination'], registers });
    this.deidSeconds = new Histogram({
      name: `${PREFIX}deidentify_seconds`, help: 'Read, identify, de-identify and encode one image', labelNames: ['study'], registers,
      buckets: [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    });
    this.storeSeconds = new Histogram({
      name: `${PREFIX}store_seconds`, help: 'Durable write or spooling of one image to all its destinations', labelNames: ['study'], registers,
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    });
    this.flagged = new Counter({ name: `${PREFIX}images_flagged_total`, help: 'Images stored with a note from a check: burned-in-unknown (BurnedInUnknown: flag), phi-gate-warn (PhiGate: warn)', labelNames: ['station', 'study', 'check'], registers });
    this.refusals = new Counter({ name: `${PREFIX}scp_refusals_total`, help: 'Associations, connections and DIMSE messages the storage SCP refused or ended, by reason (limits, malformed PDUs, unrecognized operations; see README limits)', labelNames: ['reason'], registers });
    this.reloads = new Counter({ name: `${PREFIX}config_reloads_total`, help: 'SIGHUP reloads, by result (applied, refused)', labelNames: ['result'], registers });

    // Read from the node at scrape time.
    const perDestination = (name: string, help: string, value: (d: DestinationView) => number | undefined) =>
      new Gauge({
        name, help, labelNames: ['destination'], registers,
        collect() {
          this.reset();
          for (const d of destinations()) {
            const v = value(d);
            if (v !== undefined) this.set({ destination: d.name }, v);
          }
        },
      });
    perDestination(`${PREFIX}spool_backlog_images`, 'Images waiting in the forwarding spool', (d) => (d.type !== 'folder' ? d.backlog : undefined));
    perDestination(`${PREFIX}spool_oldest_age_seconds`, 'Age of the oldest image in the forwarding spool (0 when empty)', (d) => (d.type !== 'folder' ? d.oldestAgeSeconds : undefined));
    perDestination(`${PREFIX}spool_in_flight_images`, 'Spooled images being sent now', (d) => (d.type !== 'folder' ? d.inFlight : undefined));
    perDestination(`${PREFIX}spool_dead_letters`, 'Images in the dead letters of the destination (spool retry re-queues them)', (d) => (d.type !== 'folder' ? d.deadLetters : undefined));
    new Gauge({
      name: `${PREFIX}destination_up`, help: '1 when the destination works (folder writable; PACS accepted the last association), 0 when it does not', labelNames: ['destination', 'type'], registers,
      collect() {
        this.reset();
        for (const d of destinations()) this.set({ destination: d.name, type: d.type }, d.state === 'down' ? 0 : 1);
      },
    });
    // Event-loop delay (nodejs_eventloop_lag_*), heap, CPU, file descriptors.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 10 });
  }

  refused(r: RefusalEvent): void {
    this.refusals.inc({ reason: r.kind });
  }

  associationEnded(a: AssociationSummary): void {
    this.associations.inc({ calling_ae: a.callingAe || 'none', result: a.result });
  }

  image(i: ImageEvent): void {
    const where = { station: i.station, study: i.study };
    this.received.inc(where);
    this.receivedBytes.inc(where, i.bytes);
    if (i.outcome === 'stored') this.stored.inc(where);
    if (i.outcome === 'quarantined') this.quarantined.inc({ ...where, stage: i.stage ?? 'unknown' });
    if (i.status !== 0) this.failed.inc({ ...where, status: statusHex(i.status) });
    if (i.deidentifySeconds !== undefined) this.deidSeconds.observe({ study: i.study }, i.deidentifySeconds);
    if (i.storeSeconds !== undefined) this.storeSeconds.observe({ study: i.study }, i.storeSeconds);
    if (i.flags) for (const check of i.flags) this.flagged.inc({ ...where, check });
  }

  forwarded(f: ForwardEvent): void {
    if (f.outcome === 'forwarded') {
      this.forwardedImages.inc({ destination: f.destination });
      this.forwardedBytes.inc({ destination: f.destination }, f.bytes);
    } else this.deadLettered.inc({ destination: f.destination });
  }

  reloaded(r: ReloadEvent): void {
    this.reloads.inc({ result: r.ok ? 'applied' : 'refused' });
  }

  /** The Prometheus text exposition. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  async totals(): Promise<MetricTotals> {
    const sum = async (c: Counter<string>) => (await c.get()).values.reduce((s, v) => s + v.value, 0);
    const byStudy = new Map<string, MetricTotals['byStudy'][number]>();
    const row = (l: Record<string, unknown>) => {
      const key = `${String(l.station)}\u0000${String(l.study)}`;
      let r = byStudy.get(key);
      if (!r) byStudy.set(key, (r = { station: String(l.station), study: String(l.study), received: 0, stored: 0, quarantined: 0, failed: 0 }));
      return r;
    };
    for (const v of (await this.received.get()).values) row(v.labels).received += v.value;
    for (const v of (await this.stored.get()).values) row(v.labels).stored += v.value;
    for (const v of (await this.quarantined.get()).values) row(v.labels).quarantined += v.value;
    for (const v of (await this.failed.get()).values) row(v.labels).failed += v.value;
    return {
      associations: await sum(this.associations),
      received: await sum(this.received),
      stored: await sum(this.stored),
      quarantined: await sum(this.quarantined),
      failed: await sum(this.failed),
      forwarded: await sum(this.forwardedImages),
      deadLettered: await sum(this.deadLettered),
      receivedBytes: await sum(this.receivedBytes),
      byStudy: [...byStudy.values()].sort((a, b) => a.station.localeCompare(b.station) || a.study.localeCompare(b.study)),
    };
  }
}
