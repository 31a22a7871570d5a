// Compiles a study's configuration, on top of the PS3.15 Annex E Basic Profile and its options,
// into a plan: per tag and per VR, the one operation the engine applies.
import { createHmac } from 'crypto';
import { LRUCache } from 'lru-cache';
import { DictEntry, lookupTag, tagsWithVr } from '../dicom/dictionary';
import type { ActionSpec, OffsetSpec, PrivateKeep, StudyConfig } from '../config/types';
import { PROFILE_ROWS, PS315_EDITION, ProfileOptionName } from './profile.generated';
import { CID7050 } from './options';

export type Op =
  | { op: 'keep' }
  | { op: 'recurse' } // keep a sequence, de-identify its items with the same plan
  | { op: 'delete' }
  | { op: 'clear' }
  | { op: 'dummy' }
  | { op: 'clean' } // keep text, scrub identifying tokens of this patient out of it
  | { op: 'value'; text?: string }
  | { op: 'hash'; key: Buffer }
  | { op: 'regen'; key: Buffer; entropy?: number[] }
  | { op: 'offset'; offset: OffsetSpec; key: Buffer }
  // A code sequence that identifies a person or an institution (D, X/Z/D on a *CodeSequence):
  // replaced by one dummy code item, so no original code value or meaning survives.
  | { op: 'dummyCode' }
  // CodeMeaning: kept under a standard coding scheme, else free text (dummy, or clean).
  | { op: 'codeMeaning'; clean: boolean };

export interface StudyPlan {
  studyName: string;
  basicProfile: boolean;
  tagOps: Map<number, Op>;
  vrOps: Map<string, Op>;
  baseOps: Map<number, Op>;
  /** baseOps overlaid with tagOps: one lookup per element when the study has no VR rules. */
  mergedOps: Map<number, Op>;
  /** Safety net for UIDs in attributes the table does not list: the keyed map of `regen`.
   * Undefined with retainUIDs, where the study keeps every UID. */
  uidNetOp?: Op;
  removePrivate: boolean;
  keepPrivate: PrivateKeep[];
  /** Key of the keyed UID map (study salt, else global). */
  uidKey: Buffer;
  uidCache: LRUCache<string, string>;
  methodCodes: Array<readonly [string, string]>;
  methodText: string[];
  longitudinal: 'REMOVED' | 'MODIFIED' | 'UNMODIFIED';
  /** False when the study's own rules keep a direct identifier or private data: then the output
   * says PatientIdentityRemoved NO, as PS3.3 asks. */
  identityRemoved: boolean;
  options: ProfileOptionName[];
}

/** Derives a key for one purpose from a secret, so the same salt never keys two different uses. */
export function deriveKey(secret: string, purpose: string): Buffer {
  return createHmac('sha256', secret).update(`dicom-deid-router:${purpose}`).digest();
}

/** Attributes whose kept value identifies the patient directly: PatientName, PatientID,
 * PatientBirthDate, OtherPatientIDs, OtherPatientNames, OtherPatientIDsSequence, PatientAddress,
 * PatientTelephoneNumbers, AccessionNumber, PatientBirthName, PatientMotherBirthName. */
const DIRECT_IDENTIFIERS = [0x00100010, 0x00100020, 0x00100030, 0x00101000, 0x00101001, 0x00101002, 0x00101040, 0x00102154, 0x00080050, 0x00101005, 0x00101060];

/** Free-text attributes found inside Content Sequence and Graphic Annotation Sequence, with the
 * option that lets them be kept after cleaning. */
const SUPPLEMENTARY_TEXT: ReadonlyArray<readonly [number, ProfileOptionName]> = [
  [0x0040a160, 'cleanStructuredContent'], // TextValue (SR TEXT content items)
  [0x00700006, 'cleanGraphics'], // UnformattedTextValue (presentation state text objects)
];

