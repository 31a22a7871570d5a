// `serve`: the storage SCP wired to the pipeline and the destinations. The network layer hands us
// raw dataset bytes; we answer each C-STORE only once its de-identified result is durably stored
// (folder written + fsynced + renamed, or spooled + fsynced for forwarding).
import { join } from 'path';
import type { Logger } from 'pino';
import type { RouterConfig } from '../config/types';
import { DeidPipeline, ImageRejected, RoutedImage, Status } from '../pipeline';
import { startStorageScp, silenceDimseLibraries, StoreRequest, RunningScp } from '../receive';
import { DurableWriter } from '../deliver/durable-writer';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Quarantine, QuarantineReason } from '../deliver/quarantine';
import { ForwardQueue, Spool } from '../deliver/forwarder';
import { part10FromRawDataset } from '../dicom/write';
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME } from '../dicom/uids';
import { statusHex } from '../deliver/spool';
import { errorCode, errorMessage } from '../observe/errors';

interface ForwardTarget { spool: Spool; queue: ForwardQueue }

/** Everything a running node holds; `stop` drains it. */
export interface RunningNode {
  scp: RunningScp;
  stop(): Promise<void>;
}

export async function startNode(c: RouterConfig, salt: string, logger: Logger): Promise<RunningNode> {
  silenceDimseLibraries(logger);
  const pipeline = new DeidPipeline(c, salt);
  // Every durable write of the C-STORE path goes through one writer: off the event loop, folder
  // fsyncs shared between images that finish together.
  const writer = new DurableWriter();
  const loopDelay = monitorEventLoopDelay({ resolution: 1 });
  loopDelay.enable();
  const stage = { images: 0, processMs: 0, deliverMs: 0 };
  const quarantine = new Quarantine(join(c.stateDir, 'quarantine'));
  const forwards = new Map<string, ForwardTarget>();
  for (const d of c.destinations.values()) {
    if (d.type !== 'dicom') continue;
    const spool = new Spool(c.stateDir, d.name);
    await spool.init();
    spool.writer = writer;
    const queue = new ForwardQueue({
      destination: {
        name: d.name, aeTitle: d.aeTitle, host: d.host, port: d.port, callingAeTitle: d.callingAeTitle,
        maxAssociations: d.maxAssociations,
        tls: d.tls ? { caFile: d.tls.ca, certFile: d.tls.cert, keyFile: d.tls.key, rejectUnauthorized: d.tls.rejectUnauthorized } : undefined,
      },
      spool, logger,
    });
    queue.start(); // resumes whatever an earlier run left in the spool
    forwards.set(d.name, { spool, queue });
  }

  const knownCallers = new Set<string>();
  for (const s of c.stations.values()) for (const ae of s.aeTitles) knownCallers.add(ae.trim().toUpperCase());

  async function deliver(r: RoutedImage): Promise<void> {
    const chunks = r.chunks as Buffer[];
    await Promise.all(r.destinations.map(async (name) => {
      const d = c.destinations.get(name);
      if (!d) throw new Error(`destination ${name} is not configured`);
      if (d.type === 'folder') {
        await writer.writeFile(join(d.path, r.relativePath as string), chunks);
      } else {
        const f = forwards.get(name) as ForwardTarget;
        const u = r.uids!;
        const entry = await f.spool.enqueue(chunks, { sopInstanceUid: u.sopInstanceUid, sopClassUid: u.sopClassUid, transferSyntaxUid: u.transferSyntaxUid, studyInstanceUid: u.studyInstanceUid });
        f.queue.notify(entry);
      }
    }));
  }

  /** Where the time of an image went, and how long the event loop was held up: logged at stop. */
  function logStageTimings(): void {
    const n = Math.max(1, stage.images);
    const w = writer.stats;
    const per = (ms: number, files = n) => Number((ms / Math.max(1, files)).toFixed(3));
    logger.info({
      images: stage.images,
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

  const onStore = async (req: StoreRequest): Promise<number> => {
    let r: RoutedImage;
    const t0 = performance.now();
    try {
      r = pipeline.process({ kind: 'dataset', bytes: req.dataset, transferSyntaxUid: req.transferSyntaxUid }, req.callingAeTitle);
    } catch (e) {
      const stage = e instanceof ImageRejected ? e.stage : 'deidentify';
      const status = e instanceof ImageRejected ? e.status : Status.ProcessingFailure;
      const reason = errorMessage(e);
      logger.warn({ callingAe: req.callingAeTitle, association: req.associationId, stage, reason, status: statusHex(status) }, 'image rejected and quarantined');
      keepOriginal(req, stage, reason);
      return status;
    }
    if (r.quarantine) {
      // Policy (unknownStudy: quarantine), not a failure: the image is safe, the sender is done.
      const failed = keepOriginal(req, 'identify', 'the study named by this image is not configured (unknownStudy: quarantine)', r.studyName);
      if (failed) return outOfResources(failed) ? Status.OutOfResources : Status.ProcessingFailure;
      logger.info({ callingAe: req.callingAeTitle, station: r.station }, 'image of an unconfigured study quarantined');
      return Status.Success;
    }
    const t1 = performance.now();
    stage.processMs += t1 - t0;
    try {
      await deliver(r);
      stage.images++;
      stage.deliverMs += performance.now() - t1;
    } catch (e) {
      const status = outOfResources(e) ? Status.OutOfResources : Status.ProcessingFailure;
      const reason = `delivery failed: ${errorCode(e)}`;
      logger.error({ callingAe: req.callingAeTitle, sopInstanceUid: r.uids?.sopInstanceUid, reason, status: statusHex(status) }, 'image not delivered');
      keepOriginal(req, 'deliver', reason, r.studyName);
      return status;
    }
    logger.debug({ study: r.studyName, station: r.station, sopInstanceUid: r.uids?.sopInstanceUid, destinations: r.destinations }, 'image stored');
    return Status.Success;
  };

  const scp = await startStorageScp({
    host: c.listen.host,
    port: c.listen.port,
    policy: { aeTitle: c.listen.aeTitle, allowUnknownCallers: c.listen.allowUnknownCallers, isKnownCaller: (ae) => knownCallers.has(ae.trim().toUpperCase()) },
    onStore,
    logger,
    implementationClassUid: IMPLEMENTATION_CLASS_UID,
    implementationVersionName: IMPLEMENTATION_VERSION_NAME,
  });
  logger.info({ aeTitle: c.listen.aeTitle, host: c.listen.host, port: scp.port, destinations: [...c.destinations.keys()], stations: c.stations.size, studies: c.studies.size }, 'listening');

  return {
    scp,
    async stop() {
      await scp.close();
      await Promise.all([...forwards.values()].map((f) => f.queue.stop()));
      logStageTimings();
      loopDelay.disable();
    },
  };
}

function outOfResources(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EMFILE' || code === 'ENFILE' || code === 'ENOMEM';
}


export async function runServe(c: RouterConfig, salt: string, logger: Logger): Promise<number> {
  const node = await startNode(c, salt, logger);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'stopping: no new associations, finishing images in flight');
      node.stop().then(
        () => {
          logger.info('stopped');
          logger.flush?.();
          resolve(0);
        },
        (e) => {
          logger.error({ err: errorMessage(e) }, 'error while stopping');
          resolve(3);
        },
      );
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
