// Loads configuration from a YAML file, or from a directory holding router.yaml and/or the
// original script's stations.json + studies.json, validates it with located messages and
// resolves it to typed objects.
import { accessSync, constants as fsConstants, existsSync, readFileSync, statSync } from 'fs';
import { join, resolve, basename } from 'path';
import { closestWords, lookupTag, parseTagRef, suggestKeywords, isPrivateTag } from '../dicom/dictionary';
import { checkValue } from '../dicom/values';
import { DEFAULT_READ_LIMITS } from '../dicom/read';
import { DEFAULT_NETWORK_LIMITS, MAX_DATASET_BYTES, MAX_PDU_BYTES, MIN_PDU_BYTES } from '../receive/limits';
import { KNOWN_VRS, isKnownVr } from '../dicom/vr';
import { PROFILE_OPTION_NAMES } from '../deid/options';
import {
  ACTION_NAMES, ActionName, ActionSpec, ConfigError, DEFAULT_INDEX_RETENTION_DAYS, DEFAULT_STUDY, DestinationConfig, OffsetSpec,
  PrivateKeep, RouterConfig, StationConfig, StudyConfig, HttpConfig, PHI_GATE_MODES, BURNED_IN_POLICIES, BURNED_IN_UNKNOWN_POLICIES, LimitsConfig,
} from './types';
import type { ProfileOptionName } from '../deid/profile.generated';
import type { DicomwebDestinationConfig, ListenConfig, TlsClientConfig, TlsServerConfig } from './types';

type Raw = Record<string, unknown>;

/** Salts that appear in documentation and examples: using one publishes the key. */
const EXAMPLE_SALTS = new Set(['random_uuid', 'astring', 'changeme', 'change-me', 'change_me', 'salt', 'secret', 'example', 'changethis']);

export function isExampleSalt(s: string): boolean {
  return s.trim() === '' || EXAMPLE_SALTS.has(s.trim().toLowerCase());
}

class Problems {
  list: string[] = [];
  add(where: string, msg: string): void {
    this.list.push(`${where}: ${msg}`);
  }
}

function isObj(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** JSON has no comments: keys starting with "//" or "_comment" are comments. */
function isCommentKey(k: string): boolean {
  return k.startsWith('//') || k.startsWith('_comment');
}

function readStructured(file: string, p: Problems): Raw | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    p.add(file, `cannot read: ${(e as Error).message}`);
    return undefined;
  }
  try {
    // yaml is required only when a YAML file is read: it is the costliest module at start-up.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const v = file.endsWith('.json') ? JSON.parse(text) : (require('yaml') as typeof import('yaml')).parse(text);
    if (v === null || v === undefined) return {};
    if (!isObj(v)) {
      p.add(file, 'must contain a mapping at top level');
      return undefined;
    }
    return v;
  } catch (e) {
    p.add(file, `not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(e as Error).message.split('\n')[0]}`);
    return undefined;
  }
}

const ROUTER_KEYS = new Set(['salt', 'saltFile', 'listen', 'destinations', 'defaultDestination', 'stateDir', 'unknownStudy', 'stations', 'studies', 'logLevel', 'http', 'limits', 'shutdownGraceSeconds', 'commitment']);

