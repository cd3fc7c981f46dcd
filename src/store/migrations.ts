/**
 * Numbered schema migrations for the node store. Each runs once, in order, inside one
 * transaction together with the bump of `PRAGMA user_version`. Never edit a migration that
 * has shipped: add the next number.
 */
export interface Migration {
  version: number;
  description: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'volumes, replicas, snapshots and node metadata',
    sql: `
      CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      );
      CREATE TABLE volumes (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        size_bytes  INTEGER NOT NULL CHECK (size_bytes > 0),
        state       TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
        epoch       INTEGER NOT NULL DEFAULT 0,
        exported    INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL
      );
      CREATE TABLE replicas (
        id          TEXT PRIMARY KEY,
        volume_id   TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        device_id   TEXT NOT NULL UNIQUE,
        state       TEXT NOT NULL CHECK (state IN ('in-sync', 'rebuilding', 'faulted')),
        created_at  TEXT NOT NULL
      );
      CREATE INDEX replicas_by_volume ON replicas(volume_id);
      CREATE TABLE snapshots (
        id          TEXT PRIMARY KEY,
        volume_id   TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        device_id   TEXT NOT NULL UNIQUE,
        size_bytes  INTEGER NOT NULL,
        created_at  TEXT NOT NULL,
        UNIQUE (volume_id, name)
      );
    `,
  },
];
