// One C-STORE de-identified and written while its PDVs arrive (the streaming C-STORE path of serve).
//
// The dataset is split (DatasetSplitter) into whole top-level elements and bulk values. When the first
// bulk value starts, everything before it has arrived: the image is identified and de-identified by the
// same pure engine as always, run on the elements so far plus a stand-in element for the bulk value, and
// the de-identified file meta and header are written to a temp file per destination. The stand-in tells
// the fate of the bulk value: the very same element in the output means kept as is (its bytes are
// appended to the temp files as they arrive, never held whole), another element means replaced (the new,
// small value is written and the bytes skipped), none means removed (skipped). Elements after a bulk value
// are collected and written at the next bulk value or at the end, again from a run of the engine over all
// elements so far; that run must agree with what is already written (same output path, same header bytes),
// else the image fails. At the last PDV only the tail, fdatasync and rename remain.
//
// Images without a bulk value, deflated ones, and images that fail before their first bulk value (so that
// the original can be quarantined) take the buffered path: the whole dataset, as before.
import type { Logger } from 'pino';
import { DatasetSplitter } from './dicom/stream-split';
import { DicomObject, Element, makeElement } from './dicom/dataset';
import { elementChunks, elementHeader, part10Chunks } from './dicom/write';
import { transferSyntaxInfo, type Syntax } from './dicom/uids';
import { DeidPipeline, ImageRejected, RoutedImage, Status } from './pipeline';
import type { DatasetSink, StoreStart } from './receive';
import { errorMessage } from './observe/errors';

/** An output file written piece by piece (a DurableFile in serve). */
export interface OutputFile {
  append(chunks: readonly Buffer[]): void;
  /** Bytes appended and not yet written. */
  readonly pending: number;
  readonly size: number;
  whenBelow(bytes: number): Promise<void>;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/** One destination's output file of a streamed image. */
export interface StreamTarget {
  file: OutputFile;
  /** After the file is durable under its name (e.g. tell the forwarder). */
  committed(): Promise<void>;
}

export interface StreamStats {
  streamed: number;
  buffered: number;
  /** First PDV to last PDV, summed over streamed images. */
  receiveMs: number;
  /** Last PDV to durable, summed over streamed images. */
  finishMs: number;
  /** Engine runs (identify + de-identify of the header), summed. */
  engineMs: number;
}

export interface StreamDeps {
  pipeline: DeidPipeline;
  /** A durable file per destination of a routed image (throws for a destination that is not configured). */
  openTargets(r: RoutedImage): StreamTarget[];
  /** The buffered path: the whole dataset, resolves to the status to answer. */
  buffered(start: StoreStart, dataset: Buffer): Promise<number>;
  logger: Logger;
  stats: StreamStats;
  /** The image is routed and about to be written (e.g. write its linkage line). Throwing sends it down the buffered path. */
  accepted?(r: RoutedImage): void;
  /** The image is answered: Success, or the failure status and why. */
  finished?(r: RoutedImage | undefined, status: number, t: { bytes: number; engineMs: number; storeMs: number; reason?: string }): void;
  /** Smallest value streamed as bulk data (default DEFAULT_BULK_MIN); tests make it small. */
  bulkMin?: number;
}

type Mode = 'undecided' | 'streaming' | 'buffered' | 'failed';

const EMPTY = Buffer.alloc(0);
const now = (): number => performance.now();

function outOfResources(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'EMFILE' || code === 'ENFILE' || code === 'ENOMEM';
}

export class StreamingImage implements DatasetSink {
  private mode: Mode = 'undecided';
  private raw: Buffer[] = [];
  private rawLength = 0;
  private readonly syntax: Syntax | undefined;
  private readonly splitter: DatasetSplitter | undefined;
  /** Top-level elements so far; bulk values as stand-ins. */
  private elements: Element[] = [];
  private targets: StreamTarget[] = [];
  private routed: RoutedImage | undefined;
  /** Output elements with tags up to this one are written. */
  private writtenThrough = -1;
  /** The encoded output elements before the first bulk value, to check later runs against. */
  private head: Buffer | undefined;
  private keepBulk = false;
  private firstBulkTag = -1;
  private elementsAtLastRun = 0;
  private failure: { status: number; reason: string } | undefined;
  private readonly t0 = now();
  private bytes = 0;
  private engineMs = 0;