export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): RouterConfig {
  const p = new Problems();
  const abs = resolve(path);
  if (!existsSync(abs)) throw new ConfigError([`${path}: no such file or directory`]);
  let router: Raw = {};
  let routerName = basename(abs);
  let stationsRaw: unknown;
  let studiesRaw: unknown;
  let stationsName = 'stations';
  let studiesName = 'studies';
  const sources: string[] = [];
  if (statSync(abs).isDirectory()) {
    const ry = ['router.yaml', 'router.yml'].map((f) => join(abs, f)).find((f) => existsSync(f));
    if (ry) {
      router = readStructured(ry, p) ?? {};
      routerName = basename(ry);
      sources.push(ry);
    }
    for (const [file, set] of [
      ['stations.json', (v: Raw) => { stationsRaw = v; stationsName = 'stations.json: stations'; }],
      ['studies.json', (v: Raw) => { studiesRaw = v; studiesName = 'studies.json: studies'; }],
    ] as const) {
      const f = join(abs, file);
      if (existsSync(f)) {
        const v = readStructured(f, p);
        if (v) set(v);
        sources.push(f);
      }
    }
    if (!sources.length) throw new ConfigError([`${path}: holds none of router.yaml, stations.json, studies.json`]);
  } else {
    router = readStructured(abs, p) ?? {};
    sources.push(abs);
  }
  for (const k of Object.keys(router)) {
    if (!ROUTER_KEYS.has(k) && !isCommentKey(k)) p.add(routerName, `unknown key "${k}" (known: ${[...ROUTER_KEYS].join(', ')})`);
  }
  if (router.stations !== undefined) {
    if (stationsRaw !== undefined) p.add(routerName, 'stations are given both here and in stations.json; keep one');
    stationsRaw = router.stations;
    stationsName = `${routerName}: stations`;
  }
  if (router.studies !== undefined) {
    if (studiesRaw !== undefined) p.add(routerName, 'studies are given both here and in studies.json; keep one');
    studiesRaw = router.studies;
    studiesName = `${routerName}: studies`;
  }

  const stations = parseStations(stationsRaw, stationsName, p);
  const studies = parseStudies(studiesRaw, studiesName, p);

  // Router-level keys.
  let salt: RouterConfig['salt'];
  if (typeof env.DEID_SALT === 'string' && env.DEID_SALT !== '') salt = { from: 'env', value: env.DEID_SALT };
  else if (router.salt !== undefined) {
    if (typeof router.salt !== 'string') p.add(routerName, 'salt: must be a string');
    else salt = { from: 'config', value: router.salt };
  }
  if (salt && isExampleSalt(salt.value)) {
    p.add(salt.from === 'env' ? 'DEID_SALT' : `${routerName}: salt`, 'is empty or an example value from the documentation; set a long random secret (e.g. `openssl rand -hex 32`), or remove it to have one generated into the state directory');
  }
  const saltFile = optString(router, 'saltFile', routerName, p);
  const stateDir = resolve(optString(router, 'stateDir', routerName, p) ?? './state');
  const unknownStudy = optString(router, 'unknownStudy', routerName, p) ?? 'default';
  if (unknownStudy !== 'default' && unknownStudy !== 'quarantine') {
    p.add(`${routerName}: unknownStudy`, `"${unknownStudy}" is not one of default, quarantine`);
  }
  const logLevel = optString(router, 'logLevel', routerName, p);
  if (logLevel !== undefined && !['trace', 'debug', 'info', 'warn', 'error'].includes(logLevel)) p.add(`${routerName}: logLevel`, `"${logLevel}" is not one of trace, debug, info, warn, error`);
  const grace = router.shutdownGraceSeconds;
  if (grace !== undefined && (typeof grace !== 'number' || !Number.isFinite(grace) || grace < 0 || grace > 3600)) {
    p.add(`${routerName}: shutdownGraceSeconds`, 'must be a number of seconds from 0 to 3600');
  }
  const listeners = parseListeners(router.listen, `${routerName}: listen`, p);
  const listen = listeners[0];
  const http = parseHttp(router.http, `${routerName}: http`, env, p);
  const limits = parseLimits(router.limits, `${routerName}: limits`, p);
  const destinations = parseDestinations(router.destinations, `${routerName}: destinations`, p);
  let defaultDestination = optString(router, 'defaultDestination', routerName, p);
  if (!defaultDestination) {
    if (!destinations.size) destinations.set('outgoing', { type: 'folder', name: 'outgoing', path: resolve('./outgoing') });
    defaultDestination = destinations.keys().next().value as string;
  } else if (!destinations.has(defaultDestination)) {
    p.add(`${routerName}: defaultDestination`, `"${defaultDestination}" is not one of the destinations (${[...destinations.keys()].join(', ') || 'none'})`);
  }
  for (const s of studies.values()) {
    for (const d of s.destinations ?? []) {
      if (!destinations.has(d)) p.add(`${studiesName}.${s.name}.Destinations`, `"${d}" is not one of the destinations (${[...destinations.keys()].join(', ')})`);
    }
  }
  // Built-in defaults the original script relied on.
  if (!stations.has('default')) {
    stations.set('default', { name: 'default', tagForStudy: 0x00181030, split: null, splitIndex: 0, aeTitles: [] });
  }
  const commitment = parseCommitment(router.commitment, `${routerName}: commitment`, p);
  if (p.list.length) throw new ConfigError(p.list);
  return {
    sources, salt, saltFile: saltFile ? resolve(saltFile) : undefined, listen, listeners, http, limits, destinations,
    defaultDestination, stateDir, unknownStudy: unknownStudy as 'default' | 'quarantine', logLevel, stations, studies,
    shutdownGraceSeconds: typeof grace === 'number' ? grace : DEFAULT_SHUTDOWN_GRACE_SECONDS,
    commitment,
  };
}

export const DEFAULT_SHUTDOWN_GRACE_SECONDS = 10;

function optString(o: Raw, key: string, where: string, p: Problems): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') {
    p.add(`${where}: ${key}`, 'must be a string');
    return undefined;
  }
  return v;
}

function checkKeys(o: Raw, allowed: readonly string[], where: string, p: Problems): void {
  for (const k of Object.keys(o)) {
    if (isCommentKey(k) || allowed.includes(k)) continue;
    const near = closestWords(k, allowed, 1)[0];
    p.add(`${where}.${k}`, `unknown key${near ? ` (did you mean "${near}"?)` : ` (known: ${allowed.join(', ')})`}`);
  }
}

function resolveTag(ref: string, where: string, p: Problems): number | undefined {
  const tag = parseTagRef(ref);
  if (tag === undefined) {
    const near = suggestKeywords(ref);
    p.add(where, `"${ref}" is not a DICOM keyword or tag${near.length ? ` (did you mean ${near.map((n) => `"${n}"`).join(', ')}?)` : ''}`);
  }
  return tag;
}

/** Calls fn for each named entry of a mapping of mappings, reporting what is not one. */
function eachEntry(raw: unknown, where: string, what: string, p: Problems, fn: (name: string, v: Raw, w: string) => void): void {
  if (raw === undefined) return;
  if (!isObj(raw)) {
    p.add(where, `must be a mapping of ${what}`);
    return;
  }
  for (const [name, v] of Object.entries(raw)) {
    if (isCommentKey(name)) continue;
    const w = `${where}.${name}`;
    if (!isObj(v)) p.add(w, 'must be a mapping');
    else fn(name, v, w);
  }
}

