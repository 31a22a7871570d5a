// Which abstract and transfer syntaxes the storage SCP accepts.

export const VERIFICATION_SOP_CLASS = '1.2.840.10008.1.1';

/**
 * Transfer syntaxes we can pass through unchanged, i.e. accept as proposed. For each presentation context we
 * accept the FIRST proposed transfer syntax that is in this set (so a context proposing only its file's
 * compressed syntax, as dcmsend does, gets exactly that one).
 */
export const PASS_THROUGH_TRANSFER_SYNTAXES: ReadonlySet<string> = new Set([
  '1.2.840.10008.1.2.1', // Explicit VR Little Endian
  '1.2.840.10008.1.2', // Implicit VR Little Endian
  '1.2.840.10008.1.2.1.99', // Deflated Explicit VR Little Endian
  '1.2.840.10008.1.2.2', // Explicit VR Big Endian (retired)
  '1.2.840.10008.1.2.4.50', // JPEG Baseline (Process 1)
  '1.2.840.10008.1.2.4.51', // JPEG Extended (Process 2 & 4)
  '1.2.840.10008.1.2.4.57', // JPEG Lossless, Non-Hierarchical (Process 14)
  '1.2.840.10008.1.2.4.70', // JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [SV1])
  '1.2.840.10008.1.2.4.80', // JPEG-LS Lossless
  '1.2.840.10008.1.2.4.81', // JPEG-LS Lossy (Near-Lossless)
  '1.2.840.10008.1.2.4.90', // JPEG 2000 (Lossless Only)
  '1.2.840.10008.1.2.4.91', // JPEG 2000
  '1.2.840.10008.1.2.4.92', // JPEG 2000 Part 2 Multi-component (Lossless Only)
  '1.2.840.10008.1.2.4.93', // JPEG 2000 Part 2 Multi-component
  '1.2.840.10008.1.2.4.201', // High-Throughput JPEG 2000 (Lossless Only)
  '1.2.840.10008.1.2.4.202', // High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
  '1.2.840.10008.1.2.4.203', // High-Throughput JPEG 2000
  '1.2.840.10008.1.2.5', // RLE Lossless
]);

/** The first proposed transfer syntax that we can pass through, or undefined. */
export function chooseTransferSyntax(proposed: readonly string[]): string | undefined {
  for (const ts of proposed) {
    const t = ts.trim();
    if (PASS_THROUGH_TRANSFER_SYNTAXES.has(t)) return t;
  }
  return undefined;
}

/**
 * Storage SOP classes outside the 1.2.840.10008.5.1.4.1.1. branch (PS3.4 Annex B / GG / HH / II / KK / Z).
 * Everything under 1.2.840.10008.5.1.4.1.1. is a storage SOP class.
 */
const OTHER_STORAGE_SOP_CLASSES: ReadonlySet<string> = new Set([
  '1.2.840.10008.5.1.4.38.1', // Hanging Protocol Storage
  '1.2.840.10008.5.1.4.39.1', // Color Palette Storage
  '1.2.840.10008.5.1.4.43.1', // Generic Implant Template Storage
  '1.2.840.10008.5.1.4.44.1', // Implant Assembly Template Storage
  '1.2.840.10008.5.1.4.45.1', // Implant Template Group Storage
  '1.2.840.10008.5.1.4.34.7', // RT Beams Delivery Instruction Storage
  '1.2.840.10008.5.1.4.34.10', // RT Brachy Application Setup Delivery Instruction Storage
]);

const STORAGE_PREFIX = '1.2.840.10008.5.1.4.1.1.';

export function isStorageSopClass(uid: string): boolean {
  return (uid.startsWith(STORAGE_PREFIX) && uid.length > STORAGE_PREFIX.length) || OTHER_STORAGE_SOP_CLASSES.has(uid);
}

/** Abstract syntaxes the SCP accepts: Verification and every storage SOP class. */
export function isAcceptedAbstractSyntax(uid: string): boolean {
  return uid === VERIFICATION_SOP_CLASS || isStorageSopClass(uid);
}

/** Storage Commitment Push Model SOP Class and its well-known instance (PS3.4 J.3). */
export const STORAGE_COMMITMENT_SOP_CLASS = '1.2.840.10008.1.20.1';
export const STORAGE_COMMITMENT_SOP_INSTANCE = '1.2.840.10008.1.20.1.1';
