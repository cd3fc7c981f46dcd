/**
 * The one place where better-sqlite3's SqliteError becomes a StorageError. The code is
 * decided on SQLite's (extended) result code, never on message text, and that result code
 * stays in `details.sqliteCode`.
 */
import Database from 'better-sqlite3';
import { Code, StorageError } from '../common/errors.js';

/** Primary result code (SQLITE_CONSTRAINT of SQLITE_CONSTRAINT_UNIQUE) → our code. */
const PRIMARY: ReadonlyMap<string, Code> = new Map([
  ['SQLITE_FULL', Code.RESOURCE_EXHAUSTED], // the disk (or the database's size limit) is full
  ['SQLITE_BUSY', Code.UNAVAILABLE], // another connection holds a lock past busy_timeout: retry later
  ['SQLITE_LOCKED', Code.UNAVAILABLE],
  ['SQLITE_CONSTRAINT', Code.FAILED_PRECONDITION], // a row breaks a rule of the schema (foreign key, check, not null)
  ['SQLITE_READONLY', Code.FAILED_PRECONDITION],
  ['SQLITE_CANTOPEN', Code.UNAVAILABLE],
  ['SQLITE_IOERR', Code.UNAVAILABLE], // the disk under the store failed a read or write
  ['SQLITE_CORRUPT', Code.DATA_LOSS],
  ['SQLITE_NOTADB', Code.DATA_LOSS],
  ['SQLITE_TOOBIG', Code.INVALID_ARGUMENT],
]);

/** Extended codes that differ from their primary's mapping. */
const EXTENDED: ReadonlyMap<string, Code> = new Map([
  ['SQLITE_CONSTRAINT_UNIQUE', Code.ALREADY_EXISTS],
  ['SQLITE_CONSTRAINT_PRIMARYKEY', Code.ALREADY_EXISTS],
  ['SQLITE_IOERR_NOMEM', Code.RESOURCE_EXHAUSTED],
]);

export function sqliteCodeOf(sqliteCode: string): Code {
  const extended = EXTENDED.get(sqliteCode);
  if (extended !== undefined) return extended;
  const primary = /^SQLITE_[A-Z]+/.exec(sqliteCode)?.[0];
  return (primary === undefined ? undefined : PRIMARY.get(primary)) ?? Code.INTERNAL;
}

/** Wraps a SqliteError; anything else (StorageErrors included) passes through unchanged. */
export function fromSqliteError(err: unknown, what: string): unknown {
  if (!(err instanceof Database.SqliteError)) return err;
  return new StorageError(sqliteCodeOf(err.code), `${what}: ${err.message}`, { cause: err, details: { sqliteCode: err.code } });
}

function guard<A extends unknown[], R>(fn: (...args: A) => R, what: string): (...args: A) => R {
  return (...args: A): R => {
    try {
      return fn(...args);
    } catch (err) {
      throw fromSqliteError(err, what);
    }
  };
}

const STATEMENT_CALLS = new Set<PropertyKey>(['run', 'get', 'all', 'iterate']);

/**
 * The database, with every call that runs SQL (statements, transactions, exec, pragma)
 * throwing StorageErrors instead of SqliteErrors. `what` prefixes the messages.
 */
export function withStorageErrors(db: Database.Database, what: string): Database.Database {
  const statement = (stmt: Database.Statement): Database.Statement => new Proxy(stmt, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      return STATEMENT_CALLS.has(prop) && typeof value === 'function' ? guard((value as (...a: unknown[]) => unknown).bind(target), what) : value;
    },
  });
  return new Proxy(db, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      const bound = (value as (...a: unknown[]) => unknown).bind(target);
      if (prop === 'prepare') return guard((...a: unknown[]) => statement(bound(...a) as Database.Statement), what);
      if (prop === 'transaction') {
        return (fn: (...a: unknown[]) => unknown) => {
          const tx = bound(fn) as Database.Transaction<(...a: unknown[]) => unknown>;
          return guard((...a: unknown[]) => tx(...a), what);
        };
      }
      if (prop === 'exec' || prop === 'pragma') return guard(bound, what);
      return bound;
    },
  });
}
