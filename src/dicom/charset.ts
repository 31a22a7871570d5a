// Text of string values in the character set a dataset declares (SpecificCharacterSet, PS3.5 6.1
// and PS3.3 C.12.1.1.2), including ISO 2022 code extensions, as JS strings. Used where text must
// be compared by meaning (the PHI gate, the linkage log, explain), not where bytes are passed on.

export type TextDecoderFn = (buf: Buffer) => string;

const latin1: TextDecoderFn = (b) => b.toString('latin1');
const utf8: TextDecoderFn = (b) => b.toString('utf8');

const whatwgDecoders = new Map<string, TextDecoderFn>();
/** A WHATWG decoder (Node's ICU), one per label; latin1 when this Node lacks the encoding. */
function whatwg(label: string): TextDecoderFn {
  let fn = whatwgDecoders.get(label);
  if (!fn) {
    try {
      const d = new TextDecoder(label);
      fn = (b) => d.decode(b);
    } catch {
      fn = latin1;
    }
    whatwgDecoders.set(label, fn);
  }
  return fn;
}

/** Defined terms without code extensions. */
const SINGLE: Record<string, () => TextDecoderFn> = {
  '': () => latin1, 'ISO_IR 6': () => latin1, 'ISO_IR 100': () => latin1,
  'ISO_IR 101': () => whatwg('iso-8859-2'), 'ISO_IR 109': () => whatwg('iso-8859-3'), 'ISO_IR 110': () => whatwg('iso-8859-4'),
  'ISO_IR 144': () => whatwg('iso-8859-5'), 'ISO_IR 127': () => whatwg('iso-8859-6'), 'ISO_IR 126': () => whatwg('iso-8859-7'),
  'ISO_IR 138': () => whatwg('iso-8859-8'), 'ISO_IR 148': () => whatwg('iso-8859-9'), 'ISO_IR 203': () => whatwg('iso-8859-15'),
  'ISO_IR 166': () => whatwg('windows-874'), 'ISO_IR 13': () => whatwg('shift_jis'), 'ISO_IR 192': () => utf8,
  GB18030: () => whatwg('gb18030'), GBK: () => whatwg('gbk'),
};

/** ISO 2022 state: what G0 (7-bit bytes) and G1 (8-bit bytes) hold. */
interface State { g0: 'ascii' | 'jisx0208' | 'jisx0212'; g1: TextDecoderFn }

/** Escape sequences of the ISO 2022 defined terms (PS3.3 Table C.12-3, C.12-4). */
const ESCAPES: Array<[string, (s: State) => void]> = [
  ['\x1b(B', (s) => { s.g0 = 'ascii'; }],
  ['\x1b(J', (s) => { s.g0 = 'ascii'; }], // JIS X 0201 Romaji: ASCII but for two symbols
  ['\x1b)I', (s) => { s.g1 = whatwg('shift_jis'); }], // JIS X 0201 katakana (single bytes A1-DF)
  ['\x1b$B', (s) => { s.g0 = 'jisx0208'; }],
  ['\x1b$(D', (s) => { s.g0 = 'jisx0212'; }],
  ['\x1b$)C', (s) => { s.g1 = whatwg('euc-kr'); }],
  ['\x1b$)A', (s) => { s.g1 = whatwg('gb18030'); }],
  ['\x1b-A', (s) => { s.g1 = latin1; }],
  ['\x1b-B', (s) => { s.g1 = whatwg('iso-8859-2'); }],
  ['\x1b-C', (s) => { s.g1 = whatwg('iso-8859-3'); }],
  ['\x1b-D', (s) => { s.g1 = whatwg('iso-8859-4'); }],
  ['\x1b-L', (s) => { s.g1 = whatwg('iso-8859-5'); }],
  ['\x1b-G', (s) => { s.g1 = whatwg('iso-8859-6'); }],
  ['\x1b-F', (s) => { s.g1 = whatwg('iso-8859-7'); }],
  ['\x1b-H', (s) => { s.g1 = whatwg('iso-8859-8'); }],
  ['\x1b-M', (s) => { s.g1 = whatwg('iso-8859-9'); }],
  ['\x1b-T', (s) => { s.g1 = whatwg('windows-874'); }],
  ['\x1b-b', (s) => { s.g1 = whatwg('iso-8859-15'); }],
];

