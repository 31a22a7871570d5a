// `explain`: what a study's rules do to one file, before go-live. It resolves the station and
// study as the router would, de-identifies the file with the engine's decisions traced, and lists
// every element at every depth with the action, the rule that decided it and the value before and
// after (masked unless asked), then the verdicts of the PHI gate and the burned-in policy. The
// verdict is the pipeline's own: the file goes through DeidPipeline.process as it would in
// production.
import type { RouterConfig, StudyConfig } from '../config/types';
import { DeidPipeline, ImageRejected } from '../pipeline';
import { DicomObject, Element, elementString, findElement } from '../dicom/dataset';
import { formatTag, isPrivateCreator, isPrivateTag, lookupTag } from '../dicom/dictionary';
import { isStringVr } from '../dicom/vr';
import { textDecoderFor } from '../dicom/charset';
import { matchStation, resolveStudy } from '../identify';
import { deidentify, SAFETY_NETS } from '../deid/engine';
import { OPTION_ORDER, type Op, type StudyPlan } from '../deid/plan';
import { PROFILE_ROWS } from '../deid/profile.generated';
import { phiGate, type PhiHit } from '../deid/phi-gate';
import { burnedInVerdict, type BurnedInVerdict } from '../deid/burned-in';
import { errorMessage } from '../observe/errors';

export interface ExplainedElement {
  /** Keywords (private: (gggg,eeee)) and item indexes: RequestAttributesSequence[0].PatientName */
  path: string;
  depth: number;
  tag: string;
  keyword: string;
  vr: string;
  /** The operation (keep, delete, clear, dummy, hash, regen, offset, value, clean, ...). */
  action: string;
  /** What decided: a study tag rule, a study VR rule, a profile row, an option, private removal,
   * a safety net. */
  rule: string;
  before: string;
  /** `removed` when the element is not in the output. */
  after: string;
  changed: boolean;
}

export interface ExplainReport {
  station: { name: string; by: string };
  study: { name: string; unknown: boolean; by: string };
  elements: ExplainedElement[];
  /** Elements the router adds (de-identification method attributes); their values are its own. */
  added: Array<{ tag: string; keyword: string; vr: string; value: string }>;
  phiGate: { mode: string; hits: PhiHit[] };
  burnedIn: BurnedInVerdict;
  /** What the router would do with the file. */
  verdict: { outcome: 'delivered' | 'quarantined'; stage?: string; reason?: string; status?: number };
}

const PROFILE_BY_TAG = new Map(PROFILE_ROWS.filter((r) => !r.tag.includes('x')).map((r) => [parseInt(r.tag, 16) >>> 0, r]));
const SUPPLEMENTARY_NAMES: Record<number, string> = {
  0x0040a160: 'safety net: free text in structured content (TextValue)',
  0x00700006: 'safety net: free text in graphics (UnformattedTextValue)',
  0x00080104: 'safety net: CodeMeaning kept only under a standard coding scheme',
};

function nameOf(tag: number): string {
  return isPrivateTag(tag) ? formatTag(tag) : lookupTag(tag)?.keyword ?? formatTag(tag);
}

/** The rule behind an operation the plan chose, by identity with the plan's own operations. */
function ruleOf(tag: number, vr: string, op: Op, plan: StudyPlan): string {
  if (plan.tagOps.get(tag) === op) return `study tag rule AnonymizeTag.${nameOf(tag)}`;
  if (plan.vrOps.get(vr) === op) return `study VR rule AnonymizeVR.${vr}`;
  if (plan.baseOps.get(tag) === op) {
    const row = PROFILE_BY_TAG.get(tag);
    if (!row) return SUPPLEMENTARY_NAMES[tag] ?? 'safety net';
    const option = OPTION_ORDER.find((o) => plan.options.includes(o) && row.options[o]);
    if (op === plan.uidNetOp) return `safety net: UID (profile row ${row.basic} keeps it; mapped)`;
    return option ? `option ${option}: code ${row.options[option]} (profile row ${row.basic})` : `profile row ${row.basic} (${row.name})`;
  }
  if (op === plan.uidNetOp) return 'safety net: UID the table does not list';
  const net = SAFETY_NETS.get(op);
  if (net) return `safety net: ${net}`;
  return plan.basicProfile ? 'no rule names it (kept)' : 'Profile none: no rule names it (kept)';
}

function actionOf(op: Op | undefined, input: Element, output: Element | undefined): string {
  if (!op) return output ? (output === input ? 'keep' : 'regen') : 'delete';
  switch (op.op) {
    case 'recurse': return output ? 'keep (items de-identified)' : 'delete';
    case 'codeMeaning': return output === input ? 'keep' : 'dummy';
    default: return op.op;
  }
}

