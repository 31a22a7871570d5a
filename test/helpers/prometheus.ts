// A strict reader of the Prometheus text exposition format (0.0.4), for tests: every sample must
// belong to a family declared by # TYPE, label syntax and values must be valid, no series twice,
// histogram buckets cumulative with +Inf equal to _count. Throws on the first violation.

export interface Sample { name: string; labels: Record<string, string>; value: number }
export interface Family { name: string; type: string; help?: string; samples: Sample[] }
export interface Exposition { families: Map<string, Family>; samples: Sample[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** As Prometheus reads them (Go's ParseFloat: special values in any case; prom-client writes "Nan"). */
function parseValue(s: string, line: string): number {
  if (/^\+?inf(inity)?$/i.test(s)) return Infinity;
  if (/^-inf(inity)?$/i.test(s)) return -Infinity;
  if (/^nan$/i.test(s)) return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`bad sample value "${s}" in: ${line}`);
  return Number(s);
}

function parseLabels(body: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < body.length) {
    const eq = body.indexOf('=', i);
    if (eq < 0) throw new Error(`label without value in: ${line}`);
    const name = body.slice(i, eq).trim();
    if (!LABEL.test(name)) throw new Error(`bad label name "${name}" in: ${line}`);
    if (body[eq + 1] !== '"') throw new Error(`label value not quoted in: ${line}`);
    let v = '';
    let j = eq + 2;
    for (; j < body.length && body[j] !== '"'; j++) {
      if (body[j] === '\\') {
        const n = body[++j];
        if (n === 'n') v += '\n';
        else if (n === '\\' || n === '"') v += n;
        else throw new Error(`bad escape in label value in: ${line}`);
      } else v += body[j];
    }
    if (body[j] !== '"') throw new Error(`unterminated label value in: ${line}`);
    if (name in labels) throw new Error(`label ${name} twice in: ${line}`);
    labels[name] = v;
    i = j + 1;
    if (body[i] === ',') i++;
    else if (i < body.length) throw new Error(`expected "," between labels in: ${line}`);
  }
  return labels;
}

function familyOf(sample: string, families: Map<string, Family>): Family | undefined {
  const direct = families.get(sample);
  if (direct) return direct;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!sample.endsWith(suffix)) continue;
    const f = families.get(sample.slice(0, -suffix.length));
    if (f && (f.type === 'histogram' || f.type === 'summary')) return f;
  }
  return undefined;
}

export function parsePrometheusText(text: string): Exposition {
  const families = new Map<string, Family>();
  const samples: Sample[] = [];
  const series = new Set<string>();
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) continue; // a plain comment
      const [, kind, name, rest] = m;
      if (!NAME.test(name)) throw new Error(`bad metric name in: ${line}`);
      const f = families.get(name) ?? { name, type: 'untyped', samples: [] };
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`bad type in: ${line}`);
        if (f.samples.length) throw new Error(`TYPE after samples in: ${line}`);
        f.type = rest;
      } else f.help = rest;
      families.set(name, f);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels = m[3] ? parseLabels(m[3], line) : {};
    const sample = { name: m[1], labels, value: parseValue(m[4], line) };
    const f = familyOf(sample.name, families);
    if (!f) throw new Error(`sample of an undeclared family: ${line}`);
    const key = `${sample.name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (series.has(key)) throw new Error(`series twice: ${line}`);
    series.add(key);
    if ((f.type === 'counter' || sample.name.endsWith('_count') || sample.name.endsWith('_bucket')) && !(sample.value >= 0)) throw new Error(`negative count in: ${line}`);
    f.samples.push(sample);
    samples.push(sample);
  }
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  return { families, samples };
}

function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: Array<[number, number]>; count?: number }>();
  const keyOf = (l: Record<string, string>) => JSON.stringify(Object.entries(l).filter(([k]) => k !== 'le').sort());
  for (const s of f.samples) {
    const g = groups.get(keyOf(s.labels)) ?? { buckets: [] };
    groups.set(keyOf(s.labels), g);
    if (s.name === `${f.name}_bucket`) {
      if (s.labels.le === undefined) throw new Error(`${f.name}: bucket without le`);
      g.buckets.push([parseValue(s.labels.le, s.labels.le), s.value]);
    } else if (s.name === `${f.name}_count`) g.count = s.value;
  }
  for (const [k, g] of groups) {
    g.buckets.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < g.buckets.length; i++) if (g.buckets[i][1] < g.buckets[i - 1][1]) throw new Error(`${f.name}${k}: buckets not cumulative`);
    const inf = g.buckets[g.buckets.length - 1];
    if (!inf || inf[0] !== Infinity) throw new Error(`${f.name}${k}: no +Inf bucket`);
    if (inf[1] !== g.count) throw new Error(`${f.name}${k}: +Inf bucket ${inf[1]} != _count ${g.count}`);
  }
}

/** Sum of the samples called `name` whose labels include `labels` (0 when there is none). */
export function sampleValue(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const s of e.samples) {
    if (s.name !== name) continue;
    if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value;
  }
  return sum;
}