const STATION_KEYS = ['TagForStudy', 'Split', 'SplitIndex', 'AETitles', 'Commitment'];

function parseStations(raw: unknown, where: string, p: Problems): Map<string, StationConfig> {
  const out = new Map<string, StationConfig>();
  eachEntry(raw, where, 'station name to station', p, (name, v, w) => {
    checkKeys(v, STATION_KEYS, w, p);
    const tagRef = v.TagForStudy ?? 'ProtocolName';
    let tag: number | undefined;
    if (typeof tagRef !== 'string') p.add(`${w}.TagForStudy`, 'must be a keyword or tag string');
    else tag = resolveTag(tagRef, `${w}.TagForStudy`, p);
    const split = v.Split ?? null;
    if (split !== null && (typeof split !== 'string' || split === '')) p.add(`${w}.Split`, 'must be null or a non-empty string');
    const idx = v.SplitIndex ?? 0;
    if (typeof idx !== 'number' || !Number.isInteger(idx)) p.add(`${w}.SplitIndex`, 'must be an integer (negative counts from the end)');
    const aes = v.AETitles ?? [];
    if (!Array.isArray(aes) || aes.some((a) => typeof a !== 'string' || a.trim().length === 0 || a.trim().length > 16)) {
      p.add(`${w}.AETitles`, 'must be a list of AE titles (1 to 16 characters)');
    }
    if (tag !== undefined) {
      out.set(name, {
        name, tagForStudy: tag, split: typeof split === 'string' ? split : null,
        splitIndex: typeof idx === 'number' ? idx : 0,
        aeTitles: Array.isArray(aes) ? aes.filter((a): a is string => typeof a === 'string').map((a) => a.trim()) : [],
        ...parseStationCommitment(v.Commitment, `${w}.Commitment`, p),
      });
    }
  });
  // One calling AE must identify one station.
  const seen = new Map<string, string>();
  for (const s of out.values()) {
    for (const ae of s.aeTitles) {
      const k = ae.toUpperCase();
      const other = seen.get(k);
      if (other) p.add(`${where}.${s.name}.AETitles`, `"${ae}" is also listed by station ${other}`);
      seen.set(k, s.name);
    }
  }
  return out;
}

const STUDY_KEYS = [
  'RemovePrivateTags', 'AnonymizeTag', 'AnonymizeVR', 'Profile', 'ProfileOptions', 'KeepPrivateTags', 'Destinations', 'salt', 'DateOffset',
  'PhiGate', 'BurnedInAnnotation', 'RecognizableVisualFeatures', 'BurnedInUnknown', 'Linkage',
];
const RULE_KEYS = ['action', 'salt', 'value', 'entropy_src', 'days', 'seconds', 'range'];
/** VRs on which `hash` can produce a valid value. */
const HASHABLE_VRS = new Set(['AE', 'CS', 'LO', 'LT', 'PN', 'SH', 'ST', 'UC', 'UT', 'UI', 'IS', 'DS']);