function show(el: Element | undefined, vr: string, showPhi: boolean, decode: (b: Buffer) => string): string {
  if (!el) return 'removed';
  if (el.items) return `${el.items.length} item${el.items.length === 1 ? '' : 's'}`;
  const v = el.value ?? el.encapsulated;
  if (!v || v.length === 0) return 'empty';
  if (!showPhi) return `[masked, ${v.length} bytes]`;
  if (!isStringVr(vr) && !(isPrivateCreator(el.tag))) return `<${v.length} bytes>`;
  const text = decode(el.value ?? Buffer.alloc(0)).replace(/[\0 ]+$/, '');
  const printable = text.replace(/[\x00-\x1f\x7f]/g, '?');
  return `"${printable.length > 80 ? printable.slice(0, 77) + '...' : printable}"`;
}

function same(a: Element, b: Element | undefined): boolean {
  if (!b) return false;
  if (a === b) return true;
  if (a.items || b.items) return false;
  const x = a.value ?? a.encapsulated;
  const y = b.value ?? b.encapsulated;
  return !!x && !!y && x.equals(y);
}

/** Explains one file (Part-10 bytes) under a configuration. */
export function explainFile(config: RouterConfig, salt: string, bytes: Buffer, callingAeTitle: string | undefined, showPhi: boolean): ExplainReport {
  const pipeline = new DeidPipeline(config, salt);
  const input = pipeline.read({ kind: 'file', bytes });
  const { by } = matchStation(config, callingAeTitle, input);
  const r = resolveStudy(config, callingAeTitle, input);
  const tagName = nameOf(r.station.tagForStudy);
  const study = {
    name: r.studyName, unknown: r.unknown,
    by: r.unknown
      ? `${tagName}${r.station.split !== null ? ` split on "${r.station.split}" index ${r.station.splitIndex}` : ''} names no configured study: ${r.study ? `${r.studyName} (unknownStudy: default)` : 'quarantined (unknownStudy: quarantine)'}`
      : `${tagName}${r.station.split !== null ? ` split on "${r.station.split}" index ${r.station.splitIndex}` : ''}`,
  };
  const report: ExplainReport = {
    station: { name: r.station.name, by },
    study,
    elements: [],
    added: [],
    phiGate: { mode: r.study?.phiGate ?? 'quarantine', hits: [] },
    burnedIn: r.study ? burnedInVerdict(input, r.study) : { decision: 'deliver' },
    verdict: { outcome: 'delivered' },
  };
  if (r.study) explainElements(report, input, pipeline.planFor(r.study), r.study, showPhi);
  try {
    const routed = pipeline.process({ kind: 'file', bytes }, callingAeTitle);
    if (routed.quarantine) report.verdict = { outcome: 'quarantined', stage: 'identify', reason: 'the study named by this image is not configured (unknownStudy: quarantine)' };
  } catch (e) {
    report.verdict = e instanceof ImageRejected
      ? { outcome: 'quarantined', stage: e.stage, reason: e.message, status: e.status }
      : { outcome: 'quarantined', stage: 'deidentify', reason: errorMessage(e) };
  }
  return report;
}

