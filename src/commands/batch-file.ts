// One input file of a batch run, de-identified. Reading it, and writing the result or dropping it
// as a duplicate, are the caller's: it decides in input order.
import { DeidPipeline, ImageRejected } from '../pipeline';
import { looksLikeDicom } from '../dicom/read';
import type { QuarantineReason } from '../deliver/quarantine';
import type { LinkageRecord } from '../deliver/linkage';
import { describeHits } from '../deid/phi-gate';

export type Stage = QuarantineReason['stage'];
export type Prepared =
  | { kind: 'skipped'; bytes: number }
  | { kind: 'ready'; rel: string; study: string; chunks: Buffer[]; bytes: number; linkage?: LinkageRecord; phiWarning?: string; burnedInFlag?: string }
  | { kind: 'quarantine'; stage: Stage; reason: string; study?: string; bytes: number };

/** De-identifies one input's bytes. The chunks of a 'ready' result may be slices of `bytes`:
 * write or copy them before the bytes are reused. */
export function prepareInput(pipeline: DeidPipeline, bytes: Buffer): Prepared {
  if (!looksLikeDicom(bytes)) return { kind: 'skipped', bytes: bytes.length };
  try {
    const r = pipeline.process({ kind: 'file', bytes });
    if (r.quarantine || !r.chunks || !r.relativePath) {
      return { kind: 'quarantine', stage: 'identify', reason: 'the study named by this image is not configured (unknownStudy: quarantine)', study: r.studyName, bytes: bytes.length };
    }
    return {
      kind: 'ready', rel: r.relativePath, study: r.studyName, chunks: r.chunks, bytes: bytes.length, linkage: r.linkage,
      phiWarning: r.phiWarnings ? describeHits(r.phiWarnings) : undefined, burnedInFlag: r.burnedInFlag,
    };
  } catch (e) {
    if (e instanceof ImageRejected) return { kind: 'quarantine', stage: e.stage, reason: e.message, bytes: bytes.length };
    throw e;
  }
}