function parseStudies(raw: unknown, where: string, p: Problems): Map<string, StudyConfig> {
  const out = new Map<string, StudyConfig>();
  eachEntry(raw, where, 'study name to study', p, (name, v, w) => {
    checkKeys(v, STUDY_KEYS, w, p);
    const profile = v.Profile ?? 'basic';
    if (profile !== 'basic' && profile !== 'none') p.add(`${w}.Profile`, `"${String(profile)}" is not one of basic, none`);
    const options: ProfileOptionName[] = [];
    const rawOpts = v.ProfileOptions ?? [];
    if (!Array.isArray(rawOpts)) p.add(`${w}.ProfileOptions`, 'must be a list');
    else for (const o of rawOpts) {
      if (typeof o === 'string' && (PROFILE_OPTION_NAMES as readonly string[]).includes(o)) options.push(o as ProfileOptionName);
      else p.add(`${w}.ProfileOptions`, `"${String(o)}" is not one of ${PROFILE_OPTION_NAMES.join(', ')}`);
    }
    if (options.includes('retainLongitudinalFullDates') && options.includes('retainLongitudinalModifiedDates')) {
      p.add(`${w}.ProfileOptions`, 'retainLongitudinalFullDates and retainLongitudinalModifiedDates exclude each other');
    }
    const rpt = v.RemovePrivateTags ?? true;
    if (typeof rpt !== 'boolean') p.add(`${w}.RemovePrivateTags`, 'must be true or false');
    const salt = v.salt;
    if (salt !== undefined && (typeof salt !== 'string' || isExampleSalt(salt))) {
      p.add(`${w}.salt`, 'must be a secret string, not empty and not an example value');
    }
    const dateOffset = v.DateOffset === undefined ? undefined : parseOffset(v.DateOffset, `${w}.DateOffset`, p);
    if (options.includes('retainLongitudinalModifiedDates') && !dateOffset) {
      p.add(`${w}.DateOffset`, 'is required with retainLongitudinalModifiedDates (e.g. { range: [-3650, -365] } days per patient)');
    }
    const tagRules = new Map<number, ActionSpec>();
    const at = v.AnonymizeTag ?? {};
    if (!isObj(at)) p.add(`${w}.AnonymizeTag`, 'must be a mapping of keyword or tag to rule');
    else for (const [ref, rule] of Object.entries(at)) {
      if (isCommentKey(ref)) continue;
      const rw = `${w}.AnonymizeTag.${ref}`;
      const tag = resolveTag(ref, rw, p);
      if (tag === undefined) continue;
      const vr = isPrivateTag(tag) ? undefined : lookupTag(tag)?.vr;
      const spec = parseRule(rule, rw, vr, dateOffset, p);
      if (spec) tagRules.set(tag, spec);
    }
    const vrRules = new Map<string, ActionSpec>();
    const av = v.AnonymizeVR ?? {};
    if (!isObj(av)) p.add(`${w}.AnonymizeVR`, 'must be a mapping of VR to rule');
    else for (const [vr, rule] of Object.entries(av)) {
      if (isCommentKey(vr)) continue;
      const rw = `${w}.AnonymizeVR.${vr}`;
      if (!isKnownVr(vr)) {
        p.add(rw, `"${vr}" is not a VR (${KNOWN_VRS.join(' ')})`);
        continue;
      }
      const spec = parseRule(rule, rw, vr, dateOffset, p);
      if (spec) vrRules.set(vr, spec);
    }
    const keepPrivate = parseKeepPrivate(v.KeepPrivateTags, `${w}.KeepPrivateTags`, p);
    let destinations: string[] | undefined;
    if (v.Destinations !== undefined) {
      if (!Array.isArray(v.Destinations) || v.Destinations.some((d) => typeof d !== 'string')) p.add(`${w}.Destinations`, 'must be a list of destination names');
      else destinations = v.Destinations as string[];
    }
    out.set(name, {
      name, profile: profile === 'none' ? 'none' : 'basic', options, removePrivateTags: rpt !== false,
      keepPrivate, tagRules, vrRules, salt: typeof salt === 'string' ? salt : undefined, dateOffset, destinations,
      phiGate: oneOf(v, 'PhiGate', PHI_GATE_MODES, 'quarantine', w, p),
      burnedInAnnotation: oneOf(v, 'BurnedInAnnotation', BURNED_IN_POLICIES, 'quarantine', w, p),
      recognizableVisualFeatures: oneOf(v, 'RecognizableVisualFeatures', BURNED_IN_POLICIES, 'quarantine', w, p),
      burnedInUnknown: oneOf(v, 'BurnedInUnknown', BURNED_IN_UNKNOWN_POLICIES, 'flag', w, p),
      linkage: parseLinkage(v.Linkage, `${w}.Linkage`, p),
    });
  });
  return out;
}

/** A study key whose value is one of a few words. */
function oneOf<T extends string>(v: Raw, key: string, allowed: readonly T[], dflt: T, where: string, p: Problems): T {
  const x = v[key];
  if (x === undefined || x === null) return dflt;
  if (typeof x === 'string' && (allowed as readonly string[]).includes(x)) return x as T;
  p.add(`${where}.${key}`, `"${String(x)}" is not one of ${allowed.join(', ')}`);
  return dflt;
}

function parseLinkage(v: unknown, where: string, p: Problems): { path: string } | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) {
    p.add(where, 'must be { path: FILE } (the honest broker\'s linkage log)');
    return undefined;
  }
  checkKeys(v, ['path'], where, p);
  if (typeof v.path !== 'string' || v.path.trim() === '') {
    p.add(`${where}.path`, 'must be a file path');
    return undefined;
  }
  return { path: resolve(v.path) };
}

function parseOffset(v: unknown, where: string, p: Problems): OffsetSpec | undefined {
  if (!isObj(v)) {
    p.add(where, 'must be { days: N }, { seconds: N } or { range: [minDays, maxDays] }');
    return undefined;
  }
  checkKeys(v, ['days', 'seconds', 'range'], where, p);
  if (Array.isArray(v.range)) {
    const [a, b] = v.range;
    if (v.range.length !== 2 || !Number.isInteger(a) || !Number.isInteger(b) || (a as number) > (b as number)) {
      p.add(`${where}.range`, 'must be [minDays, maxDays], integers, min <= max');
      return undefined;
    }
    return { kind: 'perPatient', minDays: a as number, maxDays: b as number };
  }
  const days = v.days ?? 0;
  const seconds = v.seconds ?? 0;
  if (typeof days !== 'number' || !Number.isInteger(days) || typeof seconds !== 'number' || !Number.isInteger(seconds)) {
    p.add(where, 'days and seconds must be integers');
    return undefined;
  }
  if (v.days === undefined && v.seconds === undefined) {
    p.add(where, 'needs days, seconds or range');
    return undefined;
  }
  return { kind: 'fixed', seconds: days * 86400 + seconds };
}

