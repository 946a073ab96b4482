/**
 * Logging. JSON lines (pino) so that operators can ship them; every line
 * about a stream carries `stream`, and every line about a connection carries
 * `client` (application name and address), through child loggers.
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export interface LogOptions {
  level?: string;
  /** Where lines go; default stderr. */
  destination?: NodeJS.WritableStream;
}

export function createLogger(opts: LogOptions = {}): Logger {
  const level = opts.level ?? process.env.WALKEEPER_LOG_LEVEL ?? 'info';
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    (opts.destination ?? process.stderr) as DestinationStream,
  );
}

/** A logger that drops everything (library use without a logger). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