function explainElements(report: ExplainReport, input: DicomObject, plan: StudyPlan, study: StudyConfig, showPhi: boolean): void {
  const decisions = new Map<Element, { vr: string; op?: Op; output?: Element; note?: string }>();
  const output = deidentify(input, plan, (el, vr, op, out, note) => decisions.set(el, { vr, op, output: out, note }));
  if ((study.phiGate ?? 'quarantine') !== 'off') report.phiGate.hits = phiGate(input, output, plan);
  const decodeIn = textDecoderFor(elementString(findElement(input.dataset, 0x00080005)));
  const decodeOut = textDecoderFor(elementString(findElement(output.dataset, 0x00080005)));
  const outputs = new Set<Element>();
  const walk = (elements: readonly Element[], prefix: string, depth: number) => {
    for (const el of elements) {
      const d = decisions.get(el);
      const path = prefix + nameOf(el.tag);
      if (d) {
        if (d.output) outputs.add(d.output);
        const rule = d.note ?? (d.op ? ruleOf(el.tag, d.vr, d.op, plan) : '');
        report.elements.push({
          path, depth, tag: formatTag(el.tag), keyword: isPrivateTag(el.tag) ? 'private' : lookupTag(el.tag)?.keyword ?? 'unknown', vr: d.vr,
          action: actionOf(d.op, el, d.output), rule: d.note && isPrivateTag(el.tag) && d.note.startsWith('private data kept') ? privateRule(plan) : rule,
          before: show(el, d.vr, showPhi, decodeIn), after: same(el, d.output) ? 'unchanged' : show(d.output, d.vr, showPhi, decodeOut), changed: !same(el, d.output),
        });
      }
      // Items are listed below their sequence, whether or not the engine visited them (a removed
      // sequence's items are removed with it).
      if (el.items) {
        el.items.forEach((it, i) => {
          if (d && !d.output) removedWith(it.elements, `${path}[${i}].`, depth + 1, nameOf(el.tag));
          else walk(it.elements, `${path}[${i}].`, depth + 1);
        });
      }
    }
  };
  /** The contents of a removed sequence's items, at every depth. */
  const removedWith = (elements: readonly Element[], prefix: string, depth: number, sequence: string) => {
    for (const inner of elements) {
      const path = prefix + nameOf(inner.tag);
      report.elements.push({
        path, depth, tag: formatTag(inner.tag), keyword: isPrivateTag(inner.tag) ? 'private' : lookupTag(inner.tag)?.keyword ?? 'unknown',
        vr: inner.vr, action: 'delete', rule: `removed with ${sequence}`, before: show(inner, inner.vr, showPhi, decodeIn), after: 'removed', changed: true,
      });
      inner.items?.forEach((it, i) => removedWith(it.elements, `${path}[${i}].`, depth + 1, sequence));
    }
  };
  // The engine may take SOP Class/Instance from the file meta when the dataset lacks them.
  const traced = [...decisions.keys()];
  const inTree = new Set<Element>();
  const mark = (els: readonly Element[]) => { for (const e of els) { inTree.add(e); for (const it of e.items ?? []) mark(it.elements); } };
  mark(input.dataset);
  const adopted = traced.filter((e) => !inTree.has(e));
  walk([...input.dataset, ...adopted].sort((a, b) => a.tag - b.tag), '', 0);
  for (const e of output.dataset) {
    if (outputs.has(e)) continue;
    const vr = e.vr;
    report.added.push({ tag: formatTag(e.tag), keyword: lookupTag(e.tag)?.keyword ?? 'unknown', vr, value: show(e, vr, true, decodeOut) });
  }
}

function privateRule(plan: StudyPlan): string {
  return plan.removePrivate ? `KeepPrivateTags (${plan.keepPrivate.map((k) => k.creator).join(', ')})` : 'RemovePrivateTags: false';
}

/** The text form. */
export function formatExplain(file: string, r: ExplainReport, showPhi: boolean): string {
  const lines: string[] = [];
  lines.push(`file: ${file}`);
  lines.push(`station: ${r.station.name} (by ${r.station.by})`);
  lines.push(`study: ${r.study.name} (${r.study.unknown ? '' : 'from '}${r.study.by})`);
  if (!showPhi) lines.push('values are masked; --show-phi shows them');
  lines.push('');
  const widths = [0, 0, 0, 0];
  const rows = r.elements.map((e) => [`${'  '.repeat(e.depth)}${e.tag} ${e.keyword}`, e.vr, e.action, e.rule, `${e.before} -> ${e.after}`]);
  for (const row of rows) for (let i = 0; i < 4; i++) widths[i] = Math.max(widths[i], row[i].length);
  lines.push(['element'.padEnd(widths[0]), 'VR'.padEnd(widths[1]), 'action'.padEnd(widths[2]), 'rule'.padEnd(widths[3]), 'before -> after'].join('  '));
  for (const row of rows) lines.push(row.map((c, i) => (i < 4 ? c.padEnd(widths[i]) : c)).join('  '));
  if (r.added.length) {
    lines.push('');
    lines.push('added by the router:');
    for (const a of r.added) lines.push(`  ${a.tag} ${a.keyword} ${a.vr} ${a.value}`);
  }
  lines.push('');
  const hits = r.phiGate.hits.map((h) => `${h.path} holds the ${h.kind}`);
  lines.push(`PHI gate (${r.phiGate.mode}): ${r.phiGate.mode === 'off' ? 'not run' : hits.length ? `${hits.length} finding${hits.length === 1 ? '' : 's'}: ${hits.join('; ')}` : 'no identifier of the input found in the output'}`);
  lines.push(`burned-in annotation: ${r.burnedIn.decision}${r.burnedIn.reason ? ` (${r.burnedIn.reason})` : ' (nothing calls for a policy)'}`);
  lines.push(`verdict: ${r.verdict.outcome === 'delivered' ? 'delivered' : `quarantined at ${r.verdict.stage}: ${r.verdict.reason}`}`);
  return lines.join('\n') + '\n';
}
