import { inflateRawSync } from 'zlib';

/** Markers planted by make-phi.ts (phiCorpusDir() in corpus.ts): none may survive de-identification. */
export const PHI_MARKERS: Buffer[] = [
  'ZZPHI', 'ZZPID', 'ZZACC', 'ZZINST', 'ZZREF', 'ZZSTN', 'STUDYA^T1', 'ZZDESC', 'ZZOTHERID', 'ZZISSUER',
  'ZZNEST', 'ZZPRIV', 'ZZRPID', 'ZZSPS', '19710203', '20230917',
].map((s) => Buffer.from(s, 'latin1')).concat([Buffer.from('MÜLLER', 'latin1'), Buffer.from('MÜLLER', 'utf8')]);

const DEFLATED_TS = Buffer.from('1.2.840.10008.1.2.1.99');

/** Bytes to scan: the file, plus its inflated dataset when the transfer syntax is deflated. */
export function scannableBytes(file: Buffer): Buffer {
  const head = file.subarray(0, Math.min(file.length, 2048));
  if (head.indexOf(DEFLATED_TS) < 0) return file;
  const metaLen = file.readUInt32LE(132 + 8);
  return Buffer.concat([file, inflateRawSync(file.subarray(132 + 12 + metaLen))]);
}

export function findLeaks(file: Buffer): string[] {
  const bytes = scannableBytes(file);
  return PHI_MARKERS.filter((m) => bytes.indexOf(m) >= 0).map((m) => m.toString('latin1'));
}