function parseRule(rule: unknown, where: string, vr: string | undefined, studyOffset: OffsetSpec | undefined, p: Problems): ActionSpec | undefined {
  if (typeof rule === 'string') rule = { action: rule }; // shorthand: PatientName: clear
  if (!isObj(rule)) {
    p.add(where, 'must be a rule such as { "action": "clear" }');
    return undefined;
  }
  checkKeys(rule, RULE_KEYS, where, p);
  const action = rule.action;
  if (typeof action !== 'string' || !(ACTION_NAMES as readonly string[]).includes(action)) {
    p.add(`${where}.action`, `"${String(action)}" is not one of ${ACTION_NAMES.join(', ')}`);
    return undefined;
  }
  const spec: ActionSpec = { action: action as ActionName };
  const vrName = vr ?? 'unknown';
  switch (spec.action) {
    case 'hash':
      if (vr && !HASHABLE_VRS.has(vr)) p.add(`${where}.action`, `hash cannot give a valid ${vr} value; use clear, delete, value${vr === 'DA' || vr === 'DT' || vr === 'TM' ? ' or offset' : ''}`);
      break;
    case 'regen':
      if (vr && vr !== 'UI') p.add(`${where}.action`, `regen applies to UIDs (VR UI), not ${vrName}`);
      break;
    case 'offset':
      if (vr && vr !== 'DA' && vr !== 'DT' && vr !== 'TM') p.add(`${where}.action`, `offset applies to DA, DT and TM, not ${vrName}`);
      break;
    case 'value':
      if (rule.value !== undefined && rule.value !== null) {
        if (typeof rule.value !== 'string' && typeof rule.value !== 'number') p.add(`${where}.value`, 'must be a string');
        else {
          spec.value = String(rule.value);
          if (vr) {
            const why = checkValue(vr, spec.value);
            if (why) p.add(`${where}.value`, why);
          }
        }
      }
      break;
    default:
      break;
  }
  if (rule.salt !== undefined) {
    if (typeof rule.salt !== 'string' || isExampleSalt(rule.salt)) p.add(`${where}.salt`, 'must be a secret string, not empty and not an example value such as "astring"');
    else spec.salt = rule.salt;
  }
  if (rule.entropy_src !== undefined) {
    const src = Array.isArray(rule.entropy_src) ? rule.entropy_src : [rule.entropy_src];
    spec.entropySrc = [];
    for (const s of src) {
      const t = typeof s === 'string' ? resolveTag(s, `${where}.entropy_src`, p) : undefined;
      if (typeof s !== 'string') p.add(`${where}.entropy_src`, 'must be a keyword or a list of keywords');
      if (t !== undefined) spec.entropySrc.push(t);
    }
  }
  if (rule.days !== undefined || rule.seconds !== undefined || rule.range !== undefined) {
    const o: Raw = {};
    for (const k of ['days', 'seconds', 'range']) if (rule[k] !== undefined) o[k] = rule[k];
    spec.offset = parseOffset(o, where, p);
  }
  if (spec.action === 'offset' && !spec.offset && !studyOffset) {
    p.add(where, 'offset needs days, seconds or range here, or a DateOffset on the study');
  }
  return spec;
}

function parseKeepPrivate(v: unknown, where: string, p: Problems): PrivateKeep[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) {
    p.add(where, 'must be a list of "CREATOR" or "CREATOR:(gggg,xxee)" entries');
    return [];
  }
  const byCreator = new Map<string, PrivateKeep>();
  for (const e of v) {
    const m = typeof e === 'string' ? /^(.+?)(?::\(?([0-9A-Fa-f]{4}),?xx([0-9A-Fa-f]{2})\)?)?$/.exec(e.trim()) : null;
    if (!m) {
      p.add(where, `"${String(e)}" is not "CREATOR" or "CREATOR:(gggg,xxee)"`);
      continue;
    }
    const creator = m[1].trim();
    const k = byCreator.get(creator) ?? { creator, elements: [] };
    if (m[2]) {
      const group = parseInt(m[2], 16);
      if ((group & 1) === 0) p.add(where, `"${e}": group ${m[2]} is not a private (odd) group`);
      k.elements.push((group << 8) | parseInt(m[3], 16));
    } else k.elements = [];
    byCreator.set(creator, k);
  }
  return [...byCreator.values()];
}

function parseListen(v: unknown, where: string, p: Problems): RouterConfig['listen'] {
  const d = { aeTitle: 'DEID_ROUTER', host: '127.0.0.1', port: 11112, allowUnknownCallers: false };
  if (v === undefined) return d;
  if (!isObj(v)) {
    p.add(where, 'must be a mapping');
    return d;
  }
  checkKeys(v, ['aeTitle', 'host', 'port', 'allowUnknownCallers', 'tls'], where, p);
  const ae = v.aeTitle ?? d.aeTitle;
  if (typeof ae !== 'string' || !ae.trim() || ae.trim().length > 16) p.add(`${where}.aeTitle`, 'must be 1 to 16 characters');
  const host = v.host ?? d.host;
  if (typeof host !== 'string') p.add(`${where}.host`, 'must be an address such as 127.0.0.1 or 0.0.0.0');
  const port = v.port ?? d.port;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) p.add(`${where}.port`, 'must be a port number');
  const allow = v.allowUnknownCallers ?? false;
  if (typeof allow !== 'boolean') p.add(`${where}.allowUnknownCallers`, 'must be true or false');
  const tls = parseTls(v.tls, `${where}.tls`, 'server', p);
  return { aeTitle: String(ae).trim(), host: String(host), port: Number(port), allowUnknownCallers: allow === true, ...(tls ? { tls } : {}) };
}

/** `listen:` is one endpoint, or a list of them (e.g. 104 plain and 2762 TLS side by side). */
function parseListeners(v: unknown, where: string, p: Problems): ListenConfig[] {
  if (!Array.isArray(v)) return [parseListen(v, where, p)];
  if (v.length === 0) {
    p.add(where, 'must list at least one endpoint');
    return [parseListen(undefined, where, p)];
  }
  const out = v.map((e, i) => parseListen(e, `${where}[${i}]`, p));
  const seen = new Map<string, number>();
  out.forEach((l, i) => {
    const k = `${l.host}:${l.port}`;
    if (l.port !== 0 && seen.has(k)) p.add(`${where}[${i}]`, `${k} is also listen[${seen.get(k)}]`);
    seen.set(k, i);
  });
  return out;
}

