/**
 * Schema of the embedded cluster store (`<data-dir>/cluster.db`), a database of its own,
 * apart from the node store. Numbered migrations, each run once in one transaction with
 * the bump of `PRAGMA user_version`; never edit one that has shipped.
 *
 * Keys are BLOBs (UTF-8 bytes) so that ordering and prefix ranges compare bytes, as etcd
 * does. `events` is the change history that watches resume from; the oldest entries are
 * dropped past `historyRevisions`, and `state.compact_revision` records up to where.
 */
import type Database from 'better-sqlite3';
import { Code, StorageError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { Migration } from '../../store/migrations.js';

export const EMBEDDED_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'keys, revisions, leases and change history',
    sql: `
      CREATE TABLE state (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        cluster          TEXT NOT NULL,
        revision         INTEGER NOT NULL,
        compact_revision INTEGER NOT NULL
      );
      CREATE TABLE leases (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        ttl_ms        INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
      );
      CREATE INDEX leases_by_expiry ON leases(expires_at_ms);
      CREATE TABLE kv (
        key             BLOB PRIMARY KEY,
        value           TEXT NOT NULL,
        create_revision INTEGER NOT NULL,
        mod_revision    INTEGER NOT NULL,
        version         INTEGER NOT NULL,
        lease_id        INTEGER REFERENCES leases(id)
      ) WITHOUT ROWID;
      CREATE INDEX kv_by_lease ON kv(lease_id) WHERE lease_id IS NOT NULL;
      CREATE TABLE events (
        revision        INTEGER NOT NULL,
        seq             INTEGER NOT NULL,
        key             BLOB NOT NULL,
        type            TEXT NOT NULL CHECK (type IN ('put', 'delete')),
        value           TEXT,
        create_revision INTEGER NOT NULL,
        PRIMARY KEY (revision, seq)
      ) WITHOUT ROWID;
    `,
  },
];

export interface KvRow {
  key: Buffer;
  value: string;
  create_revision: number;
  mod_revision: number;
  version: number;
  lease_id: number | null;
}

export interface EventRow {
  revision: number;
  seq: number;
  key: Buffer;
  type: 'put' | 'delete';
  value: string | null;
  create_revision: number;
}

/** Runs pending migrations and checks (or records) which cluster the file belongs to. */
export function migrateEmbedded(db: Database.Database, cluster: string, log: Logger): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  const newest = EMBEDDED_MIGRATIONS.reduce((v, m) => Math.max(v, m.version), 0);
  if (current > newest) {
    throw new StorageError(Code.FAILED_PRECONDITION,
      `the cluster store has schema version ${current}, newer than this cairnd knows (${newest}): run a cairnd at least as new as the one that wrote it`);
  }
  for (const m of EMBEDDED_MIGRATIONS) {
    if (m.version <= current) continue;
    db.transaction(() => {
      db.exec(m.sql);
      if (m.version === 1) db.prepare('INSERT INTO state (id, cluster, revision, compact_revision) VALUES (1, ?, 1, 0)').run(cluster);
      db.pragma(`user_version = ${m.version}`);
    })();
    log.info({ version: m.version, description: m.description }, 'cluster store migrated');
  }
  const row = db.prepare('SELECT cluster FROM state WHERE id = 1').get() as { cluster: string };
  if (row.cluster !== cluster) {
    throw new StorageError(Code.FAILED_PRECONDITION,
      `the embedded cluster store belongs to cluster "${row.cluster}", not "${cluster}": use its cluster name or another data dir`);
  }
}
