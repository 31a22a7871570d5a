// Burned-in annotation policy. The router does not look at pixels: it decides from what the image
// says about itself (BurnedInAnnotation, RecognizableVisualFeatures) and, when the image says
// nothing, from its SOP class, whether it may carry text or a face in its pixel data.
import { DicomObject, elementString, findElement } from '../dicom/dataset';
import type { StudyConfig } from '../config/types';

export type BurnedInDecision = 'deliver' | 'quarantine' | 'flag';

export interface BurnedInVerdict {
  decision: BurnedInDecision;
  /** Why, without patient data; undefined when nothing in the image calls for a policy. */
  reason?: string;
  /** The study key whose policy decided. */
  policy?: 'BurnedInAnnotation' | 'RecognizableVisualFeatures' | 'BurnedInUnknown';
}

const T = {
  SOPClassUID: 0x00080016,
  MediaStorageSOPClassUID: 0x00020002,
  BurnedInAnnotation: 0x00280301,
  RecognizableVisualFeatures: 0x00280302,
} as const;

/** SOP classes whose pixels commonly carry burned-in text when the image does not say otherwise:
 * screen captures (the Secondary Capture family), ultrasound, X-ray angiography and fluoroscopy,
 * digital X-ray for presentation, visible-light video and photographs, encapsulated documents. */
export const BURNED_IN_PRONE_SOP_CLASSES: ReadonlyMap<string, string> = new Map([
  ['1.2.840.10008.5.1.4.1.1.7', 'Secondary Capture'],
  ['1.2.840.10008.5.1.4.1.1.7.1', 'Multi-frame Single Bit Secondary Capture'],
  ['1.2.840.10008.5.1.4.1.1.7.2', 'Multi-frame Grayscale Byte Secondary Capture'],
  ['1.2.840.10008.5.1.4.1.1.7.3', 'Multi-frame Grayscale Word Secondary Capture'],
  ['1.2.840.10008.5.1.4.1.1.7.4', 'Multi-frame True Color Secondary Capture'],
  ['1.2.840.10008.5.1.4.1.1.6', 'Ultrasound (retired)'],
  ['1.2.840.10008.5.1.4.1.1.6.1', 'Ultrasound'],
  ['1.2.840.10008.5.1.4.1.1.6.2', 'Enhanced US Volume'],
  ['1.2.840.10008.5.1.4.1.1.3', 'Ultrasound Multi-frame (retired)'],
  ['1.2.840.10008.5.1.4.1.1.3.1', 'Ultrasound Multi-frame'],
  ['1.2.840.10008.5.1.4.1.1.12.1', 'X-Ray Angiographic'],
  ['1.2.840.10008.5.1.4.1.1.12.2', 'X-Ray Radiofluoroscopic'],
  ['1.2.840.10008.5.1.4.1.1.1.1', 'Digital X-Ray for Presentation'],
  ['1.2.840.10008.5.1.4.1.1.77.1.1.1', 'Video Endoscopic'],
  ['1.2.840.10008.5.1.4.1.1.77.1.2.1', 'Video Microscopic'],
  ['1.2.840.10008.5.1.4.1.1.77.1.4', 'VL Photographic'],
  ['1.2.840.10008.5.1.4.1.1.77.1.4.1', 'Video Photographic'],
  ['1.2.840.10008.5.1.4.1.1.104.1', 'Encapsulated PDF'],
  ['1.2.840.10008.5.1.4.1.1.104.2', 'Encapsulated CDA'],
]);

function yesNo(obj: DicomObject, tag: number): string | undefined {
  const v = elementString(findElement(obj.dataset, tag));
  return v === undefined || v === '' ? undefined : v.trim().toUpperCase();
}

/** What the study's policy says about an image (the input, before de-identification). */
export function burnedInVerdict(obj: DicomObject, study: StudyConfig): BurnedInVerdict {
  const burned = yesNo(obj, T.BurnedInAnnotation);
  if (burned === 'YES') {
    const policy = study.burnedInAnnotation ?? 'quarantine';
    return { decision: policy === 'keep' ? 'deliver' : 'quarantine', policy: 'BurnedInAnnotation', reason: `BurnedInAnnotation is YES (BurnedInAnnotation: ${policy})` };
  }
  if (yesNo(obj, T.RecognizableVisualFeatures) === 'YES') {
    const policy = study.recognizableVisualFeatures ?? 'quarantine';
    return { decision: policy === 'keep' ? 'deliver' : 'quarantine', policy: 'RecognizableVisualFeatures', reason: `RecognizableVisualFeatures is YES (RecognizableVisualFeatures: ${policy})` };
  }
  if (burned === undefined) {
    const sopClass = elementString(findElement(obj.dataset, T.SOPClassUID)) ?? elementString(findElement(obj.meta, T.MediaStorageSOPClassUID));
    const family = sopClass !== undefined ? BURNED_IN_PRONE_SOP_CLASSES.get(sopClass) : undefined;
    if (family) {
      const policy = study.burnedInUnknown ?? 'flag';
      return {
        decision: policy === 'keep' ? 'deliver' : policy, policy: 'BurnedInUnknown',
        reason: `no BurnedInAnnotation on a ${family} image (BurnedInUnknown: ${policy})`,
      };
    }
  }
  return { decision: 'deliver' };
}
