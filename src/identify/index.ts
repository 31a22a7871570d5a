// Which station sent an image, and which research study it belongs to.
import { DicomObject, decodeText, elementString, findElement } from '../dicom/dataset';
import { DEFAULT_STUDY, RouterConfig, StationConfig, StudyConfig } from '../config/types';

const STATION_NAME = 0x00081010;
const SPECIFIC_CHARACTER_SET = 0x00080005;

function norm(s: string): string {
  return s.trim().toUpperCase();
}

/** A station listing the calling AE title, else the station named by StationName, else
 * `default`. Comparisons ignore case and padding. */
export function resolveStation(config: RouterConfig, callingAeTitle: string | undefined, obj: DicomObject): StationConfig {
  return matchStation(config, callingAeTitle, obj).station;
}

/** resolveStation, with what matched (for `explain`). */
export function matchStation(config: RouterConfig, callingAeTitle: string | undefined, obj: DicomObject): { station: StationConfig; by: 'calling AE title' | 'StationName' | 'default' } {
  if (callingAeTitle) {
    const ae = norm(callingAeTitle);
    for (const s of config.stations.values()) if (s.aeTitles.some((a) => norm(a) === ae)) return { station: s, by: 'calling AE title' };
  }
  const stationName = elementString(findElement(obj.dataset, STATION_NAME));
  if (stationName) {
    const exact = config.stations.get(stationName.trim());
    if (exact) return { station: exact, by: 'StationName' };
    const n = norm(stationName);
    for (const s of config.stations.values()) if (norm(s.name) === n) return { station: s, by: 'StationName' };
  }
  return { station: config.stations.get('default') as StationConfig, by: 'default' };
}

/** The study name the station's rule reads from the dataset, or undefined when the tag is absent,
 * empty, or the split index is out of range. */
export function studyNameFor(station: StationConfig, obj: DicomObject): string | undefined {
  const el = findElement(obj.dataset, station.tagForStudy);
  if (!el || !el.value || el.value.length === 0) return undefined;
  const charset = elementString(findElement(obj.dataset, SPECIFIC_CHARACTER_SET));
  let value = decodeText(el.value, charset);
  if (station.split !== null) {
    const parts = value.split(station.split);
    const i = station.splitIndex < 0 ? parts.length + station.splitIndex : station.splitIndex;
    if (i < 0 || i >= parts.length) return undefined;
    value = parts[i];
  }
  value = value.trim();
  return value === '' ? undefined : value;
}

export interface StudyResolution {
  station: StationConfig;
  /** The configured study that handles the image (Supplement142 for unknown names), or undefined
   * when unknown studies are quarantined. */
  study: StudyConfig | undefined;
  /** Name used for paths and logs. */
  studyName: string;
  /** True when the name read from the image matched no configured study. */
  unknown: boolean;
}

/** The built-in default study: the base profile with private tags removed. */
export const BUILTIN_DEFAULT_STUDY: StudyConfig = {
  name: DEFAULT_STUDY, profile: 'basic', options: [], removePrivateTags: true, keepPrivate: [],
  tagRules: new Map(), vrRules: new Map(),
};

export function resolveStudy(config: RouterConfig, callingAeTitle: string | undefined, obj: DicomObject): StudyResolution {
  const station = resolveStation(config, callingAeTitle, obj);
  const name = studyNameFor(station, obj);
  let study = name !== undefined ? config.studies.get(name) : undefined;
  if (!study && name !== undefined) {
    const n = norm(name);
    for (const s of config.studies.values()) if (norm(s.name) === n) { study = s; break; }
  }
  if (study) return { station, study, studyName: study.name, unknown: false };
  if (config.unknownStudy === 'quarantine') return { station, study: undefined, studyName: DEFAULT_STUDY, unknown: true };
  const fallback = config.studies.get(DEFAULT_STUDY) ?? BUILTIN_DEFAULT_STUDY;
  return { station, study: fallback, studyName: DEFAULT_STUDY, unknown: true };
}

/** Characters a study name may not bring into a path: separators, characters some file systems
 * refuse, and controls, format characters (bidi overrides, zero width) and broken surrogates that
 * would make the name look like something else in a listing or a terminal. */
const UNSAFE_IN_PATH = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}/\\:*?"<>|]/gu;

/** A study name made safe as one path component: never empty, `.` or `..`, never hidden, at most
 * 64 characters (whole characters, not UTF-16 halves), and sanitizing it again changes nothing. */
export function sanitizePathComponent(name: string): string {
  const s = name.replace(UNSAFE_IN_PATH, '_').trim().replace(/^\.+/, '_');
  return [...s].slice(0, 64).join('').trim() || '_';
}
