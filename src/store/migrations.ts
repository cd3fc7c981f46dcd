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
  {
    // Replicas hosted for the replica service (src/replica/) belong to volumes whose record
    // lives in the cluster store, not in this node's `volumes` table, so the foreign key
    // goes; a trigger keeps "deleting a local volume deletes its replicas". New columns:
    // the newest volume epoch the replica has seen (fencing) and its rebuild progress.
    version: 2,
    description: 'replica epochs and rebuild progress; replicas of volumes recorded elsewhere',
    sql: `
      CREATE TABLE replicas_v2 (
        id                   TEXT PRIMARY KEY,
        volume_id            TEXT NOT NULL,
        device_id            TEXT NOT NULL UNIQUE,
        state                TEXT NOT NULL CHECK (state IN ('in-sync', 'rebuilding', 'faulted')),
        created_at           TEXT NOT NULL,
        epoch                INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0),
        rebuild_done_bytes   INTEGER NOT NULL DEFAULT 0,
        rebuild_total_bytes  INTEGER NOT NULL DEFAULT 0,
        rebuild_checkpoint   BLOB
      );
      INSERT INTO replicas_v2 (id, volume_id, device_id, state, created_at)
        SELECT id, volume_id, device_id, state, created_at FROM replicas;
      DROP TABLE replicas;
      ALTER TABLE replicas_v2 RENAME TO replicas;
      CREATE INDEX replicas_by_volume ON replicas(volume_id);
      CREATE TRIGGER replicas_follow_volume AFTER DELETE ON volumes
      BEGIN
        DELETE FROM replicas WHERE volume_id = OLD.id;
      END;
    `,
  },
  {
    // The volume engine's dirty-region maps: one bitmap per (volume, replica) that is out of
    // sync, kept on the engine's node so that a returning replica costs only the regions it
    // missed (src/engine/volume-engine.ts). Written with synchronous=FULL before the write
    // that set a bit is acknowledged.
    //
    // The trigger of migration 2 goes: volumes now live in the cluster store, and the import
    // of legacy single-node volumes deletes their rows from `volumes`; that must not delete
    // the hosted replicas (their rows in `replicas`) which keep serving the imported volume.
    version: 3,
    description: 'dirty-region maps of out-of-sync replicas; deleting a local volume row no longer deletes hosted replicas',
    sql: `
      CREATE TABLE dirty_maps (
        volume_id     TEXT NOT NULL,
        replica_id    TEXT NOT NULL,
        region_bytes  INTEGER NOT NULL CHECK (region_bytes > 0),
        bits          BLOB NOT NULL,
        updated_at    TEXT NOT NULL,
        PRIMARY KEY (volume_id, replica_id)
      );
      DROP TRIGGER IF EXISTS replicas_follow_volume;
    `,
  },
  {
    // Volumes staged on this node for CSI (src/engine/stager.ts): written before staging
    // starts and updated at each step, so that a crash anywhere is finished by the next
    // call or by the recovery at start (re-export, re-attach the same kernel device).
    version: 4,
    description: 'volumes staged on this node (CSI NodeStageVolume)',
    sql: `
      CREATE TABLE staged_volumes (
        volume          TEXT PRIMARY KEY,
        volume_id       TEXT NOT NULL,
        staging_path    TEXT NOT NULL,
        access_type     TEXT NOT NULL CHECK (access_type IN ('block', 'mount')),
        fs_type         TEXT NOT NULL DEFAULT '',
        mount_flags     TEXT NOT NULL DEFAULT '[]',
        readonly        INTEGER NOT NULL DEFAULT 0,
        device_path     TEXT NOT NULL DEFAULT '',
        attach_method   TEXT NOT NULL DEFAULT '',
        attach_state    TEXT NOT NULL DEFAULT '{}',
        state           TEXT NOT NULL CHECK (state IN ('staging', 'staged', 'unstaging')),
        updated_at      TEXT NOT NULL
      );
    `,
  },
  {
    // The snapshot copies this node holds (src/replica/replica-manager.ts, docs/snapshots.md):
    // one pool device per copy, whose device id is the snapshot id. Recorded once the device
    // exists and forgotten once it is deleted, so that a restart knows every copy it holds.
    // Not tied to the replica it was taken from: deleting the replica keeps its copies. (The
    // `snapshots` table of migration 1 belongs to the legacy single-node volumes.)
    version: 5,
    description: 'snapshot copies held by this node',
    sql: `
      CREATE TABLE snapshot_copies (
        snapshot_id  TEXT PRIMARY KEY,
        volume_id    TEXT NOT NULL,
        replica_id   TEXT NOT NULL,
        size_bytes   INTEGER NOT NULL CHECK (size_bytes > 0),
        created_at   TEXT NOT NULL
      );
      CREATE INDEX snapshot_copies_by_volume ON snapshot_copies(volume_id);
    `,
  },
];
