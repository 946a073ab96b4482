/**
 * Logging. JSON lines (pino) so that operators can ship them; every line
 * about a stream carries `stream`, and every line about a connection carries
 * `client` (application name and address), through child loggers. On a
 * terminal the same records are printed as readable lines instead
 * (`WALKEEPER_LOG_FORMAT=json` keeps JSON there too).
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export interface LogOptions {
  level?: string;
  /** Where lines go; default stderr. */
  destination?: NodeJS.WritableStream;
}

const LEVEL_TAG: Record<string, string> = { trace: 'TRACE', debug: 'DEBUG', info: 'INFO ', warn: 'WARN ', error: 'ERROR', fatal: 'FATAL' };

/**
 * One JSON log record as a readable line: time, level, the stream and
 * client it is about, the message, then the other fields as key=value.
 */
export function readableLine(rec: Record<string, unknown>): string {
  const { time, level, msg, pid: _pid, stream, client, node_id, ...rest } = rec;
  const t = typeof time === 'string' ? time.slice(11, 23) : '';
  const who = [node_id !== undefined ? `node ${String(node_id)}` : null, stream !== undefined ? `stream ${String(stream)}` : null, client !== undefined ? `client ${String(client)}` : null].filter(Boolean).join(' ');
  const kv = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/[\s"=]/.test(v) ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${t} ${LEVEL_TAG[String(level)] ?? String(level).toUpperCase()} ${who ? `[${who}] ` : ''}${String(msg ?? '')}${kv ? `  ${kv}` : ''}\n`;
}

/** A destination that turns pino's JSON lines into readable ones. */
function readableDestination(out: NodeJS.WritableStream): DestinationStream {
  return {
    write(chunk: string) {
      for (const line of chunk.split('\n')) {
        if (!line) continue;
        try {
          out.write(readableLine(JSON.parse(line) as Record<string, unknown>));
        } catch {
          out.write(`${line}\n`);
        }
      }
    },
  };
}

export function createLogger(opts: LogOptions = {}): Logger {
  const level = opts.level ?? process.env.WALKEEPER_LOG_LEVEL ?? 'info';
  const out = opts.destination ?? process.stderr;
  const readable = (out as { isTTY?: boolean }).isTTY === true && process.env.WALKEEPER_LOG_FORMAT !== 'json';
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    readable ? readableDestination(out) : (out as DestinationStream),
  );
}

/** A logger that drops everything (library use without a logger). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
