//! The installation store's tables, their migrations, and the day partitions.
//!
//! | table | key | holds |
//! |---|---|---|
//! | `audit_schema_version` | `version` | one row per migration applied |
//! | `audit_relays` | `relay_id` | the registry: `first_seen`, `last_seen`, `first_seq` and `anchor` (the chain hash before it), `shipped_seq` (the cursor) and `chain_head` (the hash at it), `key_id` of its signed checkpoints |
//! | `audit_events` | `(ts_ms, id)` | every relay's rows, partitioned by UTC day of `ts_ms` (`audit_events_pYYYYMMDD`): `gseq` (store-wide order, the API's tiebreak), `relay_id`, `seq`, `organization_id` (`''` for the relay's own rows), `actor`, `action`, `body`, `hash` |
//! | `audit_duplicates` | `(relay_id, seq)` | a relay's rows whose `(ts_ms, id)` another row already holds: kept whole, so that relay's chain still verifies |
//! | `audit_purges` | `pid` | one row per dropped partition: its range, rows, the relay that dropped it, and `runs` (per relay, the sequence runs dropped and the hash at each run's end) |
//! | `audit_meta` | `key` | the page-token key |
//!
//! Indexes: `audit_events(organization_id, ts_ms DESC, gseq DESC)` for the API,
//! `audit_events(relay_id, seq)` for verification and the shipper.
//!
//! Migrations run under one advisory lock (several relays may start at once), each in its
//! transaction with its `audit_schema_version` row; a database whose version is newer
//! than this build's is refused, never written.

use super::{day_start, PgError, DAY_MS};
use crate::forward::retry::PgClass;
use std::collections::BTreeSet;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

/// Advisory lock keys (one namespace: the ASCII of "audit-rl" and a number).
pub const MIGRATION_LOCK: i64 = 0x6175_6469_742d_726c;
pub const PARTITION_LOCK: i64 = MIGRATION_LOCK + 1;
pub const RETENTION_LOCK: i64 = MIGRATION_LOCK + 2;

const V1: &str = "
CREATE TABLE audit_relays(
    relay_id text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    first_seq bigint NOT NULL,
    anchor bytea NOT NULL,
    shipped_seq bigint NOT NULL,
    chain_head bytea NOT NULL,
    key_id text
);
CREATE SEQUENCE audit_events_gseq;
CREATE TABLE audit_events(
    ts_ms bigint NOT NULL,
    id uuid NOT NULL,
    gseq bigint NOT NULL DEFAULT nextval('audit_events_gseq'),
    relay_id text NOT NULL,
    seq bigint NOT NULL,
    organization_id text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    body text NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (ts_ms, id)
) PARTITION BY RANGE (ts_ms);
CREATE INDEX audit_events_org ON audit_events(organization_id, ts_ms DESC, gseq DESC);
CREATE INDEX audit_events_relay ON audit_events(relay_id, seq);
CREATE TABLE audit_duplicates(
    relay_id text NOT NULL,
    seq bigint NOT NULL,
    ts_ms bigint NOT NULL,
    id uuid NOT NULL,
    organization_id text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    body text NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (relay_id, seq)
);
CREATE TABLE audit_purges(
    pid bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    partition text NOT NULL,
    from_ms bigint NOT NULL,
    to_ms bigint NOT NULL,
    rows bigint NOT NULL,
    by_relay text NOT NULL,
    runs jsonb NOT NULL
);
CREATE TABLE audit_meta(key text PRIMARY KEY, value bytea NOT NULL);
";

/// Brings the database to [`SCHEMA_VERSION`]; returns the version found before.
pub async fn migrate(client: &mut tokio_postgres::Client, relay_id: &str) -> Result<i32, PgError> {
    let pg = |what: &'static str| move |e: tokio_postgres::Error| PgError::from_pg(what, &e);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("waiting for the schema migration lock"))?;
    let r = migrate_locked(client, relay_id).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    r
}

