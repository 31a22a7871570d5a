// `spool`: what is waiting to be forwarded, and what gave up, per DICOM destination.
// `spool retry` puts the dead letters back in the queue (a running router picks them up on its
// next scan of the spool folder).
import type { RouterConfig } from '../config/types';
import { Spool } from '../deliver/spool';
import { displayUrl } from '../deliver/dicomweb-url';

function age(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

export async function runSpool(c: RouterConfig, sub: string | undefined, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  if (sub !== undefined && sub !== 'retry' && sub !== 'list') {
    process.stderr.write(`dicom-deid-router: spool: unknown subcommand "${sub}" (list, retry)\n`);
    return 2;
  }
  const dicom = [...c.destinations.values()].filter((d) => d.type !== 'folder');
  if (!dicom.length) {
    out.write('no DICOM or DICOMweb destinations configured: nothing is spooled\n');
    return 0;
  }
  for (const d of dicom) {
    const spool = new Spool(c.stateDir, d.name);
    if (sub === 'retry') {
      const n = await spool.retryDeadLetters();
      out.write(`${d.name}: ${n} dead letter${n === 1 ? '' : 's'} re-queued\n`);
      continue;
    }
    const b = await spool.backlog();
    const dead = await spool.listDeadLetters();
    const where = d.type === 'dicom' ? `${d.aeTitle}@${d.host}:${d.port}` : d.type === 'dicomweb' ? `STOW-RS ${displayUrl(d.url)}` : '';
    out.write(`${d.name} (${where}): backlog ${b.count} image${b.count === 1 ? '' : 's'}, ${(b.bytes / 1e6).toFixed(1)} MB` +
      `${b.count ? `, oldest ${age(b.oldestAgeMs)}` : ''}; dead letters ${dead.length}\n`);
    for (const x of dead) {
      const r = x.reason;
      out.write(`  dead: ${r?.sopInstanceUid ?? x.id} status ${r?.statusHex ?? 'none'} after ${r?.attempts ?? '?'} attempts: ${r?.message ?? 'no reason recorded'}\n`);
    }
  }
  return 0;
}
