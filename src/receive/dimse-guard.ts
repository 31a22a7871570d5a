// Reads the PDV headers and command sets of every P-DATA-TF PDU before dcmjs-dimse does, and decides what the
// library may see. It enforces what the library does not:
// - the largest dataset (a C-STORE above limits.maxDatasetBytes is answered 0xA700 once its last fragment has
//   arrived; its data is dropped as it comes, and what the library already buffered is released at once);
// - DIMSE commands we do not provide (answered 0x0211 Unrecognized Operation, their dataset discarded unread)
//   and C-CANCEL (no response is due; dropped, so nothing waits on it), which the library left unanswered;
// - responses: only an N-EVENT-REPORT-RSP answering a report we sent on this association (awaitsResponse,
//   matched by Message ID Being Responded To) passes; any other response is a protocol error (A-ABORT);
// - PDVs that break PS3.8 (unknown presentation context, a command while a dataset is due, data before any
//   command, a PDV overrunning its PDU): an A-ABORT.
// Costs a few header reads per PDU; a PDU passed whole is not copied.

export const COMMAND = {
  CStoreRq: 0x0001,
  CEchoRq: 0x0030,
  CCancelRq: 0x0fff,
  /** Storage commitment request (PS3.4 J.3.2); let through only when the SCP provides it. */
  NActionRq: 0x0130,
  /** The answer to an N-EVENT-REPORT-RQ we sent on this association (a storage commitment result). */
  NEventReportRsp: 0x8100,
} as const;
/** Bit 15 of the Command Field marks a response. */
const RESPONSE_BIT = 0x8000;
const DATA_SET_TYPE_NONE = 0x0101;
/** A command set is a few hundred bytes; anything near this is not one. */
const MAX_COMMAND_BYTES = 64 * 1024;

export interface CommandInfo {
  field: number;
  /** Message ID (0000,0110), or for a response its Message ID Being Responded To (0000,0120). */
  messageId: number;
  /** Affected SOP Class UID (0000,0002), or the Requested one (0000,0003) of an N-ACTION. */
  sopClassUid: string;
  /** Affected SOP Instance UID (0000,1000), or the Requested one (0000,1001) of an N-ACTION. */
  sopInstanceUid: string;
  hasDataset: boolean;
  /** Status (0000,0900) of a response. */
  status?: number;
  /** Action Type ID (0000,1008) of an N-ACTION. */
  actionTypeId?: number;
}

export type GuardAction =
  /** End the association with an A-ABORT: the PDU is not acceptable. */
  | { kind: 'abort'; why: string }
  /** The C-STORE on pcId went over the dataset limit: forget what the library holds of it. */
  | { kind: 'dataset-too-large'; pcId: number; command: CommandInfo; bytes: number }
  /** The last fragment of that oversized dataset arrived: answer the C-STORE now. */
  | { kind: 'answer-too-large'; pcId: number; command: CommandInfo }
  /** A command we do not provide, complete (with its dataset, if any): answer 0x0211. */
  | { kind: 'unrecognized'; pcId: number; command: CommandInfo }
  /** A command was dropped after its first fragments reached the library: forget them. */
  | { kind: 'forget-partial-command' }
  | { kind: 'cancel'; command: CommandInfo };

/** Hand this PDU to the library: the PDU itself, or one rebuilt from the PDVs that pass. */
export interface PassStep {
  kind: 'pass';
  pdu: Buffer;
}

/** What to do with one PDU, in order. */
export type GuardStep = PassStep | GuardAction;

type DataMode = 'library' | 'too-large' | 'discard';

interface Pdv {
  start: number;
  end: number;
  pcId: number;
  command: boolean;
  last: boolean;
  value: Buffer;
}

export class DimseGuard {
  /** N-ACTION-RQ reaches the SCP (storage commitment is provided). */
  allowNAction = false;
  /** Whether a response is one we wait for (by command field and Message ID Being Responded To); any other
   * response is a protocol error. */
  awaitsResponse: (field: number, messageIdBeingRespondedTo: number) => boolean = () => false;

  private commandParts: Buffer[] = [];
  private commandBytes = 0;
  private commandPartsPassed = false;
  /** The message whose dataset is being received. */
  private current: { pcId: number; command: CommandInfo; mode: DataMode; bytes: number } | undefined;