  constructor(private readonly start: StoreStart, private readonly deps: StreamDeps) {
    let info: ReturnType<typeof transferSyntaxInfo> | undefined;
    try {
      info = transferSyntaxInfo(start.transferSyntaxUid);
    } catch {
      info = undefined;
    }
    if (!info || info.deflated) {
      this.mode = 'buffered';
      return;
    }
    this.syntax = info.syntax;
    this.splitter = new DatasetSplitter(info.syntax, {
      elements: (b) => this.onElements(b),
      bulkStart: (tag, vr, length) => this.onBulkStart(tag, vr, length),
      bulkData: (b) => this.onBulkData(b),
      bulkEnd: () => (this.keepBulk = false),
    }, deps.bulkMin);
  }

  /** Until streaming starts, and on the buffered path, the dataset is kept in memory whole (the SCP then
   * applies limits.maxBufferedBytes). */
  get holdsWholeDataset(): boolean {
    return this.mode === 'undecided' || this.mode === 'buffered';
  }

  get backlogBytes(): number {
    let n = 0;
    for (const t of this.targets) n += t.file.pending;
    return n;
  }

  async whenBelow(bytes: number): Promise<void> {
    for (const t of this.targets) await t.file.whenBelow(bytes);
  }

  write(fragment: Buffer): void {
    this.bytes += fragment.length;
    if (this.mode === 'failed') return;
    if (this.mode !== 'streaming') {
      this.raw.push(fragment);
      this.rawLength += fragment.length;
      if (this.mode === 'buffered') return;
    }
    try {
      this.splitter!.push(fragment);
    } catch (e) {
      this.onError(e);
    }
  }

  async end(): Promise<number> {
    if (this.mode !== 'failed' && this.mode !== 'buffered') {
      try {
        this.splitter!.end();
      } catch (e) {
        this.onError(e);
      }
    }
    if (this.mode === 'undecided' || this.mode === 'buffered') {
      // No bulk value (a small image), deflated, or failed before its bulk data: the whole dataset.
      this.deps.stats.buffered++;
      const dataset = this.raw.length === 1 ? this.raw[0] : Buffer.concat(this.raw, this.rawLength);
      this.raw = [];
      return this.deps.buffered(this.start, dataset);
    }
    const t1 = now();
    const report = (status: number, reason?: string): void =>
      this.deps.finished?.(this.routed, status, { bytes: this.bytes, engineMs: this.engineMs, storeMs: now() - t1, reason });
    try {
      // Elements after the last bulk value need one more run of the engine; none, no run (the output of
      // the last run already covers everything).
      if (this.mode === 'streaming' && this.elements.length > this.elementsAtLastRun) {
        const r = this.runEngine();
        this.checkAgrees(r);
        const tail = r.output!.dataset.filter((e) => e.tag > this.writtenThrough);
        if (tail.length) this.append(elementChunks(tail, this.syntax!));
      }
      if (this.mode === 'failed') throw new ImageRejected('read', this.failure?.reason ?? 'association ended', this.failure?.status ?? Status.ProcessingFailure);
      await Promise.all(this.targets.map(async (t) => {
        await t.file.commit();
        await t.committed();
      }));
    } catch (e) {
      await this.abortTargets();
      const status = e instanceof ImageRejected ? e.status : outOfResources(e) ? Status.OutOfResources : Status.ProcessingFailure;
      this.deps.logger.warn({ callingAe: this.start.callingAeTitle, association: this.start.associationId, reason: errorMessage(e), status: `0x${status.toString(16).padStart(4, '0')}` }, 'streamed image not stored');
      report(status, errorMessage(e));
      return status;
    }
    report(Status.Success);
    const s = this.deps.stats;
    s.streamed++;
    s.receiveMs += t1 - this.t0;
    s.finishMs += now() - t1;
    return Status.Success;
  }

  /** The association ended before the last PDV: nothing of this image stays (resolves once removed). */
  abort(): Promise<void> {
    this.mode = 'failed';
    this.raw = [];
    return this.abortTargets();
  }

  // ------------------------------------------------------------------------------------ splitter events

  private onElements(bytes: Buffer): void {
    if (this.mode !== 'undecided' && this.mode !== 'streaming') return;
    const obj = this.deps.pipeline.read({ kind: 'dataset', bytes, transferSyntaxUid: this.start.transferSyntaxUid });
    for (const e of obj.dataset) this.elements.push(e);
  }

