export type { StoreRequest, StoreHandler, StoreStart, DatasetSink, AssociationPolicy, ScpOptions, RunningScp } from './types';
export { startStorageScp, STATUS_SUCCESS, STATUS_PROCESSING_FAILURE, STATUS_SOP_CLASS_NOT_SUPPORTED } from './scp';
export { silenceDimseLibraries } from './logging';
export {
  PASS_THROUGH_TRANSFER_SYNTAXES,
  VERIFICATION_SOP_CLASS,
  chooseTransferSyntax,
  isStorageSopClass,
  isAcceptedAbstractSyntax,
} from './syntaxes';
export { PduFramer, PduFramingError } from './framer';
export type { ScpStats, RefusalKind } from './stats';
export { BufferedDatasets, DEFAULT_NETWORK_LIMITS, MAX_DATASET_BYTES, MIN_PDU_BYTES, MAX_PDU_BYTES } from './limits';
export type { NetworkLimits } from './limits';
