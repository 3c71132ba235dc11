/**
 * Structured logging on pino, in the record shape of the observability guide:
 *
 *   { "level", "timestamp", "service": {name, version, environment}, "process": {pid}, "module",
 *     "event": {type, message}, "correlation_id", "data", "exception"?: {type, message, stack} }
 *
 * with the level names of the guide's Python edition ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"; pino's
 * trace is "TRACE"), so log queries written for it keep matching.
 *
 * `configureLogging` builds one root pino logger (or wraps the user's); `getLogger(name)` returns an
 * `EventLogger` whose pino child (`.child({ module })`) is made once. Nothing here logs per routing call: the
 * periodic summary lives in performance-summary.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino, { type DestinationStream, type Logger } from 'pino';
import { packageVersion } from './package-version';
import { clearCorrelationId, getCorrelationId, setCorrelationId } from './correlation';
import type { LogEventType } from './log-events';

export { LogEvent, type LogEventType } from './log-events';
export {
  withCorrelationId,
  setCorrelationId,
  clearCorrelationId,
  getCorrelationId,
  newCorrelationId,
} from './correlation';

/** Level names accepted by {@link configureLogging}; the guide's Python names map onto pino's. */
export type LogLevelName = 'trace' | 'debug' | 'info' | 'warn' | 'warning' | 'error' | 'critical' | 'fatal' | 'silent';

export interface LoggingConfig {
  /** Lowest level written, case-insensitive ('INFO' works). Default 'info'. */
  level?: LogLevelName | Uppercase<LogLevelName>;
  /** 'json' (one record per line, default) or 'pretty' (one readable line per record, for a terminal). */
  format?: 'json' | 'pretty';
  /** Append records to this file (its folder is created) instead of stdout. */
  file?: string;
  /** `service.name`. Default 'dynamic-moe-router'. */
  serviceName?: string;
  /** `service.version`. Default: this package's version. */
  serviceVersion?: string;
  /** `service.environment`. Default: NODE_ENV, else 'development'. */
  environment?: string;
  /** Use this pino logger instead of building one; records then follow its level and timestamp settings. */
  logger?: Logger;
  /** Write to this stream instead of stdout or `file` (tests, custom transports). */
  destination?: DestinationStream;
  /** Write synchronously (default true): no record is lost if the process dies in native code. */
  sync?: boolean;
}

/** What one record may carry besides its event type and message. */
export interface LogOptions {
  /** Free-form structured context; becomes the record's `data`. */
  data?: Record<string, unknown>;
  /** The guide's name for {@link data} (`extra=`); used when `data` is absent. */
  extra?: Record<string, unknown>;
  /** An error; becomes the record's `exception`. */
  error?: unknown;
  /** The guide's name for {@link error} (`exception=`); used when `error` is absent. */
  exception?: unknown;
}

/** The `level` written for each pino level: the guide's Python names. */
const LEVEL_LABELS: Readonly<Record<string, string>> = {
  trace: 'TRACE',
  debug: 'DEBUG',
  info: 'INFO',
  warn: 'WARNING',
  error: 'ERROR',
  fatal: 'CRITICAL',
};

/** The shape of `exception` in a record. */
export interface LoggedException {
  type: string;
  message: string;
  stack: string | null;
}

interface LoggingState {
  root: Logger;
  generation: number;
  children: Map<string, Logger>;
  /** A file destination opened here (closed when the set-up is replaced); never stdout or the user's own. */
  ownFile: SonicBoom | undefined;
  /** Whether a failed write was reported already (once per set-up). */
  failureReported: boolean;
  /** Set when the file or stdout opened here failed: records are dropped from then on (nothing piles up). */
  failed: boolean;
}

type SonicBoom = ReturnType<typeof pino.destination>;

let state: LoggingState | undefined;
let generation = 0;

/**
 * Sets up logging for the process and returns the root logger. Calling it again replaces the setup; loggers from
 * {@link getLogger} follow the new one.
 */
