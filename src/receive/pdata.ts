// P-DATA-TF handling of the storage SCP (PS3.8 9.3.5, PS3.7 for the DIMSE messages): PDVs are split
// into command and dataset fragments per message; the command set is decoded here (a handful of
// group 0000 elements), and each dataset fragment goes to the message's DatasetSink as it arrives,
// as a view into the PDU (no copy, nothing accumulated). dcmjs-dimse sees only the association PDUs.
import { COMMAND, parseCommand, type CommandInfo } from './dimse-guard';
import type { DatasetSink } from './types';


export interface PDataHandler {
  /** A C-STORE-RQ whose dataset follows: the sink that receives it. */
  beginStore(pcId: number, cmd: CommandInfo): DatasetSink;
  /** The last fragment of a C-STORE dataset arrived. */
  endStore(pcId: number, cmd: CommandInfo, sink: DatasetSink): void;
  /** A complete command without a dataset (C-ECHO-RQ, or any other). */
  command(pcId: number, cmd: CommandInfo): void;
  /** A command with a dataset that is not a C-STORE: its dataset is read and dropped, then it is answered. */
  unsupported(pcId: number, cmd: CommandInfo): void;
  /** A complete N-ACTION-RQ with its dataset (storage commitment). */
  action?(pcId: number, cmd: CommandInfo, dataset: Buffer): void;
  /** A response to a request we sent (N-EVENT-REPORT-RSP); a dataset it carries is read and dropped. */
  response?(pcId: number, cmd: CommandInfo): void;
  /** The peer broke the protocol: abort the association. */
  protocolError(reason: string): void;
}

class DiscardSink implements DatasetSink {
  backlogBytes = 0;
  write(): void {}
  whenBelow(): Promise<void> {
    return Promise.resolve();
  }
  end(): Promise<number> {
    return Promise.resolve(0);
  }
  abort(): void {}
}

export class PDataReceiver {
  private commandFragments: Buffer[] = [];
  private commandPc = -1;
  /** The message whose dataset is arriving. */
  private current: { pcId: number; cmd: CommandInfo; sink: DatasetSink; store: boolean; parts?: Buffer[]; response?: true } | undefined;
  /** Dataset bytes received, over all messages. */
  bytes = 0;

  constructor(private readonly h: PDataHandler) {}

  /** The sink receiving a dataset right now, if any (to abort it when the association ends). */
  get receiving(): DatasetSink | undefined {
    return this.current?.store ? this.current.sink : undefined;
  }

  /** One whole P-DATA-TF PDU, header included. */
  onPdu(pdu: Buffer): void {
    let pos = 6;
    const end = pdu.length;
    if (end - pos < 6) return this.h.protocolError('P-DATA-TF without PDV');
    while (pos < end) {
      if (end - pos < 6) return this.h.protocolError('truncated PDV item');
      const len = pdu.readUInt32BE(pos);
      if (len < 2 || pos + 4 + len > end) return this.h.protocolError('PDV item length runs past its PDU');
      const pcId = pdu[pos + 4];
      const control = pdu[pos + 5];
      const fragment = pdu.subarray(pos + 6, pos + 4 + len);
      pos += 4 + len;
      const last = (control & 2) !== 0;
      if (control & 1) {
        if (this.current) return this.h.protocolError('command fragment while a dataset is arriving');
        if (this.commandFragments.length && pcId !== this.commandPc) return this.h.protocolError('command fragments on two presentation contexts');
        this.commandPc = pcId;
        this.commandFragments.push(fragment);
        if (last) {
          const bytes = this.commandFragments.length === 1 ? this.commandFragments[0] : Buffer.concat(this.commandFragments);
          this.commandFragments = [];
          const cmd = parseCommand(bytes);
          if (!cmd) return this.h.protocolError('command set without a Command Field');
          this.onCommand(pcId, cmd);
        }
      } else {
        const cur = this.current;
        if (!cur) return this.h.protocolError('dataset fragment without a command');
        if (pcId !== cur.pcId) return this.h.protocolError('dataset fragment on another presentation context than its command');
        this.bytes += fragment.length;
        if (cur.parts) cur.parts.push(Buffer.from(fragment));
        else cur.sink.write(fragment);
        if (last) {
          this.current = undefined;
          if (cur.store) this.h.endStore(cur.pcId, cur.cmd, cur.sink);
          else if (cur.response) this.h.response?.(cur.pcId, cur.cmd);
          else if (cur.parts && this.h.action) this.h.action(cur.pcId, cur.cmd, Buffer.concat(cur.parts));
          else this.h.unsupported(cur.pcId, cur.cmd);
        }
      }
    }
  }

  /** The DimseGuard dropped the rest of the dataset being received (over the size limit): abort its sink. */
  dropDataset(): DatasetSink | undefined {
    const cur = this.current;
    this.current = undefined;
    if (cur?.store) cur.sink.abort();
    return cur?.store ? cur.sink : undefined;
  }

  /** The DimseGuard dropped a command whose first fragments were already passed on. */
  forgetCommand(): void {
    this.commandFragments = [];
  }

  private onCommand(pcId: number, cmd: CommandInfo): void {
    if (cmd.field === COMMAND.NEventReportRsp && this.h.response) {
      if (cmd.hasDataset) this.current = { pcId, cmd, sink: new DiscardSink(), store: false, response: true };
      else this.h.response(pcId, cmd);
    } else if (cmd.field === COMMAND.CStoreRq && cmd.hasDataset) {
      this.current = { pcId, cmd, sink: this.h.beginStore(pcId, cmd), store: true };
    } else if (cmd.field === COMMAND.NActionRq && cmd.hasDataset && this.h.action) {
      this.current = { pcId, cmd, sink: new DiscardSink(), store: false, parts: [] };
    } else if (cmd.hasDataset) {
      this.current = { pcId, cmd, sink: new DiscardSink(), store: false };
    } else {
      this.h.command(pcId, cmd);
    }
  }
}