/** `http: { host, port, token }`; DEID_HTTP_TOKEN beats the file's token (a secret kept out of it). */
function parseHttp(v: unknown, where: string, env: NodeJS.ProcessEnv, p: Problems): HttpConfig | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) {
    p.add(where, 'must be a mapping { host, port, token }');
    return undefined;
  }
  checkKeys(v, ['host', 'port', 'token'], where, p);
  const host = v.host ?? '127.0.0.1';
  if (typeof host !== 'string' || !host) p.add(`${where}.host`, 'must be an address such as 127.0.0.1 or 0.0.0.0');
  const port = v.port ?? 8080;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) p.add(`${where}.port`, 'must be a port number');
  let token = typeof env.DEID_HTTP_TOKEN === 'string' && env.DEID_HTTP_TOKEN !== '' ? env.DEID_HTTP_TOKEN : v.token;
  if (token !== undefined && token !== null) {
    if (typeof token !== 'string' || token.trim().length < 16) p.add(env.DEID_HTTP_TOKEN ? 'DEID_HTTP_TOKEN' : `${where}.token`, 'must be a secret of at least 16 characters (e.g. `openssl rand -hex 32`)');
  } else token = undefined;
  return { host: String(host), port: Number(port), token: typeof token === 'string' ? token.trim() : undefined };
}

function parseDestinations(v: unknown, where: string, p: Problems): Map<string, DestinationConfig> {
  const out = new Map<string, DestinationConfig>();
  eachEntry(v, where, 'name to destination', p, (name, d, w) => {
    if (d.type === 'folder') {
      checkKeys(d, ['type', 'path'], w, p);
      if (typeof d.path !== 'string' || !d.path) p.add(`${w}.path`, 'must be a folder path');
      else out.set(name, { type: 'folder', name, path: resolve(d.path) });
    } else if (d.type === 'dicom') {
      checkKeys(d, ['type', 'aeTitle', 'host', 'port', 'callingAeTitle', 'maxAssociations', 'tls'], w, p);
      const ok = (k: string, test: boolean, msg: string) => { if (!test) p.add(`${w}.${k}`, msg); return test; };
      const good = [
        ok('aeTitle', typeof d.aeTitle === 'string' && d.aeTitle.trim().length > 0 && d.aeTitle.trim().length <= 16, 'must be 1 to 16 characters'),
        ok('host', typeof d.host === 'string' && d.host.length > 0, 'must be a host name or address'),
        ok('port', typeof d.port === 'number' && Number.isInteger(d.port) && d.port > 0 && d.port < 65536, 'must be a port number'),
        ok('callingAeTitle', d.callingAeTitle === undefined || (typeof d.callingAeTitle === 'string' && d.callingAeTitle.length <= 16), 'must be 1 to 16 characters'),
        ok('maxAssociations', d.maxAssociations === undefined || (Number.isInteger(d.maxAssociations) && (d.maxAssociations as number) >= 1), 'must be a positive integer'),
      ].every(Boolean);
      const tls = parseTls(d.tls, `${w}.tls`, 'client', p);
      if (good) {
        out.set(name, {
          type: 'dicom', name, aeTitle: (d.aeTitle as string).trim(), host: d.host as string, port: d.port as number,
          callingAeTitle: ((d.callingAeTitle as string | undefined) ?? 'DEID_ROUTER').trim(),
          maxAssociations: (d.maxAssociations as number | undefined) ?? 2,
          tls,
        });
      }
    } else if (d.type === 'dicomweb') {
      const dw = parseDicomweb(name, d, w, p);
      if (dw) out.set(name, dw);
    } else {
      p.add(`${w}.type`, `"${String(d.type)}" is not one of folder, dicom, dicomweb`);
    }
  });
  return out;
}

const CLIENT_TLS_KEYS = ['ca', 'cert', 'key', 'rejectUnauthorized'];
const SERVER_TLS_KEYS = ['cert', 'key', 'ca', 'requireClientCert'];

