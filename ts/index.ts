/**
 * walkeeper as a library. The node (`startNode`) and the receiver
 * (`WalReceiver`) are added by their issues; what exists now is the WAL
 * core: LSN helpers, the segment store, the end-of-WAL scan and the control
 * file.
 */
export * from './lsn.js';
export { native, platformTriple, type ScanResult, type ScanOptions, type SegmentInfo, type StoreState } from './native.js';
export { WalStore, findEndOfWal, XLOGDATA_HEADER_SIZE, MAX_SEND_SIZE, type FrameRequest } from './node/wal_storage.js';
export { readControlFile, writeControlFile, encodeControl, decodeControl, CONTROL_FILE_NAME, type ControlData, type SlotState } from './node/control_file.js';