async fn migrate_locked(
    client: &mut tokio_postgres::Client,
    relay_id: &str,
) -> Result<i32, PgError> {
    let pg = |what: &'static str| move |e: tokio_postgres::Error| PgError::from_pg(what, &e);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS audit_schema_version(
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now(),
                by_relay text NOT NULL)",
        )
        .await
        .map_err(pg("creating audit_schema_version"))?;
    let found: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM audit_schema_version",
            &[],
        )
        .await
        .map_err(pg("reading audit_schema_version"))?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(PgError::new(
            PgClass::Schema,
            "postgres.url",
            format!("the database's schema is version {found}, newer than this build's {SCHEMA_VERSION}: upgrade audit-relay (a relay never writes a newer schema)"),
        ));
    }
    if found < 1 {
        let tx = client
            .transaction()
            .await
            .map_err(pg("migrating to schema 1"))?;
        tx.batch_execute(V1)
            .await
            .map_err(pg("migrating to schema 1"))?;
        tx.execute(
            "INSERT INTO audit_schema_version(version, by_relay) VALUES (1, $1)",
            &[&relay_id],
        )
        .await
        .map_err(pg("migrating to schema 1"))?;
        tx.commit().await.map_err(pg("migrating to schema 1"))?;
        tracing::info!(version = 1, "installation store: schema created");
    }
    Ok(found)
}

/// The partition holding the UTC day that starts at `day_ms`.
pub fn partition_name(day_ms: i64) -> String {
    let d = time::OffsetDateTime::from_unix_timestamp(day_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "audit_events_p{:04}{:02}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// The day partitions that exist (their first day's ms).
pub async fn partitions(
    client: &impl tokio_postgres::GenericClient,
) -> Result<BTreeSet<i64>, PgError> {
    let rows = client
        .query(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'audit_events'::regclass",
            &[],
        )
        .await
        .map_err(|e| PgError::from_pg("listing partitions", &e))?;
    Ok(rows
        .iter()
        .filter_map(|r| parse_bound(r.get::<_, &str>(0)))
        .map(|(from, _)| from)
        .collect())
}

/// `FOR VALUES FROM ('a') TO ('b')` → `(a, b)`.
pub fn parse_bound(expr: &str) -> Option<(i64, i64)> {
    let nums: Vec<i64> = expr
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter(|s| !s.is_empty() && *s != "-")
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [a, b] => Some((*a, *b)),
        _ => None,
    }
}

/// Creates the day partitions of `days` (ms at each day's start) that do not exist yet,
/// one creator at a time (several relays ship at once).
pub async fn ensure_partitions(
    client: &mut tokio_postgres::Client,
    days: &BTreeSet<i64>,
) -> Result<(), PgError> {
    if days.is_empty() {
        return Ok(());
    }
    let pg = |e: tokio_postgres::Error| PgError::from_pg("creating day partitions", &e);
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(pg)?;
    let have = partitions(&tx).await?;
    for day in days.iter().map(|d| day_start(*d)) {
        if have.contains(&day) {
            continue;
        }
        let name = partition_name(day);
        tx.batch_execute(&format!(
            "CREATE TABLE {name} PARTITION OF audit_events FOR VALUES FROM ({day}) TO ({})",
            day + DAY_MS
        ))
        .await
        .map_err(pg)?;
        tracing::info!(partition = %name, "installation store: day partition created");
    }
    tx.commit().await.map_err(pg)
}

/// The page-token key kept in the store (made by the first relay that needs it), so that
/// every relay issues and accepts the same tokens.
pub async fn token_key(client: &impl tokio_postgres::GenericClient) -> Result<Vec<u8>, PgError> {
    let pg = |e: tokio_postgres::Error| PgError::from_pg("reading the page-token key", &e);
    let mut key = vec![0u8; 32];
    getrandom::getrandom(&mut key)
        .map_err(|e| PgError::new(PgClass::Other, "page-token key", e.to_string()))?;
    client
        .execute(
            "INSERT INTO audit_meta(key, value) VALUES ('page_token_key', $1) ON CONFLICT (key) DO NOTHING",
            &[&key],
        )
        .await
        .map_err(pg)?;
    let row = client
        .query_one(
            "SELECT value FROM audit_meta WHERE key = 'page_token_key'",
            &[],
        )
        .await
        .map_err(pg)?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_utc_day_and_bounds_parse() {
        assert_eq!(partition_name(0), "audit_events_p19700101");
        assert_eq!(partition_name(1_764_806_400_000), "audit_events_p20251204");
        assert_eq!(partition_name(-DAY_MS), "audit_events_p19691231");
        assert_eq!(
            parse_bound("FOR VALUES FROM ('1764806400000') TO ('1764892800000')"),
            Some((1_764_806_400_000, 1_764_892_800_000))
        );
        assert_eq!(
            parse_bound("FOR VALUES FROM ('-86400000') TO ('0')"),
            Some((-86_400_000, 0))
        );
        assert_eq!(parse_bound("DEFAULT"), None);
        assert_eq!(day_start(1_764_806_400_000 + 5), 1_764_806_400_000);
        assert_eq!(day_start(-1), -DAY_MS);
    }
}