  /** @param maxDatasetBytes the dataset limit now (it may depend on whether the dataset is being streamed) */
  constructor(
    private readonly maxDatasetBytes: () => number,
    private readonly isProposedContext: (pcId: number) => boolean,
  ) {}

  /** Bytes received so far of the dataset being received (0 between datasets). */
  get datasetBytes(): number {
    return this.current?.bytes ?? 0;
  }

  /** True while a dataset is being received (between its command and its last fragment). */
  get receivingDataset(): boolean {
    return this.current !== undefined;
  }

  /** The steps for one P-DATA-TF PDU (header included). PDVs that pass before an action reach the library
   * before it is taken. After an abort step, nothing else of this association may be processed. */
  inspect(pdu: Buffer): GuardStep[] {
    const pdvs = splitPdvs(pdu);
    if (typeof pdvs === 'string') return [{ kind: 'abort', why: pdvs }];
    const steps: GuardStep[] = [];
    let run: Pdv[] = [];
    const flush = (): void => {
      if (run.length === 0) return;
      steps.push({ kind: 'pass', pdu: run.length === pdvs.length ? pdu : rebuild(pdu, run) });
      run = [];
    };
    for (const pdv of pdvs) {
      if (!this.isProposedContext(pdv.pcId)) return [{ kind: 'abort', why: `PDV on presentation context ${pdv.pcId}, which was not proposed` }];
      const actions: GuardAction[] = [];
      const verdict = pdv.command ? this.onCommandPdv(pdv, actions) : this.onDataPdv(pdv, actions);
      if (verdict === 'abort') return actions;
      if (actions.length) flush();
      if (verdict === 'pass') run.push(pdv);
      steps.push(...actions);
    }
    flush();
    return steps;
  }

  private onCommandPdv(pdv: Pdv, actions: GuardAction[]): 'pass' | 'drop' | 'abort' {
    if (this.current) {
      actions.push({ kind: 'abort', why: 'command PDV while a dataset was due' });
      return 'abort';
    }
    this.commandBytes += pdv.value.length;
    if (this.commandBytes > MAX_COMMAND_BYTES) {
      actions.push({ kind: 'abort', why: `command set larger than ${MAX_COMMAND_BYTES} bytes` });
      return 'abort';
    }
    this.commandParts.push(pdv.value);
    if (!pdv.last) {
      // Fragments go on to the library; should the command turn out to be one we answer ourselves, the library
      // is told to forget them.
      this.commandPartsPassed = true;
      return 'pass';
    }
    const command = parseCommand(this.commandParts.length === 1 ? this.commandParts[0] : Buffer.concat(this.commandParts));
    const partsPassed = this.commandPartsPassed;
    this.commandParts = [];
    this.commandBytes = 0;
    this.commandPartsPassed = false;
    if (!command) {
      actions.push({ kind: 'abort', why: 'command set without a Command Field' });
      return 'abort';
    }
    if (command.field & RESPONSE_BIT) {
      if (command.field === COMMAND.NEventReportRsp && this.awaitsResponse(command.field, command.messageId)) {
        // Its Event Reply dataset, if any, is read and dropped by the P-DATA receiver.
        if (command.hasDataset) this.current = { pcId: pdv.pcId, command, mode: 'library', bytes: 0 };
        return 'pass';
      }
      actions.push({ kind: 'abort', why: `unexpected DIMSE response 0x${command.field.toString(16)}` });
      return 'abort';
    }
    if (command.field === COMMAND.CEchoRq && command.hasDataset) {
      // PS3.7 9.3.5: a C-ECHO carries no dataset; only C-STORE datasets may reach the library.
      actions.push({ kind: 'abort', why: 'C-ECHO-RQ announcing a dataset' });
      return 'abort';
    }
    if (command.field === COMMAND.CEchoRq || command.field === COMMAND.CStoreRq || (command.field === COMMAND.NActionRq && this.allowNAction)) {
      if (command.hasDataset) this.current = { pcId: pdv.pcId, command, mode: 'library', bytes: 0 };
      return 'pass';
    }
    if (partsPassed) actions.push({ kind: 'forget-partial-command' });
    if (command.field === COMMAND.CCancelRq) actions.push({ kind: 'cancel', command });
    else if (command.hasDataset) this.current = { pcId: pdv.pcId, command, mode: 'discard', bytes: 0 };
    else actions.push({ kind: 'unrecognized', pcId: pdv.pcId, command });
    return 'drop';
  }