/** A PEM file named by a config key: must be a readable file (its contents are never echoed). */
function pemFile(v: unknown, where: string, p: Problems): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !v) {
    p.add(where, 'must be the path of a PEM file');
    return undefined;
  }
  const file = resolve(v);
  try {
    if (!statSync(file).isFile()) p.add(where, `${v} is not a file`);
    else accessSync(file, fsConstants.R_OK);
  } catch (e) {
    p.add(where, `cannot read ${v}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return file;
}

/**
 * `tls:` of a destination (client: ca, cert, key, rejectUnauthorized) or of a listening endpoint (server:
 * cert and key required, ca, requireClientCert).
 */
function parseTls(v: unknown, where: string, side: 'client', p: Problems): TlsClientConfig | undefined;
function parseTls(v: unknown, where: string, side: 'server', p: Problems): TlsServerConfig | undefined;
function parseTls(v: unknown, where: string, side: 'client' | 'server', p: Problems): TlsClientConfig | TlsServerConfig | undefined {
  if (v === undefined || v === null) return undefined;
  const keys = side === 'client' ? CLIENT_TLS_KEYS : SERVER_TLS_KEYS;
  if (!isObj(v)) {
    p.add(where, `must be a mapping with ${keys.join(', ')}`);
    return undefined;
  }
  checkKeys(v, keys, where, p);
  const ca = pemFile(v.ca, `${where}.ca`, p);
  const cert = pemFile(v.cert, `${where}.cert`, p);
  const key = pemFile(v.key, `${where}.key`, p);
  if ((cert === undefined) !== (key === undefined) || (side === 'server' && cert === undefined)) {
    p.add(where, side === 'server' ? 'needs cert and key (PEM files)' : 'cert and key go together (a client certificate needs its key)');
  }
  const flag = side === 'client' ? 'rejectUnauthorized' : 'requireClientCert';
  const b = v[flag];
  if (b !== undefined && typeof b !== 'boolean') p.add(`${where}.${flag}`, 'must be true or false');
  if (side === 'client') return { ca, cert, key, rejectUnauthorized: b === false ? false : undefined };
  if (b === true && ca === undefined) p.add(`${where}.requireClientCert`, 'needs ca: the CA that signs the client certificates');
  return { ca, cert: cert ?? '', key: key ?? '', requireClientCert: b === true };
}

function parseDicomweb(name: string, d: Raw, w: string, p: Problems): DestinationConfig | undefined {
  checkKeys(d, ['type', 'url', 'auth', 'tls', 'maxConnections'], w, p);
  let url: URL | undefined;
  if (typeof d.url !== 'string') p.add(`${w}.url`, 'must be the DICOMweb base URL, e.g. http://pacs:8042/dicom-web');
  else {
    try {
      url = new URL(d.url);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') p.add(`${w}.url`, `must be http:// or https://, not ${url.protocol}`);
      if (url.username || url.password) p.add(`${w}.url`, 'must not carry credentials; use auth: { basic: { username, password } }');
    } catch {
      p.add(`${w}.url`, 'is not a valid URL (e.g. http://pacs:8042/dicom-web)');
    }
  }
  let auth: DicomwebDestinationConfig['auth'];
  if (d.auth !== undefined) {
    const a = d.auth;
    if (!isObj(a) || Object.keys(a).filter((k) => !isCommentKey(k)).length !== 1) p.add(`${w}.auth`, 'must be { bearer: TOKEN } or { basic: { username, password } }');
    else {
      checkKeys(a, ['bearer', 'basic'], `${w}.auth`, p);
      if (a.bearer !== undefined) {
        if (typeof a.bearer !== 'string' || !a.bearer) p.add(`${w}.auth.bearer`, 'must be the token (a non-empty string)');
        else auth = { bearer: a.bearer };
      } else if (a.basic !== undefined) {
        const b = a.basic;
        if (!isObj(b)) p.add(`${w}.auth.basic`, 'must be { username, password }');
        else {
          checkKeys(b, ['username', 'password'], `${w}.auth.basic`, p);
          if (typeof b.username !== 'string' || !b.username || b.username.includes(':')) p.add(`${w}.auth.basic.username`, 'must be a non-empty string without ":"');
          if (typeof b.password !== 'string') p.add(`${w}.auth.basic.password`, 'must be a string');
          if (typeof b.username === 'string' && typeof b.password === 'string') auth = { basic: { username: b.username, password: b.password } };
        }
      }
    }
  }
  const tls = parseTls(d.tls, `${w}.tls`, 'client', p);
  if (tls && url && url.protocol !== 'https:') p.add(`${w}.tls`, 'applies to https:// URLs only');
  const mc = d.maxConnections ?? 2;
  if (typeof mc !== 'number' || !Number.isInteger(mc) || mc < 1 || mc > 64) p.add(`${w}.maxConnections`, 'must be an integer from 1 to 64');
  if (!url) return undefined;
  return { type: 'dicomweb', name, url: url.toString(), auth, tls, maxConnections: typeof mc === 'number' ? mc : 2 };
}

/** `commitment: { timeLimitSeconds, sameAssociation, indexRetentionDays }`: how long a storage commitment
 * answer may wait for spooled images; whether it is first tried on the requesting association; how long the
 * index remembers a received instance. */
function parseCommitment(v: unknown, where: string, p: Problems): { timeLimitSeconds: number; sameAssociation: boolean; indexRetentionDays: number } {
  const d = { timeLimitSeconds: 3600, sameAssociation: true, indexRetentionDays: DEFAULT_INDEX_RETENTION_DAYS };
  if (v === undefined || v === null) return d;
  if (!isObj(v)) {
    p.add(where, 'must be a mapping { timeLimitSeconds, sameAssociation, indexRetentionDays }');
    return d;
  }
  checkKeys(v, ['timeLimitSeconds', 'sameAssociation', 'indexRetentionDays'], where, p);
  const out = { ...d };
  const t = v.timeLimitSeconds ?? d.timeLimitSeconds;
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 1 || t > 7 * 86400) p.add(`${where}.timeLimitSeconds`, 'must be a number of seconds from 1 to 604800');
  else out.timeLimitSeconds = t;
  const same = v.sameAssociation ?? d.sameAssociation;
  if (typeof same !== 'boolean') p.add(`${where}.sameAssociation`, 'must be true or false');
  else out.sameAssociation = same;
  const days = v.indexRetentionDays ?? d.indexRetentionDays;
  if (typeof days !== 'number' || !Number.isInteger(days) || days < 1 || days > 3650) p.add(`${where}.indexRetentionDays`, 'must be a whole number of days from 1 to 3650');
  else out.indexRetentionDays = days;
  return out;
}