/** Option columns in the order in which one wins when several selected options name a row. */
export const OPTION_ORDER: ProfileOptionName[] = [
  'retainUIDs', 'retainLongitudinalFullDates', 'retainLongitudinalModifiedDates', 'retainPatientCharacteristics',
  'retainDeviceIdentity', 'retainInstitutionIdentity', 'cleanStructuredContent', 'cleanGraphics', 'cleanDescriptors',
];

export function compilePlan(study: StudyConfig, globalSalt: string): StudyPlan {
  const studySecret = study.salt ?? globalSalt;
  const uidKey = deriveKey(studySecret, 'uid');
  const offsetKey = deriveKey(studySecret, 'date-offset');
  const hashKey = deriveKey(studySecret, 'hash');
  const basic = study.profile === 'basic';
  const opts = new Set(study.options);

  const fromSpec = (spec: ActionSpec): Op => {
    switch (spec.action) {
      case 'delete': return { op: 'delete' };
      case 'clear': return { op: 'clear' };
      case 'keep': return { op: 'keep' };
      case 'value': return { op: 'value', text: spec.value };
      case 'hash': return { op: 'hash', key: spec.salt ? deriveKey(spec.salt, 'hash') : hashKey };
      case 'regen': return { op: 'regen', key: spec.salt ? deriveKey(spec.salt, 'uid') : uidKey, entropy: spec.entropySrc };
      case 'offset': {
        const offset = spec.offset ?? study.dateOffset;
        if (!offset) throw new Error(`offset rule without an offset in study ${study.name}`);
        return { op: 'offset', offset, key: spec.salt ? deriveKey(spec.salt, 'date-offset') : offsetKey };
      }
    }
  };

  const tagOps = new Map<number, Op>();
  for (const [tag, spec] of study.tagRules) tagOps.set(tag, fromSpec(spec));
  const vrOps = new Map<string, Op>();
  for (const [vr, spec] of study.vrRules) vrOps.set(vr, fromSpec(spec));

  const baseOps = new Map<number, Op>();
  const uidNetOp: Op | undefined = basic && !opts.has('retainUIDs') ? { op: 'regen', key: uidKey } : undefined;
  if (basic) {
    for (const row of PROFILE_ROWS) {
      let code = row.basic;
      let viaOption: ProfileOptionName | undefined;
      for (const o of OPTION_ORDER) {
        const c = row.options[o];
        if (opts.has(o) && c) {
          code = c;
          viaOption = o;
          break;
        }
      }
      // Curves (50xx) and overlays (60xx) are removed as whole groups by the engine (their
      // descriptions and labels are free text the table does not name).
      if (row.tag.includes('x')) continue;
      const tag = parseInt(row.tag, 16) >>> 0;
      let op = profileOp(code, lookupTag(tag), viaOption, study, offsetKey, uidKey);
      // Safety net: a UID the basic column keeps (K) is still mapped, unless an option keeps it.
      if (op.op === 'keep' && !viaOption && uidNetOp && lookupTag(tag)?.vr === 'UI' && !isClassUidTag(tag)) op = uidNetOp;
      baseOps.set(tag, op);
    }
  }

  if (basic) {
    // Beyond Table E.1-1: free text inside the sequences the table replaces with a dummy (D) but
    // that we keep and de-identify item by item, so that structured reports and presentation
    // states stay readable. Their text values are not in the table, and can hold anything.
    for (const [tag, option] of SUPPLEMENTARY_TEXT) {
      if (!baseOps.has(tag)) baseOps.set(tag, opts.has(option) ? { op: 'clean' } : { op: 'dummy' });
    }
    // Code meanings anywhere (SR CODE items, graphic annotation and waveform codes, identifying
    // code sequences kept by an option): only a standard scheme's own text is kept.
    if (!baseOps.has(CODE_MEANING)) baseOps.set(CODE_MEANING, { op: 'codeMeaning', clean: opts.has('cleanStructuredContent') });
  }

  const methodCodes: Array<readonly [string, string]> = [];
  const methodText: string[] = [];
  if (basic) {
    methodCodes.push(CID7050.basic);
    methodText.push(`PS3.15 ${PS315_EDITION} Basic Application Confidentiality Profile`);
    for (const o of study.options) methodCodes.push(CID7050[o]);
  }
  methodText.push(`dicom-deid-router rules of study ${study.name}`.slice(0, 64));

  let longitudinal: StudyPlan['longitudinal'] = 'REMOVED';
  if (opts.has('retainLongitudinalFullDates')) longitudinal = 'UNMODIFIED';
  if (opts.has('retainLongitudinalModifiedDates')) longitudinal = 'MODIFIED';
  for (const op of [...tagOps.values(), ...vrOps.values()]) if (op.op === 'offset') longitudinal = 'MODIFIED';

  const keepsIdentifier = DIRECT_IDENTIFIERS.some((t) => {
    const op = tagOps.get(t);
    return op !== undefined && (op.op === 'keep' || op.op === 'recurse');
  });
  const identityRemoved = !keepsIdentifier && study.removePrivateTags;

  return {
    identityRemoved,
    studyName: study.name, basicProfile: basic, tagOps, vrOps, baseOps, uidNetOp,
    mergedOps: new Map([...baseOps, ...tagOps]),
    removePrivate: study.removePrivateTags, keepPrivate: study.keepPrivate, uidKey,
    // Study, series and frame-of-reference UIDs repeat across a study's files; instance UIDs mostly
    // do not. A modest size keeps the cache cheap to create (it preallocates) and to keep.
    uidCache: new LRUCache<string, string>({ max: 10_000 }),
    methodCodes, methodText, longitudinal, options: study.options,
  };
}

