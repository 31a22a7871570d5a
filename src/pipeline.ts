// One image through identify -> de-identify, shared by the batch command and the storage SCP.
// Reading and delivery are the callers' business; this module is synchronous and touches no I/O.
import { DicomObject } from './dicom/dataset';
import { DEFAULT_READ_LIMITS, DicomLimitError, ReadLimits, readDataset, readPart10 } from './dicom/read';
import { part10Chunks } from './dicom/write';
import { RouterConfig, StudyConfig } from './config/types';
import { resolveStudy, sanitizePathComponent } from './identify';
import { compilePlan, StudyPlan } from './deid/plan';
import { DeidError, deidentify, objectUids } from './deid/engine';
import { isValidUid } from './dicom/uids';
import { describeHits, phiGate, PhiHit } from './deid/phi-gate';
import { burnedInVerdict } from './deid/burned-in';
import { linkageRecord, LinkageRecord } from './deliver/linkage';

/** DIMSE statuses (PS3.4 Annex B) for the ways one image can fail. */
export const Status = {
  Success: 0x0000,
  OutOfResources: 0xa700,
  DataSetDoesNotMatchSOPClass: 0xa900,
  CannotUnderstand: 0xc000,
  ProcessingFailure: 0x0110,
  /** Refused by the PHI gate: the de-identified image still holds one of the input's identifiers. */
  RefusedPhiGate: 0xc100,
  /** Refused by the burned-in annotation policy. */
  RefusedBurnedIn: 0xc101,
} as const;

export type RejectStage = 'read' | 'identify' | 'deidentify' | 'phi-gate' | 'burned-in';

export class ImageRejected extends Error {
  constructor(readonly stage: RejectStage, message: string, readonly status: number = Status.CannotUnderstand) {
    super(message);
    this.name = 'ImageRejected';
  }
}

export type InboundImage =
  | { kind: 'file'; bytes: Buffer }
  | { kind: 'dataset'; bytes: Buffer; transferSyntaxUid: string };

export interface RoutedImage {
  station: string;
  studyName: string;
  /** The name read from the image matched no configured study (handled by Supplement142). */
  unknownStudy: boolean;
  /** Unknown study and `unknownStudy: quarantine`: the caller quarantines, nothing else. */
  quarantine: boolean;
  output?: DicomObject;
  /** The complete Part-10 file as chunks (most are slices of the input). */
  chunks?: Buffer[];
  /** <study>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, all de-identified. */
  relativePath?: string;
  uids?: { sopClassUid: string; sopInstanceUid: string; studyInstanceUid: string; seriesInstanceUid: string; transferSyntaxUid: string };
  destinations: string[];
  /** PhiGate: warn found identifiers; the image is delivered all the same (the caller logs it). */
  phiWarnings?: PhiHit[];
  /** BurnedInUnknown: flag applied: delivered, counted and logged (value-free reason). */
  burnedInFlag?: string;
  /** The study keeps a linkage log: the caller writes this line durably before answering. */
  linkage?: LinkageRecord;
}

/** What the pre-delivery checks did since start-up (for logs and metrics). */
export interface CheckCounts {
  phiGateQuarantined: number;
  phiGateWarned: number;
  burnedInQuarantined: number;
  burnedInFlagged: number;
}

export class DeidPipeline {
  private plans = new Map<StudyConfig, StudyPlan>();
  /** Study name -> its path component: names are configured ones (or Supplement142), a handful. */
  private folderNames = new Map<string, string>();
  /** Bounds on inflated size and sequence depth of one image (router.yaml `limits`). */
  readLimits: ReadLimits = DEFAULT_READ_LIMITS;
  readonly counts: CheckCounts = { phiGateQuarantined: 0, phiGateWarned: 0, burnedInQuarantined: 0, burnedInFlagged: 0 };

  constructor(readonly config: RouterConfig, private readonly salt: string) {
    const l = config.limits;
    if (l) this.readLimits = { maxInflatedBytes: l.maxInflatedBytes, maxSequenceDepth: l.maxSequenceDepth };
  }

  planFor(study: StudyConfig): StudyPlan {
    let plan = this.plans.get(study);
    if (!plan) {
      plan = compilePlan(study, this.salt);
      this.plans.set(study, plan);
    }
    return plan;
  }

  private folderName(studyName: string): string {
    let f = this.folderNames.get(studyName);
    if (f === undefined) {
      f = sanitizePathComponent(studyName);
      if (this.folderNames.size < 1024) this.folderNames.set(studyName, f);
    }
    return f;
  }

