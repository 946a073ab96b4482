/**
 * One replication connection after startup: the commands of a physical
 * walsender, answered the way PostgreSQL 15 answers them (column names,
 * types, tags, SQLSTATEs), because pg_receivewal and the walreceiver check
 * them. START_REPLICATION hands the connection to a WalSender until the copy
 * ends, then the connection takes commands again (a standby following a
 * timeline switch sends IDENTIFY_SYSTEM and START_REPLICATION once more on
 * the same connection).
 */
import { formatLsn, historyFileName, segmentFileName, segmentNumber, type Lsn } from '../lsn.js';
import { parseReplicationCommand, type ReplicationCommand } from '../protocol/commands.js';
import { PgError, ProtocolError, SQLSTATE } from '../protocol/errors.js';
import { backend } from '../protocol/serializer.js';
import type { ServerConnection, StartupInfo } from '../server/connection.js';
import {
  createReplicationSlotResult,
  identifySystemResult,
  nextTimelineRows,
  readReplicationSlotResult,
  segmentSizeText,
  showResult,
  timelineHistoryResult,
} from '../server/walsender.js';
import type { Logger } from '../log.js';
import { WalSender, type SenderConfig } from './send_wal.js';
import { SLOT_NAME_RE, type Slot, type Stream } from '../stream/stream.js';

export const RECOVERY_APPLICATION_NAMES = ['walkeeper_recovery', 'wal_proposer_recovery'];

/** Recovery clients (a peer catching up) get all local WAL up to flush_lsn, not just up to commit_lsn. */
export function isRecoveryClient(startup: StartupInfo): boolean {
  const r = startup.options.recovery?.toLowerCase();
  return RECOVERY_APPLICATION_NAMES.includes(startup.applicationName) || r === 'on' || r === 'true' || r === '1' || r === 'yes';
}

export interface SessionHooks {
  /** Called when a sender starts/ends, so the node can reach it (shutdown, cancel, stream end). */
  senderStarted(s: WalSender): void;
  senderEnded(s: WalSender): void;
}

export class ReplicationSession {
  private readonly recovery: boolean;
  private readonly log: Logger;
  private readonly tempSlots = new Set<string>();
  private sender: WalSender | null = null;

  constructor(
    private readonly conn: ServerConnection,
    private readonly startup: StartupInfo,
    private readonly stream: Stream,
    private readonly serverVersion: string,
    private readonly cfg: SenderConfig,
    private readonly hooks: SessionHooks,
    log: Logger,
  ) {
    this.recovery = isRecoveryClient(startup);
    this.log = log;
  }

  get currentSender(): WalSender | null {
    return this.sender;
  }

  /** Reads and runs commands until the client leaves. */
  async run(): Promise<void> {
    try {
      for (;;) {
        const msg = await this.conn.nextMessage();
        if (!msg) return;
        switch (msg.type) {
          case 'query':
            await this.query(msg.sql);
            break;
          case 'terminate':
            this.conn.close();
            return;
          case 'copyData':
          case 'copyDone':
          case 'copyFail':
            // Outside COPY these are ignored, as PostgreSQL's backend does.
            break;
          case 'other':
            if (msg.code === 'S') {
              this.conn.write(backend.readyForQuery('I'));
            } else if ('PBEDCH'.includes(msg.code)) {
              if (msg.code === 'P') this.conn.sendError(new PgError(SQLSTATE.PROTOCOL_VIOLATION, 'extended query protocol not supported in a replication connection'));
            } else {
              this.conn.fatal(new ProtocolError(`invalid frontend message type ${msg.code.charCodeAt(0)}`));
              return;
            }
            break;
          default:
            this.conn.fatal(new ProtocolError(`unexpected message type "${msg.type}"`));
            return;
        }
      }
    } finally {
      for (const name of this.tempSlots) this.stream.dropSlot(name);
    }
  }

