// `serve`: the storage SCP wired to the pipeline and the destinations. The network layer hands us
// raw dataset bytes; we answer each C-STORE only once its de-identified result is durably stored
// (folder written + fsynced + renamed, or spooled + fsynced for forwarding).
import { accessSync, constants as fsConstants, readFileSync, statSync } from 'fs';
import { dirname, join } from 'path';
import type { Logger } from 'pino';
import { DEFAULT_SHUTDOWN_GRACE_SECONDS } from '../config/load';
import { ConfigError, type DicomDestinationConfig, type DicomwebDestinationConfig, type LimitsConfig, type RouterConfig, type TlsClientConfig, type TlsServerConfig } from '../config/types';
import { DeidPipeline, ImageRejected, RoutedImage, Status } from '../pipeline';
import { BufferedDatasets, startStorageScp, silenceDimseLibraries, StoreRequest, StoreStart, RunningScp, NetworkLimits } from '../receive';
import type { ServerTls } from '../receive/tls';
import { DurableWriter } from '../deliver/durable-writer';
import { checkWritableDir, removeTempFiles } from '../deliver/folder';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Quarantine, QuarantineReason } from '../deliver/quarantine';
import { ForwardQueue, Spool } from '../deliver/forwarder';
import { part10FromRawDataset } from '../dicom/write';
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME } from '../dicom/uids';
import { spoolId, statusHex } from '../deliver/spool';
import { StreamingImage, StreamStats, StreamTarget } from '../store-stream';
import { StowQueue } from '../deliver/dicomweb';
import { CommitmentIndex } from '../deliver/commitment-index';
import { CommitmentService } from '../receive/commitment';
import { displayUrl } from '../deliver/dicomweb-url';
import { errorCode, errorMessage } from '../observe/errors';
import { fanOut, type DestinationView, type ForwardEvent, type ReloadEvent } from '../observe/events';
import { RouterMetrics } from '../observe/metrics';
import { RecentActivity, renderStatusPage, type StatusView } from '../observe/status-page';
import { startHttpFace, type Readiness, type RunningHttpFace } from '../observe/http';
import { buildInfo } from '../observe/build-info';
import { LinkageLogs } from '../deliver/linkage';
import { describeHits } from '../deid/phi-gate';

interface ForwardTarget { dest: DicomDestinationConfig | DicomwebDestinationConfig; spool: Spool; queue: ForwardQueue | StowQueue }

/** What the images are routed by; replaced whole by a reload, while each image keeps the one it
 * started with. */
interface Routing {
  config: RouterConfig;
  pipeline: DeidPipeline;
  knownCallers: Set<string>;
  forwards: Map<string, ForwardTarget>;
}

/** Everything a running node holds; `stop` drains it. */
export interface RunningNode {
  scp: RunningScp;
  /** One per listening endpoint, in the order of `listen`; scp is the first. */
  scps: RunningScp[];
  /** The HTTP face, when `http:` is configured. */
  http?: RunningHttpFace;
  metrics: RouterMetrics;
  /** Re-reads stations, studies and destinations (SIGHUP). A configuration that does not load is
   * refused and the running one kept; associations are never dropped. */
  reload(load: () => RouterConfig): Promise<ReloadEvent>;
  stop(): Promise<void>;
}

/** A temp file in an outgoing folder untouched this long is a killed run's leftover. A live one (an
 * image being streamed, perhaps by another replica sharing the folder) is written to at least
 * once per association idle timeout, or its association is aborted and its temp file removed:
 * twice that timeout tells the two apart. */
const leftoverTempAgeMs = (l: LimitsConfig): number => Math.max(60_000, 2 * l.idleSeconds * 1000);
/** Leftovers younger than that at start are removed by a sweep this often while serving. */
const LEFTOVER_SWEEP_MS = 60 * 60_000;

const sameDestination = (a: ForwardTarget['dest'], b: ForwardTarget['dest']): boolean => JSON.stringify(a) === JSON.stringify(b);