/** A station's `Commitment: { aeTitle, host, port }`: where its storage commitment reports go. */
function parseStationCommitment(v: unknown, where: string, p: Problems): { commitment?: { aeTitle: string; host: string; port: number } } {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) {
    p.add(where, 'must be { aeTitle, host, port }');
    return {};
  }
  checkKeys(v, ['aeTitle', 'host', 'port'], where, p);
  let ok = true;
  if (typeof v.aeTitle !== 'string' || !v.aeTitle.trim() || v.aeTitle.trim().length > 16) { p.add(`${where}.aeTitle`, 'must be 1 to 16 characters'); ok = false; }
  if (typeof v.host !== 'string' || !v.host) { p.add(`${where}.host`, 'must be a host name or address'); ok = false; }
  if (typeof v.port !== 'number' || !Number.isInteger(v.port) || v.port < 1 || v.port > 65535) { p.add(`${where}.port`, 'must be a port number'); ok = false; }
  return ok ? { commitment: { aeTitle: (v.aeTitle as string).trim(), host: v.host as string, port: v.port as number } } : {};
}

export { DEFAULT_STUDY };

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3 };

/** A byte count: an integer, or a string such as "512 MiB" or "1GB". */
function parseSize(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isInteger(v) ? v : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$/i.exec(v);
  if (!m) return undefined;
  const unit = SIZE_UNITS[(m[2] ?? '').toUpperCase()];
  return unit === undefined ? undefined : Math.floor(Number(m[1]) * unit);
}

/** `limits:` the network and reader bounds; each one not given keeps its safe default. */
function parseLimits(v: unknown, where: string, p: Problems): LimitsConfig {
  const d: LimitsConfig = {
    maxAssociations: DEFAULT_NETWORK_LIMITS.maxAssociations,
    maxAssociationsPerCaller: DEFAULT_NETWORK_LIMITS.maxAssociationsPerCaller,
    maxPduBytes: DEFAULT_NETWORK_LIMITS.maxPduBytes,
    maxDatasetBytes: DEFAULT_NETWORK_LIMITS.maxDatasetBytes,
    maxBufferedBytes: DEFAULT_NETWORK_LIMITS.maxBufferedBytes,
    maxBufferedBytesTotal: DEFAULT_NETWORK_LIMITS.maxBufferedBytesTotal,
    maxInflatedBytes: DEFAULT_READ_LIMITS.maxInflatedBytes,
    maxSequenceDepth: DEFAULT_READ_LIMITS.maxSequenceDepth,
    idleSeconds: DEFAULT_NETWORK_LIMITS.idleTimeoutMs / 1000,
    associationSeconds: DEFAULT_NETWORK_LIMITS.associationTimeLimitMs / 1000,
    associationRequestSeconds: DEFAULT_NETWORK_LIMITS.associationRequestTimeoutMs / 1000,
  };
  if (v === undefined || v === null) return d;
  if (!isObj(v)) {
    p.add(where, `must be a mapping of ${Object.keys(d).join(', ')}`);
    return d;
  }
  checkKeys(v, Object.keys(d), where, p);
  const count = (k: keyof LimitsConfig, min: number, max: number): void => {
    const x = v[k];
    if (x === undefined) return;
    if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) p.add(`${where}.${k}`, `must be an integer from ${min} to ${max}`);
    else d[k] = x;
  };
  const size = (k: keyof LimitsConfig, min: number, max: number): void => {
    if (v[k] === undefined) return;
    const x = parseSize(v[k]);
    if (x === undefined || x < min || x > max) p.add(`${where}.${k}`, `must be a byte count from ${min} to ${max} (an integer, or e.g. "512 MiB")`);
    else d[k] = x;
  };
  const seconds = (k: keyof LimitsConfig, min: number, max: number): void => {
    const x = v[k];
    if (x === undefined) return;
    if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max) p.add(`${where}.${k}`, `must be a number of seconds from ${min} to ${max}`);
    else d[k] = x;
  };
  count('maxAssociations', 1, 10_000);
  count('maxAssociationsPerCaller', 1, 10_000);
  size('maxPduBytes', MIN_PDU_BYTES, MAX_PDU_BYTES);
  size('maxDatasetBytes', 1024, MAX_DATASET_BYTES);
  size('maxBufferedBytes', 1024, MAX_DATASET_BYTES);
  size('maxBufferedBytesTotal', 1024, Number.MAX_SAFE_INTEGER);
  size('maxInflatedBytes', 1024, MAX_DATASET_BYTES);
  count('maxSequenceDepth', 1, 1000);
  seconds('idleSeconds', 1, 86_400);
  seconds('associationSeconds', 1, 7 * 86_400);
  seconds('associationRequestSeconds', 1, 3600);
  if (d.maxAssociationsPerCaller > d.maxAssociations) p.add(`${where}.maxAssociationsPerCaller`, `${d.maxAssociationsPerCaller} is more than maxAssociations (${d.maxAssociations})`);
  return d;
}
