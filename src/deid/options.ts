// PS3.15 Annex E profile options: names we accept in ProfileOptions and the CID 7050 codes that
// DeidentificationMethodCodeSequence must list for them.
import type { ProfileOptionName } from './profile.generated';

export const PROFILE_OPTION_NAMES: readonly ProfileOptionName[] = [
  'retainLongitudinalFullDates', 'retainLongitudinalModifiedDates', 'retainPatientCharacteristics',
  'retainDeviceIdentity', 'retainInstitutionIdentity', 'retainUIDs', 'cleanDescriptors',
  'cleanStructuredContent', 'cleanGraphics',
];

/** CID 7050 "De-identification Method" codes (DCM scheme). */
export const CID7050: Readonly<Record<'basic' | ProfileOptionName, readonly [string, string]>> = {
  basic: ['113100', 'Basic Application Confidentiality Profile'],
  cleanGraphics: ['113103', 'Clean Graphics Option'],
  cleanStructuredContent: ['113104', 'Clean Structured Content Option'],
  cleanDescriptors: ['113105', 'Clean Descriptors Option'],
  retainLongitudinalFullDates: ['113106', 'Retain Longitudinal Temporal Information Full Dates Option'],
  retainLongitudinalModifiedDates: ['113107', 'Retain Longitudinal Temporal Information Modified Dates Option'],
  retainPatientCharacteristics: ['113108', 'Retain Patient Characteristics Option'],
  retainDeviceIdentity: ['113109', 'Retain Device Identity Option'],
  retainUIDs: ['113110', 'Retain UIDs Option'],
  retainSafePrivate: ['113111', 'Retain Safe Private Option'],
  retainInstitutionIdentity: ['113112', 'Retain Institution Identity Option'],
};