export async function startNode(c: RouterConfig, salt: string, logger: Logger): Promise<RunningNode> {
  silenceDimseLibraries(logger);
  // A state directory we cannot write would fail only at the first quarantined or spooled image.
  checkWritableDir(c.stateDir, 'state directory');
  // Every durable write of the C-STORE path goes through one writer: off the event loop, folder
  // fsyncs shared between images that finish together.
  const writer = new DurableWriter();
  const loopDelay = monitorEventLoopDelay({ resolution: 1 });
  loopDelay.enable();
  const stage = { images: 0, processMs: 0, deliverMs: 0 };
  const streamStats: StreamStats = { streamed: 0, buffered: 0, receiveMs: 0, finishMs: 0, engineMs: 0 };
  const quarantine = new Quarantine(join(c.stateDir, 'quarantine'));
  const linkage = new LinkageLogs();
  let listening = false;
  let routing: Routing;
  const destinationViews = (): DestinationView[] => viewDestinations(routing);
  const metrics = new RouterMetrics(destinationViews);
  const activity = new RecentActivity();
  const observe = fanOut(metrics, activity);

  async function openForward(d: DicomDestinationConfig | DicomwebDestinationConfig): Promise<ForwardTarget> {
    const spool = new Spool(c.stateDir, d.name);
    await spool.init();
    spool.writer = writer;
    const onOutcome = (e: Omit<ForwardEvent, 'destination'>) => observe.forwarded({ ...e, destination: d.name });
    if (d.type === 'dicomweb') {
      return { dest: d, spool, queue: new StowQueue({ destination: { ...d, tls: tlsFiles(d.tls) }, spool, logger, onOutcome }) };
    }
    const queue = new ForwardQueue({
      destination: {
        name: d.name, aeTitle: d.aeTitle, host: d.host, port: d.port, callingAeTitle: d.callingAeTitle,
        maxAssociations: d.maxAssociations,
        tls: tlsFiles(d.tls),
      },
      spool, logger, onOutcome,
      maxPduLength: c.limits.maxPduBytes,
    });
    return { dest: d, spool, queue };
  }

  /** The routing of a configuration, reusing the forwarders of unchanged destinations. */
  async function makeRouting(next: RouterConfig, previous?: Routing): Promise<Routing> {
    const forwards = new Map<string, ForwardTarget>();
    try {
      for (const d of next.destinations.values()) {
        if (d.type === 'folder') continue; // made by its first write; a broken one fails per image
        const old = previous?.forwards.get(d.name);
        forwards.set(d.name, old && sameDestination(old.dest, d) ? old : await openForward(d));
      }
    } catch (e) {
      // Nothing was started yet: refusing leaves the running configuration untouched.
      throw new Error(`destinations: ${errorMessage(e)}`);
    }
    const knownCallers = new Set<string>();
    for (const s of next.stations.values()) for (const ae of s.aeTitles) knownCallers.add(ae.trim().toUpperCase());
    return { config: next, pipeline: new DeidPipeline(next, salt), knownCallers, forwards };
  }

  routing = await makeRouting(c);
  // Storage commitment: where each answered instance went, keyed by a keyed hash of its original UID.
  const commitmentIndex = new CommitmentIndex(c.stateDir, salt, (e) => logger.warn({ err: errorCode(e), problem: (e as Error).message }, 'storage commitment index'), {
    retentionDays: c.commitment?.indexRetentionDays,
  });
  commitmentIndex.startWriter();
  const commitment = new CommitmentService({
    index: commitmentIndex, stateDir: c.stateDir, salt, logger, aeTitle: c.listen.aeTitle,
    timeLimitMs: (c.commitment?.timeLimitSeconds ?? 3600) * 1000,
    sameAssociation: c.commitment?.sameAssociation ?? true,
    reportAddress: (ae) => [...routing.config.stations.values()].find((s) => s.aeTitles.some((a) => a.toUpperCase() === ae.trim().toUpperCase()))?.commitment,
  });
  commitment.start();
  /** Notes a delivered image for storage commitment; a failure costs only a later "failed" report. */
  const noteForCommitment = (originalSopInstanceUid: string, rt: Routing, r: RoutedImage | undefined): void => {
    try {
      if (!r || r.quarantine) commitmentIndex.record(originalSopInstanceUid, { q: true });
      else {
        commitmentIndex.record(originalSopInstanceUid, {
          d: r.destinations.map((n) => [n, rt.config.destinations.get(n)?.type ?? 'folder', r.uids?.sopInstanceUid ?? '']),
        });
      }
    } catch (e) {
      logger.warn({ err: errorCode(e) }, 'storage commitment index not written');
    }
  };
  for (const f of routing.forwards.values()) f.queue.start(); // resumes whatever an earlier run left in the spool

  async function deliver(rt: Routing, r: RoutedImage): Promise<void> {
    const chunks = r.chunks as Buffer[];
    await Promise.all(r.destinations.map(async (name) => {
      const d = rt.config.destinations.get(name);
      if (!d) throw new Error(`destination ${name} is not configured`);
      if (d.type === 'folder') {
        await writer.writeFile(join(d.path, r.relativePath as string), chunks);
      } else {
        const f = rt.forwards.get(name) as ForwardTarget;
        const u = r.uids!;
        const entry = await f.spool.enqueue(chunks, { sopInstanceUid: u.sopInstanceUid, sopClassUid: u.sopClassUid, transferSyntaxUid: u.transferSyntaxUid, studyInstanceUid: u.studyInstanceUid });
        f.queue.notify(entry);
      }
    }));
  }

  /** The streaming C-STORE path's output files: one per destination of the image. */
  function openTargets(rt: Routing, r: RoutedImage): StreamTarget[] {
    return r.destinations.map((name): StreamTarget => {
      const d = rt.config.destinations.get(name);
      if (!d) throw new Error(`destination ${name} is not configured`);
      if (d.type === 'folder') return { file: writer.open(join(d.path, r.relativePath as string)), committed: async () => undefined };
      const f = rt.forwards.get(name) as ForwardTarget;
      const id = spoolId(r.uids!.sopInstanceUid);
      const file = writer.open(f.spool.pathOf(id));
      return { file, committed: async () => f.queue.notify(await f.spool.enqueued(id, file.size)) };
    });
  }

  /** Where the time of an image went, and how long the event loop was held up: logged at stop. */
  function logStageTimings(): void {
    const n = Math.max(1, stage.images);
    const w = writer.stats;
    const per = (ms: number, files = n) => Number((ms / Math.max(1, files)).toFixed(3));
    const ss = streamStats;
    logger.info({
      images: stage.images + ss.streamed,
      streamed: ss.streamed, buffered: ss.buffered,
      streamedPerImageMs: { receive: per(ss.receiveMs, ss.streamed), engine: per(ss.engineMs, ss.streamed), lastPduToDurable: per(ss.finishMs, ss.streamed) },
      perImageMs: { process: per(stage.processMs), deliver: per(stage.deliverMs) },
      perFileMs: { open: per(w.openMs, w.files), write: per(w.writeMs, w.files), fdatasync: per(w.datasyncMs, w.files), rename: per(w.renameMs, w.files), dirSyncWait: per(w.dirSyncMs, w.files) },
      files: w.files, dirSyncs: w.dirSyncs,
      eventLoopDelayMs: { p50: Number((loopDelay.percentile(50) / 1e6).toFixed(2)), p99: Number((loopDelay.percentile(99) / 1e6).toFixed(2)), max: Number((loopDelay.max / 1e6).toFixed(2)) },
    }, 'stage timings');
  }

  /** Keeps the image as received, with the reason beside it. A failure to do so is logged and
   * returned: the caller decides what the sender is told. */
  function keepOriginal(req: StoreRequest, stage: QuarantineReason['stage'], reason: string, study?: string): Error | undefined {
    try {
      const original = part10FromRawDataset(req.dataset, req.sopClassUid, req.sopInstanceUid, req.transferSyntaxUid);
      quarantine.put(original, { stage, reason, source: `C-STORE from ${req.callingAeTitle} at ${req.peerAddress}`, study });
      return undefined;
    } catch (e) {
      logger.error({ err: errorMessage(e) }, 'quarantine write failed');
      return e as Error;
    }
  }

  const seconds = (t0: number): number => (performance.now() - t0) / 1000;

  /** Notes of the checks that let an image through (logged), as ImageEvent flags. */
  function noteFlags(r: RoutedImage): string[] {
    const flags: string[] = [];
    if (r.phiWarnings) {
      flags.push('phi-gate-warn');
      logger.warn({ study: r.studyName, sopInstanceUid: r.uids?.sopInstanceUid, phiGate: describeHits(r.phiWarnings) }, 'PHI gate found identifiers; delivered (PhiGate: warn)');
    }
    if (r.burnedInFlag) {
      flags.push('burned-in-unknown');
      logger.info({ study: r.studyName, sopInstanceUid: r.uids?.sopInstanceUid, reason: r.burnedInFlag }, 'burned-in annotation unknown; delivered');
    }
    return flags;
  }

  /** A C-STORE de-identified and written while it arrives (store-stream.ts); what cannot be streamed
   * goes through onStore whole. */
  const onStoreStream = (start: StoreStart): StreamingImage => {
    const rt = routing;
    let flags: string[] = [];
    return new StreamingImage(start, {
      pipeline: rt.pipeline, logger, stats: streamStats,
      openTargets: (r) => openTargets(rt, r),
      buffered: (s, dataset) => onStore({ ...s, dataset }),
      accepted: (r) => {
        // Before anything is written; a linkage log that cannot be written sends the image down the
        // buffered path, which refuses it and keeps the original.
        if (r.linkage) linkage.record(r.linkage);
        flags = noteFlags(r);
      },
      finished: (r, status, t) => {
        if (status === Status.Success && r) noteForCommitment(start.sopInstanceUid, rt, r);
        const where = { callingAe: start.callingAeTitle, bytes: t.bytes, station: r?.station ?? 'unknown', study: r?.studyName ?? 'unknown', deidentifySeconds: t.engineMs / 1000 };
        if (status === Status.Success) observe.image({ ...where, outcome: 'stored', status, storeSeconds: t.storeMs / 1000, flags: flags.length ? flags : undefined });
        else observe.image({ ...where, outcome: 'failed', status, stage: 'deliver', reason: t.reason });
      },
    });
  };

  const onStore = async (req: StoreRequest): Promise<number> => {
    const rt = routing;
    const seen = { callingAe: req.callingAeTitle, bytes: req.dataset.length };
    const t0 = performance.now();
    let r: RoutedImage;
    try {
      r = rt.pipeline.process({ kind: 'dataset', bytes: req.dataset, transferSyntaxUid: req.transferSyntaxUid }, req.callingAeTitle);
    } catch (e) {
      const stage = e instanceof ImageRejected ? e.stage : 'deidentify';
      const status = e instanceof ImageRejected ? e.status : Status.ProcessingFailure;
      const reason = errorMessage(e);
      logger.warn({ callingAe: req.callingAeTitle, association: req.associationId, stage, reason, status: statusHex(status) }, 'image rejected and quarantined');
      const kept = !keepOriginal(req, stage, reason);
      observe.image({ ...seen, station: 'unknown', study: 'unknown', outcome: kept ? 'quarantined' : 'failed', status, stage, reason });
      return status;
    }
    const where = { ...seen, station: r.station, study: r.studyName, deidentifySeconds: seconds(t0) };
    if (r.quarantine) {
      // Policy (unknownStudy: quarantine), not a failure: the image is safe, the sender is done.
      const reason = 'the study named by this image is not configured (unknownStudy: quarantine)';
      const failed = keepOriginal(req, 'identify', reason, r.studyName);
      const status = !failed ? Status.Success : failureStatus(failed);
      observe.image({ ...where, outcome: failed ? 'failed' : 'quarantined', status, stage: 'identify', reason });
      if (!failed) logger.info({ callingAe: req.callingAeTitle, station: r.station }, 'image of an unconfigured study quarantined');
      if (!failed) noteForCommitment(req.sopInstanceUid, rt, undefined);
      return status;
    }
    const flags = noteFlags(r);
    if (r.linkage) {
      // Before delivery: an image must never reach the archive without its line in the log.
      try {
        linkage.record(r.linkage);
      } catch (e) {
        const status = failureStatus(e);
        const reason = `linkage log not written: ${errorCode(e)}`;
        logger.error({ callingAe: req.callingAeTitle, study: r.studyName, reason, status: statusHex(status) }, 'image not delivered');
        const kept = !keepOriginal(req, 'deliver', reason, r.studyName);
        observe.image({ ...where, outcome: kept ? 'quarantined' : 'failed', status, stage: 'deliver', reason });
        return status;
      }
    }
    const t1 = performance.now();
    stage.processMs += t1 - t0;
    try {
      await deliver(rt, r);
      stage.images++;
      stage.deliverMs += performance.now() - t1;
    } catch (e) {
      const status = failureStatus(e);
      const reason = `delivery failed: ${errorCode(e)}`;
      logger.error({ callingAe: req.callingAeTitle, sopInstanceUid: r.uids?.sopInstanceUid, reason, status: statusHex(status) }, 'image not delivered');
      const kept = !keepOriginal(req, 'deliver', reason, r.studyName);
      observe.image({ ...where, outcome: kept ? 'quarantined' : 'failed', status, stage: 'deliver', reason });
      return status;
    }
    noteForCommitment(req.sopInstanceUid, rt, r);
    observe.image({ ...where, outcome: 'stored', status: Status.Success, storeSeconds: seconds(t1), flags: flags.length ? flags : undefined });
    logger.debug({ study: r.studyName, station: r.station, sopInstanceUid: r.uids?.sopInstanceUid, destinations: r.destinations }, 'image stored');
    return Status.Success;
  };

  const readiness = (): Readiness => {
    let writable = true;
    try {
      accessSync(c.stateDir, fsConstants.W_OK);
    } catch {
      writable = false;
    }
    const checks = { listening, stateDirWritable: writable, configLoaded: routing !== undefined };
    return { ok: Object.values(checks).every(Boolean), checks };
  };

  let scp: RunningScp | undefined;
  const statusView = async (): Promise<StatusView> => ({
    aeTitle: c.listen.aeTitle, listen: `${c.listen.host}:${scp?.port ?? c.listen.port}`, version: buildInfo().version, now: Date.now(),
    ready: readiness(), totals: await metrics.totals(), destinations: destinationViews(), activity,
  });
  // A port already taken (HTTP or DICOM) ends the start: what was started is stopped again.
  let http: RunningHttpFace | undefined;
  const undoStart = async (e: unknown): Promise<never> => {
    await http?.close();
    await Promise.all([...routing.forwards.values()].map((f) => f.queue.stop()));
    linkage.close();
    commitment.stop();
    loopDelay.disable();
    throw e;
  };
  http = c.http
    ? await startHttpFace(c.http, {
        metrics: async () => ({ contentType: metrics.contentType, body: await metrics.scrape() }),
        readiness,
        statusPage: async () => renderStatusPage(await statusView()),
        statusJson: async () => {
          const v = await statusView();
          return { ...v, activity: { startedAt: activity.startedAt, associations: activity.associations, problems: activity.problems, reloads: activity.reloads } };
        },
      }, logger).catch(undoStart)
    : undefined;

  // Walks each outgoing folder: long on a large one, so after the HTTP face is up (/healthz
  // answers, /readyz says not listening yet). Then again every hour, for leftovers that were too
  // young to tell from a live image at start.
  const sweepTempFiles = async (): Promise<void> => {
    for (const d of c.destinations.values()) {
      if (d.type !== 'folder') continue;
      // An unreadable folder is not fatal here: each image says what is wrong with it.
      const removed = await removeTempFiles(d.path, true, { olderThanMs: leftoverTempAgeMs(c.limits) }).catch((e: unknown) => {
        logger.warn({ destination: d.name, err: errorCode(e) }, 'cannot look for temp files in the outgoing folder');
        return 0;
      });
      if (removed) logger.info({ destination: d.name, removed }, 'removed temp files an earlier run left in the outgoing folder');
    }
  };
  await sweepTempFiles();
  const tempSweep = setInterval(() => void sweepTempFiles(), LEFTOVER_SWEEP_MS);
  tempSweep.unref();

  // One SCP per listening endpoint, all with the same AE policy, pipeline and destinations, and one budget
  // for the datasets they hold in memory whole (limits.maxBufferedBytesTotal).
  const scps: RunningScp[] = [];
  const bufferedDatasets = new BufferedDatasets();
  for (const l of c.listeners) {
    scps.push(await startStorageScp({
      host: l.host,
      port: l.port,
      tls: readServerTls(l.tls),
      policy: { aeTitle: l.aeTitle, allowUnknownCallers: l.allowUnknownCallers, isKnownCaller: (ae) => routing.knownCallers.has(ae.trim().toUpperCase()) },
      onStore,
      onStoreStream,
      logger,
      implementationClassUid: IMPLEMENTATION_CLASS_UID,
      implementationVersionName: IMPLEMENTATION_VERSION_NAME,
      onAssociationEnded: observe.associationEnded,
      onRefused: observe.refused,
      onCommitmentRequest: (req) => commitment.handle(req),
      limits: scpLimits(c.limits),
      bufferedDatasets,
    }).catch(async (e: unknown) => {
      await Promise.all(scps.map((x) => x.close({ graceMs: 0 })));
      return undoStart(e);
    }));
  }
  scp = scps[0];
  listening = true;
  logger.info({ aeTitle: c.listen.aeTitle, host: c.listen.host, port: scp.port, endpoints: c.listeners.map((l, i) => `${l.host}:${scps[i].port}${l.tls ? ' (TLS)' : ''}`), destinations: [...c.destinations.keys()], stations: c.stations.size, studies: c.studies.size }, 'listening');

  let reloading: Promise<unknown> = Promise.resolve();
  async function reloadOnce(load: () => RouterConfig): Promise<ReloadEvent> {
    let next: RouterConfig;
    let candidate: Routing;
    try {
      next = load();
      candidate = await makeRouting(next, routing);
    } catch (e) {
      const messages = e instanceof ConfigError ? e.problems : [errorMessage(e)];
      logger.error({ problems: messages }, 'configuration reload refused; the running configuration is kept');
      const ev = { ok: false, messages };
      observe.reloaded(ev);
      return ev;
    }
    const notes: string[] = [];
    const restartOnly: Array<[string, unknown, unknown]> = [
      ['listen', c.listeners, next.listeners], ['http', c.http, next.http], ['stateDir', c.stateDir, next.stateDir], ['limits (network)', scpLimits(c.limits), scpLimits(next.limits)],
      ['salt', c.salt?.value ?? c.saltFile, next.salt?.value ?? next.saltFile], ['commitment', c.commitment, next.commitment],
    ];
    for (const [key, was, now] of restartOnly) if (JSON.stringify(was) !== JSON.stringify(now)) notes.push(`${key}: changed; takes effect at the next start`);
    const previous = routing;
    routing = candidate;
    // Forwarders of removed or changed destinations stop (their spool stays on disk); one spool is
    // never drained by two queues at once, so a changed destination's new queue starts after.
    for (const [name, f] of previous.forwards) {
      if (candidate.forwards.get(name) === f) continue;
      // A PACS that never answers must not hold the reload: the grace period, then abort (the
      // image stays spooled for the new queue).
      await f.queue.stop((c.shutdownGraceSeconds ?? DEFAULT_SHUTDOWN_GRACE_SECONDS) * 1000);
      const backlog = f.queue.stats().backlog;
      if (!candidate.forwards.has(name) && backlog) notes.push(`destination ${name} removed with ${backlog} images in its spool (kept in ${f.spool.dir})`);
    }
    for (const f of candidate.forwards.values()) f.queue.start();
    logger.info({ stations: next.stations.size, studies: next.studies.size, destinations: [...next.destinations.keys()], notes }, 'configuration reloaded');
    const ev = { ok: true, messages: notes };
    observe.reloaded(ev);
    return ev;
  }

  return {
    scp,
    scps,
    http,
    metrics,
    reload(load) {
      const p = reloading.then(() => reloadOnce(load));
      reloading = p.catch(() => undefined);
      return p;
    },
    async stop() {
      listening = false;
      clearInterval(tempSweep);
      // One grace period for everything in flight: images being received, then images being
      // forwarded. Past it associations are aborted; what was not sent stays in the spool.
      const deadline = Date.now() + (c.shutdownGraceSeconds ?? DEFAULT_SHUTDOWN_GRACE_SECONDS) * 1000;
      const left = (): number => Math.max(0, deadline - Date.now());
      await withinMs(reloading, left());
      await Promise.all(scps.map((x) => x.close({ graceMs: left() })));
      for (const x of scps) logger.info({ port: x.port, scp: x.stats() }, 'storage SCP counters');
      await Promise.all([...routing.forwards.values()].map((f) => f.queue.stop(left())));
      await http?.close();
      await withinMs(commitmentIndex.close(), left() + 1000);
      commitment.stop();
      linkage.close();
      logStageTimings();
      loopDelay.disable();
    },
  };
}

