// Tag <-> keyword <-> VR lookups over the generated PS3.6 dictionary.
import { DICTIONARY_TEXT } from './dictionary.generated';

export interface DictEntry { tag: number; vr: string; keyword: string; vm: string; retired: boolean }

// Entries are made on first use: start-up only splits the text and reads the tags (a short batch
// run otherwise spent more time building this dictionary than de-identifying its first files).
const LINES = DICTIONARY_TEXT.split('\n').filter((l) => l.length > 0);
const TAGS = new Uint32Array(LINES.length);
for (let i = 0; i < LINES.length; i++) TAGS[i] = parseInt(LINES[i].slice(0, 8), 16) >>> 0;
const entries: Array<DictEntry | undefined> = new Array(LINES.length);

function entryAt(i: number): DictEntry {
  let e = entries[i];
  if (!e) {
    const [, vr, keyword, vm, retired] = LINES[i].split(' ');
    e = { tag: TAGS[i], vr, keyword, vm, retired: retired === '1' };
    entries[i] = e;
  }
  return e;
}

function indexOfTag(tag: number): number {
  let lo = 0;
  let hi = TAGS.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const t = TAGS[mid];
    if (t === tag) return mid;
    if (t < tag) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

const byTag = {
  get(tag: number): DictEntry | undefined {
    const i = indexOfTag(tag);
    return i < 0 ? undefined : entryAt(i);
  },
};

let keywordIndex: Map<string, number> | undefined;
/** keyword -> entry, built on the first keyword lookup (config validation). */
function byKeywordMap(): { get(k: string): DictEntry | undefined; keys(): IterableIterator<string> } {
  if (!keywordIndex) {
    keywordIndex = new Map();
    // "tttttttt VR Keyword ...": the keyword starts at column 12.
    for (let i = 0; i < LINES.length; i++) keywordIndex.set(LINES[i].slice(12, LINES[i].indexOf(' ', 12)), i);
  }
  const index = keywordIndex;
  return {
    get: (k) => {
      const i = index.get(k);
      return i === undefined ? undefined : entryAt(i);
    },
    keys: () => index.keys(),
  };
}

/** Every dictionary entry, for generators and tests. */
export function* dictionaryEntries(): IterableIterator<DictEntry> {
  for (let i = 0; i < LINES.length; i++) yield entryAt(i);
}

/** Tags of the entries with this VR whose keyword `keyword` accepts, read from the text without
 * making entries (sets the reader and engine build at start-up). */
export function tagsWithVr(vr: string, keyword?: (k: string) => boolean): Set<number> {
  const out = new Set<number>();
  // "tttttttt VR Keyword ...": the VR is at columns 9-10, the keyword starts at column 12.
  for (let i = 0; i < LINES.length; i++) {
    const l = LINES[i];
    if (l.charCodeAt(9) !== vr.charCodeAt(0) || l.charCodeAt(10) !== vr.charCodeAt(1) || l.charCodeAt(11) !== 0x20) continue;
    if (!keyword || keyword(l.slice(12, l.indexOf(' ', 12)))) out.add(TAGS[i]);
  }
  return out;
}

/** Repeating groups (50xx curves, 60xx overlays) are listed once under their base group. */
function baseTag(tag: number): number {
  const group = tag >>> 16;
  if ((group >= 0x5000 && group <= 0x50ff) || (group >= 0x6000 && group <= 0x60ff)) {
    return (((group & 0xff00) << 16) | (tag & 0xffff)) >>> 0;
  }
  return tag;
}

export function lookupTag(tag: number): DictEntry | undefined {
  return byTag.get(tag) ?? byTag.get(baseTag(tag));
}

export function isPrivateTag(tag: number): boolean {
  return ((tag >>> 16) & 1) === 1;
}

/** (gggg,0010)-(gggg,00FF) in an odd group: reserves a private block for a creator. */
export function isPrivateCreator(tag: number): boolean {
  const el = tag & 0xffff;
  return isPrivateTag(tag) && el >= 0x10 && el <= 0xff;
}

/** VR an implicit-VR reader must assume for a tag. */
export function implicitVr(tag: number): string {
  const el = tag & 0xffff;
  if (el === 0) return 'UL'; // group length
  if (isPrivateTag(tag)) return isPrivateCreator(tag) ? 'LO' : 'UN';
  return lookupTag(tag)?.vr ?? 'UN';
}

export function formatTag(tag: number): string {
  const h = tag.toString(16).toUpperCase().padStart(8, '0');
  return `(${h.slice(0, 4)},${h.slice(4)})`;
}

/**
 * Parses a tag reference as users write it: a keyword (PatientName), "(0010,0010)", "0010,0010"
 * or "00100010". Returns undefined when it is neither a known keyword nor a well-formed tag.
 */
export function parseTagRef(ref: string): number | undefined {
  const s = ref.trim();
  const m = /^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$/.exec(s);
  if (m) return parseInt(m[1] + m[2], 16) >>> 0;
  return byKeywordMap().get(s)?.tag;
}

/** Closest keywords to a misspelt one, for "did you mean" in config errors. */
export function suggestKeywords(word: string, max = 3): string[] {
  return closestWords(word, [...byKeywordMap().keys()].filter((k) => !k.startsWith('RETIRED_')), max);
}

/** Candidates within a small edit distance of word, closest first (case-insensitive). */
export function closestWords(word: string, candidates: Iterable<string>, max = 3): string[] {
  const w = word.toLowerCase();
  const scored: Array<[number, string]> = [];
  for (const k of candidates) {
    const d = editDistance(w, k.toLowerCase(), 3);
    if (d <= 3) scored.push([d, k]);
  }
  return scored.sort((a, b) => a[0] - b[0]).slice(0, max).map((x) => x[1]);
}

function editDistance(a: string, b: string, limit: number): number {
  if (Math.abs(a.length - b.length) > limit) return limit + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      cur.push(v);
      if (v < rowMin) rowMin = v;
    }
    if (rowMin > limit) return limit + 1;
    prev = cur;
  }
  return prev[b.length];
}
