//! The spool's tables, and the upgrades from earlier formats.

use super::super::{now_ms, SpoolError};
use crate::config::Durability;
use crate::integrity::{chain_hash, Canonical, GENESIS};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;

/// The on-disk format version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 4;
/// WAL size (in pages) at which a commit also checkpoints the WAL into the database.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;
/// File name of the database inside `spool.dir`.
pub const DB_FILE: &str = "spool.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orgs(org INTEGER PRIMARY KEY, organization_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    id BLOB NOT NULL,
    org INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    body TEXT NOT NULL,
    hash BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS events_ts_id ON events(ts_ms, id);
CREATE INDEX IF NOT EXISTS events_org_ts ON events(org, ts_ms);
CREATE TABLE IF NOT EXISTS quarantine(
    qid INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    offset INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints(
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    fp_len INTEGER NOT NULL,
    fp_hash INTEGER NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    replay_until INTEGER NOT NULL,
    PRIMARY KEY(dev, ino)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors(name TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected(
    seq INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purges(
    pid INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    through_seq INTEGER NOT NULL,
    anchor_seq INTEGER NOT NULL,
    anchor_head BLOB NOT NULL
);
INSERT OR IGNORE INTO orgs(org, organization_id) VALUES (0, '');
CREATE INDEX IF NOT EXISTS events_ledger ON events(json_extract(body, '$.seq'))
    WHERE org = 0 AND action = 'rejected';
";

/// Sets the connection's pragmas, creates the tables and runs the upgrades that need only
/// SQL; returns the format version found (0: a new spool). The caller records the rows
/// of format 4 and then the version itself.
pub(super) fn configure_and_upgrade(
    conn: &Connection,
    path: &Path,
    durability: Durability,
    cache_bytes: u64,
) -> Result<i64, SpoolError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", -((cache_bytes / 1024) as i64))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Fewer, larger WAL checkpoints: a hot index page changed by many commits is
    // copied into the database once per checkpoint (docs/benchmarks.md).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != 0 && version != SCHEMA_VERSION && !(1..=3).contains(&version) {
        return Err(SpoolError::Version {
            path: path.to_path_buf(),
            found: version,
            reads: SCHEMA_VERSION,
        });
    }
    if version == 1 {
        // Version 2 added the re-read bound of checkpoints and the forwarding tables.
        conn.execute_batch(
            "ALTER TABLE checkpoints ADD COLUMN replay_until INTEGER NOT NULL DEFAULT 0",
        )?;
        tracing::info!(path = %path.display(), "spool upgraded from format 1 to 2");
    }
    if version == 1 || version == 2 {
        // Version 3 added the hash chain.
        conn.execute_batch("ALTER TABLE events ADD COLUMN hash BLOB")?;
    }
    conn.execute_batch(SCHEMA)?;
    if version == 1 || version == 2 {
        hash_existing(conn)?;
        // The upgrade rewrote every row: fold the WAL back so it does not stay the
        // size of the spool (and count against spool.max_bytes).
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        tracing::info!(path = %path.display(), "spool upgraded to format 3: hash chain computed over the stored events");
    }
    // Version 4 added the forwarding ledger (rejections as rows of the chain) and its
    // index; the version is written after the rows below are.
    // verify judges the age of the newest checkpoint from here on (a restarted
    // writer checkpoints `checkpoint_interval` after its start).
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('opened_ms', ?1)",
        [now_ms()],
    )?;
    Ok(version)
}

pub(super) fn to_hash(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|b| b.try_into().ok())
}

/// The chain head recorded at the last commit (the genesis value for a new spool).
pub(super) fn stored_head(conn: &Connection) -> Result<[u8; 32], SpoolError> {
    let v: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'chain_head'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(to_hash(v).unwrap_or(GENESIS))
}

/// How often a long upgrade logs how far it is.
const UPGRADE_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Computes the chain over every stored event (upgrade from a format without it), in one
/// transaction. It reads and rewrites every row (minutes on a 90-day spool), so it logs
/// its progress; the admin endpoints answer meanwhile (`/readyz`: "migrating").
pub(super) fn hash_existing(conn: &Connection) -> Result<(), SpoolError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let orgs = org_names(conn)?;
    let mut head = GENESIS;
    let mut last = 0i64;
    let total: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    tracing::info!(
        rows = total,
        "spool upgrade: computing the hash chain over every stored event"
    );
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut done = 0i64;
    {
        let mut read = conn
            .prepare("SELECT seq, ts_ms, id, org, actor, action, body FROM events ORDER BY seq")?;
        let mut update = conn.prepare("UPDATE events SET hash = ?2 WHERE seq = ?1")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let org: i64 = r.get(3)?;
            head = chain_hash(
                &head,
                &Canonical {
                    seq,
                    ts_ms: r.get(1)?,
                    id: r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?,
                    organization_id: orgs.get(&org).map(String::as_str).unwrap_or(""),
                    actor: r.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?,
                    action: r.get_ref(5)?.as_str().map_err(rusqlite::Error::from)?,
                    body: r.get_ref(6)?.as_str().map_err(rusqlite::Error::from)?,
                },
            );
            update.execute(params![seq, head.as_slice()])?;
            last = seq;
            done += 1;
            if done % 4096 == 0 && logged.elapsed() >= UPGRADE_PROGRESS_EVERY {
                logged = std::time::Instant::now();
                tracing::info!(
                    done,
                    total,
                    elapsed_s = started.elapsed().as_secs(),
                    "spool upgrade: hashing stored events"
                );
            }
        }
    }
    if last > 0 {
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('chain_head', ?1)",
            [head.as_slice()],
        )?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

pub(super) fn org_names(conn: &Connection) -> Result<HashMap<i64, String>, SpoolError> {
    let mut stmt = conn.prepare("SELECT org, organization_id FROM orgs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