  private send(...bufs: Buffer[]): void {
    this.conn.write(bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs));
  }

  private async query(sql: string): Promise<void> {
    let cmd: ReplicationCommand;
    try {
      cmd = parseReplicationCommand(sql);
      this.log.debug({ command: sql }, 'received replication command');
      await this.execute(cmd);
    } catch (err) {
      if (!(err instanceof PgError)) throw err;
      this.log.info({ code: err.code, command: sql.slice(0, 200) }, err.message);
      this.conn.sendError(err);
      if (err.severity === 'FATAL') return;
    }
    this.send(backend.readyForQuery('I'));
  }

  private async execute(cmd: ReplicationCommand): Promise<void> {
    const s = this.stream;
    switch (cmd.kind) {
      // PostgreSQL 15 answers an empty query like SQL: its scanner finds no replication command.
      case 'empty':
      case 'sql':
        throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'cannot execute SQL commands in WAL sender for physical replication');
      case 'base_backup':
        throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'BASE_BACKUP is not supported by walkeeper', { hint: 'Take base backups from the primary; walkeeper serves its WAL.' });
      case 'identify_system': {
        // Neon fix: regular clients learn commit_lsn (what they may be sent), recovery clients flush_lsn.
        this.send(identifySystemResult(s.systemId, s.tli, this.recovery ? s.flushLsn : s.commitLsn));
        return;
      }
      case 'show':
        return this.show(cmd.name);
      case 'timeline_history': {
        const name = historyFileName(cmd.tli);
        const content = s.timelineEnd(cmd.tli) === undefined || cmd.tli === 1 ? null : await s.historyFile(cmd.tli);
        if (content === null) throw new PgError(SQLSTATE.UNDEFINED_FILE, `could not open file "pg_wal/${name}": No such file or directory`);
        this.send(timelineHistoryResult(name, content));
        return;
      }
      case 'read_replication_slot': {
        checkSlotName(cmd.slot);
        this.send(readReplicationSlotResult(s.slots.get(cmd.slot) ?? null));
        return;
      }
      case 'create_replication_slot': {
        if (cmd.logical) throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'logical replication slots are not supported by walkeeper');
        checkSlotName(cmd.slot);
        if (s.slots.has(cmd.slot)) throw new PgError(SQLSTATE.DUPLICATE_OBJECT, `replication slot "${cmd.slot}" already exists`);
        s.createSlot(cmd.slot, { temporary: cmd.temporary, reserveWal: cmd.reserveWal });
        if (cmd.temporary) this.tempSlots.add(cmd.slot);
        this.send(createReplicationSlotResult(cmd.slot));
        return;
      }
      case 'drop_replication_slot': {
        checkSlotName(cmd.slot);
        const slot = s.slots.get(cmd.slot);
        if (!slot) throw new PgError(SQLSTATE.UNDEFINED_OBJECT, `replication slot "${cmd.slot}" does not exist`);
        if (slot.activeBy) throw new PgError(SQLSTATE.OBJECT_IN_USE, `replication slot "${cmd.slot}" is active for ${slot.activeBy.name}`);
        s.dropSlot(cmd.slot);
        this.tempSlots.delete(cmd.slot);
        this.send(backend.commandComplete('DROP_REPLICATION_SLOT'));
        return;
      }
      case 'start_replication':
        if (cmd.logical) throw new PgError(SQLSTATE.FEATURE_NOT_SUPPORTED, 'logical replication is not supported by walkeeper');
        return this.startReplication(cmd.start, cmd.tli, cmd.slot);
    }
  }

  private show(name: string): void {
    const s = this.stream;
    const values: Record<string, string> = {
      wal_segment_size: segmentSizeText(s.segmentSize),
      data_directory_mode: '0700',
      server_version: this.serverVersion,
      server_version_num: String(s.pgVersion * 10000),
      integer_datetimes: 'on',
      wal_block_size: '8192',
      server_encoding: 'SQL_ASCII',
      timezone: 'UTC',
    };
    const v = values[name.toLowerCase()];
    if (v === undefined) throw new PgError(SQLSTATE.UNDEFINED_OBJECT, `unrecognized configuration parameter "${name}"`);
    this.send(showResult(name.toLowerCase(), v));
  }

  private async startReplication(start: Lsn, requestedTli: number | null, slotName: string | null): Promise<void> {
    const s = this.stream;
    if (s.state !== 'active') throw new PgError(SQLSTATE.CANNOT_CONNECT_NOW, `stream "${s.name}" is ${s.state}`);
    let slot: Slot | null = null;
    if (slotName !== null) {
      checkSlotName(slotName);
      slot = s.slots.get(slotName) ?? null;
      if (!slot) throw new PgError(SQLSTATE.UNDEFINED_OBJECT, `replication slot "${slotName}" does not exist`);
      if (slot.activeBy) throw new PgError(SQLSTATE.OBJECT_IN_USE, `replication slot "${slotName}" is active for ${slot.activeBy.name}`);
    }
    const tli = requestedTli ?? s.tli;
    const tliEnd = s.timelineEnd(tli);
    if (tliEnd === undefined) throw new PgError(SQLSTATE.INTERNAL_ERROR, `requested timeline ${tli} is not in this server's history`);
    if (tliEnd !== null) {
      if (start > tliEnd) {
        throw new PgError(SQLSTATE.INTERNAL_ERROR, `requested starting point ${formatLsn(start)} on timeline ${tli} is not in this server's history`, {
          detail: `This server's history forked from timeline ${tli} at ${formatLsn(tliEnd)}.`,
        });
      }
      if (start === tliEnd) {
        // Nothing to stream on that timeline: no COPY at all, just where the next one starts.
        const next = s.nextTimeline(tli)!;
        this.send(nextTimelineRows(next.tli, next.start), backend.commandComplete('START_STREAMING'), backend.commandComplete('START_REPLICATION'));
        return;
      }
    }
    const clientLog = this.log.child({ start: formatLsn(start), tli, slot: slotName ?? undefined, recovery: this.recovery || undefined });
    const replica = s.replicas.register({
      applicationName: this.startup.applicationName,
      address: this.startup.address,
      recovery: this.recovery,
      slot: slotName,
      tli,
      startLsn: start,
    });
    if (slot) slot.activeBy = replica;
    const sender = new WalSender(s, this.conn, replica, { start, tli, slot, recovery: this.recovery }, this.cfg, clientLog);
    this.sender = sender;
    this.hooks.senderStarted(sender);
    clientLog.info('START_REPLICATION');
    try {
      // The end of the WAL we hold: a start beyond it is an error, a start
      // between commit_lsn and it just waits for commit_lsn to get there.
      const end = tliEnd ?? s.flushLsn;
      const oldest = s.oldestLsn;
      const preflight = (): PgError | null => {
        // As PostgreSQL does, these are reported after CopyBothResponse.
        if (start > end) {
          return new PgError(SQLSTATE.INTERNAL_ERROR, `requested starting point ${formatLsn(start)} is ahead of the WAL flush position of this server ${formatLsn(end)}`);
        }
        // Below the oldest local segment: served from object storage when it is there (read-through).
        if ((oldest === null || start < oldest) && !s.servedFromArchive(start)) {
          const name = segmentFileName(tli, segmentNumber(start, s.segmentSize), s.segmentSize);
          return new PgError(SQLSTATE.UNDEFINED_FILE, `requested WAL segment ${name} has already been removed`);
        }
        return null;
      };
      const early = preflight();
      if (early) {
        this.send(backend.copyBothResponse(), backend.errorResponse(early));
        clientLog.warn({ code: early.code }, early.message);
        return;
      }
      const r = await sender.run();
      if (r.kind === 'done') this.send(backend.commandComplete('START_REPLICATION'));
      clientLog.info({ sent: formatLsn(sender.sentLsn), end: r.kind }, 'replication ended');
    } finally {
      s.replicas.unregister(replica);
      if (slot && slot.activeBy === replica) slot.activeBy = null;
      this.sender = null;
      this.hooks.senderEnded(sender);
    }
  }
}

function checkSlotName(name: string): void {
  if (!SLOT_NAME_RE.test(name)) {
    throw new PgError(SQLSTATE.INVALID_NAME, `replication slot name "${name}" contains invalid character`, {
      hint: 'Replication slot names may only contain lower case letters, numbers, and the underscore character.',
    });
  }
}