/** router.yaml `limits` as the storage SCP takes them. */
function scpLimits(l: LimitsConfig): Partial<NetworkLimits> {
  return {
    maxAssociations: l.maxAssociations,
    maxAssociationsPerCaller: l.maxAssociationsPerCaller,
    maxPduBytes: l.maxPduBytes,
    maxDatasetBytes: l.maxDatasetBytes,
    maxBufferedBytes: l.maxBufferedBytes,
    maxBufferedBytesTotal: l.maxBufferedBytesTotal,
    idleTimeoutMs: l.idleSeconds * 1000,
    associationTimeLimitMs: l.associationSeconds * 1000,
    associationRequestTimeoutMs: l.associationRequestSeconds * 1000,
  };
}

/** Whether a folder, or the nearest existing folder it would be made in, can be written. */
function folderWritable(path: string): boolean {
  for (let p = path; ; p = dirname(p)) {
    try {
      if (!statSync(p).isDirectory()) return false;
      accessSync(p, fsConstants.W_OK);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(p) === p) return false;
    }
  }
}

/** Destinations as the metrics and the status page show them. */
function viewDestinations(rt: Routing): DestinationView[] {
  const out: DestinationView[] = [];
  for (const d of rt.config.destinations.values()) {
    if (d.type === 'folder') {
      out.push({ name: d.name, type: 'folder', target: d.path, state: folderWritable(d.path) ? 'up' : 'down', backlog: 0, oldestAgeSeconds: 0, inFlight: 0, deadLetters: 0 });
    } else {
      const f = rt.forwards.get(d.name);
      const s = f?.queue.stats();
      out.push({
        name: d.name, type: d.type, target: d.type === 'dicom' ? `${d.aeTitle}@${d.host}:${d.port}` : displayUrl(d.url), state: f?.queue.destinationState ?? 'unknown',
        backlog: s?.backlog ?? 0, oldestAgeSeconds: (s?.oldestAgeMs ?? 0) / 1000, inFlight: s?.inFlight ?? 0, deadLetters: s?.deadLetters ?? 0,
      });
    }
  }
  return out;
}