/** Maps one Annex E action code to an operation. Combined codes (X/Z, X/D, Z/D, X/Z/D) depend on
 * the attribute's type in the IOD, which we do not know per IOD: we pick the one that keeps every
 * IOD valid (a dummy satisfies type 1, zero length type 2), never one that keeps data. */
function profileOp(code: string, entry: DictEntry | undefined, viaOption: ProfileOptionName | undefined, study: StudyConfig, offsetKey: Buffer, uidKey: Buffer): Op {
  const vr = entry?.vr;
  const sq = vr === 'SQ';
  // Code items carry their meaning in CodeValue/CodeMeaning, which the table never names: keeping
  // the sequence and cleaning item by item would keep the person's or institution's code.
  const codeSequence = sq && entry !== undefined && entry.keyword.endsWith('CodeSequence');
  switch (code) {
    case 'K':
      return sq ? { op: 'recurse' } : { op: 'keep' };
    case 'X':
      return { op: 'delete' };
    case 'Z':
    case 'X/Z':
      return { op: 'clear' };
    case 'D':
    case 'X/D':
    case 'Z/D':
    case 'X/Z/D':
      if (codeSequence) return { op: 'dummyCode' };
      return sq ? { op: 'recurse' } : { op: 'dummy' };
    case 'U':
    case 'X/Z/U*':
      if (sq) return { op: 'recurse' };
      return vr === 'UI' || vr === undefined ? { op: 'regen', key: uidKey } : { op: 'clear' };
    case 'C':
      if (viaOption === 'retainLongitudinalModifiedDates') {
        if (!study.dateOffset) return { op: 'delete' };
        return { op: 'offset', offset: study.dateOffset, key: offsetKey };
      }
      if (sq) return { op: 'recurse' };
      return { op: 'clean' };
    default:
      throw new Error(`unknown profile action code ${code}`);
  }
}

const CODE_MEANING = 0x00080104;

let classUidTags: Set<number> | undefined;
/** UI attributes that name a class, syntax or scheme, never an instance: SOP classes (private
 * ones included), transfer syntaxes, coding schemes, context groups. The UID safety net leaves
 * them alone: they identify no one, and changing them breaks the object. */
export function isClassUidTag(tag: number): boolean {
  if (!classUidTags) {
    const names = /(ClassUID|TransferSyntaxUID|CodingSchemeUID|MappingResourceUID|^ContextUID|ApplicationContextName)$/;
    classUidTags = tagsWithVr('UI', (k) => names.test(k));
  }
  return classUidTags.has(tag);
}