  private onDataPdv(pdv: Pdv, actions: GuardAction[]): 'pass' | 'drop' | 'abort' {
    const cur = this.current;
    if (!cur) {
      actions.push({ kind: 'abort', why: 'data PDV without a command' });
      return 'abort';
    }
    if (pdv.pcId !== cur.pcId) {
      actions.push({ kind: 'abort', why: 'data PDV on another presentation context than its command' });
      return 'abort';
    }
    cur.bytes += pdv.value.length;
    if (cur.mode === 'library' && cur.bytes > this.maxDatasetBytes()) {
      cur.mode = 'too-large';
      actions.push({ kind: 'dataset-too-large', pcId: cur.pcId, command: cur.command, bytes: cur.bytes });
    }
    if (pdv.last) {
      this.current = undefined;
      if (cur.mode === 'too-large') actions.push({ kind: 'answer-too-large', pcId: cur.pcId, command: cur.command });
      if (cur.mode === 'discard') actions.push({ kind: 'unrecognized', pcId: cur.pcId, command: cur.command });
    }
    return cur.mode === 'library' ? 'pass' : 'drop';
  }
}

/** The PDVs of a P-DATA-TF PDU (header included), or what is wrong with them. */
function splitPdvs(pdu: Buffer): Pdv[] | string {
  const out: Pdv[] = [];
  let off = 6;
  if (pdu.length <= off) return 'P-DATA-TF without PDVs';
  while (off < pdu.length) {
    if (off + 6 > pdu.length) return 'truncated PDV header';
    const len = pdu.readUInt32BE(off);
    if (len < 2 || off + 4 + len > pdu.length) return 'PDV length overruns its PDU';
    const ctl = pdu[off + 5];
    out.push({ start: off, end: off + 4 + len, pcId: pdu[off + 4], command: (ctl & 1) === 1, last: (ctl & 2) === 2, value: pdu.subarray(off + 6, off + 4 + len) });
    off += 4 + len;
  }
  return out;
}

function rebuild(pdu: Buffer, pdvs: Pdv[]): Buffer {
  const size = pdvs.reduce((n, p) => n + (p.end - p.start), 0);
  const out = Buffer.allocUnsafe(6 + size);
  pdu.copy(out, 0, 0, 6);
  out.writeUInt32BE(size, 2);
  let off = 6;
  for (const p of pdvs) off += pdu.copy(out, off, p.start, p.end);
  return out;
}

/** The fields of an Implicit VR Little Endian command set we act on; undefined without a Command Field. */
export function parseCommand(cmd: Buffer): CommandInfo | undefined {
  let field: number | undefined;
  let messageId = 0;
  let sopClassUid = '';
  let sopInstanceUid = '';
  let dataSetType = DATA_SET_TYPE_NONE;
  let status: number | undefined;
  let actionTypeId: number | undefined;
  let off = 0;
  while (off + 8 <= cmd.length) {
    const group = cmd.readUInt16LE(off);
    const element = cmd.readUInt16LE(off + 2);
    const len = cmd.readUInt32LE(off + 4);
    const v = off + 8;
    if (group !== 0x0000 || v + len > cmd.length) break;
    if (element === 0x0100 && len >= 2) field = cmd.readUInt16LE(v);
    else if (element === 0x0110 && len >= 2) messageId = cmd.readUInt16LE(v);
    else if (element === 0x0120 && len >= 2 && messageId === 0) messageId = cmd.readUInt16LE(v);
    else if (element === 0x0800 && len >= 2) dataSetType = cmd.readUInt16LE(v);
    else if (element === 0x0900 && len >= 2) status = cmd.readUInt16LE(v);
    else if (element === 0x1008 && len >= 2) actionTypeId = cmd.readUInt16LE(v);
    else if (element === 0x0002 || element === 0x0003) sopClassUid = uid(cmd, v, len);
    else if (element === 0x1000 || element === 0x1001) sopInstanceUid = uid(cmd, v, len);
    off = v + len;
  }
  if (field === undefined) return undefined;
  return { field, messageId, sopClassUid, sopInstanceUid, hasDataset: dataSetType !== DATA_SET_TYPE_NONE, status, actionTypeId };
}

function uid(b: Buffer, at: number, len: number): string {
  return b.toString('latin1', at, at + Math.min(len, 64)).replace(/[\0 ]+$/, '');
}