/** A TLS endpoint's PEM files, read at start (the config check made sure they are readable). */
function readServerTls(t: TlsServerConfig | undefined): ServerTls | undefined {
  if (!t) return undefined;
  return { cert: readFileSync(t.cert), key: readFileSync(t.key), ca: t.ca ? readFileSync(t.ca) : undefined, requireClientCert: t.requireClientCert };
}

/** Waits for p, but no longer than ms. */
async function withinMs(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/** A destination's TLS files as the senders take them. */
function tlsFiles(t: TlsClientConfig | undefined) {
  return t ? { caFile: t.ca, certFile: t.cert, keyFile: t.key, rejectUnauthorized: t.rejectUnauthorized } : undefined;
}

/** A storage failure of ours is 0xA700 (Out of Resources: the sender may try again later), a
 * full, read-only or forbidden destination included; anything else is 0x0110. */
function failureStatus(e: unknown): number {
  const code = (e as NodeJS.ErrnoException).code;
  return code !== undefined && RESOURCE_ERRORS.has(code) ? Status.OutOfResources : Status.ProcessingFailure;
}
const RESOURCE_ERRORS = new Set(['ENOSPC', 'EDQUOT', 'EMFILE', 'ENFILE', 'ENOMEM', 'EROFS', 'EACCES', 'EPERM', 'EIO']);


export async function runServe(c: RouterConfig, salt: string, logger: Logger, reload?: () => RouterConfig): Promise<number> {
  // Handled from the start: SIGHUP's default action would end the process.
  let node: RunningNode | undefined;
  let hangupWhileStarting = false;
  const onHangup = () => {
    if (!reload) return;
    if (!node) {
      hangupWhileStarting = true;
      return;
    }
    logger.info({ signal: 'SIGHUP' }, 'reloading stations, studies and destinations');
    void node.reload(reload);
  };
  process.on('SIGHUP', onHangup);
  node = await startNode(c, salt, logger);
  if (hangupWhileStarting) onHangup();
  const running = node;
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      process.off('SIGHUP', onHangup);
      logger.info({ signal }, 'stopping: no new associations, finishing images in flight');
      const done = (code: number): void => {
        logger.flush?.();
        resolve(code);
        // Everything durable is done: a socket or timer left over must not keep the process up.
        setTimeout(() => process.exit(code), 2000).unref();
      };
      running.stop().then(
        () => {
          logger.info('stopped');
          done(0);
        },
        (e) => {
          logger.error({ err: errorMessage(e) }, 'error while stopping');
          done(3);
        },
      );
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
