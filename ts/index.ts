/**
 * walkeeper as a library: `startNode` runs a node in this process; the WAL
 * core (LSN helpers, the segment store, the end-of-WAL scan, the control
 * file) is here for tools. The receiver (`WalReceiver`) comes with its issue.
 */
export { startNode, WalkeeperNode, type NodeOptions } from './node/node.js';
export { Stream, type Slot } from './stream/stream.js';
export { importWal, type ImportOptions, type ImportResult } from './wal/import.js';
export { WalReceiver, type WalChunk, type WalReceiverOptions, type SwitchEvent } from './receiver/receiver.js';
export { ConnectionPolicy, describeReason, type PolicyConfig, type SwitchReason, type CandidateStatus } from './receiver/policy.js';
export { HttpStatusSource, type CandidateSource } from './receiver/sources.js';
export type { NodeStatus } from './member_status.js';
export * from './lsn.js';
export { native, platformTriple, type ScanResult, type ScanOptions, type SegmentInfo, type StoreState } from './native/binding.js';
export { WalStore, findEndOfWal, XLOGDATA_HEADER_SIZE, MAX_SEND_SIZE, type FrameRequest } from './wal/wal_storage.js';
export { readControlFile, writeControlFile, encodeControl, decodeControl, CONTROL_FILE_NAME, type ControlData, type SlotState } from './wal/control_file.js';