export function configureLogging(config: LoggingConfig = {}): EventLogger {
  const level = pinoLevel(config.level ?? 'info');
  const service = {
    name: config.serviceName ?? 'dynamic-moe-router',
    version: config.serviceVersion ?? packageVersion(),
    environment: config.environment ?? process.env.NODE_ENV ?? 'development',
  };
  const bindings = { service, process: { pid: process.pid } };
  let root: Logger;
  let ownFile: SonicBoom | undefined;
  const gen = generation + 1;
  if (config.logger) {
    root = config.logger.child(bindings);
  } else {
    const sync = config.sync ?? true;
    // A log file is opened here, synchronously, in either mode: a bad path is an error of this call, not an
    // 'error' event later (sonic-boom opens asynchronously otherwise, and a stream that never opened throws at exit).
    const opened =
      config.destination === undefined
        ? pino.destination({ dest: config.file ? openLogFile(config.file) : 1, sync })
        : undefined;
    if (config.file && opened) ownFile = opened;
    // A failing file or stdout (a full disk, a closed pipe) must not take the process down through an unhandled
    // 'error' event, nor pile records up: it is dropped (destroyed, so that pino's exit flush skips it), its
    // records too, and that is said once.
    opened?.on('error', (error: Error) => {
      if (state?.generation === gen) state.failed = true;
      reportLogFailure(error, gen);
      try {
        opened.destroy();
      } catch {
        // already closed
      }
    });
    let destination: DestinationStream = config.destination ?? opened!;
    if (config.format === 'pretty') destination = prettyDestination(destination);
    root = pino(
      {
        level,
        base: bindings,
        timestamp: () => `,"timestamp":"${new Date().toISOString()}"`,
        formatters: { level: (label) => ({ level: LEVEL_LABELS[label] ?? label.toUpperCase() }) },
      },
      destination,
    );
  }
  const previous = state;
  generation = gen;
  state = { root, generation, children: new Map(), ownFile, failureReported: false, failed: false };
  if (previous?.ownFile) closeQuietly(previous.ownFile, previous.failed);
  return new EventLogger(config.serviceName ?? 'root');
}