  read(input: InboundImage): DicomObject {
    try {
      return input.kind === 'file' ? readPart10(input.bytes, this.readLimits) : readDataset(input.bytes, input.transferSyntaxUid, this.readLimits);
    } catch (e) {
      if (e instanceof DicomLimitError) throw new ImageRejected('read', `refused: ${e.message}`, Status.OutOfResources);
      // DicomParseError, or a RangeError of a read past the end of a truncated buffer.
      throw new ImageRejected('read', `unreadable dataset: ${(e as Error).message}`);
    }
  }

  process(input: InboundImage, callingAeTitle?: string): RoutedImage {
    return this.route(this.read(input), callingAeTitle);
  }

  /** Identify and de-identify an object already read. `encode: false` leaves `chunks` out (the streaming
   * C-STORE path encodes the output piece by piece itself); `count: false` leaves the check counters alone
   * (its runs after the first re-check the same image). */
  route(obj: DicomObject, callingAeTitle?: string, opts: { encode?: boolean; count?: boolean } = {}): RoutedImage {
    const encode = opts.encode ?? true;
    const counts = opts.count === false ? { phiGateQuarantined: 0, phiGateWarned: 0, burnedInQuarantined: 0, burnedInFlagged: 0 } : this.counts;
    const r = resolveStudy(this.config, callingAeTitle, obj);
    if (!r.study) {
      return { station: r.station.name, studyName: r.studyName, unknownStudy: true, quarantine: true, destinations: [] };
    }
    const burnedIn = burnedInVerdict(obj, r.study);
    if (burnedIn.decision === 'quarantine') {
      counts.burnedInQuarantined++;
      throw new ImageRejected('burned-in', burnedIn.reason as string, Status.RefusedBurnedIn);
    }
    if (burnedIn.decision === 'flag') counts.burnedInFlagged++;
    const plan = this.planFor(r.study);
    let out: DicomObject;
    try {
      out = deidentify(obj, plan);
    } catch (e) {
      if (e instanceof DeidError) throw new ImageRejected('deidentify', e.message);
      throw new ImageRejected('deidentify', `de-identification failed: ${(e as Error).message}`, Status.ProcessingFailure);
    }
    let phiWarnings: PhiHit[] | undefined;
    const gate = r.study.phiGate ?? 'quarantine';
    if (gate !== 'off') {
      const hits = phiGate(obj, out, plan);
      if (hits.length && gate === 'quarantine') {
        counts.phiGateQuarantined++;
        throw new ImageRejected('phi-gate', `PHI gate: ${describeHits(hits)}`, Status.RefusedPhiGate);
      }
      if (hits.length) {
        counts.phiGateWarned++;
        phiWarnings = hits;
      }
    }
    const u = objectUids(out);
    for (const [name, v] of [['SOPClassUID', u.sopClassUid], ['SOPInstanceUID', u.sopInstanceUid], ['StudyInstanceUID', u.studyInstanceUid], ['SeriesInstanceUID', u.seriesInstanceUid]] as const) {
      if (!v) throw new ImageRejected('deidentify', `the dataset has no ${name}`, Status.DataSetDoesNotMatchSOPClass);
      if (name !== 'SOPClassUID' && !isValidUid(v)) throw new ImageRejected('deidentify', `${name} is not a valid UID after de-identification`);
    }
    const uids = {
      sopClassUid: u.sopClassUid as string, sopInstanceUid: u.sopInstanceUid as string,
      studyInstanceUid: u.studyInstanceUid as string, seriesInstanceUid: u.seriesInstanceUid as string,
      transferSyntaxUid: out.transferSyntaxUid,
    };
    let chunks: Buffer[] | undefined;
    try {
      if (encode) chunks = part10Chunks(out);
    } catch (e) {
      throw new ImageRejected('deidentify', `cannot encode the de-identified dataset: ${(e as Error).message}`, Status.ProcessingFailure);
    }
    return {
      station: r.station.name,
      studyName: r.studyName,
      unknownStudy: r.unknown,
      quarantine: false,
      output: out,
      chunks,
      relativePath: `${this.folderName(r.studyName)}/${uids.studyInstanceUid}/${uids.seriesInstanceUid}/${uids.sopInstanceUid}.dcm`,
      uids,
      destinations: r.study.destinations ?? [this.config.defaultDestination],
      phiWarnings,
      burnedInFlag: burnedIn.decision === 'flag' ? burnedIn.reason : undefined,
      linkage: r.study.linkage ? linkageRecord(r.study.linkage.path, r.study.name, obj, out) : undefined,
    };
  }
}
