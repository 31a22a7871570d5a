// The resolved, validated configuration. Nothing outside src/config reads raw config.
import type { ProfileOptionName } from '../deid/profile.generated';

export const ACTION_NAMES = ['delete', 'clear', 'hash', 'keep', 'value', 'offset', 'regen'] as const;
export type ActionName = (typeof ACTION_NAMES)[number];

/** A date shift: fixed, or per patient within [minDays, maxDays] derived from salt and PatientID. */
export type OffsetSpec =
  | { kind: 'fixed'; seconds: number }
  | { kind: 'perPatient'; minDays: number; maxDays: number };

export interface ActionSpec {
  action: ActionName;
  /** hash/regen: salt of this rule (beats the study's, which beats the global one). */
  salt?: string;
  /** value: the replacement text (undefined: zero-length, as the original did with None). */
  value?: string;
  /** regen: tags whose original values are mixed into the new UID. */
  entropySrc?: number[];
  /** offset: the shift of this rule (else the study's DateOffset). */
  offset?: OffsetSpec;
}

/** Private elements a study keeps: a whole creator's block, or single elements of it. */
export interface PrivateKeep {
  creator: string;
  /** (group << 8 | element-low-byte) of kept elements, e.g. 0x002910 for (0029,xx10); empty: all. */
  elements: number[];
}

export interface StationConfig {
  name: string;
  tagForStudy: number;
  split: string | null;
  splitIndex: number;
  aeTitles: string[];
  /** Where this station's storage commitment reports go (N-EVENT-REPORT on a new association). */
  commitment?: { aeTitle: string; host: string; port: number };
}

export interface StudyConfig {
  name: string;
  /** basic: PS3.15 Annex E Basic Profile below the study's rules; none: only the study's rules. */
  profile: 'basic' | 'none';
  options: ProfileOptionName[];
  removePrivateTags: boolean;
  keepPrivate: PrivateKeep[];
  tagRules: Map<number, ActionSpec>;
  vrRules: Map<string, ActionSpec>;
  salt?: string;
  dateOffset?: OffsetSpec;
  destinations?: string[];
  /** Checks before delivery (issue #12); undefined means the default noted. */
  phiGate?: PhiGateMode; // quarantine
  burnedInAnnotation?: BurnedInPolicy; // quarantine
  recognizableVisualFeatures?: BurnedInPolicy; // quarantine
  burnedInUnknown?: BurnedInUnknownPolicy; // flag
  /** Honest-broker linkage log (original -> new identifiers); off when undefined. */
  linkage?: { path: string };
}

export const PHI_GATE_MODES = ['quarantine', 'warn', 'off'] as const;
export type PhiGateMode = (typeof PHI_GATE_MODES)[number];
export const BURNED_IN_POLICIES = ['quarantine', 'keep'] as const;
export type BurnedInPolicy = (typeof BURNED_IN_POLICIES)[number];
export const BURNED_IN_UNKNOWN_POLICIES = ['quarantine', 'keep', 'flag'] as const;
export type BurnedInUnknownPolicy = (typeof BURNED_IN_UNKNOWN_POLICIES)[number];

export interface FolderDestinationConfig { type: 'folder'; name: string; path: string }
export interface DicomDestinationConfig {
  type: 'dicom';
  name: string;
  aeTitle: string;
  host: string;
  port: number;
  callingAeTitle: string;
  maxAssociations: number;
  tls?: TlsClientConfig;
}
/** PEM file paths (resolved) of a TLS client: a destination. */
export interface TlsClientConfig { ca?: string; cert?: string; key?: string; rejectUnauthorized?: boolean }
/** PEM file paths (resolved) of a TLS listening endpoint. */
export interface TlsServerConfig { cert: string; key: string; ca?: string; requireClientCert: boolean }
export interface DicomwebDestinationConfig {
  type: 'dicomweb';
  name: string;
  /** DICOMweb base URL; STOW-RS goes to <url>/studies. */
  url: string;
  auth?: { bearer?: string; basic?: { username: string; password: string } };
  tls?: TlsClientConfig;
  maxConnections: number;
}
export type DestinationConfig = FolderDestinationConfig | DicomDestinationConfig | DicomwebDestinationConfig;

export interface ListenConfig { aeTitle: string; host: string; port: number; allowUnknownCallers: boolean; tls?: TlsServerConfig }

/** The HTTP face (metrics, health, status page); absent: no HTTP server. */
export interface HttpConfig { host: string; port: number; token?: string }

/** router.yaml `limits`: every one has a safe default (src/config/load.ts, parseLimits). */
export interface LimitsConfig {
  maxAssociations: number;
  maxAssociationsPerCaller: number;
  /** Largest P-DATA-TF PDU we accept as SCP, announced in our A-ASSOCIATE-AC; the forwarder (SCU)
   * announces it too, and sends no longer PDUs. */
  maxPduBytes: number;
  maxDatasetBytes: number;
  /** A dataset held in memory whole (not streamed) may be at most this. */
  maxBufferedBytes: number;
  /** All datasets held in memory whole at once, over every association. */
  maxBufferedBytesTotal: number;
  /** Reader: a deflated dataset may inflate to at most this. */
  maxInflatedBytes: number;
  /** Reader: sequences nested deeper are refused. */
  maxSequenceDepth: number;
  idleSeconds: number;
  associationSeconds: number;
  associationRequestSeconds: number;
}

export interface RouterConfig {
  /** Where the configuration came from, for messages. */
  sources: string[];
  salt?: { from: 'config' | 'env' | 'file'; value: string };
  saltFile?: string;
  /** The first listening endpoint (the one a single-endpoint configuration has). */
  listen: ListenConfig;
  /** Every listening endpoint, `listen` first. */
  listeners: ListenConfig[];
  http?: HttpConfig;
  limits: LimitsConfig;
  destinations: Map<string, DestinationConfig>;
  defaultDestination: string;
  stateDir: string;
  unknownStudy: 'default' | 'quarantine';
  /** Log level when --log-level does not say (trace, debug, info, warn, error). */
  logLevel?: string;
  /** serve, on SIGTERM/SIGINT: how long images in flight (received or being forwarded) get before
   * associations are aborted; unsent images stay in the spool (default 10). */
  shutdownGraceSeconds?: number;
  /** Storage commitment: answers wait at most this long for spooled images; the result is first tried on the
   * requesting association (sameAssociation) before a new association to the station's Commitment address;
   * the index forgets an instance after indexRetentionDays. */
  commitment?: { timeLimitSeconds: number; sameAssociation: boolean; indexRetentionDays: number };
  stations: Map<string, StationConfig>;
  studies: Map<string, StudyConfig>;
}

export const DEFAULT_STUDY = 'Supplement142';
/** How long the storage commitment index remembers a received instance (commitment.indexRetentionDays). */
export const DEFAULT_INDEX_RETENTION_DAYS = 30;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`configuration has ${problems.length} error${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}