/** The initial designation an ISO 2022 defined term makes. */
function initialState(term: string): State {
  const s: State = { g0: 'ascii', g1: latin1 };
  const esc = {
    'ISO 2022 IR 13': '\x1b)I', 'ISO 2022 IR 87': '\x1b$B', 'ISO 2022 IR 159': '\x1b$(D', 'ISO 2022 IR 149': '\x1b$)C',
    'ISO 2022 IR 58': '\x1b$)A', 'ISO 2022 IR 100': '\x1b-A', 'ISO 2022 IR 101': '\x1b-B', 'ISO 2022 IR 109': '\x1b-C',
    'ISO 2022 IR 110': '\x1b-D', 'ISO 2022 IR 144': '\x1b-L', 'ISO 2022 IR 127': '\x1b-G', 'ISO 2022 IR 126': '\x1b-F',
    'ISO 2022 IR 138': '\x1b-H', 'ISO 2022 IR 148': '\x1b-M', 'ISO 2022 IR 166': '\x1b-T', 'ISO 2022 IR 203': '\x1b-b',
  }[term];
  if (esc) for (const [e, apply] of ESCAPES) if (e === esc) apply(s);
  return s;
}

const jis = whatwg('iso-2022-jp');
const eucJp = whatwg('euc-jp');

function decodeRun(run: Buffer, s: State): string {
  if (s.g0 === 'jisx0208') return jis(Buffer.concat([Buffer.from('\x1b$B', 'latin1'), run, Buffer.from('\x1b(B', 'latin1')]));
  if (s.g0 === 'jisx0212') {
    const out = Buffer.alloc((run.length >>> 1) * 3);
    for (let i = 0, j = 0; i + 1 < run.length; i += 2, j += 3) { out[j] = 0x8f; out[j + 1] = run[i] | 0x80; out[j + 2] = run[i + 1] | 0x80; }
    return eucJp(out);
  }
  return s.g1(run);
}

function iso2022(terms: string[]): TextDecoderFn {
  const first = terms[0] === '' ? 'ISO 2022 IR 6' : terms[0];
  return (buf) => {
    if (buf.indexOf(0x1b) < 0) return decodeRun(buf, initialState(first));
    const s = initialState(first);
    let out = '';
    let start = 0;
    let i = 0;
    while (i < buf.length) {
      if (buf[i] !== 0x1b) { i++; continue; }
      if (i > start) out += decodeRun(buf.subarray(start, i), s);
      const head = buf.toString('latin1', i, Math.min(buf.length, i + 4));
      const hit = ESCAPES.find(([e]) => head.startsWith(e));
      if (hit) {
        hit[1](s);
        i += hit[0].length;
      } else i++; // an escape we do not know: skip the ESC, decode the rest as it comes
      start = i;
    }
    if (start < buf.length) out += decodeRun(buf.subarray(start), s);
    return out;
  };
}

/** 'latin1' or 'utf8' when the decoder maps bytes to characters as that Node encoding does
 * (text can then be searched as bytes), else undefined. */
export function byteEncodingOf(d: TextDecoderFn): 'latin1' | 'utf8' | undefined {
  return d === latin1 ? 'latin1' : d === utf8 ? 'utf8' : undefined;
}

const cache = new Map<string, TextDecoderFn>();

/** The decoder of a SpecificCharacterSet value (as read: backslash-separated defined terms).
 * Unknown terms decode as Latin-1, which keeps every byte distinct. */
export function textDecoderFor(specificCharacterSet: string | undefined): TextDecoderFn {
  const key = specificCharacterSet ?? '';
  let d = cache.get(key);
  if (!d) {
    const terms = key.split('\\').map((t) => t.trim().toUpperCase());
    if (terms.some((t) => t.startsWith('ISO 2022'))) d = iso2022(terms);
    else d = (SINGLE[terms.find((t) => t !== '') ?? ''] ?? (() => latin1))();
    if (cache.size < 64) cache.set(key, d);
  }
  return d;
}