/** Opens (creating its folder) a log file for appending; says which file when it cannot. */
function openLogFile(file: string): number {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    return fs.openSync(file, 'a');
  } catch (error) {
    throw new Error(`configureLogging: cannot open the log file ${file}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * Closes a file destination this module opened (its descriptor would leak otherwise). end() writes what waits and
 * then closes, asynchronously; a destination that failed is dropped instead (sonic-boom's flushSync would retry a
 * failed write forever).
 */
function closeQuietly(file: SonicBoom, failed: boolean): void {
  try {
    if (failed) file.destroy();
    else file.end();
  } catch {
    // already closed
  }
}

/** Reports the first failed write of a set-up (`gen`) as a process warning; the records themselves are dropped. */
function reportLogFailure(error: unknown, gen: number): void {
  if (!state || state.generation !== gen || state.failureReported) return;
  state.failureReported = true;
  process.emitWarning(
    `dynamic-moe-router-kit: writing log records failed, they are dropped until logging is configured again: ${
      (error as Error)?.message ?? String(error)
    }`,
    { code: 'MOE_LOG' },
  );
}

/** A logger for one module. Before {@link configureLogging} it uses the defaults (JSON, info, stdout). */
export function getLogger(name: string): EventLogger {
  return new EventLogger(name);
}

/** Flushes the current destination (needed only with `sync: false`). */
export function flushLogs(): void {
  state?.root.flush();
}

/** Logs guide-shaped records for one module. Cheap to create; its pino child is made once per configuration. */
export class EventLogger {
  private child: Logger | undefined;
  private childGeneration = -1;

  /** @param module the `module` field of its records. */
  constructor(readonly module: string) {}

  /** The underlying pino child logger (with `module` bound). */
  get pino(): Logger {
    if (!state) configureLogging();
    const s = state!;
    if (this.childGeneration !== s.generation || !this.child) {
      let child = s.children.get(this.module);
      if (!child) {
        child = s.root.child({ module: this.module });
        s.children.set(this.module, child);
      }
      this.child = child;
      this.childGeneration = s.generation;
    }
    return this.child;
  }

  /** Whether a record of this level would be written; guard expensive `data` with it. */
  isLevelEnabled(level: LogLevelName): boolean {
    return this.pino.isLevelEnabled(pinoLevel(level));
  }

  debug(event: LogEventType | string, message: string, opts?: LogOptions): void {
    this.write('debug', event, message, opts);
  }
  info(event: LogEventType | string, message: string, opts?: LogOptions): void {
    this.write('info', event, message, opts);
  }
  warn(event: LogEventType | string, message: string, opts?: LogOptions): void {
    this.write('warn', event, message, opts);
  }
  /** Alias of {@link warn}, the guide's name. */
  warning(event: LogEventType | string, message: string, opts?: LogOptions): void {
    this.write('warn', event, message, opts);
  }
  error(event: LogEventType | string, message: string, opts?: LogOptions): void {
    this.write('error', event, message, opts);
  }
  /** pino's `fatal`, the guide's `critical`. */
  critical(event: LogEventType | string, message: string, opts?: LogOptions): void {
    this.write('fatal', event, message, opts);
  }

  /** The guide's `logger.set_correlation_id`: see {@link setCorrelationId}. */
  setCorrelationId(id: string): void {
    setCorrelationId(id);
  }
  /** The guide's `logger.clear_correlation_id`. */
  clearCorrelationId(): void {
    clearCorrelationId();
  }
  getCorrelationId(): string | undefined {
    return getCorrelationId();
  }

  private write(
    level: 'debug' | 'info' | 'warn' | 'error' | 'fatal',
    type: string,
    message: string,
    opts?: LogOptions,
  ): void {
    const logger = this.pino;
    if (!logger.isLevelEnabled(level) || state?.failed) return;
    const record: Record<string, unknown> = {
      event: { type, message },
      correlation_id: getCorrelationId() ?? null,
      data: opts?.data ?? opts?.extra ?? {},
    };
    const error = opts?.error !== undefined ? opts.error : opts?.exception;
    if (error !== undefined) record.exception = exceptionOf(error);
    // Logging never throws into the caller (a request handler, a health check, a timer): a failed write is
    // reported once and the record dropped.
    try {
      logger[level](record);
    } catch (failure) {
      reportLogFailure(failure, state?.generation ?? -1);
    }
  }
}

/** `{type, message, stack}` of any thrown value. */
export function exceptionOf(error: unknown): LoggedException {
  if (error instanceof Error) return { type: error.name, message: error.message, stack: error.stack ?? null };
  return { type: typeof error, message: String(error), stack: null };
}

function pinoLevel(level: string): string {
  const lower = level.toLowerCase();
  const mapped = lower === 'warning' ? 'warn' : lower === 'critical' ? 'fatal' : lower;
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(mapped)) {
    throw new RangeError(
      `level: expected one of trace, debug, info, warning, error, critical, silent; got ${JSON.stringify(level)}`,
    );
  }
  return mapped;
}

/** A destination that turns each JSON record into one readable line (no pino-pretty dependency). */
function prettyDestination(out: DestinationStream): DestinationStream {
  return {
    write(line: string) {
      for (const text of line.split('\n')) {
        if (text) out.write(prettyLine(text) + '\n');
      }
    },
  };
}

/** `timestamp LEVEL event.type [module] message (correlation_id) data` plus the stack of an exception. */
export function prettyLine(json: string): string {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const event = (r.event ?? {}) as { type?: string; message?: string };
  const parts = [
    String(r.timestamp ?? ''),
    String(r.level ?? '')
      .toUpperCase()
      .padEnd(8),
    event.type ?? '-',
    `[${String(r.module ?? '')}]`,
    // one record, one line: line breaks inside the message are shown escaped
    (event.message ?? String(r.msg ?? '')).replace(/\r/g, '\\r').replace(/\n/g, '\\n'),
  ];
  if (r.correlation_id) parts.push(`(${String(r.correlation_id)})`);
  if (r.data && typeof r.data === 'object' && Object.keys(r.data).length > 0) parts.push(JSON.stringify(r.data));
  let text = parts.join(' ');
  const exception = r.exception as LoggedException | undefined;
  if (exception) text += '\n' + (exception.stack ?? `${exception.type}: ${exception.message}`).replace(/^/gm, '  ');
  return text;
}
