//! The SQLite engine of the spool (see the module above for invariants and format),
//! one file per concern: the schema and its upgrades ([`schema`]), the write transaction
//! ([`write`]), cursors and source offsets ([`cursors`]), totals ([`stats`]), the query
//! API's reads ([`reads`]), the page-token secret and quarantine ([`secrets`]), the chain
//! and retention ([`chain`]), the forwarding ledger ([`ledger`]), and the scratch index
//! of `verify --cloudwatch` ([`scratch`]).
//!
//! Nothing outside `spool/` sees a `rusqlite` type: errors leave as [`SpoolError`].

mod chain;
mod cursors;
mod ledger;
mod reads;
mod schema;
mod scratch;
mod secrets;
mod stats;
#[cfg(test)]
mod tests;
mod walcopy;
mod write;

pub use schema::{DB_FILE, SCHEMA_VERSION};
pub use scratch::MessageIndex;

use super::{EngineError, SpoolError, StoredEvent};
use crate::config::Durability;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// SQLite's failures, engine-neutral for the rest of the program. Disk full or failing
/// (ENOSPC, EFBIG, EIO) is transient: the writer waits and tries again instead of exiting.
impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> SpoolError {
        use rusqlite::ErrorCode;
        let transient = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DiskFull | ErrorCode::SystemIoFailure)
        );
        SpoolError::Engine(EngineError::new(e, transient))
    }
}

/// A handle on the spool: one writer ([`Spool::open`]) or any number of readers
/// ([`Spool::open_read_only`]).
pub struct Spool {
    /// Copies the WAL into the database file off the writer's thread, once started.
    /// Declared first, so dropped first: the writer's connection then closes last, as
    /// without it.
    wal: Option<walcopy::WalCopier>,
    conn: Connection,
    path: PathBuf,
    /// Writer state: organization keys, counters not yet committed, next sequence, and
    /// the chain hash of the last stored row.
    orgs: HashMap<String, i64>,
    last_seq: i64,
    head: [u8; 32],
    pending: Counters,
    in_txn: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    checkpoints: u64,
    purged: u64,
    forwarded: u64,
    rejected: u64,
    events: u64,
    read: u64,
    skipped: u64,
    duplicates: u64,
    quarantined: u64,
}

/// A row of `SELECT seq, ts_ms, body, org ...`.
fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        body: r.get(2)?,
        org: r.get(3)?,
    })
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` for writing.
    pub fn open(dir: &Path, durability: Durability, cache_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Dir(dir.to_path_buf(), e))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version = schema::configure_and_upgrade(&conn, &path, durability, cache_bytes)?;
        let mut spool = Spool::wrap(conn, path);
        spool.load_state()?;
        if (1..=3).contains(&version) {
            let n = spool.ledger_existing_rejections()?;
            tracing::info!(path = %spool.path.display(), rejections = n, "spool upgraded to format 4: earlier rejections recorded in the forwarding ledger");
        }
        spool
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(spool)
    }

    /// Reads the writer's state (next sequence, chain head, organization keys) from what
    /// is committed.
    fn load_state(&mut self) -> Result<(), SpoolError> {
        self.last_seq = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        self.head = schema::stored_head(&self.conn)?;
        let mut stmt = self.conn.prepare("SELECT organization_id, org FROM orgs")?;
        let orgs = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<HashMap<String, i64>, _>>()?;
        drop(stmt);
        self.orgs = orgs;
        Ok(())
    }

    /// Abandons the open transaction (after a failed write or commit) and goes back to the
    /// committed state; what the transaction held must be written again.
    pub fn rollback(&mut self) -> Result<(), SpoolError> {
        if !self.conn.is_autocommit() {
            // SQLite may already have rolled back by itself (disk full).
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.end_txn();
        self.load_state()
    }

    /// Opens an existing spool for reading only; it may be written by a running relay.
    pub fn open_read_only(dir: &Path) -> Result<Spool, SpoolError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(SpoolError::Missing(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // The bundled SQLite is built with STAT4, which re-prepares a statement at every
        // run whose bound values might change its plan: a fifth of a ListAuditLogs
        // page's SQLite work. The readers' statements have one right plan (the indexes
        // they are written for), so keep the plan once made.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            // The file exists but the relay has not finished creating it.
            return Err(SpoolError::Missing(path));
        }
        if version != SCHEMA_VERSION {
            return Err(SpoolError::Version {
                path,
                found: version,
                reads: SCHEMA_VERSION,
            });
        }
        Ok(Spool::wrap(conn, path))
    }

    fn wrap(conn: Connection, path: PathBuf) -> Spool {
        Spool {
            conn,
            path,
            orgs: HashMap::new(),
            last_seq: 0,
            head: crate::integrity::GENESIS,
            pending: Counters::default(),
            in_txn: false,
            wal: None,
        }
    }

    /// Bytes of the database, its WAL and its shared-memory index on disk.
    pub fn disk_bytes(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum()
    }

    /// Bytes on disk that hold data: [`Spool::disk_bytes`] less the database's free pages
    /// (which retention leaves behind and new events fill first). The disk cap counts this.
    pub fn used_bytes(&self) -> u64 {
        let pragma = |name: &str| -> u64 {
            self.conn
                .pragma_query_value(None, name, |r| r.get::<_, i64>(0))
                .unwrap_or(0)
                .max(0) as u64
        };
        self.disk_bytes()
            .saturating_sub(pragma("freelist_count") * pragma("page_size"))
    }

    /// The sequence number of the newest event this handle wrote or found at open.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
