/**
 * Logging: pino, one JSON object a line, fixed message strings with ids in fields
 * (volume, volumeId, replica, snapshot, node, peer, epoch, req). `volume` is always the
 * volume's name and `volumeId` its id; `node` is always the node whose cairnd printed the
 * line (bound once, here), so a line about another node names it under a key of its own
 * (`replicaNode`, `engineNode`, `publishedNode`, `sourceNode`, `targetNode`). A child
 * logger binds only fields its parent has not (pino would print a key twice).
 * `format: 'human'` renders the same events for an operator at a terminal.
 */
import { pino, destination, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };
export type LogFormat = 'json' | 'human';

export interface LogOptions {
  level: LevelWithSilent;
  format: LogFormat;
  /** Where lines go; stdout by default. */
  destination?: number;
  /** The node this daemon runs on (its node name): every line carries it as `node`. */
  node?: string;
}

const REDACT = ['secret', 'secrets', '*.secret', '*.secrets', 'password', '*.password', 'token', '*.token', 'key', '*.key'];

export function createLogger(options: LogOptions): Logger {
  const root = rootLogger(options);
  return options.node !== undefined ? root.child({ node: options.node }) : root;
}

function rootLogger(options: LogOptions): Logger {
  const base = { level: options.level, redact: { paths: REDACT, censor: '[redacted]' } };
  if (options.format === 'human') {
    return pino({
      ...base,
      transport: {
        target: 'pino-pretty',
        options: { destination: options.destination ?? 1, colorize: process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', sync: true },
      },
    });
  }
  return pino(base, destination({ dest: options.destination ?? 1, sync: false }));
}

/** A logger that drops everything, for unit tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