  private onBulkStart(tag: number, vr: string, length: number | undefined): void {
    if (this.mode !== 'undecided' && this.mode !== 'streaming') return;
    const encapsulated = length === undefined;
    const standIn = makeElement(tag, vr, encapsulated ? null : EMPTY, encapsulated, undefined, undefined, encapsulated ? EMPTY : undefined);
    this.elements.push(standIn);
    let r: RoutedImage;
    try {
      r = this.runEngine();
    } catch (e) {
      if (this.mode === 'undecided') {
        // The buffered path reports it and keeps the original in quarantine.
        this.mode = 'buffered';
        return;
      }
      throw e;
    }
    if (this.mode === 'undecided') {
      if (r.quarantine) {
        this.mode = 'buffered';
        return;
      }
      try {
        this.deps.accepted?.(r);
      } catch {
        this.mode = 'buffered';
        return;
      }
      const out = r.output!;
      const head = out.dataset.filter((e) => e.tag < tag);
      this.targets = this.deps.openTargets(r);
      this.firstBulkTag = tag;
      this.routed = r;
      this.mode = 'streaming';
      this.raw = [];
      this.rawLength = 0;
      const chunks = part10Chunks({ ...out, dataset: head });
      this.head = Buffer.concat(elementChunks(head, this.syntax!));
      this.append(chunks);
    } else {
      this.checkAgrees(r);
      const between = r.output!.dataset.filter((e) => e.tag > this.writtenThrough && e.tag < tag);
      if (between.length) this.append(elementChunks(between, this.syntax!));
    }
    this.writtenThrough = tag;
    const fate = r.output!.dataset.find((e) => e.tag === tag);
    this.keepBulk = fate === standIn;
    if (this.keepBulk) this.append([elementHeader(tag, vr, length, this.syntax!)]);
    else if (fate) this.append(elementChunks([fate], this.syntax!)); // replaced by a small value
  }

  private onBulkData(bytes: Buffer): void {
    if (this.mode === 'streaming' && this.keepBulk) this.append([bytes]);
  }

  // ------------------------------------------------------------------------------------ helpers

  private runEngine(): RoutedImage {
    const t = now();
    this.elementsAtLastRun = this.elements.length;
    try {
      const obj: DicomObject = {
        meta: [], dataset: this.elements, transferSyntaxUid: this.start.transferSyntaxUid,
        syntax: this.syntax!, deflated: false, hadMeta: false,
      };
      // Counted (burned-in, PHI gate) on the first run only: later runs re-check the same image.
      return this.deps.pipeline.route(obj, this.start.callingAeTitle, { encode: false, count: this.routed === undefined });
    } finally {
      const ms = now() - t;
      this.engineMs += ms;
      this.deps.stats.engineMs += ms;
    }
  }

  /** A later run of the engine must agree with what the first one wrote. */
  private checkAgrees(r: RoutedImage): void {
    const first = this.routed!;
    const same = r.relativePath === first.relativePath && r.destinations.join('\0') === first.destinations.join('\0');
    const head = r.output!.dataset.filter((e) => e.tag < this.firstBulkTag);
    if (!same || !Buffer.concat(elementChunks(head, this.syntax!)).equals(this.head!)) {
      throw new ImageRejected('deidentify', 'elements after the bulk data change how the header is de-identified; the image cannot be streamed', Status.ProcessingFailure);
    }
  }


  private append(chunks: Buffer[]): void {
    for (const t of this.targets) t.file.append(chunks);
  }

  private onError(e: unknown): void {
    if (this.mode === 'undecided') {
      this.mode = 'buffered'; // unreadable before the bulk data: the buffered path reports and quarantines it
      return;
    }
    if (this.mode === 'failed') return;
    this.failure = e instanceof ImageRejected
      ? { status: e.status, reason: e.message }
      : { status: Status.CannotUnderstand, reason: `unreadable dataset: ${errorMessage(e)}` };
    this.mode = 'failed';
    void this.abortTargets();
  }

  private async abortTargets(): Promise<void> {
    const t = this.targets;
    this.targets = [];
    await Promise.all(t.map((x) => x.file.abort()));
  }
}
